"""What Flower shows as each task's result for retries, a final failure and a hand-back, at the
level Flower sees it: celery's event receiver on the cluster's broker (as Flower binds it), the
events in celery's event State, each task through batchscribe's Flower display.

One `batchscribe worker` VM with one emulator endpoint; 3 transient attempts per file. First the
endpoint answers every session with HTTP 429: a file is requeued with its attempt numbers (each
retry bounced back to the pool first, there being no other endpoint) and fails after its third
attempt, a FAILURE carrying `transient: …`. Then, the fault off, a long file is under way when its
consumer gets SIGTERM (a planned stop, as `docker stop` sends it): it is handed back, the
supervisor starts the consumer again, and the file is done.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchscribe.private_redis import PrivateRedis
from tests.support.cluster import Cluster, EndpointSpec, make_audio, write_endpoints
from tests.support.events import TaskEvents
from tests.support.poll import wait_for

ATTEMPTS = 3
LONG = 8.0  # seconds of audio; 4 s in the engine at the emulator's rtf 2
REQUEUED = re.compile(rf"requeued: transient, retry in \d+ s \(attempt (\d) of {ATTEMPTS}\): .*429.*", re.S)


@pytest.fixture
def cluster(redis_server: PrivateRedis, tmp_path: Path, store: Any) -> Iterator[Cluster]:
    with Cluster(tmp_path, redis_server, store) as c:
        c.worker_env["BATCHSCRIBE_TRANSIENT_ATTEMPTS"] = str(ATTEMPTS)
        yield c


def test_flower_shows_requeues_with_attempts_the_transient_failure_and_a_hand_back(
        cluster: Cluster, tmp_path: Path) -> None:
    emulator = cluster.start_emulator(ports=1, rtf=2.0)
    [port] = emulator.ports
    config = write_endpoints(tmp_path / "endpoints.yaml", [EndpointSpec("alpha", port, concurrency=1)])
    vm = cluster.start_vm(config, "vm1")
    cluster.wait_consumers(vm, ["alpha"])
    with TaskEvents(cluster.redis.url) as events:
        wait_for(lambda: any(e.get("hostname") == "alpha@vm1" for e in events.events("worker-heartbeat")),
                 30, "the consumer's heartbeat on the event receiver", on_timeout=lambda: str(events.errors))
        emulator.set_fault(port, "http429")
        flaky = make_audio(tmp_path / "flaky", [1.0], prefix="flaky")
        cluster.wait_finished(cluster.submit(flaky.folder))
        wait_for(lambda: events.events("task-failed"), 30, "the failed file's task-failed event")
        emulator.set_fault(port, "none")

        long = make_audio(tmp_path / "long", [LONG], prefix="long")
        batch = cluster.submit(long.folder)
        [job] = [r.job for r in cluster.store.files(batch, [0])]

        def under_way() -> bool:
            state = cluster.store.job(job)
            return state.get("state") == "running" and time.time() - float(state["started_at"]) > 1.0

        wait_for(under_way, 30, "the long file to be under way")
        os.kill(vm.consumers()["alpha"], signal.SIGTERM)  # the consumer only; its supervisor stays
        cluster.wait_finished(batch, timeout=90)
        wait_for(lambda: any(t.result and str(t.result).startswith("done: ") for t in events.shown()
                             if t.name == "long00000.wav"), 30, "the long file's done task")
    assert not events.errors, events.errors

    flaky_tasks = [t for t in events.shown() if t.name == "flaky00000.wav"]
    told = [(t.state, str(t.result)) for t in flaky_tasks if not str(t.result).startswith("bounced: ")]
    assert [state for state, _ in told] == ["SUCCESS", "SUCCESS", "FAILURE"], told
    assert [int(m.group(1)) for m in (REQUEUED.fullmatch(result) for _, result in told[:2]) if m] == [2, 3], told
    assert re.fullmatch(rf"failed: transient: .*429.* \(after {ATTEMPTS} attempts\)", told[2][1], re.S), told
    assert flaky_tasks[-1].state == "FAILURE", "the failure is the file's last task"
    bounced = [t for t in flaky_tasks if str(t.result).startswith("bounced: ")]
    assert all(t.state == "SUCCESS" and "failed on alpha" in str(t.result) for t in bounced), bounced

    [failed] = events.events("task-failed")  # the event itself, as Flower receives it
    said = ast.literal_eval(failed["exception"].removeprefix("FileFailed(").removesuffix(")"))
    assert said.startswith("transient: ") and said == told[2][1].removeprefix("failed: ")
    succeeded = [ast.literal_eval(e["result"]) for e in events.events("task-succeeded")]
    assert [int(m.group(1)) for m in map(REQUEUED.fullmatch, succeeded) if m] == [2, 3], succeeded

    long_tasks = [(t.state, str(t.result)) for t in events.shown() if t.name == "long00000.wav"]
    assert [result.split(":")[0] for _, result in long_tasks] == ["handback", "done"], long_tasks
    assert long_tasks[0] == ("SUCCESS", "handback: the consumer was stopped (planned); another one starts it")
    assert long_tasks[1][1].startswith(f"done: {LONG:.1f} s of audio in "), long_tasks
