"""Batches and their inputs: the batch header and counters, one record per input file, which
inputs failed, and the fingerprint cache that lets a re-submit skip hashing unchanged files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from batchscribe.common.keys import SUMMARY_CLOCK_TTL
from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.state.client import StoreBase, as_text, boundary, fields, stamp, text_dict

FILE_PAGE = 1000  # file records read per round trip when a batch is read in full


def target_id(batch_id: str, index: int) -> str:
    """How a job names one input that wants its result: "batch_id:index"."""
    return f"{batch_id}:{index}"


def split_target(target: str) -> tuple[str, int]:
    batch_id, _, index = target.rpartition(":")
    return batch_id, int(index)


def file_pages(store: Batches, batch_id: str, indexes: range | Sequence[int],
               page: int = FILE_PAGE) -> Iterator[list[FileRecord]]:
    """The batch's records at `indexes`, `page` per round trip: a batch of any size in bounded memory."""
    for start in range(0, len(indexes), page):
        yield store.files(batch_id, indexes[start:start + page])


def _path_digest(path: str) -> bytes:
    """A path as a reservation's field or input tag: 16 bytes whatever its length (file-system bytes)."""
    return hashlib.sha256(os.fsencode(path)).digest()[:16]


@dataclass(frozen=True)
class SummaryClock:
    """When a batch's run summary is rewritten (seconds; `common.summary` says why): when its counts
    changed, after max(min_gap, factor × the last rewrite's cost); anyway after max(period, factor ×
    cost); never waiting more than `most`."""

    min_gap: float = 2.0
    period: float = 30.0
    factor: float = 10.0
    most: float = SUMMARY_CLOCK_TTL / 2


@dataclass
class CancelOutcome:
    """What `Batches.cancel_batch` did: `verdict` "cancelled" (or "finished", "missing": nothing
    done); `completed`: this cancel settled the batch's last file (the caller writes its summary)."""

    verdict: str
    completed: bool = False
    files: int = 0
    jobs: int = 0


