"""Where a file should run (`worker.placement`): its decisions against a real Redis holding the
heartbeats, health verdicts, in-flight entries and batch headers the consumers would write.

The whole path — a slow endpoint yielding a long file to a fast one, exactly once — runs in
tests/acceptance/test_placement.py.
"""

from __future__ import annotations

from dataclasses import replace

from batchscribe.common.celery_app import make_app
from batchscribe.common.config import Endpoint
from batchscribe.common.models import FileRecord
from batchscribe.common.publish import Publisher, TaskSpec
from batchscribe.common.settings import Settings
from batchscribe.common.state import ConsumerBeat, StateStore
from batchscribe.worker.placement import Placement

QUEUE = "pool.en-US"


def endpoint(name: str, rtf: float, concurrency: int = 2) -> Endpoint:
    return Endpoint(name=name, engine="azure", host="127.0.0.1", port=5000, concurrency=concurrency, rtf=rtf)


def beat(store: StateStore, ep: Endpoint, host: str = "vm1") -> None:
    store.beat_consumer(ConsumerBeat(f"{ep.name}@{host}", ep.name, 1, (f"ep.{ep.name}", QUEUE), store.clock(),
                                     (), ep.concurrency, ep.rtf), 30)


def task(seconds: float, batch: str = "") -> TaskSpec:
    return TaskSpec("job" + str(seconds), {"language": "en-US"}, "/in/a.wav", seconds, QUEUE, batch)


SLOW, MID, FAST = endpoint("slow", 3), endpoint("mid", 5), endpoint("fast", 8)


def test_a_long_file_on_a_slow_endpoint_goes_to_the_fastest_one(store: StateStore) -> None:
    for ep in (SLOW, MID, FAST):
        beat(store, ep)
    # 12 s: 4 s here; the batch (this file alone) could end at 12 / 8 = 1.5 s
    assert Placement(store, SLOW).better_home(task(12.0)) == "fast"
    # on mid 2.4 s: within 25 % + 1 s of the 1.5 s it could end at, it stays; 30 s (6 s vs 3.75 s) goes
    assert Placement(store, MID).better_home(task(12.0)) is None
    assert Placement(store, MID).better_home(task(30.0)) == "fast"


def test_short_files_and_files_that_fit_the_batch_stay(store: StateStore) -> None:
    for ep in (SLOW, FAST):
        beat(store, ep)
    placement = Placement(store, SLOW)
    assert placement.better_home(task(2.0)) is None  # 0.7 s here: never worth moving
    records = [FileRecord(batch_id="b1", index=i, path=f"/in/{i}.wav", rel=f"{i}.wav", output=f"/out/{i}.json",
                          duration=d) for i, d in enumerate([12.0] + [10.0] * 20)]
    store.create_batch("b1", {"out": "/out"}, records)
    # 212 s of audio on 2×3 + 2×8 = 22× real time: the batch cannot end before ~9.6 s; 4 s fits
    assert placement.better_home(task(12.0, batch="b1")) is None


def test_the_fastest_endpoint_and_a_lone_one_never_yield(store: StateStore) -> None:
    beat(store, FAST)
    assert Placement(store, FAST).better_home(task(60.0)) is None
    beat(store, SLOW)
    assert Placement(store, FAST).better_home(task(60.0)) is None
    store.forget_consumer("fast@vm1")
    assert Placement(store, SLOW).better_home(task(60.0)) is None  # no live faster peer


def test_a_spoken_for_fastest_endpoint_leaves_the_file_to_a_faster_one_with_a_free_slot(
        store: StateStore, settings: Settings) -> None:
    for ep in (SLOW, MID, FAST):
        beat(store, ep)
    publisher = Publisher(make_app(settings))
    publisher.publish([replace(task(9.0), job_key="pinned1", queue="ep.fast")])
    # 9 s: 3 s here, 1.8 s on mid, 1.1 s on fast; the batch could end at 1.1 s: 2.4 s is too late
    assert Placement(store, SLOW).better_home(task(9.0)) == "fast"  # one of its two slots is free
    publisher.publish([replace(task(9.0), job_key="pinned2", queue="ep.fast")])
    assert Placement(store, SLOW).better_home(task(9.0)) == "mid"  # both are spoken for


def test_an_unusable_endpoint_is_no_home(store: StateStore) -> None:
    for ep in (SLOW, FAST):
        beat(store, ep)
    store.publish_health("fast", {"up": False, "usable": False, "reason": "down"}, 30)
    assert Placement(store, SLOW).better_home(task(12.0)) is None
