"""Delayed deliveries without Celery ETA: a Redis sorted set and promoters that publish what is due.

Why not `task.retry(countdown=…)`: an ETA task sits unacked in one worker's memory. With the short
visibility timeout that fast crash recovery needs, kombu would restore it while it waits, and the
file would run twice; and a worker that dies loses its timers to the visibility timeout.

So a job that must run later is put in the delayed set by the same Lua script that moves its state
(`StateStore.requeue_job`, or `start_job` when it defers a duplicate), and the task is acked.
`promote_due` publishes what is due. Many promoters may run at once (one per worker VM): each due
entry is *taken* atomically (moved to the promoting set for `hold` seconds), published, then the
promotion ends; a promoter killed in between leaves a promotion whose deadline passes and puts the
entry back, so a job can be published twice (then the second delivery finds the job running or
done and defers or delivers the cached result) but never lost.
"""

from __future__ import annotations

import logging
import threading

from batchscribe.common.errors import StateError
from batchscribe.common.publish import Publisher, TaskSpec
from batchscribe.common.state import StateStore
from batchscribe.worker.outage import RedisTrouble

log = logging.getLogger(__name__)

PROMOTION_HOLD = 30.0  # seconds a promoter may take to publish what it took


def promote_due(store: StateStore, publisher: Publisher, limit: int = 500,
                hold: float = PROMOTION_HOLD) -> int:
    """Publish up to `limit` delayed jobs that are due; returns how many were published.

    Safe to call concurrently from any number of processes.
    """
    deadline, taken = store.take_due(hold, limit)
    if not taken:
        return 0
    specs: list[TaskSpec] = []
    for job_key, raw in taken:
        try:
            specs.append(TaskSpec.from_json(raw))
        except (ValueError, TypeError):  # unreadable entry: report it, do not block the others
            log.error("delayed job %s has no usable task spec (%r); dropping the entry", job_key, raw[:200])
    publisher.publish(specs)
    store.end_promotion(deadline, [job_key for job_key, _ in taken])
    return len(specs)


def run_promoter(stop: threading.Event, store: StateStore, publisher: Publisher,
                 interval: float = 0.5, limit: int = 500) -> None:
    """Call `promote_due` every `interval` seconds until `stop` is set.

    A full batch is followed at once by the next one, so a backlog drains quickly. Redis or
    broker errors are logged and retried on the next tick: a promoter must outlive outages.
    """
    trouble = RedisTrouble(log, "promoter")
    while not stop.is_set():
        promoted = 0
        try:
            promoted = promote_due(store, publisher, limit)
        except StateError as exc:  # keep promoting; the entries stay promoting or delayed meanwhile
            trouble.failed(exc)
        except Exception:
            log.exception("promoting delayed jobs failed; retrying in %.1f s", interval)
        else:
            trouble.ok()
        if promoted < limit:
            stop.wait(interval)
