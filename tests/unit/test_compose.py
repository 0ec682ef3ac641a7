"""deploy/compose.yml, checked without Docker: it parses, its commands are real commands of the
code, its settings are ones the code reads, Redis and Flower are locked down and no secret is on
a command line (Redis' entrypoint is run here with this machine's redis-server).

If a `docker compose` (or `docker-compose`) client is installed, `config` is run too: it needs no
Docker engine.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from batchscribe.cli import root
from batchscribe.common.config import load_endpoints, parse_endpoints
from batchscribe.common.settings import Settings
from tests.support.poll import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
ENDPOINTS_EXAMPLE = DEPLOY / "endpoints.example.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

EXPECTED_SERVICES = {"redis", "worker", "flower", "api", "emulator"}
REQUIRED_SECRETS = ("REDIS_PASSWORD", "FLOWER_USER", "FLOWER_PASSWORD", "API_TOKENS")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}

# ---- helpers: .env, compose interpolation, ports ------------------------------------------------

_VAR_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def read_dotenv(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: ${VAR:?msg} / ${VAR?msg} raise KeyError when unset."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-"):
            missing = current is None or (op == ":-" and current == "")
            return arg if missing else str(current)
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise KeyError(f"{name}: {arg}")
            return current
        return current or ""  # compose warns and substitutes nothing

    return _VAR_RE.sub(sub, value)


def variables_used(text: str) -> set[str]:
    return {m.group("braced") or m.group("named") for m in _VAR_RE.finditer(text)
            if not m.group("escaped")}


def published_ports(service: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(host ip, published port) of each published port; '' is every interface."""
    for entry in service.get("ports") or []:
        if isinstance(entry, Mapping):
            if entry.get("published") is not None:
                yield str(entry.get("host_ip") or ""), str(entry["published"])
            continue
        spec = str(entry).split("/")[0]
        if spec.startswith("["):
            host, _, rest = spec[1:].partition("]:")
            yield host, rest.split(":")[0]
            continue
        parts = spec.split(":")
        if len(parts) == 3:
            yield parts[0], parts[1]
        elif len(parts) == 2:
            yield "", parts[0]
        else:  # only the container port: published on a random port of every interface
            yield "", "random"


def command_of(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), "write commands in exec form (a list): no shell, exact tokens"
    return [str(token) for token in command]


def option_value(tokens: list[str], name: str) -> str | None:
    for i, token in enumerate(tokens):
        if token == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


@pytest.fixture(scope="module")
def dotenv() -> dict[str, str]:
    return read_dotenv(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], dotenv: dict[str, str]) -> dict[str, Any]:
    """The compose file with the variables of .env.example substituted."""
    return interpolate(raw, dotenv)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


# ---- shape ---------------------------------------------------------------------------------------

def test_services_and_profiles(services: dict[str, Any]) -> None:
    assert set(services) == EXPECTED_SERVICES
    assert services["emulator"].get("profiles") == ["demo"], "the emulator is an optional demo"
    for name in EXPECTED_SERVICES - {"emulator"}:
        assert not services[name].get("profiles"), f"{name} must start without a profile"


def test_every_variable_comes_from_env_example_or_has_a_default(raw: dict[str, Any],
                                                                 dotenv: dict[str, str]) -> None:
    interpolate(raw, dotenv)
    text = COMPOSE.read_text(encoding="utf-8")
    undocumented = variables_used(text) - set(dotenv)
    assert not undocumented, f"document these in deploy/.env.example: {sorted(undocumented)}"
    for secret in REQUIRED_SECRETS:  # a missing secret stops compose instead of running open
        env = {k: v for k, v in dotenv.items() if k != secret}
        with pytest.raises(KeyError, match=secret):
            interpolate(raw, env)


def test_build_context_and_dockerfile_exist(services: dict[str, Any]) -> None:
    for name in ("worker", "flower", "api", "emulator"):
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, f"{name}: build from the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        assert services[name]["image"] == services["worker"]["image"]


# ---- commands are real commands ------------------------------------------------------------------

def _check_batchscribe_command(service: str, tokens: list[str]) -> click.Context:
    assert tokens[0] == "batchscribe"
    args = tokens[1:]
    root_flags = {opt for p in root.params for opt in (*p.opts, *p.secondary_opts)}
    while args and args[0] in root_flags:
        args = args[1:]
    assert args, f"{service}: no subcommand in {tokens}"
    name, rest = args[0], args[1:]
    command = root.get_command(click.Context(root), name)
    assert command is not None, f"{service}: `batchscribe {name}` is not one of {root.list_commands(click.Context(root))}"
    try:  # parses and type-checks every option and value, runs nothing
        return command.make_context(f"batchscribe {name}", list(rest))
    except click.ClickException as exc:
        pytest.fail(f"{service}: `{' '.join(tokens)}` is rejected by the CLI: {exc.format_message()}")


