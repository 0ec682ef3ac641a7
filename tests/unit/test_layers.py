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


LINKED = {"common", "producer", "worker"}  # top-level folders installed as batchscribe.<name>


def _module_name(path: Path) -> str:
    """The dotted name `path` is imported as: `common/x.py` and `batchscribe/common/x.py` are both
    batchscribe.common.x, `common/state/__init__.py` is batchscribe.common.state."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in LINKED:
        parts.insert(0, "batchscribe")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, module: str | None = None) -> set[str]:
    """Every name an import statement of `path` imports, resolved (`module`: the name `path` is
    imported as, found from its place in the checkout by default): in batchscribe.worker.y,
    `from batchscribe import producer` and `from .. import producer` are batchscribe.producer,
    `from ..producer import x` is batchscribe.producer.x."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = []
            if node.level:
                name = (module or _module_name(path)).split(".")
                package = name if path.name == "__init__.py" else name[:-1]
                assert node.level <= len(package), f"{path}: relative import beyond the top-level package"
                base = package[:len(package) - node.level + 1]
            base += node.module.split(".") if node.module else []
            names |= {".".join(base if alias.name == "*" else [*base, alias.name]) for alias in node.names}
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


@pytest.mark.parametrize("statement", ["from batchscribe.producer.submit import Submitter",
                                       "from batchscribe import producer",
                                       "from .. import producer",
                                       "from ..producer.submit import Submitter"])
def test_the_check_sees_a_violation(tmp_path: Path, statement: str) -> None:
    """The checker itself can fail: a worker module importing the producer is reported, however
    the import is spelled (absolute, a package's attribute, relative)."""
    bad = tmp_path / "bad.py"
    bad.write_text(f"{statement}\nimport batchscribe.common.errors\nfrom . import leases\n")
    found = {_layer_of(m) for m in _imported(bad, module="batchscribe.worker.bad")}
    assert found == {"producer", "common", "worker"}
    assert "producer" not in ALLOWED["worker"]


def test_relative_imports_resolve_from_their_module(tmp_path: Path) -> None:
    assert _module_name(ROOT / "common" / "state" / "__init__.py") == "batchscribe.common.state"
    assert _module_name(PACKAGE / "worker" / "jobs.py") == "batchscribe.worker.jobs"
    init = tmp_path / "__init__.py"
    init.write_text("from . import batches\nfrom .. import keys\nfrom .client import translate\n")
    assert _imported(init, module="batchscribe.common.state") == {
        "batchscribe.common.state.batches", "batchscribe.common.keys", "batchscribe.common.state.client.translate"}


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
