"""The supervisor's parts in-process on a real Redis, without starting processes: the circuit
breaker's transitions, the published health verdict and a consumer's gate, ownership takeover and
rebalancing, the endpoint source, a whole tick with a fake spawn, the hand back of a killed
consumer's files, and `batchscribe health`'s check."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from batchscribe.common.config import EndpointSet, parse_endpoints
from batchscribe.common.publish import TaskSpec
from batchscribe.common.settings import Settings
from batchscribe.common.state import Breaker, ConsumerBeat, LeaseItem, StateStore
from batchscribe.worker.endpoint_source import EndpointSource
from batchscribe.worker.health import EndpointHealth, HealthGate, ProbeResult
from batchscribe.worker.liveness import ConsumerPresence, vm_problem
from batchscribe.worker.ownership import Ownership, Rebalancer
from batchscribe.worker.pool import STARTUP
from batchscribe.worker.supervisor import Supervisor
from tests.support.clock import ManualClock
from tests.support.jobs import submitted
from tests.support.poll import wait_for
from tests.support.spawn import Spawner

BREAKER = Breaker(threshold=5, cooldown=10, max_cooldown=25)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


@pytest.fixture
def timed(settings: Settings, clock: ManualClock) -> StateStore:
    """A store whose `now` is the test's clock."""
    return StateStore.connect(settings, clock=clock)


def fail(store: StateStore, times: int = 1, cls: str = "endpoint") -> object:
    opened = None
    for _ in range(times):
        opened = store.record_attempt("a", cls, breaker=BREAKER)
    return opened


# ---- the circuit breaker --------------------------------------------------------------------------

def test_breaker_opens_at_the_threshold_backs_off_and_forgets(timed: StateStore, clock: ManualClock) -> None:
    assert fail(timed, 4) is None
    assert timed.record_attempt("a", "permanent", breaker=BREAKER) is None  # the file's fault, not a run
    opened = fail(timed)
    assert opened is not None and opened.until == 1010.0 and "5 files in a row failed on endpoint 'a'" in opened.reason
    stats = timed.endpoint_stats("a")
    assert (stats["consecutive_failures"], stats["circuit_open_until"]) == ("0", "1010.000")
    assert fail(timed, 5) is None  # while open, failures (files still in flight) do not re-open it
    clock.advance(11)
    opened = fail(timed)  # closed again, and already 6 in a row: open again, doubled
    assert opened is not None and opened.until == clock.now + 20
    clock.advance(21)
    assert fail(timed, 5).until == clock.now + 25  # type: ignore[attr-defined]  # capped
    clock.advance(26)
    timed.record_attempt("a", breaker=BREAKER)  # a success, but it just re-opened: history kept
    assert timed.endpoint_stats("a")["circuit_opens"] == "3"
    clock.advance(20)
    timed.record_attempt("a", breaker=BREAKER)  # healthy for two cooldowns since: forgotten
    assert "circuit_opens" not in timed.endpoint_stats("a")
    assert fail(timed, 5).until == clock.now + 10  # type: ignore[attr-defined]


# ---- the published verdict and a consumer's gate -------------------------------------------------

def test_the_verdict_combines_probes_and_breaker_and_the_gate_reads_it(timed: StateStore,
                                                                       clock: ManualClock) -> None:
    health = EndpointHealth(timed, "vm1", ttl=15, clock=clock)
    gate_clock = ManualClock(0.0)
    gate = HealthGate(timed, "a", cache=1.0, clock=gate_clock)
    assert gate.closed() == ""  # nobody assesses a yet: go ahead
    assert health.assess(["a"]) == {"a"}
    health.observe("a", ProbeResult(False, "GET /ready answered 503"))
    health.observe("a", ProbeResult(False, "GET /ready answered 503"))
    assert health.assess(["a"]) == set()
    assert timed.health(["a"])["a"]["reason"] == "GET /ready answered 503"
    assert gate.closed() == ""  # cached for a second
    gate_clock.now += 1
    assert gate.closed() == "endpoint 'a' is down: GET /ready answered 503"
    health.observe("a", ProbeResult(True))
    fail(timed, 5)
    assert health.assess(["a"]) == set()
    verdict = timed.health(["a"])["a"]
    assert verdict["up"] and not verdict["usable"] and "5 files in a row" in verdict["reason"]
    clock.advance(10)
    assert health.assess(["a"]) == {"a"}
    assert 0 < timed.redis.pttl(timed.keys.health("a")) <= 15_000