def test_batchscribe_commands_parse(services: dict[str, Any]) -> None:
    checked = set()
    for name, service in services.items():
        tokens = command_of(service)
        if tokens[0] == "batchscribe":
            _check_batchscribe_command(name, tokens)
            checked.add(name)
    assert checked == {"worker", "api", "emulator", "flower"}


def test_worker_command_reads_the_mounted_config(services: dict[str, Any]) -> None:
    worker = services["worker"]
    ctx = _check_batchscribe_command("worker", command_of(worker))
    config = ctx.params["config_path"]
    assert config and config.startswith("/")
    mounts = [str(v).split(":") for v in worker["volumes"]]
    covering = [m for m in mounts if config.startswith(m[1].rstrip("/") + "/") or config == m[1]]
    assert covering, f"{config} is not inside a mounted volume"
    assert covering[0][2:] == ["ro"], "the endpoint file is mounted read-only"
    assert any(m[1] == "/data" for m in mounts), "inputs/outputs are shared under /data"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker.get("init") is True, "tini as PID 1 forwards SIGTERM for the graceful stop"


def test_worker_healthcheck_is_batchscribe_health_of_the_same_vm(services: dict[str, Any]) -> None:
    worker = services["worker"]
    check = worker.get("healthcheck")
    assert check, "the worker needs a healthcheck"
    test = [str(token) for token in check["test"]]
    assert test[0] == "CMD", "exec form: no shell"
    ctx = _check_batchscribe_command("worker healthcheck", test[1:])
    assert ctx.command.name == "health"
    worker_ctx = _check_batchscribe_command("worker", command_of(worker))
    assert ctx.params["hostname"] == worker_ctx.params["hostname"], "it must check this worker's VM name"
    assert _seconds(check["timeout"]) < _seconds(check["interval"])
    assert _seconds(worker["stop_grace_period"]) > 30, "longer than the supervisor's own grace period (30 s)"


def _seconds(duration: str) -> float:
    value = str(duration)
    return float(value[:-1]) * (60 if value.endswith("m") else 1)


def test_emulator_is_reachable_where_the_example_endpoint_points(services: dict[str, Any]) -> None:
    ctx = _check_batchscribe_command("emulator", command_of(services["emulator"]))
    assert ctx.params["host"] == "0.0.0.0", "inside its container it must listen beyond loopback"
    assert ctx.params["transcribe"] == "duration"
    endpoints = load_endpoints(ENDPOINTS_EXAMPLE, {})
    demo = [e for e in endpoints if e.host == "emulator"]
    assert len(demo) == 1, "the example names the emulator by its compose service name"
    assert demo[0].port in ctx.params["ports"]
    assert demo[0].rtf == ctx.params["rtf"]
    assert not list(published_ports(services["emulator"])), "its /control API has no auth"


def test_flower_command_is_real_and_authenticated(services: dict[str, Any], dotenv: dict[str, str]) -> None:
    tokens = command_of(services["flower"])
    assert tokens[:2] == ["batchscribe", "flower"], "Flower with batchscribe's task display"
    from batchscribe.cli.flower import flower_argv

    app_module = option_value(flower_argv(), "-A")
    assert app_module, "flower loads the workers' Celery app"
    assert hasattr(importlib.import_module(app_module), "app")
    import flower.options  # noqa: F401  (defines flower's options)
    from tornado.options import options

    known = {name.replace("_", "-") for name in options}
    for token in tokens[tokens.index("flower") + 1:]:
        assert token.startswith("--"), f"flower takes --name=value options, got {token!r}"
        name = token[2:].split("=", 1)[0].replace("_", "-")
        assert name in known, f"flower has no option --{name}"
    env = services["flower"]["environment"]
    assert env.get("FLOWER_BASIC_AUTH") == f"{dotenv['FLOWER_USER']}:{dotenv['FLOWER_PASSWORD']}"
    assert "basic-auth" in known  # FLOWER_<NAME> sets option <name> (test_packaging starts Flower so)


# ---- settings agree with the code ----------------------------------------------------------------

