"""Batches and their inputs: the batch header and counters, one record per input file, which
inputs failed, and the fingerprint cache that lets a re-submit skip hashing unchanged files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, cast

from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.state.client import StoreBase, as_text, boundary, fields, stamp, text_dict


def target_id(batch_id: str, index: int) -> str:
    """How a job names one input that wants its result: "batch_id:index"."""
    return f"{batch_id}:{index}"


def split_target(target: str) -> tuple[str, int]:
    batch_id, _, index = target.rpartition(":")
    return batch_id, int(index)


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
        for i, record in enumerate(records):
            pipe.hset(self.keys.file(batch_id, record.index), mapping=fields(record.to_redis()))
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()

    def batch(self, batch_id: str) -> dict[str, str]:
        return text_dict(self.redis.hgetall(self.keys.batch(batch_id)))

    def batch_formats(self, batch_id: str) -> list[str]:
        """The output formats the batch asked for (json, txt)."""
        return (as_text(self.redis.hget(self.keys.batch(batch_id), "formats")) or "json").split(",")

    def batch_ids(self, limit: int = 20) -> list[str]:
        ids = cast("list[bytes]", self.redis.zrevrange(self.keys.batches(), 0, limit - 1))  # no scores
        return [as_text(b) for b in ids]

    def files(self, batch_id: str, indexes: Iterable[int]) -> list[FileRecord]:
        pipe = self.redis.pipeline(transaction=False)
        for i in indexes:
            pipe.hgetall(self.keys.file(batch_id, i))
        return [FileRecord.from_redis(text_dict(raw)) for raw in pipe.execute() if raw]

    def records(self, targets: Sequence[str]) -> list[FileRecord]:
        """The file records of "batch_id:index" targets, in one round trip; missing ones skipped."""
        pipe = self.redis.pipeline(transaction=False)
        for target in targets:
            pipe.hgetall(self.keys.file(*split_target(target)))
        return [FileRecord.from_redis(text_dict(raw)) for raw in pipe.execute() if raw]

    def failed_indexes(self, batch_id: str) -> list[int]:
        return sorted(int(i) for i in self.redis.smembers(self.keys.failed(batch_id)))

    def settle_file(self, target: str, state: FileState, job_key: str = "", **values: Any) -> bool:
        """Move one input to `state` (with its fields) and detach it from `job_key`'s targets;
        True if that completed its batch."""
        now = stamp(self.clock())
        pairs: list[str] = ["finished_at", now]
        for k, v in values.items():
            pairs += [k, f"{v:.3f}" if isinstance(v, float) else str(v)]
        detach = [self.keys.targets(job_key)] if job_key else []
        return bool(self._run("settle", detach, [target, state.value, now, *pairs]))

    # ---- fingerprint cache (hash + duration of unchanged files) ---------------------------

    def probe_lookup(self, fingerprints: Sequence[str]) -> list[str | None]:
        out: list[str | None] = []
        for start in range(0, len(fingerprints), 5000):
            chunk = fingerprints[start:start + 5000]
            out += [as_text(v) or None for v in self.redis.hmget(self.keys.probe_cache(), chunk)]
        return out

    def probe_store(self, entries: dict[str, str]) -> None:
        if entries:
            self.redis.hset(self.keys.probe_cache(), mapping=fields(entries))
