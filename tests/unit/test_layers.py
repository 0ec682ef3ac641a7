"""The package's structure: one installed namespace, and imports that point one way.

    batchscribe.common      imports nothing else of ours
    batchscribe.producer    imports only common
    batchscribe.worker      imports only common
    batchscribe.emulator    imports only common (its local transcriber is passed in)
    batchscribe.api         the HTTP API: imports common and producer (never the worker or the CLI)
    batchscribe.cli, the rest of batchscribe    on top: may import everything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.cli import ROOT

PACKAGE = ROOT / "batchscribe"
LAYERS = {"common", "producer", "worker", "emulator", "api"}
ALLOWED = {  # layer -> the other layers it may import
    "common": set(),
    "producer": {"common"},
    "worker": {"common"},
    "emulator": {"common"},
    "api": {"common", "producer"},
}


def _modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Every module name an import statement of `path` names (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in LAYERS:
        return f"bare {parts[0]}"  # the old top-level names: must not be imported any more
    if parts[0] == "batchscribe" and len(parts) > 1:
        return parts[1] if parts[1] in LAYERS else "top"
    return None


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_one_way(layer: str) -> None:
    wrong = []
    for path in _modules(layer):
        for module in sorted(_imported(path)):
            target = _layer_of(module)
            if target is not None and target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module} ({layer} -> {target})")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_old_top_level_names() -> None:
    roots = [ROOT / "batchscribe", ROOT / "tests", ROOT / "bench"]
    wrong = [f"{p.relative_to(ROOT)} imports {m}" for root in roots for p in sorted(root.rglob("*.py"))
             if "/.venv/" not in str(p) for m in _imported(p) if m.split(".")[0] in LAYERS]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself can fail: a worker module importing the producer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from batchscribe.producer.submit import Submitter\nimport batchscribe.common.errors\n")
    found = {_layer_of(m) for m in _imported(bad)}
    assert found == {"producer", "common"}
    assert "producer" not in ALLOWED["worker"]


# ---- the state boundary: the only code that talks to Redis ------------------------------------------

# Besides common/state/, the task publisher keeps its own connection on purpose (common/publish.py)
# and the private redis-server launcher pings the server it starts.
TALKS_TO_REDIS = ("common/state/", "common/publish.py", "batchscribe/private_redis.py")


def _package_files() -> list[Path]:
    """The package's modules, each once (rglob does not follow batchscribe/common etc., the symlinks)."""
    return [p for top in ("common", "producer", "worker", "batchscribe") for p in sorted((ROOT / top).rglob("*.py"))]


def _reaches_into_redis(path: Path) -> list[str]:
    """Imports of redis-py, `x.redis` and `x.keys.y` (a store's raw client and key names) in `path`."""
    found = [f"imports {m}" for m in sorted(_imported(path)) if m.split(".")[0] == "redis"]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr == "redis":
            found.append(f"line {node.lineno}: .redis")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "keys":
            found.append(f"line {node.lineno}: .keys.{node.attr}")
    return found


def test_only_the_state_boundary_talks_to_redis() -> None:
    wrong = [f"{p.relative_to(ROOT)}: {what}" for p in _package_files()
             if not p.relative_to(ROOT).as_posix().startswith(TALKS_TO_REDIS) for what in _reaches_into_redis(p)]
    assert not wrong, "\n".join(wrong)


def test_the_boundary_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import redis\nstore.redis.hget(store.keys.batch('b'), 'x')\nd.keys()\n")
    assert _reaches_into_redis(bad) == ["imports redis", "line 2: .redis", "line 2: .keys.batch"]


def test_every_public_store_method_translates_redis_errors() -> None:
    from batchscribe.common.state import StateStore

    methods = [name for name in dir(StateStore) if not name.startswith("_")
               and callable(getattr(StateStore, name)) and name != "connect"]
    assert len(methods) > 30
    unguarded = [name for name in methods if not getattr(getattr(StateStore, name), "__state_boundary__", False)]
    assert not unguarded, f"not behind common.state.client.boundary: {unguarded}"
