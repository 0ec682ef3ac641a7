"""What the Prometheus metrics read at scrape time (`common.metrics`): queue depths as kombu keeps
them, the delayed set, unacked deliveries, recent batches' counters and the worker VMs seen lately.

Every method is a read in one or two pipelined round trips; nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from batchscribe.common.keys import KOMBU_UNACKED, kombu_queue_lists
from batchscribe.common.state.client import StoreBase, as_text, boundary
from batchscribe.common.state.liveness import VMBeat

BATCH_FIELDS = ("total", "n_queued", "n_running", "n_retrying", "n_done", "n_failed", "n_cancelled",
                "finished_at", "options")


@dataclass(frozen=True)
class QueueDepth:
    messages: int  # ready messages, every priority list of the queue
    oldest_queued_at: float | None  # when the oldest of them was queued; None: empty or unknown


@dataclass(frozen=True)
class DelayedCounts:
    waiting: int  # jobs in the delayed set (retry backoff, bounces, deferred duplicates)
    due: int  # of those, due now: a promoter should publish them within a second
    promoting: int  # taken by a promoter, being published


@dataclass(frozen=True)
class SeenVM:
    hostname: str
    last_beat: float  # its last heartbeat (kept for 10 ownership TTLs after it stops)
    beat: VMBeat | None  # its supervisor's live heartbeat; None once that expired


def job_key_of(message: bytes | str) -> str | None:
    """The job of a transcribe or convert task message as kombu's Redis transport stores it (the
    JSON envelope, a base64 or plain body, Celery protocol 2: [[job_key, options], kwargs, embed]):
    its key, or ``@INDEX@BATCH`` when the message names the input that published it
    (`common.publish.input_ref`); None if it is not one."""
    from batchscribe.common.publish import message_task  # publish imports the state package

    try:
        args, kwargs = message_task(message)
        key = args[0]
        if isinstance(key, str) and key.startswith("@"):
            key = f"{key}@{kwargs.get('batch', '')}"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return key if isinstance(key, str) else None


@boundary
class Monitoring(StoreBase):
    def queue_depths(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        """Ready messages per queue (LLEN of each of kombu's priority lists) and since when the
        oldest waits (the `queued_at` of the job in the last message of each list)."""
        lists = {queue: kombu_queue_lists(queue) for queue in queues}
        pipe = self.redis.pipeline(transaction=False)
        for names in lists.values():
            for name in names:
                pipe.llen(name)
                pipe.lindex(name, -1)
        replies = iter(pipe.execute())
        counts: dict[str, int] = {}
        oldest: dict[str, list[str]] = {}
        for queue, names in lists.items():
            counts[queue] = 0
            for _ in names:
                length, tail = next(replies), next(replies)
                counts[queue] += int(length)
                key = job_key_of(tail) if tail else None
                if key is not None:
                    oldest.setdefault(queue, []).append(key)
        stamps = iter([self._queued_at(key) for keys in oldest.values() for key in keys])
        depths = {}
        for queue in queues:
            seen = [float(s) for s in (next(stamps) for _ in oldest.get(queue, ())) if s]
            depths[queue] = QueueDepth(counts[queue], min(seen) if seen else None)
        return depths

    def _queued_at(self, key: str) -> str:
        if key.startswith("@"):  # "@INDEX@BATCH": the input's record says which job it is
            index, _, batch = key[1:].partition("@")
            records = self.files(batch, [int(index)]) if index.isdigit() else []  # type: ignore[attr-defined]
            key = records[0].job if records else ""
        return self.job(key).get("queued_at", "") if key else ""  # type: ignore[attr-defined]

    def delayed_counts(self) -> DelayedCounts:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.keys.delayed())
        pipe.zcount(self.keys.delayed(), "-inf", self.clock())
        pipe.zcard(self.keys.delayed_promoting())
        waiting, due, promoting = pipe.execute()
        return DelayedCounts(int(waiting), int(due), int(promoting))

    def unacked_count(self) -> int:
        """Deliveries consumers hold and have not acked yet (kombu's unacked hash)."""
        return int(self.redis.hlen(KOMBU_UNACKED))

    def recent_batches(self, limit: int) -> list[tuple[str, dict[str, str]]]:
        """The newest `limit` batches with their counters, `finished_at` and `options`."""
        newest = cast("list[bytes]", self.redis.zrevrange(self.keys.batches(), 0, limit - 1))
        ids = [as_text(b) for b in newest]
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hmget(self.keys.batch(batch_id), BATCH_FIELDS)
        found = []
        for batch_id, values in zip(ids, pipe.execute()):
            if values[0] is not None:  # a batch being dropped (refused submit) has no header
                fields = {f: as_text(v) for f, v in zip(BATCH_FIELDS, values) if v is not None}
                found.append((batch_id, fields))
        return found

    def seen_vms(self) -> list[SeenVM]:
        """Worker VMs that beat within the last 10 ownership TTLs, with their live heartbeat if any."""
        entries = cast("list[tuple[bytes, float]]",
                       self.redis.zrange(self.keys.vms(), 0, -1, withscores=True))
        names = [as_text(name) for name, _ in entries]
        beats = self.redis.mget([self.keys.vm(name) for name in names]) if names else []
        return [SeenVM(name, float(at), VMBeat.from_json(as_text(raw)) if raw else None)
                for name, (_, at), raw in zip(names, entries, beats)]
