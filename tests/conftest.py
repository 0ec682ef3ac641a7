"""Fixtures that start real parts: a redis-server on a free port, `batchscribe worker` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import Settings
from common.state import StateStore
from producer.private_redis import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "batchscribe"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis with AOF, one per test (tests may stop and restart it)."""
    server = PrivateRedis(data_dir=tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def settings(redis_server: PrivateRedis) -> Settings:
    return Settings.from_env({}, redis_url=redis_server.url, claim_ttl=3)


@pytest.fixture
def store(settings: Settings) -> StateStore:
    return StateStore.connect(settings)


def cli_env(broker: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCRIBE_")}
    if broker:
        env["BATCHSCRIBE_REDIS_URL"] = broker
    env.update(extra)
    return env


def run_cli(*args: str, broker: str | None = None, timeout: float = 240, **env: str
            ) -> subprocess.CompletedProcess[str]:
    """Run the batchscribe command as a user would, capturing its output."""
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env(broker, **env), cwd=ROOT)


class WorkerProcess:
    """A `batchscribe worker` VM as a subprocess; stop() is a graceful SIGTERM."""

    def __init__(self, broker: str, config: Path | None, hostname: str, log_path: Path, **env: str) -> None:
        args = [str(BIN), "worker", "--hostname", hostname]
        if config is not None:
            args += ["--config", str(config)]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=cli_env(broker, **env), cwd=ROOT, start_new_session=True)

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(redis_server: PrivateRedis, tmp_path: Path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(config: Path | None = None, hostname: str = "vm1", **env: str) -> WorkerProcess:
        proc = WorkerProcess(redis_server.url, config, hostname, tmp_path / f"worker-{hostname}.log", **env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def wait_until(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
