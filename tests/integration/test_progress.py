"""Following a batch against a real Redis: in-flight counts per endpoint that serves it, and run.log
(the batch's attempts only, at the time they happened, in batch-kit's line format)."""

from __future__ import annotations

import time
from pathlib import Path

from batchscribe.common.models import FileRecord, TranscriptionOptions
from batchscribe.common.state import ConsumerBeat, StateStore, target_id
from batchscribe.producer.display import plain_line
from batchscribe.producer.progress import in_flight_for, progress_of
from batchscribe.producer.runlog import RunLog
from batchscribe.producer.status import load_view


def running_on(store: StateStore, endpoint: str, job: str) -> None:
    """A delivery of `job` calling `endpoint`'s engine now (as `worker.jobs` records it)."""
    store.claim([(job, target_id("b", 0), 1.0)], "p", ttl=30)
    store.start_job(job, endpoint, f"{endpoint}@vm1/t/1", 30, "{}", 3, 0.3)
    store.track_inflight(endpoint, job)


def test_in_flight_counts_the_endpoints_that_serve_the_batch(store: StateStore) -> None:
    options = TranscriptionOptions(language="en-US")
    store.create_batch("b", {"out": "/out", "options": options.to_dict()},
                       [FileRecord(batch_id="b", index=0, path="/in/a.wav", rel="a.wav", output="/out/a_wav.json",
                                   duration=1.0, job="j1")])
    now = time.time()
    for endpoint, queues in (("emu_a", ("ep.emu_a", "pool.en-US")), ("german", ("ep.german", "pool.de-DE"))):
        store.beat_consumer(ConsumerBeat(f"{endpoint}@vm1", endpoint, 1, queues, now), ttl=30)
    running_on(store, "emu_a", "j1")
    view = load_view(store, "b")
    in_flight = in_flight_for(store, view.header)
    assert in_flight == {"emu_a": 1}  # the German endpoint does not take this batch's files
    assert "in flight: emu_a 1" in plain_line(progress_of(view, in_flight))


def logged_at(event_id: str) -> str:
    """run.log's time column for an attempt logged under `event_id` (its milliseconds)."""
    ms = int(event_id.partition("-")[0])
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ms // 1000))}.{ms % 1000:03d}"


def test_run_log_keeps_the_batch_s_attempts_at_their_time(tmp_path: Path, store: StateStore) -> None:
    store.log_event(batch="other", file="/in/x.wav", endpoint="e", outcome="done")
    cursor = store.event_cursor()  # taken before the batch: earlier attempts are not its own
    store.log_event(batch="b", file="/in/a\x1b[2J.wav", endpoint="emu_a", outcome="error",
                    attempt=1, seconds=0.4, error_class="transient", reason="HTTP 429")
    store.log_event(batch="other", file="/in/y.wav", endpoint="e", outcome="done")
    store.log_event(batch="b", file="/in/a\x1b[2J.wav", endpoint="emu_b", outcome="done",
                    attempt=2, seconds=1.0)
    run_log = RunLog(tmp_path, "b", cursor)
    try:
        assert run_log.follow(store) == 2
        assert run_log.follow(store) == 0  # nothing new
    finally:
        run_log.close()
    lines = (tmp_path / "run.log").read_text().splitlines()
    error_at, done_at = (logged_at(eid) for eid, e in store.recent_events(4) if e["batch"] == "b")
    assert lines == [f"{error_at}:WARNING:emu_a:error /in/a\\x1b[2J.wav on emu_a attempt 1 0.400 s "
                     "[transient] HTTP 429",
                     f"{done_at}:INFO:emu_b:done /in/a\\x1b[2J.wav on emu_b attempt 2 1.000 s"]
