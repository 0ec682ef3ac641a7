"""Batches and their inputs: the batch header and counters, one record per input file (64 to a
hash, `records`), which inputs failed (by class), and the fingerprint cache that lets a re-submit
skip hashing unchanged files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from batchscribe.common.keys import FILE_BUCKET, SUMMARY_CLOCK_TTL
from batchscribe.common.models import FileRecord, FileState, options_from_dict
from batchscribe.common.state.client import StoreBase, as_text, boundary, fields, stamp, text_dict
from batchscribe.common.state.records import BatchContext, pack_info, settled_fields, short_float, unpack

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
    """A path as a reservation's field: 16 bytes whatever its length (file-system bytes); its first
    8 are the input tag of a reservation."""
    return hashlib.sha256(os.fsencode(path)).digest()[:16]


def _fingerprint_digest(fingerprint: str) -> bytes:
    return hashlib.sha256(fingerprint.encode("utf-8", "surrogateescape")).digest()[:16]


def common_base(paths: Iterable[str]) -> str:
    """The longest prefix ending in "/" that every path has ("" if none): records store paths below it."""
    base: str | None = None
    for path in paths:
        if base is None:
            base = path[:path.rfind("/") + 1]
        elif not path.startswith(base):
            base = os.path.commonprefix([base, path])
            base = base[:base.rfind("/") + 1]
        if not base:
            return ""
    return base or ""


FAILED_CLASSES_FIELD = "f_"  # header counters f_CLASS: failed files by error class


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
        """Write the batch header, counters and every file record in pipelined round trips.

        `header` may give `base` (a prefix of every input path: they are stored below it; by default
        the records' common folder); more records may follow with `add_files`."""
        now = self.clock()
        head = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in header.items()}
        if "base" not in head:
            head["base"] = common_base(r.path for r in records)
        options = options_from_dict(json.loads(head.get("options") or "{}"))
        head.update(id=batch_id, created_at=stamp(now), total="0", audio_done="0", audio_total="0",
                    finished_at="", options_key=options.cache_key())
        for state in FileState:
            head[f"n_{state.value}"] = "0"
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.batch(batch_id), mapping=fields(head))
        pipe.zadd(self.keys.batches(), {batch_id: now})
        pipe.sadd(self.keys.live_batches(), batch_id)
        pipe.execute()
        self._contexts.pop(batch_id, None)
        if records:
            self.add_files(batch_id, records)

    def add_files(self, batch_id: str, records: Sequence[FileRecord], derived_outputs: bool = False) -> None:
        """Append records (queued, with their indexes) to a batch created by `create_batch`: they and
        the batch's counters in one pipelined round trip per 2,000. `derived_outputs`: the caller
        computed each output with `output_for` from the batch's out and options (not checked again)."""
        ctx = self.batch_context(batch_id)
        for start in range(0, len(records), 2000):
            chunk = records[start:start + 2000]
            buckets: dict[str, dict[str, bytes]] = {}
            for r in chunk:
                buckets.setdefault(self.keys.file(batch_id, r.index), {})[str(r.index % FILE_BUCKET)] = \
                    pack_info(r, ctx, derived_outputs)
            pipe = self.redis.pipeline(transaction=False)
            for key, mapping in buckets.items():
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
            bkey = self.keys.batch(batch_id)
            pipe.hincrby(bkey, "total", len(chunk))
            pipe.hincrby(bkey, "n_queued", len(chunk))
            pipe.hincrbyfloat(bkey, "audio_total", float(short_float(sum(r.duration for r in chunk))))
            pipe.execute()

    def batch_context(self, batch_id: str) -> BatchContext:
        """How the batch's records spell their paths (its header's base, out and options)."""
        ctx = self._contexts.get(batch_id)
        if ctx is None:
            raw = self.redis.hmget(self.keys.batch(batch_id), ["base", "out", "options", "options_key"])
            names = ("base", "out", "options", "options_key")
            values = {k: as_text(v) for k, v in zip(names, raw) if v is not None}
            ctx = BatchContext.of_header(batch_id, values)
            if len(self._contexts) > 1000:
                self._contexts.clear()
            self._contexts[batch_id] = ctx
        return cast("BatchContext", ctx)

    def drop_batch(self, batch_id: str, size: int) -> None:
        """Remove a batch refused before anything of it was queued: header, records, its place in the list."""
        classes = [k[len(FAILED_CLASSES_FIELD):] for k in self.batch(batch_id)
                   if k.startswith(FAILED_CLASSES_FIELD)]
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.batches(), batch_id)
        pipe.srem(self.keys.live_batches(), batch_id)
        pipe.delete(self.keys.batch(batch_id), *(self.keys.failed(batch_id, c) for c in classes))
        for n, index in enumerate(range(0, size, FILE_BUCKET)):
            pipe.delete(self.keys.file(batch_id, index))
            if n % 2000 == 1999:
                pipe.execute()
        pipe.execute()
        self._contexts.pop(batch_id, None)

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
        """The records at `indexes` (missing ones skipped), in one round trip; a run of indexes is
        read a hash (64 records) per command."""
        ctx = self.batch_context(batch_id)
        wanted = list(indexes)
        pipe = self.redis.pipeline(transaction=False)
        contiguous = len(wanted) >= FILE_BUCKET // 2 and wanted == list(range(wanted[0], wanted[-1] + 1))
        if contiguous:
            first, last = wanted[0] // FILE_BUCKET, wanted[-1] // FILE_BUCKET
            for bucket in range(first, last + 1):
                pipe.hgetall(self.keys.file(batch_id, bucket * FILE_BUCKET))
            found: dict[int, FileRecord] = {}
            for bucket, raw in zip(range(first, last + 1), pipe.execute()):
                for field, info in raw.items():
                    slot = field.decode()
                    if not slot.isdigit():
                        continue
                    index = bucket * FILE_BUCKET + int(slot)
                    found[index] = unpack(batch_id, index, info, raw.get(f"{slot}s".encode()), ctx)
            return [found[i] for i in wanted if i in found]
        for i in wanted:
            slot = str(i % FILE_BUCKET)
            pipe.hmget(self.keys.file(batch_id, i), [slot, f"{slot}s"])
        return [unpack(batch_id, i, info, state, ctx)
                for i, (info, state) in zip(wanted, pipe.execute()) if info is not None]

    def job_key_of(self, batch_id: str, index: int) -> str:
        """The job of one input now ("" when the record is gone or has none)."""
        found = self.files(batch_id, [index])
        return found[0].job if found else ""

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
        pairs = [split_target(t) for t in targets]
        contexts = {b: self.batch_context(b) for b in dict.fromkeys(b for b, _ in pairs)}
        pipe = self.redis.pipeline(transaction=False)
        for batch_id, index in pairs:
            slot = str(index % FILE_BUCKET)
            pipe.hmget(self.keys.file(batch_id, index), [slot, f"{slot}s"])
        return [unpack(b, i, info, state, contexts[b])
                for (b, i), (info, state) in zip(pairs, pipe.execute()) if info is not None]

    def failed_counts(self, batch_id: str) -> dict[str, int]:
        """Failed files by error class (the header's counters: no record is read)."""
        return failed_counts(self.batch(batch_id))

    def failed_indexes(self, batch_id: str, error_class: str | None = None, start: int = 0,
                       count: int | None = None) -> list[int]:
        """The indexes of failed files (of one class), in order, from index `start` on, at most `count`."""
        classes = [error_class] if error_class else sorted(self.failed_counts(batch_id))
        pipe = self.redis.pipeline(transaction=False)
        for cls in classes:
            if count is None:
                pipe.zrangebyscore(self.keys.failed(batch_id, cls), start, "+inf")
            else:
                pipe.zrangebyscore(self.keys.failed(batch_id, cls), start, "+inf", start=0, num=count)
        merged = sorted(int(i) for found in pipe.execute() for i in found)
        return merged if count is None else merged[:count]

    def failure_samples(self, batch_id: str, per_class: int) -> dict[str, list[int]]:
        """The first `per_class` failed indexes of each error class."""
        classes = sorted(self.failed_counts(batch_id))
        pipe = self.redis.pipeline(transaction=False)
        for cls in classes:
            pipe.zrange(self.keys.failed(batch_id, cls), 0, per_class - 1)
        return {cls: [int(i) for i in found] for cls, found in zip(classes, pipe.execute())}

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
        pairs: list[str] = ["finished_at", now, *settled_fields(values)]
        detach = [self.keys.targets(job_key), self.keys.job(job_key)] if job_key else []
        return bool(self._run("settle", detach, [target, state.value, now, *pairs]))

    def requeue_files(self, batch_id: str, records: Sequence[FileRecord], chunk: int = 500) -> int:
        """Failed files queued again with what their new fingerprint says (`sha256`, `duration`,
        `job` of each record), attempts and reason cleared; returns how many were failed."""
        ctx = self.batch_context(batch_id)
        moved = 0
        for start in range(0, len(records), chunk):
            args: list[Any] = [batch_id, stamp(self.clock())]
            for r in records[start:start + chunk]:
                args += [r.index, pack_info(r, ctx)]
            moved += int(self._run("requeue_files", (), args))
        return moved

    # ---- output reservations: no two running batches write one file --------------------

    def reserve_outputs(self, batch_id: str, outputs: Sequence[tuple[str, str]],
                        chunk: int = 5000) -> list[tuple[str, str]]:
        """Reserve each (output path, input path) for `batch_id`; returns the clashes (output, batch
        holding it for another input).

        A clash means a batch that is still running writes that file for another input: then this
        batch keeps no reservation (each chunk's script is all-or-nothing; earlier chunks are
        released, and an output taken over from a batch with the same input is left unreserved by
        that). The same input submitted again takes its output over. A reservation is one field of
        one of 4,096 hashes (16-byte digest → 8-byte input tag + batch id, ~55 bytes) until
        `release_outputs`; a completed batch's leftover reservations are stale and taken over.
        """
        digests = [_path_digest(o) for o, _ in outputs]
        pairs = [x for (_, path), digest in zip(outputs, digests) for x in (digest, _path_digest(path)[:8])]
        for start in range(0, len(digests), chunk):
            reply = [as_text(x) for x in self._run("reserve_outputs", (),
                                                   [batch_id, *pairs[2 * start:2 * (start + chunk)]])]
            if reply:
                self._release_digests(batch_id, digests[:start], chunk)
                return [(outputs[start + int(pos) - 1][0], other)
                        for pos, other in zip(reply[0::2], reply[1::2])]
        return []

    def output_holder(self, output: str) -> str:
        """The batch holding a reservation on `output` ("" if none)."""
        digest = _path_digest(output)
        held = self.redis.hget(self.keys.output_reservations(digest), digest)
        return as_text(held[8:]) if held else ""

    def release_outputs(self, batch_id: str, outputs: Sequence[str], chunk: int = 5000) -> None:
        """Drop the reservations `batch_id` still holds on these output paths (it completed)."""
        self._release_digests(batch_id, [_path_digest(o) for o in outputs], chunk)

    def _release_digests(self, batch_id: str, digests: Sequence[bytes], chunk: int) -> None:
        for start in range(0, len(digests), chunk):
            self._run("release_outputs", (), [batch_id, *digests[start:start + chunk]])

    # ---- fingerprint cache (hash + duration of unchanged files) ---------------------------

    def fingerprint_lookup(self, fingerprints: Sequence[str]) -> list[tuple[str, float] | None]:
        """(sha256, duration) cached for each "path|size|version", or None."""
        out: list[tuple[str, float] | None] = []
        for start in range(0, len(fingerprints), 5000):
            digests = [_fingerprint_digest(fp) for fp in fingerprints[start:start + 5000]]
            for raw in self._run("fingerprints", (), digests):
                out.append((raw[:32].hex(), float(raw[32:] or 0)) if raw and len(raw) > 32 else None)
        return out

    def fingerprint_store(self, entries: dict[str, tuple[str, float]]) -> None:
        """Remember (sha256, duration) of each "path|size|version"."""
        items = list(entries.items())
        for start in range(0, len(items), 5000):
            args: list[bytes] = []
            for fp, (sha, duration) in items[start:start + 5000]:
                args += [_fingerprint_digest(fp), bytes.fromhex(sha) + short_float(duration).encode()]
            self._run("remember_fingerprints", (), args)


def failed_counts(header: dict[str, str]) -> dict[str, int]:
    """Failed files by error class, from a batch header's counters (classes with none left out)."""
    found = {k[len(FAILED_CLASSES_FIELD):]: int(v or 0) for k, v in header.items()
             if k.startswith(FAILED_CLASSES_FIELD)}
    return {cls: n for cls, n in found.items() if n > 0}
