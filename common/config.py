"""Endpoint YAML: batch-processing-kit's keys and defaults, plus ours, validated with precise errors.

A batch-processing-kit file must load unchanged. Every error names the file, the endpoint and the
key, e.g. ``endpoints.yaml: endpoint 'gpu2': concurrency must be an integer ≥ 1, got 'ten'``.
Unknown keys are an error too: a typo must never be silently dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from batchscribe.common.errors import ConfigError

ENGINES = ("azure", "local", "ffmpeg")  # ffmpeg: the media converter (`batchscribe convert`)
EVERY_VM = ("local", "ffmpeg")  # engines that run on each worker VM itself: no owner, no lease
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_ENV_RE = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


@dataclass(frozen=True)
class Endpoint:
    """One speech endpoint: where it is, how many files it takes at once, which languages it serves."""

    name: str
    engine: str = "azure"
    host: str = "localhost"
    port: int = 5000
    concurrency: int = 8
    rtf: float = 3.0
    languages: tuple[str, ...] = ("en-US",)
    is_secure: bool = False
    is_cloud_service: bool = False
    subscription_key: str | None = field(default=None, repr=False)
    region: str | None = None
    model: str | None = None  # local engine: a model folder or a name
    cpu_threads: int = 0  # local engine: threads per model (0: let the engine decide)
    stall_timeout: float = 30.0  # azure engine: floor of the no-progress watchdog, seconds

    @property
    def language(self) -> str:
        return self.languages[0]

    @property
    def on_every_vm(self) -> bool:
        """Runs on the worker VM itself (local transcription, conversion), so every VM runs its own
        consumer of it with its own slots; a remote endpoint has one owner cluster-wide."""
        return self.engine in EVERY_VM

    @property
    def url(self) -> str:
        """Websocket base URL of a container (the SDK's `host=` form)."""
        return f"{'wss' if self.is_secure else 'ws'}://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """Where a container answers GET /ready and /status."""
        return f"{'https' if self.is_secure else 'http'}://{self.host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, used to hand an endpoint to a consumer process; includes the secret."""
        data = dataclasses.asdict(self)
        data["languages"] = list(self.languages)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Endpoint:
        values = dict(data)
        values["languages"] = tuple(values.get("languages") or ("en-US",))
        return cls(**values)

    def fingerprint(self) -> str:
        """Changes whenever anything that matters to a running consumer changes (for hot-swap)."""
        raw = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class EndpointSet:
    """The endpoints of one YAML file, in file order."""

    endpoints: tuple[Endpoint, ...]
    source: str = "<defaults>"
    # Endpoints whose subscription key is written out in the file rather than as $VAR: such a set
    # may run where the file is, but is never published to Redis (common.registry).
    literal_secrets: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.endpoints)

    def __len__(self) -> int:
        return len(self.endpoints)

    def get(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)

    def languages(self) -> set[str]:
        return {lang for e in self.endpoints for lang in e.languages}


# YAML key -> (Endpoint field, parser). batch-processing-kit's keys first, then ours.
def _parse_endpoint(source: str, name: str, raw: Any, environ: Mapping[str, str]) -> Endpoint:
    where = f"{source}: endpoint '{name}'"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"{source}: endpoint name {name!r} must be 1-63 letters, digits, '_', '-' or '.'"
        )
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        # The value is not shown: a mis-indented `subscriptionKey=...` would be printed whole.
        raise ConfigError(f"{where}: must be a mapping of keys (one `key: value` per indented line), "
                          f"got a {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(_KEYS)}"
        )
    values = {key: _expand_env(where, key, value, environ) for key, value in raw.items()}

    def get(key: str, kind: str, default: Any, **limits: Any) -> Any:
        if key not in values or values[key] is None:
            return default
        return _coerce(where, key, values[key], kind, **limits)

    host = get("host", "str", "localhost")
    is_cloud = get("isCloudService", "bool", ".stt.speech.microsoft.com" in host or "region" in values)
    is_secure = get("isSecure", "bool", is_cloud)
    engine = get("engine", "str", "azure")
    if engine not in ENGINES:
        raise ConfigError(f"{where}: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    languages = _languages(where, values)
    key = get("subscriptionKey", "str", None) or get("subscription", "str", None)
    region = get("region", "str", None)
    if engine == "azure" and is_cloud and not (key and region):
        raise ConfigError(f"{where}: a cloud endpoint (isCloudService) needs subscriptionKey and region")
    return Endpoint(
        name=name,
        engine=engine,
        host=host,
        port=get("port", "int", 443 if is_secure else 5000, lo=1, hi=65535),
        concurrency=get("concurrency", "int", 8, lo=1, hi=1000),
        rtf=get("rtf", "float", 3.0, lo=0.1, hi=1000.0),
        languages=languages,
        is_secure=is_secure,
        is_cloud_service=is_cloud,
        subscription_key=key,
        region=region,
        model=get("model", "str", None),
        cpu_threads=get("cpuThreads", "int", 0, lo=0, hi=256),
        stall_timeout=get("stallTimeout", "float", 30.0, lo=1.0, hi=86400.0),
    )


_KEYS = (
    "host", "port", "concurrency", "rtf", "language", "isSecure", "isCloudService",
    "subscriptionKey", "subscription", "region", "startConcurrency",
    "engine", "languages", "model", "cpuThreads", "stallTimeout",
)
SECRET_KEYS = ("subscriptionKey", "subscription")  # values never printed, never published


def _holds_literal_secret(raw: Any) -> bool:
    """True when the endpoint's YAML writes a subscription key out instead of naming a $VAR."""
    if not isinstance(raw, Mapping):
        return False
    return any(raw.get(key) is not None and not _ENV_RE.match(str(raw[key]).strip()) for key in SECRET_KEYS)


def _languages(where: str, values: Mapping[str, Any]) -> tuple[str, ...]:
    langs: list[Any] = []
    if values.get("language") is not None:
        langs.append(values["language"])
    extra = values.get("languages")
    if extra is not None:
        if not isinstance(extra, list):
            raise ConfigError(f"{where}: languages must be a list like [en-US, de-DE], got {extra!r}")
        langs.extend(extra)
    if not langs:
        langs = ["en-US"]
    for lang in langs:
        if not isinstance(lang, str) or not _LANG_RE.match(lang):
            raise ConfigError(f"{where}: language must look like 'en-US', got {lang!r}")
    return tuple(dict.fromkeys(langs))


def _expand_env(where: str, key: str, value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        match = _ENV_RE.match(value.strip())
        if match:
            var = match.group(1)
            if var not in environ:
                raise ConfigError(f"{where}: {key} refers to ${var}, which is not set in the environment")
            return environ[var]
    return value


def _coerce(where: str, key: str, value: Any, kind: str, lo: float | None = None,
            hi: float | None = None) -> Any:
    """Turn a YAML value into the wanted type or raise a message a user understands."""
    bound = _bound_text(lo, hi)
    secret = key in SECRET_KEYS
    shown = f"a {type(value).__name__} (a secret: its value is not shown)" if secret else repr(value)
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # from $VAR
            value, ok = int(value), True
        if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{where}: {key} must be an integer{bound}, got {value!r}")
        return value
    if kind == "float":
        try:
            ok = not isinstance(value, bool)
            number = float(value)
        except (TypeError, ValueError):
            ok = False
        if not ok or (lo is not None and number < lo) or (hi is not None and number > hi):
            raise ConfigError(f"{where}: {key} must be a number{bound}, got {value!r}")
        return number
    if kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):  # from $VAR
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value) == "":
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {shown}")
    return str(value)


