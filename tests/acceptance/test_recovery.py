"""Crash recovery as an operator sees it: real `batchscribe worker` processes, the real Speech SDK,
the emulator answering at a fixed real-time factor, and a consumer killed with SIGKILL mid-file.

Numbers under test (docs/design.md §Deliveries, leases and retries): with the default settings a
SIGKILLed consumer's file runs again within 60 s; a file longer than the visibility timeout is
delivered once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from batchscribe.common.state import StateStore
from tests.support.cli import run_cli
from tests.support.cluster import consumer_node, descendants, proc_args
from tests.support.emulator import running_emulator, tone_wav
from tests.support.poll import wait_for


def endpoint_yaml(path: Path, port: int, concurrency: int = 2) -> Path:
    path.write_text(f"slow:\n  host: 127.0.0.1\n  port: {port}\n  concurrency: {concurrency}\n  rtf: 1000\n")
    return path


def consumer_pids(worker_pid: int) -> list[int]:
    """The `celery -A batchscribe.worker.app worker` consumers of one `batchscribe worker` (Linux /proc)."""
    found = []
    for pid in descendants(worker_pid):
        try:
            if consumer_node(proc_args(pid)) is not None:
                found.append(pid)
        except OSError:
            continue
    return found


def the_job(store: StateStore) -> tuple[str, dict[str, str]]:
    batch_id = store.batch_ids(1)[0]
    [record] = store.files(batch_id, [0])
    return batch_id, store.job(record.job)


def submit(tmp_path: Path, broker: str, seconds: float) -> None:
    (tmp_path / "in").mkdir()
    tone_wav(tmp_path / "in" / "long.wav", seconds)
    result = run_cli("submit", str(tmp_path / "in"), "--out", str(tmp_path / "out"), broker=broker)
    assert result.returncode == 0, result.stderr


def done_events(store: StateStore) -> list[dict[str, str]]:
    return [e for _, e in store.events() if e.get("outcome") == "done"]


def test_a_sigkilled_consumer_s_file_runs_again_within_60_s_and_is_done_once(
        tmp_path: Path, redis_server, store: StateStore, start_worker) -> None:
    with running_emulator(ports=1, rtf=1.0, transcribe="duration") as emu:
        worker = start_worker(endpoint_yaml(tmp_path / "eps.yaml", emu.ports[0]))  # default settings
        submit(tmp_path, redis_server.url, seconds=12)
        wait_for(lambda: the_job(store)[1].get("state") == "running", timeout=60, what="the file to start")
        first = the_job(store)[1]["delivery"]
        wait_for(lambda: any(session["outcome"] == "open" and session["phrases"] > 0
                             for session in emu.stats(emu.ports[0])["sessions"]),
                 timeout=30, what="the file mid-way (its first 5 s segment acknowledged, 7 s to go)")
        [pid] = consumer_pids(worker.proc.pid)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        def rerunning() -> bool:
            job = the_job(store)[1]
            return job["state"] in ("running", "done") and job.get("delivery") not in (first,)

        wait_for(rerunning, timeout=60, interval=0.5, what="the file to run again after SIGKILL")
        recovered = time.monotonic() - killed
        batch_id = the_job(store)[0]
        wait_for(lambda: store.batch(batch_id).get("finished_at"), timeout=60, what="the batch to finish")
        sessions = emu.stats(emu.ports[0])["sessions_total"]
    job = the_job(store)[1]
    print(f"file running again {recovered:.1f} s after SIGKILL")
    assert recovered < 60
    assert (job["state"], job["crashes"], job["attempts"]) == ("done", "1", "2")
    assert len(done_events(store)) == 1
    assert [e["outcome"] for _, e in store.events() if e.get("outcome") == "crash"] == ["crash"]
    assert sessions == 2  # the killed one and the rerun: never two at once for one file
    assert store.endpoint_stats("slow")["failed_crash"] == "1"


def test_a_file_longer_than_the_visibility_timeout_is_delivered_once(
        tmp_path: Path, redis_server, store: StateStore, start_worker) -> None:
    with running_emulator(ports=1, rtf=1.0, transcribe="duration") as emu:
        worker = start_worker(endpoint_yaml(tmp_path / "eps.yaml", emu.ports[0]),
                              BATCHSCRIBE_VISIBILITY_TIMEOUT="8", BATCHSCRIBE_HEARTBEAT="2",
                              BATCHSCRIBE_LEASE_TTL="6")
        submit(tmp_path, redis_server.url, seconds=20)
        batch_id = store.batch_ids(1)[0]
        wait_for(lambda: store.batch(batch_id).get("finished_at"), timeout=90, what="the batch to finish")
        stats = emu.stats(emu.ports[0])
    job = the_job(store)[1]
    assert stats["sessions_total"] == 1
    assert (job["state"], job["attempts"], job["crashes"]) == ("done", "1", "0")
    assert len(done_events(store)) == 1
    log = worker.log()
    assert ": deferred" not in log  # kombu never handed out a second copy: the keeper refreshed it
    assert "not in kombu's unacked_index" not in log  # the delivery tag was found and refreshed
