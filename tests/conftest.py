"""Fixtures that start real parts: a redis-server on a free port, `batchscribe worker` processes,
Azurite (the Blob storage emulator).

Helpers that tests and benchmarks import live in `tests/support/` (this module is not a library).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.azurite import Azurite, NewContainer, running_azurite
from tests.support.cli import WorkerProcess


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis with AOF, one per test (tests may stop and restart it)."""
    server = PrivateRedis(data_dir=tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder with a short path (a unix socket's path must fit in 108 bytes: the one-machine
    commands keep their Redis socket under $XDG_STATE_HOME or $TMPDIR), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="bs-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def settings(redis_server: PrivateRedis) -> Settings:
    return Settings.from_env({}, redis_url=redis_server.url, claim_ttl=3)


@pytest.fixture
def store(settings: Settings) -> StateStore:
    return StateStore.connect(settings)


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(redis_server: PrivateRedis, tmp_path: Path) -> Iterator[StartWorker]:
    """Start `batchscribe worker` VMs against the test's Redis; all stopped at the end."""
    started: list[WorkerProcess] = []

    def start(config: Path | None = None, hostname: str = "vm1", **env: str) -> WorkerProcess:
        proc = WorkerProcess(redis_server.url, config, hostname, tmp_path / f"worker-{hostname}.log", **env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite per test process, shared: each test keeps to containers of its own (`new_container`)."""
    with running_azurite(log_path=tmp_path_factory.mktemp("azurite") / "azurite.log") as server:
        yield server


@pytest.fixture
def new_container(azurite: Azurite) -> NewContainer:
    """Create a container in the shared Azurite with a name no other test uses; returns the name."""

    def create(hint: str = "c") -> str:
        return azurite.create_container(f"{hint}-{uuid.uuid4().hex[:12]}")

    return create
