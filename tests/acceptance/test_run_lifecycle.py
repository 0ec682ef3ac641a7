"""`batchscribe run` as a user runs it: what it starts is private to its user and is gone afterwards —
after success, after an early error, after Ctrl-C, SIGTERM or SIGHUP in the middle of a batch, after
giving up on a Redis that stopped answering.

Processes are found through a marker in their environment (every child of `run` inherits it), in
/proc; `run` runs in its own process group, as a terminal's foreground job does, so that Ctrl-C
can be sent to the whole group as a terminal sends it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import BIN, ROOT, cli_env, run_cli
from tests.support.cluster import children, kill_pids, processes_in, processes_with_env
from tests.support.emulator import LOOPBACK, running_emulator, tone_wav
from tests.support.intruder import can_act_as_another_user, ping_as_another_user, redis_address
from tests.support.poll import wait_for

MARKER_VAR = "BATCHSCRIBE_TEST_MARKER_RUN"  # not a setting: only tells our processes apart


class Runs:
    """`batchscribe run` processes of one test, each with a marker and its own TMPDIR (where `run`
    makes its private folder); at the end nothing is left."""

    def __init__(self, tmpdir: Path) -> None:
        self.tmpdir = tmpdir
        self.marker = uuid.uuid4().hex
        self.procs: list[subprocess.Popen[str]] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {MARKER_VAR: self.marker, "TMPDIR": str(self.tmpdir), **extra}

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([str(BIN), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env(**self.env(**env)), cwd=ROOT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def processes(self) -> list[int]:
        """Every live process started by this test's runs: supervisor and consumers (by the marker
        in their environment) and redis-server (by its working directory, under TMPDIR)."""
        return sorted(set(processes_with_env(f"{MARKER_VAR}={self.marker}")) | set(processes_in(self.tmpdir)))

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.tmpdir.iterdir())

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        kill_pids(self.processes())


@pytest.fixture
def runs() -> Iterator[Runs]:
    """A TMPDIR outside pytest's 0700 base folder: another user can walk up to `run`'s private
    folder, so that folder's own mode is what keeps them out."""
    tmpdir = Path(tempfile.mkdtemp(prefix="bs-run-test-"))
    os.chmod(tmpdir, 0o755)
    found = Runs(tmpdir)
    try:
        yield found
    finally:
        found.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


