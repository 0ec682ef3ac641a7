"""Chaos scenarios (issue 4): one fault each, over a batch of ≥ 100 short files on emulator endpoints,
every one ending with the same verdict (`tests.support.cluster.check_exactly_once`): each input
`done` exactly once with the right transcript, no file lost or stuck, no unexplained engine call.

Each scenario ends by itself (bounded waits, a pytest timeout) and stops every process it started.
What each one does and proves, and measured results: docs/chaos.md.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchscribe.common.queues import pool_queue
from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import run_cli
from tests.support.cluster import (
    FAST_RETRIES,
    VM,
    AudioSet,
    Cluster,
    EndpointSpec,
    assert_exactly_once,
    kill_pids,
    make_audio,
    spread_durations,
    write_endpoints,
)
from tests.support.poll import wait_for
from tests.support.threads import Repeater

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(200)]

FILES = 120
FINISH_TIMEOUT = 75.0  # per scenario, after its last fault


@dataclass
class Scenario:
    cluster: Cluster
    audio: AudioSet
    endpoints: list[EndpointSpec]
    config: Path
    vms: list[VM]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.endpoints]

    def spec(self, name: str) -> EndpointSpec:
        return next(e for e in self.endpoints if e.name == name)


@pytest.fixture
def cluster(tmp_path: Path, redis_server: PrivateRedis, store: StateStore) -> Iterator[Cluster]:
    with Cluster(tmp_path, redis_server, store) as running:
        yield running


def start(cluster: Cluster, names: Sequence[str] = ("a", "b", "c"), concurrency: int = 3,
          rtf: float = 1.0, vms: Sequence[str] = ("vm1",), files: int = FILES,
          durations: Sequence[float] | None = None, spare_ports: int = 0) -> Scenario:
    """Emulator (one port per endpoint, plus spares), endpoint YAML, worker VMs, audio; no batch yet."""
    emulator = cluster.start_emulator(len(names) + spare_ports, rtf=rtf)
    endpoints = [EndpointSpec(n, p, concurrency) for n, p in zip(names, emulator.ports)]
    config = write_endpoints(cluster.tmp / "endpoints.yaml", endpoints)
    audio = make_audio(cluster.tmp / "in", durations or spread_durations(files))
    started = [cluster.start_vm(config, host) for host in vms]
    if len(started) == 1:
        cluster.wait_consumers(started[0], names)
    return Scenario(cluster, audio, endpoints, config, started)


def inflight(cluster: Cluster, endpoint: str) -> int:
    return int(cluster.store.redis.zcard(cluster.store.keys.inflight(endpoint)))


def kill_consumer_mid_file(scenario: Scenario, vm: VM, endpoint: str) -> int:
    """SIGKILL the endpoint's consumer while it has a file in flight; returns the dead pid."""
    cluster = scenario.cluster
    wait_for(lambda: endpoint in vm.consumers() and inflight(cluster, endpoint) > 0, 30,
             f"a file in flight on {endpoint}")
    pid = vm.consumers()[endpoint]
    kill_pids([pid], signal.SIGKILL)
    cluster.crashes += scenario.spec(endpoint).concurrency
    return pid


def test_consumer_sigkilled_twice(cluster: Cluster) -> None:
    scenario = start(cluster)
    vm = scenario.vms[0]
    batch = cluster.submit(scenario.audio.folder)
    cluster.wait_progress(batch, 0.15)
    first = kill_consumer_mid_file(scenario, vm, "a")
    wait_for(lambda: vm.consumers().get("a") not in (None, first), 30, "the supervisor to restart a")
    cluster.wait_progress(batch, 0.45)
    kill_consumer_mid_file(scenario, vm, "b")
    cluster.wait_finished(batch, FINISH_TIMEOUT)
    assert_exactly_once(cluster, batch, scenario.audio)


def test_vm_sigkilled_another_takes_over(cluster: Cluster) -> None:
    scenario = start(cluster, vms=("vm1", "vm2"))
    wait_for(lambda: set(scenario.names) <= {n for vm in scenario.vms for n in vm.consumers()}, 30,
             "every endpoint served by some VM")
    batch = cluster.submit(scenario.audio.folder)
    cluster.wait_progress(batch, 0.25)
    victim = max(scenario.vms, key=lambda vm: len(vm.consumers()))
    survivor = next(vm for vm in scenario.vms if vm is not victim)
    served = list(victim.consumers())
    victim.kill()
    cluster.crashes += sum(scenario.spec(n).concurrency for n in served)
    cluster.wait_consumers(survivor, scenario.names, timeout=35)  # takeover within 30 s (issue 4 §5)
    cluster.wait_finished(batch, FINISH_TIMEOUT)
    assert_exactly_once(cluster, batch, scenario.audio)
    assert cluster.emulator is not None
    overshoot = {e.name: cluster.emulator.stats(e.port)["max_active"] for e in scenario.endpoints
                 if cluster.emulator.stats(e.port)["max_active"] > e.concurrency}
    assert not overshoot, f"cluster-wide concurrency exceeded (max sessions at once): {overshoot}"


