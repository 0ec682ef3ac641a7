"""Leases, deferral, crash takeover, poison, delayed retries and their promoters, on a real Redis.

The job runner runs with a scripted engine (the wire level is covered by the acceptance tests).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from batchscribe.common.celery_app import make_app
from batchscribe.common.config import Endpoint
from batchscribe.common.errors import EndpointError, ProcessingError
from batchscribe.common.keys import KOMBU_UNACKED_INDEX
from batchscribe.common.models import FileState
from batchscribe.common.publish import Publisher, TaskSpec, message_task
from batchscribe.common.settings import Settings
from batchscribe.common.state import LeaseItem, StateStore
from batchscribe.worker.engines.base import PreparedAudio, Recognition
from batchscribe.worker.jobs import MAX_BOUNCES, Delivery, JobRunner
from batchscribe.worker.leases import LeaseKeeper
from batchscribe.worker.scheduler import promote_due
from tests.support.clock import ManualClock
from tests.support.emulator import tone_wav
from tests.support.jobs import submitted
from tests.support.poll import wait_for
from tests.support.threads import run_concurrently

QUEUE = "pool.en-US"


def delivery(n: int, job: str = "j", path: str = "/in/0.wav") -> Delivery:
    return Delivery(TaskSpec(job, {"language": "en-US"}, path, 1.0, QUEUE), id=f"d{n}", tag=f"tag{n}")


def spec(job: str = "j") -> str:
    return TaskSpec(job, {}, "/in/x.wav", 1.0, QUEUE).to_json()


class ScriptedEngine:
    """Raises the scripted errors in turn, then recognises; counts its calls."""

    takes_samples = False

    def __init__(self, endpoint: Endpoint, errors: list[ProcessingError] | None = None) -> None:
        self.endpoint = endpoint
        self.errors = list(errors or [])
        self.calls = 0

    def transcribe(self, audio: PreparedAudio, options: Any, progress: Any = None, stop: Any = None,
                   log_file: Any = None) -> Recognition:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Recognition(phrases=[], duration=audio.duration, engine="fake")

    def close(self) -> None:
        pass


def runner_for(settings: Settings, store: StateStore, *errors: ProcessingError,
               **retry: Any) -> tuple[JobRunner, ScriptedEngine]:
    endpoint = Endpoint(name="ep1", engine="azure")
    engine = ScriptedEngine(endpoint, list(errors))
    settings = replace(settings, retry=replace(settings.retry, **retry))
    return JobRunner(settings, store, endpoint, engine=engine), engine


# ---- start: deferral, takeover, poison ------------------------------------------------------

def test_a_duplicate_delivery_is_deferred_while_the_lease_is_live(store: StateStore) -> None:
    submitted(store)
    store.start_job("j", "ep1", "d1", lease_ttl=30)
    dup = store.start_job("j", "ep2", "d2", lease_ttl=30, defer_spec=spec())
    assert dup.previous == "deferred" and not dup.runs
    job = store.job("j")
    assert (job["state"], job["delivery"], job["attempts"], job["crashes"]) == ("running", "d1", "1", "0")
    [(member, due)] = store.delayed()
    assert member == "j" and due == pytest.approx(dup.lease_until + 1, abs=0.01)
    assert dup.lease_until == pytest.approx(time.time() + 30, abs=2)
    assert TaskSpec.from_json(store.redis.hget(store.keys.delayed_specs(), "j").decode()).queue == QUEUE


def test_an_expired_lease_is_a_crash_and_the_new_delivery_takes_over(settings: Settings) -> None:
    clock = ManualClock()
    store = StateStore.connect(settings, clock=clock)
    submitted(store)
    store.start_job("j", "ep1", "d1", lease_ttl=0.3)
    clock.advance(0.4)
    again = store.start_job("j", "ep2", "d2", lease_ttl=30)
    assert (again.previous, again.crashes, again.attempts, again.crashed_endpoint) == ("running", 1, 2, "ep1")
    assert store.job("j")["delivery"] == "d2"
    assert store.requeue_job("j", "d1", "transient", "late", True, time.time(), spec()) == -1  # the zombie
    assert store.job("j")["state"] == "running" and store.delayed() == []


def test_poison_after_max_crashes_fails_with_class_crash(settings: Settings) -> None:
    clock = ManualClock()
    store = StateStore.connect(settings, clock=clock)
    submitted(store)
    runner, engine = runner_for(settings, store, max_crashes=2)
    store.start_job("j", "ep1", "d1", lease_ttl=0.2)
    clock.advance(0.3)
    store.start_job("j", "ep1", "d2", lease_ttl=0.2)  # crash 1
    clock.advance(0.3)
    assert runner.run(delivery(3)).verdict == "failed"  # crash 2: poison
    assert engine.calls == 0
    job = store.job("j")
    assert (job["state"], job["error_class"], job["crashes"]) == ("failed", "crash", "2")
    assert "poison" in job["reason"]
    [record] = store.files("b", [0])
    assert (record.state, record.error_class) == (FileState.FAILED, "crash")
    assert store.endpoint_stats("ep1")["failed_crash"] == "2"
    assert runner.run(delivery(4)).verdict == "stale"  # a late copy of a failed job is dropped


# ---- requeue, endpoint errors, counters -----------------------------------------------------

def run_past_bounces(runner: JobRunner, n: int, path: str) -> str:
    """Deliver again to the endpoint that just failed the job: it bounces MAX_BOUNCES times, then runs."""
    verdicts = [runner.run(delivery(n + i, path=path)).verdict for i in range(MAX_BOUNCES + 1)]
    assert verdicts[:-1] == ["bounced"] * MAX_BOUNCES
    return verdicts[-1]


def test_a_retry_goes_to_another_endpoint_first(store: StateStore) -> None:
    submitted(store)
    store.start_job("j", "ep1", "d1")
    store.requeue_job("j", "d1", "transient", "stall", True, time.time(), spec())
    back = store.start_job("j", "ep1", "d2", defer_spec=spec(), max_bounces=1, bounce_delay=0.3)
    assert back.previous == "bounced" and store.job("j")["attempts"] == "1"
    assert store.delayed() == [("j", pytest.approx(time.time() + 0.3, abs=0.1))]
    assert store.start_job("j", "ep2", "d3", max_bounces=1).previous == "retrying"  # another endpoint runs it
    assert store.delayed() == []


def test_requeue_moves_state_and_delayed_entry_together(store: StateStore) -> None:
    submitted(store)
    store.start_job("j", "ep1", "d1")
    due = time.time() + 7
    assert store.requeue_job("j", "d1", "transient", "429", True, due, spec()) == 0
    job = store.job("j")
    assert (job["state"], job["delivery"], job["lease_until"]) == ("retrying", "", "")
    assert store.delayed() == [("j", pytest.approx(due, abs=0.01))]
    store.start_job("j", "ep1", "d2")  # whoever runs it next makes the delayed copy moot
    assert store.delayed() == []


def test_endpoint_errors_requeue_at_once_and_stop_after_the_time_cap(tmp_path: Path, settings: Settings) -> None:
    clock = ManualClock()
    store = StateStore.connect(settings, clock=clock)
    path = str(tmp_path / "a.wav")
    tone_wav(Path(path), 1.0)
    submitted(store, path=path)
    runner, engine = runner_for(settings, store, EndpointError("refused"), EndpointError("refused"),
                                endpoint_max_wait=0.5)
    assert runner.run(delivery(1, path=path)).verdict == "requeued"
    job = store.job("j")
    assert (job["state"], job["attempts"], job["reroutes"]) == ("queued", "0", "1")
    [(_, due)] = store.delayed()
    assert due <= clock() + 1
    clock.advance(0.6)  # past endpoint_max_wait since the first start
    assert run_past_bounces(runner, 2, path) == "failed"
    assert "no endpoint could take it" in store.job("j")["reason"]
    stats = store.endpoint_stats("ep1")
    assert (stats["failed_endpoint"], stats["consecutive_failures"], stats["in_flight"]) == ("2", "2", "0")
    assert engine.calls == 2


def test_success_resets_consecutive_failures_and_counts_audio(tmp_path: Path, settings: Settings,
                                                              store: StateStore) -> None:
    path = str(tmp_path / "a.wav")
    tone_wav(Path(path), 1.5)
    submitted(store, path=path)
    runner, _ = runner_for(settings, store, ProcessingError("timeout"), backoff_base=0.1)
    assert runner.run(delivery(1, path=path)).verdict == "requeued"
    assert store.endpoint_stats("ep1")["consecutive_failures"] == "1"
    assert run_past_bounces(runner, 2, path) == "done"
    stats = store.endpoint_stats("ep1")
    assert (stats["done"], stats["failed_transient"], stats["consecutive_failures"]) == ("1", "1", "0")
    assert float(stats["audio_seconds"]) == pytest.approx(1.5)
    assert store.delayed() == []


# ---- the lease keeper -----------------------------------------------------------------------

def test_lease_keeper_extends_leases_and_refreshes_kombu_delivery_tags(settings: Settings) -> None:
    clock = ManualClock()
    store = StateStore.connect(settings, clock=clock)
    submitted(store)
    store.start_job("j", "ep1", "d1", lease_ttl=2)
    store.redis.zadd(KOMBU_UNACKED_INDEX, {"tag1": 1000.0})
    keeper = LeaseKeeper(store, lease_ttl=2, heartbeat=0.1).start()
    try:
        with keeper.hold(LeaseItem("j", "d1", "tag1")), keeper.hold(LeaseItem("j", "other", "tag-gone")):
            clock.advance(2.5)  # longer than the lease: only the keeper keeps it alive
            wait_for(lambda: float(store.job("j")["lease_until"]) > clock() + 1.5, 10,
                     "the keeper to extend the lease past the clock")
            assert store.redis.zscore(KOMBU_UNACKED_INDEX, "tag1") > clock() - 1
        assert store.start_job("j", "ep2", "d2", defer_spec=spec()).previous == "deferred"
    finally:
        keeper.stop()
    assert store.redis.zscore(KOMBU_UNACKED_INDEX, "tag-gone") is None  # XX: never adds a tag


def test_a_dead_lease_keeper_is_noticed(store: StateStore) -> None:
    deaths: list[str] = []
    keeper = LeaseKeeper(store, lease_ttl=1, heartbeat=0.05, on_death=deaths.append)

    def broken_beat() -> None:
        raise RuntimeError("bug")

    keeper.beat = broken_beat  # type: ignore[method-assign]
    keeper.start()
    try:
        wait_for(lambda: deaths, 3, "the keeper's death to be noticed", interval=0.02)
    finally:
        keeper.stop()
    assert deaths == ["lease keeper thread died"]


# ---- delayed entries and promoters ----------------------------------------------------------

def queued_jobs(store: StateStore, queue: str = QUEUE) -> list[str]:
    """Job keys of the task messages waiting on a kombu queue."""
    out = []
    for raw in store.redis.lrange(queue, 0, -1):
        args, _kwargs = message_task(raw)
        out.append(args[0])
    return out


def delay_many(store: StateStore, n: int) -> list[str]:
    jobs = [f"job{i:03d}" for i in range(n)]
    pipe = store.redis.pipeline()
    for jk in jobs:
        pipe.zadd(store.keys.delayed(), {jk: store.clock() - 1})
        pipe.hset(store.keys.delayed_specs(), jk, spec(jk))
    pipe.execute()
    return jobs


def test_two_concurrent_promoters_publish_each_due_entry_once(settings: Settings, store: StateStore) -> None:
    jobs = delay_many(store, 300)
    store.redis.zadd(store.keys.delayed(), {"later": time.time() + 60})
    counts: list[int] = []

    def promoter() -> None:
        publisher, total = Publisher(make_app(settings)), 0
        while n := promote_due(StateStore.connect(settings), publisher, limit=7):
            total += n
        counts.append(total)

    run_concurrently(promoter, [(), ()])
    assert sum(counts) == 300 and all(counts), counts
    published = queued_jobs(store)
    assert sorted(published) == jobs  # each exactly once
    assert [m for m, _ in store.delayed()] == ["later"]
    assert store.redis.zcard(store.keys.delayed_promoting()) == 0
    assert store.redis.hkeys(store.keys.delayed_specs()) == []


def test_entries_of_a_promoter_killed_mid_promotion_come_back(settings: Settings) -> None:
    clock = ManualClock()
    store = StateStore.connect(settings, clock=clock)
    jobs = delay_many(store, 5)
    _deadline, taken = store.take_due(hold=0.5, limit=100)  # ...and then it died
    assert len(taken) == 5 and store.delayed() == []
    publisher = Publisher(make_app(settings))
    assert promote_due(store, publisher) == 0  # being promoted: nobody else publishes them yet
    clock.advance(0.6)  # past its promotion deadline
    assert promote_due(store, publisher) == 5
    assert sorted(queued_jobs(store)) == jobs
