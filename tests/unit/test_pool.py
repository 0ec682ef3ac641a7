"""The consumer pool without processes: a fake spawn returning fake processes, a clock moved by hand."""

from __future__ import annotations

import signal

from batchscribe.common.config import Endpoint
from batchscribe.common.state import ConsumerSlot
from batchscribe.worker.pool import HEALTHY_RUN, STARTUP, Pool
from tests.support.clock import ManualClock
from tests.support.spawn import Spawner

A, B = Endpoint("a", concurrency=2), Endpoint("b", concurrency=2)


def pool(stubborn: bool = False, grace: float = 30.0) -> tuple[Pool, Spawner, ManualClock, list[str]]:
    spawner, clock, killed = Spawner(stubborn), ManualClock(100.0), []
    return Pool(spawner, clock, grace, on_killed=lambda e: killed.append(e.name)), spawner, clock, killed


def test_reconcile_starts_what_is_wanted_and_stops_what_is_not() -> None:
    p, spawner, clock, _ = pool()
    p.reconcile({"a": A, "b": B})
    assert [n for n, _ in spawner.started] == ["a", "b"]
    p.reconcile({"a": A})
    assert spawner.last("b").signals == [signal.SIGTERM]  # a planned stop: its files are handed back
    p.check()
    assert p.names() == {"a"}


def test_a_changed_endpoint_is_replaced_only_after_its_old_consumer_exited() -> None:
    p, spawner, clock, _ = pool(stubborn=True)
    p.reconcile({"a": A})
    old = spawner.last("a")
    resized = Endpoint("a", concurrency=5)
    p.reconcile({"a": resized})
    p.check()
    p.reconcile({"a": resized})
    assert len(spawner.started) == 1  # never two consumers of one endpoint
    old.exit(0)
    p.check()
    p.reconcile({"a": resized})
    assert len(spawner.started) == 2 and p.consumers["a"].endpoint.concurrency == 5


def test_a_crashing_consumer_restarts_with_backoff_reset_after_a_healthy_run() -> None:
    p, spawner, clock, _ = pool()
    p.reconcile({"a": A})
    delays = []
    for _ in range(3):
        spawner.last("a").exit(1)
        p.check()
        delays.append(p.consumers["a"].next_start - clock.now)
        assert p.slots()["a"] == ConsumerSlot(0, "restarting")
        clock.now = p.consumers["a"].next_start
        p.check()
    assert delays == [2.0, 4.0, 8.0] and len(spawner.started) == 4
    clock.now += HEALTHY_RUN + 1
    spawner.last("a").exit(1)
    p.check()
    assert len(spawner.started) == 5  # a minute of healthy running: at once


def test_a_planned_stop_that_outlasts_the_grace_period_is_killed_then_handed_back() -> None:
    p, spawner, clock, killed = pool(stubborn=True, grace=30)
    p.reconcile({"a": A})
    p.stop_all()
    clock.now += 29
    p.check()
    assert spawner.last("a").signals == [signal.SIGTERM] and killed == []
    clock.now += 2
    p.check()  # SIGKILL
    assert spawner.last("a").signals == [signal.SIGTERM, signal.SIGKILL]
    p.check()  # reaped: the supervisor hands back what it ran
    assert killed == ["a"] and not p.consumers


def test_a_consumer_that_stops_in_time_is_not_handed_back() -> None:
    p, spawner, clock, killed = pool()
    p.reconcile({"a": A})
    p.stop_all()
    p.check()
    assert killed == [] and not p.consumers


def test_an_unwanted_consumer_waiting_to_restart_is_dropped_and_starts_when_wanted_again() -> None:
    """It used to stay `stopping` for ever: the endpoint never got a consumer again."""
    p, spawner, clock, _ = pool()
    p.reconcile({"a": A})
    spawner.last("a").exit(1)
    p.check()  # waiting out its backoff
    p.reconcile({})
    p.check()
    assert not p.consumers
    p.reconcile({"a": A})
    assert len(spawner.started) == 2 and p.slots()["a"].state == "starting"


def test_slots_say_starting_then_running() -> None:
    p, spawner, clock, _ = pool()
    p.reconcile({"a": A})
    assert p.slots() == {"a": ConsumerSlot(1000, "starting")}
    clock.now += STARTUP
    assert p.slots() == {"a": ConsumerSlot(1000, "running")}
    p.stop_all()
    assert p.slots() == {"a": ConsumerSlot(1000, "stopping")}
    p.check()
    assert p.slots() == {}