def test_a_consumer_that_trips_the_breaker_closes_its_gate_at_once(timed: StateStore, clock: ManualClock) -> None:
    gate = HealthGate(timed, "a", cache=60.0, clock=clock)
    assert gate.closed() == ""
    opened = fail(timed, 5)
    gate.tripped(opened.until, opened.reason)  # type: ignore[attr-defined]
    assert gate.closed().startswith("circuit open: 5 files in a row failed")
    clock.advance(10)
    assert gate.closed() == ""  # the circuit's time is over (and nobody published otherwise)


# ---- ownership ------------------------------------------------------------------------------------

def test_a_dead_vm_s_endpoints_are_taken_over(store: StateStore) -> None:
    vm1, vm2 = Ownership(store, "vm1", ttl=0.5), Ownership(store, "vm2", ttl=0.5)
    assert vm1.sync(["a", "b"]) == {"a", "b"}
    assert vm2.sync(["a", "b"]) == set()  # held
    # vm1 dies: it stops renewing; its keys expire after the TTL
    wait_for(lambda: vm2.sync(["a", "b"]) == {"a", "b"}, 10, "vm2 to take both over")


def test_a_vm_that_joins_gets_one_endpoint_handed_over_after_its_consumer_stopped(store: StateStore) -> None:
    vm1, vm2 = Ownership(store, "vm1", ttl=15), Ownership(store, "vm2", ttl=15)
    rebalancer = Rebalancer(vm1, patience=3)
    owned = vm1.sync(["a", "b"])
    assert rebalancer.adjust(owned, 2, running={"a", "b"}) == {"a", "b"}
    vm2.heartbeat()  # another VM is alive: vm1's fair share is 1
    for _ in range(2):
        assert rebalancer.adjust(vm1.sync(["a", "b"]), 2, running={"a", "b"}) == {"a", "b"}
    assert rebalancer.adjust(vm1.sync(["a", "b"]), 2, running={"a", "b"}) == {"a"}  # b: stop its consumer
    assert store.owners(["b"]) == {"b": "vm1"}  # not released while b's consumer still runs here
    assert vm2.sync(["a", "b"]) == set()
    assert rebalancer.adjust(vm1.sync(["a", "b"]), 2, running={"a"}) == {"a"}
    assert store.owners(["b"]) == {"b": None}
    assert vm2.sync(["a", "b"]) == {"b"}
    assert rebalancer.adjust(vm1.sync(["a", "b"]), 2, running={"a"}) == {"a"}  # stable


# ---- the endpoint source --------------------------------------------------------------------------

def yaml_for(*names: str) -> str:
    return "".join(f"{n}:\n  host: 127.0.0.1\n  port: 5000\n  concurrency: 2\n" for n in names)


def test_the_source_publishes_file_edits_and_keeps_the_running_set_on_a_bad_one(tmp_path: Path,
                                                                                store: StateStore) -> None:
    config = tmp_path / "eps.yaml"
    config.write_text(yaml_for("a"))
    mine = EndpointSource(store, parse_endpoints(yaml_for("a"), "x"), str(config))
    other = EndpointSource(store, EndpointSet(()))  # another VM, no file of its own
    assert [e.name for e in mine.refresh()] == ["a"] and [e.name for e in other.refresh()] == ["a"]
    config.write_text(yaml_for("a", "b"))
    assert [e.name for e in mine.refresh()] == ["a", "b"] and [e.name for e in other.refresh()] == ["a", "b"]
    config.write_text("a:\n  concurrency: lots\n")
    assert [e.name for e in mine.refresh()] == ["a", "b"] and store.endpoint_set_version() == 2


# ---- a whole tick, and the VM's health check -------------------------------------------------------

def supervisor(settings: Settings, store: StateStore, *names: str, stubborn: bool = False
               ) -> tuple[Supervisor, Spawner, ManualClock]:
    spawner, clock = Spawner(stubborn), ManualClock(100.0)
    endpoints = parse_endpoints(yaml_for(*names), "eps.yaml")
    sup = Supervisor(settings, endpoints, hostname="vm1", store=store, follow_registry=False,
                     spawn=spawner, clock=clock, grace=30)
    return sup, spawner, clock


