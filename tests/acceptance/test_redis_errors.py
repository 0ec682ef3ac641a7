"""Redis failing under a command, as a user sees it: one line that says what is wrong, exit 3
(exit 2 for a malformed URL), never a traceback and never exit 1 ("files failed").

Real redis-server throughout: out of memory is `maxmemory` with `noeviction`, credentials are
`requirepass`, and a Redis that stops mid-command is `RedisCut` dropping every connection at a
chosen command.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from batchscribe.private_redis import PrivateRedis
from tests.support.cli import run_cli
from tests.support.emulator import tone_wav
from tests.support.netfault import RedisCut
from tests.support.poll import wait_for


def folder(path: Path, files: int = 3) -> Path:
    path.mkdir()
    for i in range(files):
        tone_wav(path / f"f{i}.wav", 0.5 + 0.1 * i, freq=400 + 10 * i)
    return path


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command's only stderr line, which must be our error line (no traceback, no noise)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def submit(tmp_path: Path, broker: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("submit", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *extra,
                   broker=broker, timeout=90)


def test_out_of_memory_during_submit_is_one_line_and_exit_3(tmp_path: Path, redis_server: PrivateRedis) -> None:
    folder(tmp_path / "in")
    admin = redis.Redis(port=redis_server.port)
    admin.config_set("maxmemory", "1")  # noeviction (our servers' policy): every write is refused
    result = submit(tmp_path, redis_server.url)
    assert result.returncode == 3
    assert "Redis is out of memory (maxmemory, noeviction): " in one_error_line(result)
    assert run_cli("status", broker=redis_server.url).returncode == 0  # reads still work
    admin.config_set("maxmemory", "0")
    assert submit(tmp_path, redis_server.url).returncode == 0  # memory back: the same submit works


@pytest.mark.parametrize(("cut_at", "phase"), [
    ({"command": "HSET"}, "writing the fingerprint cache"),
    ({"command": "EVALSHA"}, "claiming jobs"),
    ({"connection": 2}, "connecting to publish tasks"),  # the state store's is the 1st connection
])
def test_redis_stopping_during_submit_is_one_line_and_exit_3(tmp_path: Path, redis_server: PrivateRedis,
                                                             cut_at: dict[str, Any], phase: str) -> None:
    folder(tmp_path / "in")
    with RedisCut(redis_server.port, **cut_at) as cut:
        result = submit(tmp_path, cut.url, "--wait")
        assert cut.cut.is_set(), f"Redis was not stopped while {phase}"
    assert result.returncode == 3, result.stderr
    line = one_error_line(result)
    assert "cannot reach Redis" in line or "publishing tasks" in line, line


def test_non_numeric_port_is_a_config_error(tmp_path: Path) -> None:
    for args in (["status"], ["submit", str(folder(tmp_path / "in")), "--out", str(tmp_path / "o")]):
        result = run_cli(*args, "--broker", "redis://127.0.0.1:abc/0", timeout=60)
        assert result.returncode == 2, result.stderr
        assert "port" in one_error_line(result) and "abc" in result.stderr


@pytest.mark.parametrize("password", ["", "wrong-pw"])
def test_refused_credentials_say_so(tmp_path: Path, redis_server: PrivateRedis, password: str) -> None:
    redis.Redis(port=redis_server.port).config_set("requirepass", "s3cret")
    url = f"redis://:{password}@127.0.0.1:{redis_server.port}/0" if password else redis_server.url
    for args in (["status"], ["submit", str(tmp_path / "in"), "--out", str(tmp_path / "o")]):
        if not (tmp_path / "in").exists():
            folder(tmp_path / "in")
        result = run_cli(*args, broker=url, timeout=60)
        assert result.returncode == 3, result.stderr
        line = one_error_line(result)
        assert "Redis refused the credentials" in line and "cannot reach" not in line
        assert not password or password not in result.stderr  # the password is never printed
    right = f"redis://:s3cret@127.0.0.1:{redis_server.port}/0"
    assert run_cli("status", broker=right).returncode == 0


@pytest.mark.parametrize("when", ["before it starts", "while it runs"])
def test_worker_says_redis_is_out_of_memory_and_carries_on(tmp_path: Path, redis_server: PrivateRedis,
                                                           start_worker, when: str) -> None:
    folder(tmp_path / "in")
    admin = redis.Redis(port=redis_server.port)
    if when == "before it starts":
        admin.config_set("maxmemory", "1")
    worker = start_worker()  # the built-in local endpoint
    if when == "while it runs":
        wait_for(lambda: "local@vm1 ready." in worker.log(), 60, what="the consumer to be ready")
        admin.config_set("maxmemory", "1")
    said = "Redis is out of memory (maxmemory, noeviction)"
    wait_for(lambda: f"supervisor: {said}" in worker.log(), 30, what="the supervisor to say Redis is out of memory",
             on_timeout=worker.log)
    if when == "while it runs":  # the consumer's kombu sweeps Redis every few seconds and says it too
        wait_for(lambda: f"Error in timer: {said}" in worker.log(), 30, what="kombu's sweep to meet the full Redis",
                 on_timeout=worker.log)
    assert worker.proc.poll() is None  # still running, waiting for memory
    assert "Traceback" not in worker.log()
    admin.config_set("maxmemory", "0")
    result = submit(tmp_path, redis_server.url, "--wait")
    assert result.returncode == 0, result.stderr