class _Recording(dict):  # type: ignore[type-arg]
    """An environment that remembers every variable looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)


def all_commands() -> list[click.Command]:
    """Every `batchscribe` command (the group loads each on first use)."""
    ctx = click.Context(root)
    return [command for name in root.list_commands(ctx) if (command := root.get_command(ctx, name))]


def settings_env_vars() -> set[str]:
    """What Settings.from_env reads, the API tokens `serve` reads (api.config.load_tokens), the
    variables of the commands' options (click `envvar`) and a worker's scratch folder."""
    from batchscribe.api.config import load_tokens
    from batchscribe.worker.scratch import SCRATCH_ENV

    env = _Recording()
    Settings.from_env(env)
    load_tokens(env, None)
    assert {"BATCHSCRIBE_REDIS_URL", "BATCHSCRIBE_API_TOKENS"} <= env.seen
    options = {param.envvar for command in all_commands() for param in command.params
               if isinstance(getattr(param, "envvar", None), str)}
    return {k for k in env.seen | options | {SCRATCH_ENV} if k.startswith("BATCHSCRIBE_")}


def test_batchscribe_variables_are_ones_settings_reads(raw: dict[str, Any],
                                                       services: dict[str, Any]) -> None:
    known = settings_env_vars()
    used = {v for v in variables_used(COMPOSE.read_text(encoding="utf-8")) if v.startswith("BATCHSCRIBE_")}
    for service in services.values():
        used |= {k for k in service.get("environment") or {} if k.startswith("BATCHSCRIBE_")}
    assert used, "the services get their broker from BATCHSCRIBE_REDIS_URL"
    assert used <= known, f"not read by Settings.from_env: {sorted(used - known)}"


def test_redis_url_points_at_the_redis_service(services: dict[str, Any], dotenv: dict[str, str]) -> None:
    for name in ("worker", "flower", "api"):
        env = services[name]["environment"]
        settings = Settings.from_env(env)  # validates the URL
        url = urlsplit(settings.redis_url)
        assert url.scheme == "redis" and url.hostname == "redis" and url.port == 6379, name
        assert url.password == dotenv["REDIS_PASSWORD"], f"{name} authenticates to Redis"


def test_api_serves_the_shared_folder_with_tokens_from_env(services: dict[str, Any],
                                                           dotenv: dict[str, str]) -> None:
    from batchscribe.api.config import load_tokens

    api = services["api"]
    ctx = _check_batchscribe_command("api", command_of(api))
    assert ctx.params["allow_roots"] == ("/data",), "the API reads and writes the shared folder only"
    assert not ctx.params["no_auth"] and not ctx.params["token_file"]
    assert load_tokens(api["environment"], None) == dotenv["API_TOKENS"].split(","), "tokens come from .env"
    assert str(ctx.params["port"]) in [p.split(":")[-1] for p in api["ports"]]
    assert any(str(v).split(":")[1] == "/data" for v in api["volumes"])
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


# ---- Redis and Flower are locked down ------------------------------------------------------------

def command_lines(service: Mapping[str, Any]) -> Iterator[list[str]]:
    """Every command line a service's container runs: entrypoint and command, the healthcheck."""
    entrypoint = service.get("entrypoint")
    if entrypoint is not None:
        assert isinstance(entrypoint, list), "write entrypoints in exec form (a list)"
        yield [str(token) for token in entrypoint]
    if service.get("command") is not None:
        yield command_of(service)
    test = (service.get("healthcheck") or {}).get("test")
    if test:
        yield [str(token) for token in test]


def test_no_secret_is_on_any_command_line(services: dict[str, Any], dotenv: dict[str, str]) -> None:
    """Command lines are visible to every user of the host (`ps`, /proc) and in `docker inspect`:
    secrets go through the environment."""
    secrets = {dotenv[name] for name in ("REDIS_PASSWORD", "FLOWER_PASSWORD", "API_TOKENS", "SPEECH_KEY")} - {""}
    secrets |= set(dotenv["API_TOKENS"].split(","))
    for name, service in services.items():
        for line in command_lines(service):
            leaked = [token for token in line if any(secret in token for secret in secrets)]
            assert not leaked, f"{name}: a secret on its command line: {leaked}"


def test_the_secret_check_sees_a_password_on_a_command_line(services: dict[str, Any],
                                                          dotenv: dict[str, str]) -> None:
    leaky = {**services["redis"], "command": [*command_of(services["redis"]), "--requirepass",
                                              dotenv["REDIS_PASSWORD"]]}
    with pytest.raises(AssertionError, match="redis: a secret on its command line"):
        test_no_secret_is_on_any_command_line({**services, "redis": leaky}, dotenv)