@boundary
class Batches(StoreBase):
    def create_batch(self, batch_id: str, header: dict[str, Any], records: Sequence[FileRecord]) -> None:
        """Write the batch header, counters and every file record in pipelined round trips."""
        now = self.clock()
        head = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in header.items()}
        head.update(id=batch_id, created_at=stamp(now), total=str(len(records)), audio_done="0",
                    audio_total=f"{sum(r.duration for r in records):.3f}", finished_at="")
        for state in FileState:
            head[f"n_{state.value}"] = "0"
        head["n_queued"] = str(len(records))
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.batch(batch_id), mapping=fields(head))
        pipe.zadd(self.keys.batches(), {batch_id: now})
        pipe.sadd(self.keys.live_batches(), batch_id)
        for i, record in enumerate(records):
            pipe.hset(self.keys.file(batch_id, record.index), mapping=fields(record.to_redis()))
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()

    def drop_batch(self, batch_id: str, size: int) -> None:
        """Remove a batch refused before anything of it was queued: header, records, its place in the list."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.batches(), batch_id)
        pipe.srem(self.keys.live_batches(), batch_id)
        pipe.delete(self.keys.batch(batch_id), self.keys.failed(batch_id))
        for index in range(size):
            pipe.delete(self.keys.file(batch_id, index))
            if index % 2000 == 1999:
                pipe.execute()
        pipe.execute()

    def batch(self, batch_id: str) -> dict[str, str]:
        return text_dict(self.redis.hgetall(self.keys.batch(batch_id)))

    def batch_formats(self, batch_id: str) -> list[str]:
        """The output formats the batch asked for (json, txt)."""
        return (as_text(self.redis.hget(self.keys.batch(batch_id), "formats")) or "json").split(",")

    def batch_log_folder(self, batch_id: str) -> str:
        """The batch's `--log-folder` ("" without one)."""
        return as_text(self.redis.hget(self.keys.batch(batch_id), "log_folder"))

    def batch_ids(self, limit: int = 20, offset: int = 0) -> list[str]:
        """Batch ids, newest first: `limit` of them after skipping `offset`."""
        ids = cast("list[bytes]", self.redis.zrevrange(self.keys.batches(), offset, offset + limit - 1))
        return [as_text(b) for b in ids]

    def mark_batch(self, batch_id: str, **values: str) -> None:
        """Set header fields the counters do not depend on (e.g. `deleted_at`)."""
        self.redis.hset(self.keys.batch(batch_id), mapping=fields(values))

    def files(self, batch_id: str, indexes: Iterable[int]) -> list[FileRecord]:
        pipe = self.redis.pipeline(transaction=False)
        for i in indexes:
            pipe.hgetall(self.keys.file(batch_id, i))
        return [FileRecord.from_redis(text_dict(raw)) for raw in pipe.execute() if raw]

    # ---- batches not finished yet, and their run summaries --------------------------------

    def live_batch_ids(self) -> list[str]:
        """Batches created (or re-opened by `retry-failed`) and not completed since."""
        return sorted(as_text(b) for b in self.redis.smembers(self.keys.live_batches()))

    def set_live(self, batch_id: str, live: bool) -> None:
        if live:
            self.redis.sadd(self.keys.live_batches(), batch_id)
        else:
            self.redis.srem(self.keys.live_batches(), batch_id)

    def take_summary_turn(self, batch_id: str, signature: str, clock: SummaryClock) -> bool:
        """True if it is this caller's turn to rewrite the batch's run summary now
        (`common.lua.SUMMARY_TURN`); then no other process starts one until `clock` says the next is due."""
        return bool(self._run("summary_turn", [self.keys.summary_clock(batch_id)],
                              [signature, stamp(self.clock()), clock.min_gap, clock.period, clock.factor,
                               clock.most, int(1000 * SUMMARY_CLOCK_TTL)]))

    def summary_written(self, batch_id: str, signature: str, started: float, cost: float) -> None:
        """Record a rewrite begun at `started` that took `cost` seconds: the next waits in proportion."""
        self.redis.set(self.keys.summary_clock(batch_id), f"{signature}|{stamp(started)}|{cost:.3f}",
                       px=int(1000 * SUMMARY_CLOCK_TTL))

    def hold_summary_lock(self, batch_id: str, holder: str, ttl: float) -> bool:
        return bool(self.redis.set(self.keys.summary_lock(batch_id), holder, nx=True, px=int(1000 * ttl)))

    def release_summary_lock(self, batch_id: str, holder: str) -> None:
        self._run("release_held", [self.keys.summary_lock(batch_id)], [holder])

    def records(self, targets: Sequence[str]) -> list[FileRecord]:
        """The file records of "batch_id:index" targets, in one round trip; missing ones skipped."""
        pipe = self.redis.pipeline(transaction=False)
        for target in targets:
            pipe.hgetall(self.keys.file(*split_target(target)))
        return [FileRecord.from_redis(text_dict(raw)) for raw in pipe.execute() if raw]

    def failed_indexes(self, batch_id: str) -> list[int]:
        return sorted(int(i) for i in self.redis.smembers(self.keys.failed(batch_id)))

    def cancel_batch(self, batch_id: str, size: int, chunk: int = 1000) -> CancelOutcome:
        """Cancel every file of the batch that has not finished, `chunk` files per script call
        (`common.lua.CANCEL` says what becomes of their jobs). Finished or unknown batches are
        left alone (`verdict` "finished" / "missing")."""
        k = self.keys
        outcome = CancelOutcome("cancelled" if size else "finished")
        for start in range(0, max(size, 1), chunk):
            indexes = range(start, min(size, start + chunk))
            reply = self._run("cancel", [k.batch(batch_id), k.delayed(), k.delayed_specs()],
                              [batch_id, stamp(self.clock()), *indexes])
            verdict, completed, files, jobs = as_text(reply[0]), *(int(x) for x in reply[1:])
            if verdict != "cancelled":
                return CancelOutcome(verdict)
            outcome.completed |= bool(completed)
            outcome.files += files
            outcome.jobs += jobs
        return outcome

    def settle_file(self, target: str, state: FileState, job_key: str = "", **values: Any) -> bool:
        """Move one input to `state` (with its fields) and detach it from `job_key`'s targets;
        True if that completed its batch."""
        now = stamp(self.clock())
        pairs: list[str] = ["finished_at", now]
        for k, v in values.items():
            pairs += [k, f"{v:.3f}" if isinstance(v, float) else str(v)]
        detach = [self.keys.targets(job_key)] if job_key else []
        return bool(self._run("settle", detach, [target, state.value, now, *pairs]))

    # ---- output reservations: no two running batches write one file --------------------

    def reserve_outputs(self, batch_id: str, outputs: Sequence[tuple[str, str]],
                        chunk: int = 5000) -> list[tuple[str, str]]:
        """Reserve each (output path, input path) for `batch_id`; returns the clashes (output, batch
        holding it for another input).

        A clash means a batch that is still running writes that file for another input: then this
        batch keeps no reservation (each chunk's script is all-or-nothing; earlier chunks are
        released, and an output taken over from a batch with the same input is left unreserved by
        that). The same input submitted again takes its output over. A reservation is one field of
        one hash (16-byte digest → 16-byte input tag + batch id, ~120 bytes) until
        `release_outputs`; a completed batch's leftover reservations are stale and taken over.
        """
        digests = [_path_digest(o) for o, _ in outputs]
        pairs = [x for (_, path), digest in zip(outputs, digests) for x in (digest, _path_digest(path))]
        for start in range(0, len(digests), chunk):
            reply = [as_text(x) for x in self._run("reserve_outputs", [self.keys.output_reservations()],
                                                   [batch_id, *pairs[2 * start:2 * (start + chunk)]])]
            if reply:
                self._release_digests(batch_id, digests[:start], chunk)
                return [(outputs[start + int(pos) - 1][0], other)
                        for pos, other in zip(reply[0::2], reply[1::2])]
        return []

    def release_outputs(self, batch_id: str, outputs: Sequence[str], chunk: int = 5000) -> None:
        """Drop the reservations `batch_id` still holds on these output paths (it completed)."""
        self._release_digests(batch_id, [_path_digest(o) for o in outputs], chunk)

    def _release_digests(self, batch_id: str, digests: Sequence[bytes], chunk: int) -> None:
        for start in range(0, len(digests), chunk):
            self._run("release_outputs", [self.keys.output_reservations()],
                      [batch_id, *digests[start:start + chunk]])

    # ---- fingerprint cache (hash + duration of unchanged files) ---------------------------

    def fingerprint_lookup(self, fingerprints: Sequence[str]) -> list[str | None]:
        out: list[str | None] = []
        for start in range(0, len(fingerprints), 5000):
            chunk = fingerprints[start:start + 5000]
            out += [as_text(v) or None for v in self.redis.hmget(self.keys.fingerprints(), chunk)]
        return out

    def fingerprint_store(self, entries: dict[str, str]) -> None:
        if entries:
            self.redis.hset(self.keys.fingerprints(), mapping=fields(entries))