def test_redis_restarted_mid_batch(cluster: Cluster) -> None:
    cluster.worker_env = dict(FAST_RETRIES)  # the one scenario on the shipped lease settings
    scenario = start(cluster)
    producer = cluster.submit_process(scenario.audio.folder, "--wait")  # a producer waiting throughout
    batch = _announced_batch(producer)
    cluster.wait_progress(batch, 0.3)
    cluster.redis.stop()
    time.sleep(2.0)
    cluster.redis.start()
    cluster.wait_finished(batch, FINISH_TIMEOUT)  # consumers must resume after the reconnect
    _, err = producer.communicate(timeout=60)  # ... and the producer's progress loop too
    assert producer.returncode == 0, err
    assert "Redis unavailable" in err
    assert_exactly_once(cluster, batch, scenario.audio)


def _announced_batch(producer: subprocess.Popen[str]) -> str:
    """The batch id `submit` prints on stderr once the batch is in Redis."""
    assert producer.stderr is not None
    for line in producer.stderr:
        if match := re.match(r"batch (\S+): \d+ file", line):
            return match.group(1)
    raise AssertionError(f"submit exited ({producer.wait()}) without announcing a batch")


def test_flapping_and_stalling_endpoints(cluster: Cluster) -> None:
    scenario = start(cluster, names=("steady", "flappy", "stally"))
    emulator = cluster.emulator
    assert emulator is not None
    flappy, stally = scenario.spec("flappy").port, scenario.spec("stally").port
    emulator.set_fault(stally, "stall")
    batch = cluster.submit(scenario.audio.folder)
    def flap(tick: int) -> None:
        emulator.set_fault(flappy, "refuse" if tick % 2 == 0 else "none")

    with Repeater(2.0, flap) as flapping:
        cluster.wait_finished(batch, FINISH_TIMEOUT)
    emulator.set_fault(flappy, "none")
    emulator.set_fault(stally, "none")
    assert not flapping.errors, flapping.errors
    assert_exactly_once(cluster, batch, scenario.audio)


CHURN = [  # (endpoint, concurrency) sets cycled every 2 s: additions, removals, resizes
    (("a", 3), ("b", 3)),
    (("a", 3), ("b", 2), ("c", 3)),
    (("b", 4), ("c", 2)),
    (("c", 3), ("d", 3)),
    (("a", 2), ("d", 2)),
    (("a", 3), ("b", 3), ("c", 2), ("d", 2)),
]


def test_hot_swap_churn(cluster: Cluster) -> None:
    scenario = start(cluster, names=("a", "b", "c", "d"))
    ports = {e.name: e.port for e in scenario.endpoints}

    def rewrite(tick: int) -> None:
        wanted = [EndpointSpec(n, ports[n], c) for n, c in CHURN[(tick + 1) % len(CHURN)]]
        path = write_endpoints(scenario.config if not tick % 2 else cluster.tmp / "apply.yaml", wanted)
        if path != scenario.config:
            result = run_cli("endpoints", "apply", str(path), broker=cluster.redis.url, timeout=30)
            assert result.returncode == 0, result.stderr

    batch = cluster.submit(scenario.audio.folder)
    with Repeater(2.0, rewrite) as churn:
        cluster.wait_progress(batch, 0.9, timeout=FINISH_TIMEOUT)
    assert not churn.errors, churn.errors
    cluster.wait_finished(batch, FINISH_TIMEOUT)
    assert_exactly_once(cluster, batch, scenario.audio)


def test_producer_killed_mid_submit_then_run_again(cluster: Cluster) -> None:
    durations = [round(0.2 + (i % 41) / 100, 2) for i in range(1500)]  # tiny files: publishing takes a moment
    scenario = start(cluster, concurrency=4, rtf=0.0, durations=durations)
    queue = pool_queue("en-US")
    producer = cluster.submit_process(scenario.audio.folder)
    redis = cluster.store.redis
    wait_for(lambda: redis.llen(queue) > 0 or producer.poll() is not None, 60,
             "the producer to start publishing", interval=0.005)
    producer.send_signal(signal.SIGKILL)
    producer.communicate(timeout=10)  # reaps it and closes both pipes
    assert producer.returncode == -signal.SIGKILL, "the producer finished before it could be killed"
    first = _batch_ids(cluster)[0]
    batch = cluster.submit(scenario.audio.folder, timeout=90)  # the same command again
    assert batch != first
    cluster.wait_finished(batch, FINISH_TIMEOUT)
    assert_exactly_once(cluster, batch, scenario.audio)
    leftovers = {k: v for k, v in cluster.counters(first).items() if k in ("n_running", "n_retrying") and v}
    assert not leftovers, f"the killed producer's batch has files stuck: {leftovers}"


def _batch_ids(cluster: Cluster) -> list[str]:
    return [b.decode() for b in cluster.store.redis.zrevrange(cluster.store.keys.batches(), 0, -1)]