def test_redis_is_durable_and_password_protected(services: dict[str, Any], dotenv: dict[str, str]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    tokens = command_of(redis)
    assert tokens[0] == "redis-server"
    assert option_value(tokens, "--appendonly") == "yes"
    assert option_value(tokens, "--maxmemory-policy") == "noeviction"
    assert redis["environment"]["REDISCLI_AUTH"] == dotenv["REDIS_PASSWORD"], "the entrypoint's password"
    assert any(str(v).split(":")[1] == "/data" for v in redis["volumes"]), "AOF on a volume"
    assert redis.get("healthcheck", {}).get("test"), "workers wait for a healthy Redis"


def test_redis_entrypoint_sets_the_password_from_the_environment(services: dict[str, Any], dotenv: dict[str, str],
                                                                  tmp_path: Path) -> None:
    """The compose entrypoint, run here with this machine's redis-server: the password from
    REDISCLI_AUTH is required, AOF and noeviction hold, and redis-server's command line has no
    password. The image's docker-entrypoint.sh is stood in for by a script that rewrites the
    arguments as redis:7's does (`redis-server --protected-mode no OPTIONS…`)."""
    import redis as redis_py

    service = services["redis"]
    password = dotenv["REDIS_PASSWORD"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "docker-entrypoint.sh"
    stand_in.write_text('#!/bin/sh\nshift\nexec redis-server --protected-mode no "$@"\n')
    stand_in.chmod(0o755)
    socket = tmp_path / "redis.sock"
    here = ["--port", "0", "--unixsocket", str(socket), "--dir", str(tmp_path)]  # no TCP port, files in tmp
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "REDISCLI_AUTH": service["environment"]["REDISCLI_AUTH"]}
    server = subprocess.Popen([*service["entrypoint"], *command_of(service), *here], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: socket.exists() or server.poll() is not None, 30, "redis-server to listen")
        assert server.poll() is None, f"redis-server exited with {server.returncode}"
        with pytest.raises(redis_py.AuthenticationError):
            redis_py.Redis(unix_socket_path=str(socket)).ping()
        client = redis_py.Redis(unix_socket_path=str(socket), password=password)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()
        assert password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_no_port_is_published_beyond_loopback(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for host_ip, port in published_ports(service):
            assert host_ip in LOOPBACK, f"{name}: port {port} is published on every interface"
    assert not list(published_ports(services["redis"])), "Redis stays on the compose network"
    assert [p for _, p in published_ports(services["flower"])] == ["5555"]
    assert [p for _, p in published_ports(services["api"])] == ["8000"]


# ---- the endpoint example and the Dockerfile -----------------------------------------------------

def test_endpoints_example_loads() -> None:
    text = ENDPOINTS_EXAMPLE.read_text(encoding="utf-8")
    environ = {var: "dummy-value" for var in variables_used(text)}
    endpoints = load_endpoints(ENDPOINTS_EXAMPLE, environ)
    assert len(endpoints) == 3
    containers = [e for e in endpoints if e.host != "emulator"]
    assert len(containers) == 2 and all(e.engine == "azure" and not e.is_cloud_service for e in containers)


def test_commented_endpoint_examples_load_when_uncommented() -> None:
    header = re.compile(r"^[A-Za-z0-9_.-]+:\s*$")
    lines = ENDPOINTS_EXAMPLE.read_text(encoding="utf-8").splitlines()
    block = "\n".join(line[2:] for line in lines
                      if line.startswith("# ") and (header.match(line[2:]) or line[2:].startswith("  ")))
    endpoints = parse_endpoints(block, "commented examples", {"SPEECH_KEY": "k"})
    assert {e.engine for e in endpoints} == {"azure", "local"}
    assert any(e.is_cloud_service for e in endpoints)


def _dockerfile_instructions() -> list[str]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_installs_system_packages_and_the_package() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0].startswith("FROM python:3.11-slim")
    apt = [i for i in instructions if i.startswith("RUN") and "apt-get install" in i]
    assert apt, "system packages come from apt"
    packages = set(apt[0].split("apt-get install", 1)[1].split("&&")[0].split())
    assert {"ffmpeg", "libssl3", "ca-certificates"} <= packages
    assert any(re.match(r'RUN pip install "?\.\[all\]"?$', i) for i in instructions)


def test_dockerfile_copies_every_package() -> None:
    """The image gets the package and every folder its namespace links to (batchscribe/common -> ../common)."""
    package = ROOT / "batchscribe"
    linked = {p.resolve().relative_to(ROOT).as_posix() for p in package.iterdir() if p.is_symlink()}
    assert linked == {"common", "producer", "worker"}
    copied = {i.split()[1] for i in _dockerfile_instructions() if i.startswith("COPY ")}
    assert "pyproject.toml" in copied
    assert {"batchscribe"} | linked <= copied, f"not copied into the image: {sorted(linked - copied)}"


# ---- the real compose client, where there is one -------------------------------------------------

def _compose_client() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config(dotenv: dict[str, str]) -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client installed")
    env = {**os.environ, **dotenv}
    result = subprocess.run([*client, "-f", str(COMPOSE), "--profile", "demo", "config"],
                            capture_output=True, text=True, timeout=60, env=env, cwd=DEPLOY)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == EXPECTED_SERVICES
