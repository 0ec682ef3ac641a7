"""Follow a batch to its end for `submit --wait`, `retry-failed --wait` and `run`: the display
(`producer.display`: live on a terminal, plain lines otherwise) and `run.log` (`producer.runlog`).
(`run_summary.json` is kept fresh by the workers' supervisors, `common.summary.refresh_live`: a
rewrite of a huge batch must not freeze the display, and the batch may have nobody waiting.)

The display is redrawn every `interval` (0.5 s); in between, only the batch's counters are read,
every SETTLED_POLL, so that the end of the batch is seen within 50 ms rather than within half a
second: `run` stops its workers, and the command returns, that much sooner."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from batchscribe.common.errors import RedisUnavailableError
from batchscribe.common.models import options_from_dict
from batchscribe.common.queues import queue_for
from batchscribe.common.state import StateStore
from batchscribe.common.summary import batch_complete
from batchscribe.producer.display import Display, Progress, plain_line
from batchscribe.producer.runlog import RunLog
from batchscribe.producer.status import BatchView, load_view

IN_FLIGHT_EVERY = 2.0  # seconds between reads of the endpoints' in-flight counts
SETTLED_POLL = 0.05  # seconds between reads of the batch's counters while the display waits


def progress_of(view: BatchView, in_flight: dict[str, int], title: str = "transcribing") -> Progress:
    return Progress(batch_id=view.batch_id, title=title, done=view.settled, total=view.total,
                    audio_done=view.audio_done, audio_total=view.audio_total, elapsed=view.elapsed,
                    eta=view.eta, complete=view.complete, failed=view.counts.get("failed", 0),
                    failed_by_class=dict(view.failed_by_class), cancelled=view.counts.get("cancelled", 0),
                    in_flight=in_flight, waiting=view.unserved)


def in_flight_for(store: StateStore, header: dict[str, str]) -> dict[str, int]:
    """Files running now on each endpoint whose live consumers take this batch's files (all batches'
    files: in-flight entries are per endpoint)."""
    queue = queue_for(options_from_dict(json.loads(header.get("options") or "{}")))
    endpoints = sorted({b.endpoint for b in store.consumer_beats().values() if queue in b.queues})
    return {ep: int(store.endpoint_stats(ep).get("in_flight", 0)) for ep in endpoints}


class StoppedWaiting(RedisUnavailableError):
    """Redis did not answer for the whole patience: the waiting command gives up, the batch goes on."""

    def __init__(self, batch_id: str, seconds: float, last: RedisUnavailableError) -> None:
        super().__init__(f"Redis has not answered for {seconds:.0f} s ({last}); stopped waiting for batch "
                         f"{batch_id}. The batch goes on without this command wherever workers still run "
                         f"it: follow it with `batchscribe status {batch_id}`, or run the same command "
                         "again (BATCHSCRIBE_WAIT_REDIS_TIMEOUT sets how long to wait)")
        self.batch_id = batch_id


WORKERS_EVERY = 10.0  # seconds between checks that a live worker serves the batch


def wait_for_batch(store: StateStore, batch_id: str, stream: TextIO = sys.stderr,
                   interval: float = 0.5, timeout: float | None = None, redis_patience: float = 300.0,
                   run_log: RunLog | None = None, title: str = "transcribing") -> BatchView:
    """Poll until every file is done or failed, showing it on `stream` (`Display`).

    A Redis restart is waited out; an outage longer than `redis_patience` seconds raises
    `StoppedWaiting`. Every WORKERS_EVERY seconds the display also says when no live worker serves
    the batch (it would wait for ever otherwise).
    """
    display = Display(stream)
    try:
        return _follow(store, batch_id, display, interval, timeout, redis_patience, run_log, title)
    finally:
        display.close()


def _follow(store: StateStore, batch_id: str, display: Display, interval: float, timeout: float | None,
            redis_patience: float, run_log: RunLog | None, title: str) -> BatchView:
    deadline = None if timeout is None else time.monotonic() + timeout
    outage: float | None = None
    unserved, workers_checked = "", time.monotonic()  # submit has just checked (run: workers start)
    in_flight: dict[str, int] = {}
    last_flight = float("-inf")
    while True:
        now = time.monotonic()
        check = now - workers_checked >= WORKERS_EVERY
        try:
            view = load_view(store, batch_id, with_failures=False, check_workers=check)
            if now - last_flight >= IN_FLIGHT_EVERY:
                in_flight, last_flight = in_flight_for(store, view.header), now
            if run_log is not None:
                run_log.follow(store)
        except RedisUnavailableError as exc:  # a Redis restart: wait it out, up to the patience
            outage = outage if outage is not None else time.monotonic()
            if time.monotonic() - outage > redis_patience:
                raise StoppedWaiting(batch_id, time.monotonic() - outage, exc) from exc
            display.note(f"Redis unavailable ({exc}); retrying…")
            time.sleep(max(interval, 1.0))
            continue
        outage = None
        if check:
            unserved, workers_checked = view.unserved, now
        view.unserved = unserved
        progress = progress_of(view, in_flight, title)
        display.update(progress)
        if run_log is not None:
            run_log.progress(plain_line(progress), now)
        if view.complete or (deadline is not None and now > deadline):
            if run_log is not None:
                run_log.note(f"batch {batch_id}: {plain_line(progress)}")
            return load_view(store, batch_id) if view.counts.get("failed") else view  # + failed files
        settle_wait(store, batch_id, interval)


def settle_wait(store: StateStore, batch_id: str, seconds: float) -> None:
    """Sleep `seconds`, or less: until the batch's counters say every file has settled (one HGETALL
    of its header every SETTLED_POLL). A Redis error ends the wait; the caller's next read meets it."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(SETTLED_POLL, left))
        try:
            if batch_complete(store.batch(batch_id)):
                return
        except RedisUnavailableError:
            return