def audio(folder: Path, count: int, seconds: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        tone_wav(folder / f"f{i}.wav", seconds, freq=300 + 20 * i)
    return folder


def endpoint_file(tmp_path: Path, port: int, concurrency: int = 2) -> Path:
    path = tmp_path / "endpoints.yaml"
    path.write_text(f"emu:\n  engine: azure\n  host: {LOOPBACK}\n  port: {port}\n"
                    f"  concurrency: {concurrency}\n  rtf: 1000\n")
    return path


def redis_child(proc: subprocess.Popen[str]) -> int:
    """The pid of `run`'s redis-server, once it runs."""
    found: list[int] = []

    def started() -> bool:
        found[:] = [pid for pid in children(proc.pid)
                    if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        return bool(found) or proc.poll() is not None

    wait_for(started, 30, what="run's redis-server")
    assert found, f"run exited with {proc.returncode} before starting Redis"
    return found[0]


def test_runs_redis_is_a_unix_socket_in_a_0700_folder_and_run_still_transcribes(tmp_path: Path, runs: Runs) -> None:
    inputs = audio(tmp_path / "in", 4, 2.0)
    with running_emulator(rtf=1.0) as emu:  # 2 files at once, 2 s each: long enough to look around
        proc = runs.start(str(inputs), "--out", str(tmp_path / "out"),
                          "--config", str(endpoint_file(tmp_path, emu.ports[0])))
        address = redis_address(redis_child(proc))
        assert address.startswith("unixsocket:"), f"no TCP port at all, got {address}"
        folder = Path(address.removeprefix("unixsocket:")).parents[1]
        assert folder.parent == runs.tmpdir and stat.S_IMODE(folder.stat().st_mode) == 0o700
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    for i in range(4):
        result = json.loads((tmp_path / "out" / f"f{i}_wav.json").read_text())["AudioFileResults"][0]
        assert result["TranscriptionStatus"] == "Succeeded"
    assert "worker log kept" not in err
    assert runs.leftovers() == [], "Redis data, socket and worker log are removed after a successful run"
    assert runs.processes() == []


@pytest.mark.skipif(not can_act_as_another_user(), reason="switching to another user needs root")
def test_runs_redis_is_out_of_reach_of_other_users(tmp_path: Path, runs: Runs) -> None:
    inputs = audio(tmp_path / "in", 1, 2.0)
    with running_emulator(rtf=1.0) as emu:  # one file of 2 s: Redis runs while user nobody tries it
        proc = runs.start(str(inputs), "--out", str(tmp_path / "out"),
                          "--config", str(endpoint_file(tmp_path, emu.ports[0])))
        address = redis_address(redis_child(proc))
        intruder = ping_as_another_user(address)
        assert "PONG" not in intruder.stdout, f"user nobody reached run's Redis at {address}"
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert runs.processes() == []


def test_keep_log_keeps_the_worker_log_after_a_successful_run(tmp_path: Path, runs: Runs) -> None:
    inputs = audio(tmp_path / "in", 1, 0.5)
    with running_emulator(rtf=0) as emu:
        result = run_cli("run", str(inputs), "--out", str(tmp_path / "out"), "--keep-log",
                         "--config", str(endpoint_file(tmp_path, emu.ports[0])), **runs.env())
    assert result.returncode == 0, result.stderr
    (folder,) = runs.tmpdir.iterdir()
    assert [p.name for p in folder.iterdir()] == ["worker.log"], "only the worker log is kept"
    assert f"worker log kept: {folder / 'worker.log'}" in result.stderr
    assert "consumer" in (folder / "worker.log").read_text(errors="replace")
    assert runs.processes() == []


@pytest.mark.parametrize("case", ["bad setting", "missing input"])
def test_an_early_error_leaves_nothing_running_or_on_disk(tmp_path: Path, runs: Runs, case: str) -> None:
    inputs = audio(tmp_path / "in", 1, 0.5)
    with running_emulator(rtf=0) as emu:
        config = endpoint_file(tmp_path, emu.ports[0])
        if case == "bad setting":  # found once Redis would have been started
            result = run_cli("run", str(inputs), "--out", str(tmp_path / "out"), "--config", str(config),
                             BATCHSCRIBE_HEARTBEAT="-1", **runs.env())
            expected = "error: BATCHSCRIBE_HEARTBEAT (-1.0) must be positive"
        else:  # found once Redis, the supervisor and its consumer run
            result = run_cli("run", str(tmp_path / "nope"), "--out", str(tmp_path / "out"), "--config", str(config),
                             **runs.env())
            expected = "error: input path not found"
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert runs.processes() == [], "a redis-server or worker of the failed run is still running"
    assert runs.leftovers() == [], "the failed run left files in its temporary folder"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_mid_batch_stops_the_workers_before_redis(tmp_path: Path, runs: Runs,
                                                               sig: signal.Signals) -> None:
    """A terminal's Ctrl-C (SIGINT) or hang-up (SIGHUP), or a service manager's SIGTERM — each to the
    whole foreground group — must not kill Redis under the workers: they stop and release their
    endpoints first, and nothing is left afterwards."""
    inputs = audio(tmp_path / "in", 4, 3.0)
    with running_emulator(rtf=1.0) as emu:
        port = emu.ports[0]
        proc = runs.start(str(inputs), "--out", str(tmp_path / "out"), "--config", str(endpoint_file(tmp_path, port)))
        wait_for(lambda: emu.stats(port)["active"] > 0 or proc.poll() is not None, 60, what="a file in flight")
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {sig.name}: workers stopped, private Redis stopped" in err
    assert "could not release endpoint ownership" not in err, "Redis was gone before the supervisor"
    assert runs.processes() == [], "a redis-server or worker of the interrupted run is still running"
    (folder,) = runs.tmpdir.iterdir()
    assert [p.name for p in folder.iterdir()] == ["worker.log"], "only the worker log is kept"
    assert f"worker log kept: {folder / 'worker.log'}" in err
    log = (folder / "worker.log").read_text(errors="replace")
    assert "Connection to broker lost" not in log and "Cannot connect to" not in log, log[-2000:]


def test_ctrl_c_with_a_shared_redis_releases_the_endpoint(tmp_path: Path, runs: Runs, redis_server,
                                                         store: StateStore) -> None:
    inputs = audio(tmp_path / "in", 4, 3.0)
    with running_emulator(rtf=1.0) as emu:
        port = emu.ports[0]
        proc = runs.start(str(inputs), "--out", str(tmp_path / "out"), "--config", str(endpoint_file(tmp_path, port)),
                          "--broker", redis_server.url)
        wait_for(lambda: emu.stats(port)["active"] > 0 or proc.poll() is not None, 60, what="a file in flight")
        assert store.redis.get(store.keys.owner("emu")) is not None, "run's supervisor owns the endpoint"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT: workers stopped" in err and "private Redis" not in err
    assert store.redis.get(store.keys.owner("emu")) is None, "the endpoint was not released"
    assert runs.processes() == []


def test_run_with_a_broker_gives_up_after_a_bounded_redis_outage_and_leaves_nothing_running(
        tmp_path: Path, runs: Runs, redis_server: PrivateRedis) -> None:
    inputs = audio(tmp_path / "in", 4, 3.0)
    with running_emulator(rtf=1.0) as emu:
        port = emu.ports[0]
        proc = runs.start(str(inputs), "--out", str(tmp_path / "out"), "--config", str(endpoint_file(tmp_path, port)),
                          "--broker", redis_server.url, BATCHSCRIBE_WAIT_REDIS_TIMEOUT="3")
        wait_for(lambda: emu.stats(port)["active"] > 0 or proc.poll() is not None, 60, what="a file in flight")
        redis_server.stop()  # mid-run: files in flight, the batch far from done
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    batch_id = re.search(r"batch (\S+): 4 file", err).group(1)  # type: ignore[union-attr]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: Redis has not answered for ") and "cannot reach Redis at redis://127.0.0.1:" in last
    assert (f"stopped waiting for batch {batch_id}. The batch goes on without this command wherever workers "
            f"still run it: follow it with `batchscribe status {batch_id}`, or run the same command again") in last
    assert "Traceback" not in err
    assert runs.processes() == [], "a worker of the run is still running"
    (folder,) = runs.tmpdir.iterdir()
    assert [p.name for p in folder.iterdir()] == ["worker.log"], "the worker log is kept after a Redis failure"
    assert f"worker log kept: {folder / 'worker.log'}" in err