def test_a_tick_runs_a_consumer_per_owned_usable_endpoint_and_says_so(settings: Settings,
                                                                     store: StateStore) -> None:
    sup, spawner, clock = supervisor(settings, store, "a", "b")
    sup.tick()
    assert sorted(n for n, _ in spawner.started) == ["a", "b"]
    assert store.owners(["a", "b"]) == {"a": "vm1", "b": "vm1"}
    assert vm_problem(store, "vm1")[0] == ""  # consumers just started: not expected to beat yet
    clock.now += STARTUP
    sup.tick()
    problem, _ = vm_problem(store, "vm1")
    assert "the consumer of endpoint a on vm1 (pid 1000) has not sent a heartbeat" in problem
    for name, proc in spawner.started:
        store.beat_consumer(ConsumerBeat(f"{name}@vm1", name, proc.pid, (f"ep.{name}",), 0.0), ttl=30)
    problem, summary = vm_problem(store, "vm1")
    assert problem == "" and summary == ("worker vm1: supervisor pid "
                                         f"{store.vm_beat('vm1').pid}; consumers: a (running, pid 1000), "  # type: ignore[union-attr]
                                         "b (running, pid 1001)")
    store.record_attempt("b", "endpoint", breaker=Breaker(threshold=1))  # b's circuit opens
    sup.tick()
    assert spawner.last("b").signals == [signal.SIGTERM]
    spawner.last("a").exit(1)
    sup.pool.check()
    sup.tick()
    assert "the consumer of endpoint a on vm1 exited and is waiting to restart" in vm_problem(store, "vm1")[0]
    assert "no worker supervisor of VM 'vm2' is alive" in vm_problem(store, "vm2")[0]


def test_the_vm_beat_is_stamped_by_the_store_s_clock(settings: Settings, timed: StateStore,
                                                    clock: ManualClock) -> None:
    """Other VMs read it: the store's wall clock, not the supervisor's monotonic one."""
    sup, _, own_clock = supervisor(settings, timed, "a")
    sup.tick()
    beat = timed.vm_beat("vm1")
    assert beat is not None and beat.beat_at == clock.now != own_clock.now


def test_a_consumer_killed_at_the_end_of_a_planned_stop_has_its_files_handed_back(
        settings: Settings, store: StateStore) -> None:
    submitted(store)
    spec = TaskSpec("j", {"language": "en-US"}, "/in/0.wav", 1.0, "pool.en-US").to_json()
    store.start_job("j", "a", "a@vm1/task/1", lease_ttl=30)
    store.track_inflight("a", "j")
    store.redis.hset("unacked", "tag1", "message")
    store.redis.zadd("unacked_index", {"tag1": 1.0})
    sup, spawner, clock = supervisor(settings, store, "a", stubborn=True)
    sup.tick()
    presence = ConsumerPresence(store, "a@vm1", "a", ["ep.a", "pool.en-US"], ttl=30)
    presence.beat([LeaseItem("j", "a@vm1/task/1", "tag1", spec)])
    sup.pool.stop_all()  # SIGTERM: this consumer's engine cannot be interrupted
    clock.now += 31
    sup.pool.check()  # SIGKILL
    sup.pool.check()  # reaped: hand back
    job = store.job("j")
    assert (job["state"], job["attempts"], job.get("crashes", "0"), job["delivery"]) == ("queued", "0", "0", "")
    assert store.files("b", [0])[0].state.value == "queued"
    assert [member for member, _ in store.delayed()] == ["j"]
    assert store.endpoint_stats("a")["in_flight"] == "0"
    assert not store.redis.hexists("unacked", "tag1")  # its message will not come back as well
    assert store.consumer_beats(["a@vm1"]) == {}
    events = [e for _, e in store.events()]
    assert [(e["outcome"], e["job"]) for e in events] == [("handback", "j")]
    again = store.start_job("j", "b", "b@vm2/task/2", lease_ttl=30)
    assert (again.previous, again.crashes, again.attempts) == ("queued", 0, 1)  # no crash, attempt not spent