def _bound_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" between {lo:g} and {hi:g}"
    return f" ≥ {lo:g}" if lo is not None else ""


def parse_endpoints(text: str, source: str, environ: Mapping[str, str] | None = None) -> EndpointSet:
    """Parse and validate the YAML text of an endpoint file."""
    env = os.environ if environ is None else environ
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # a bad `!!int x` tag raises ValueError
        raise ConfigError(f"{source}: not valid YAML{_yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(f"{source}: no endpoints defined (the file is empty)")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: must map endpoint names to their settings, got {type(data).__name__}")
    endpoints = tuple(_parse_endpoint(source, name, raw, env) for name, raw in data.items())
    literal = tuple(str(name) for name, raw in data.items() if _holds_literal_secret(raw))
    return EndpointSet(endpoints=endpoints, source=source, literal_secrets=literal)


# A word of the file that yaml quotes (an alias, a tag); not its '<token>' names, not a '\t'.
_QUOTED = re.compile(r"'(?![<\\])[^'\s]{2,}'")


def _yaml_problem(exc: Exception) -> str:
    """Where and what, never the text: yaml's own message quotes the offending line, which may be
    the one holding a literal subscription key (and `from None` keeps it out of tracebacks)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return ": a value does not match its YAML tag (e.g. !!int)"
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = "; ".join(_QUOTED.sub("'…'", part) for part in (exc.context, exc.problem) if part)
    return f"{where}: {what}" if what else where


class _PlaceholderEnv(Mapping[str, str]):
    """The environment where secrets may be missing: a $VAR that is not set reads as a
    placeholder, and is remembered in `missing`."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self.base = base
        self.missing: set[str] = set()

    def __getitem__(self, key: str) -> str:
        if key not in self.base:
            self.missing.add(key)
            return "unset-here"
        return self.base[key]

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


def parse_without_secrets(text: str, source: str, environ: Mapping[str, str] | None = None
                          ) -> tuple[EndpointSet, set[str]]:
    """Parse a set where its `$VAR`s need not be set (validation before publishing, `status`):
    returns the set and the variables this machine does not have."""
    env = _PlaceholderEnv(os.environ if environ is None else environ)
    return parse_endpoints(text, source, env), env.missing


def load_endpoints(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> EndpointSet:
    """Read an endpoint file; a missing or unreadable file is a ConfigError naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: endpoint file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read endpoint file: {exc}") from exc
    return parse_endpoints(text, source=p.name, environ=environ)


CONVERTER_NAME = "convert"


def converter_endpoint(concurrency: int | None = None) -> Endpoint:
    """The media converter of a worker VM: `concurrency` ffmpeg runs at once (default: its cores)."""
    return Endpoint(name=CONVERTER_NAME, engine="ffmpeg", concurrency=concurrency or os.cpu_count() or 1,
                    rtf=1.0)


def default_local_endpoints(cpu_count: int | None = None) -> EndpointSet:
    """What `run` uses with no config: one local endpoint sized to the machine.

    One slot per core, one CTranslate2 thread per decode: parallel decodes of separate files beat
    one decode spread over several threads (whose OpenMP barriers stall whenever a neighbour takes a
    core), and they overlap each other's ffmpeg and Python work. On 2 cores 2 × 1 ran the same
    files 2.4× faster than 1 × 2 (bench/bench_local_pipeline.py, docs/benchmarks.md §7).
    """
    cores = cpu_count or os.cpu_count() or 1
    endpoint = Endpoint(name="local", engine="local", concurrency=cores, rtf=1.0, cpu_threads=1)
    return EndpointSet(endpoints=(endpoint,), source="<built-in local endpoint>")
