"""Redis as the system of record: batches, file records, dedupe jobs, cached results, the event log.

All multi-key transitions run as Lua scripts (`common.lua`) so two producers and any number of workers see one
consistent order of events:

* a **job** is one unit of engine work (content hash + result-changing options). Its life:
  ``claimed`` (a producer will publish it; expires after claim_ttl) → ``queued`` → ``running``
  ⇄ ``retrying`` → ``done`` | ``failed``. Inputs that want its result are its **targets**.
* a **file** is one input of one batch (`FileRecord`); its state follows its job. Batch counters
  (n_queued, n_running, …) move only inside the file transition script, so they never drift.
* a running job holds a **lease** (`delivery`, `lease_until` in its hash) that its consumer's
  lease keeper extends; a delivery that finds a live lease is deferred, one that finds an expired
  lease counts a crash and takes over (docs/design.md §Deliveries, leases and retries).
* a job that must run later sits in the **delayed** set (score: when) with the task to publish in
  the delayed specs hash; promoters claim due entries for a short time while they publish them.

Scripts build keys from the prefix they are given: batchscribe targets a single Redis (or a
replicated primary), not Redis Cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis

from batchscribe.common.errors import StateError
from batchscribe.common.keys import Keys
from batchscribe.common.lua import (
    CLAIM,
    CLAIM_DUE,
    CLAIM_OUTPUTS,
    EXTEND,
    FINISH,
    PUBLISHED,
    RELEASE,
    RELEASE_OUTPUTS,
    REQUEUE,
    SETTLE,
    START,
)
from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.settings import Settings, redact

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT, StreamRangeResponse


@dataclass(frozen=True)
class JobStart:
    """What the worker learns when it starts a job's delivery.

    `previous` is the job's state before (done/missing/failed: nothing to run), or "deferred"
    when another delivery holds a live lease (the job is in the delayed set until `lease_until`).
    """

    previous: str
    attempts: int
    crashes: int
    reroutes: int
    first_started_at: float
    crashed_endpoint: str  # the endpoint of a dead delivery this one took over, else ""
    lease_until: float
    targets: list[str]

    @property
    def runs(self) -> bool:
        return self.previous not in ("done", "missing", "failed", "deferred", "bounced")


@dataclass(frozen=True)
class LeaseItem:
    """One running delivery whose lease (and kombu delivery tag) a lease keeper keeps fresh."""

    job_key: str
    delivery: str
    tag: str


def target_id(batch_id: str, index: int) -> str:
    return f"{batch_id}:{index}"


def split_target(target: str) -> tuple[str, int]:
    batch_id, _, index = target.rpartition(":")
    return batch_id, int(index)


def _path_digest(path: str) -> bytes:
    """A path as an output claim's field or input tag: 16 bytes whatever its length (file-system bytes)."""
    return hashlib.sha256(os.fsencode(path)).digest()[:16]


def pack_result(result: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(result, separators=(",", ":")).encode(), 6)


def unpack_result(blob: bytes) -> dict[str, Any]:
    return json.loads(zlib.decompress(blob))


def as_text(value: bytes | str | None) -> str:
    """One Redis reply value as text. Our client returns bytes (no decode_responses); None → "".

    Bytes that are not UTF-8 (a file name's, see `common.names`) come back as the lone surrogates
    they were stored from, so a name survives the round trip exactly.
    """
    if value is None:
        return ""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def text_dict(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A Redis hash (or stream entry) reply with keys and values as text."""
    return {as_text(k): as_text(v) for k, v in raw.items()}


def _stream_entries(entries: StreamRangeResponse) -> list[tuple[str, dict[str, str]]]:
    """Stream entries as (id, fields) text. Only XCLAIM replies hold None fields (deleted entries)."""
    return [(as_text(eid), text_dict(data or {})) for eid, data in entries]


def _fields(values: dict[str, str]) -> dict[FieldT, EncodableT]:
    """`values` as redis-py's hash/stream field type. That type, dict[FieldT, EncodableT], is
    invariant in its key, so a dict[str, str] does not match it although every str is a FieldT."""
    return cast("dict[FieldT, EncodableT]", values)


class StateStore:
    """Typed access to everything batchscribe keeps in Redis. One instance per process is enough."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._scripts = {name: client.register_script(src) for name, src in (
            ("claim", CLAIM), ("published", PUBLISHED), ("start", START),
            ("requeue", REQUEUE), ("finish", FINISH), ("settle", SETTLE), ("extend", EXTEND),
            ("claim_due", CLAIM_DUE), ("release", RELEASE), ("claim_outputs", CLAIM_OUTPUTS),
            ("release_outputs", RELEASE_OUTPUTS))}

    @classmethod
    def connect(cls, settings: Settings, check: bool = True) -> StateStore:
        """Connect and (by default) prove Redis answers, with a message a user understands."""
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30,
                                      health_check_interval=15, retry_on_timeout=True,
                                      encoding_errors="surrogateescape")  # file names: `as_text`
        store = cls(client, Keys(settings.key_prefix))
        if check:
            store.ping(settings.redis_url)
        return store

    def ping(self, url: str) -> None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise StateError(
                f"cannot reach Redis at {redact(url)}: {exc}. Start redis-server or pass --broker / "
                "BATCHSCRIBE_REDIS_URL pointing at a running Redis."
            ) from exc

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    # ---- batches and files -------------------------------------------------------------

    def create_batch(self, batch_id: str, header: dict[str, Any], records: Sequence[FileRecord]) -> None:
        """Write the batch header, counters and every file record in pipelined round trips."""
        now = time.time()
        head = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in header.items()}
        head.update(id=batch_id, created_at=f"{now:.3f}", total=str(len(records)), audio_done="0",
                    audio_total=f"{sum(r.duration for r in records):.3f}", finished_at="")
        for state in FileState:
            head[f"n_{state.value}"] = "0"
        head["n_queued"] = str(len(records))
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.batch(batch_id), mapping=_fields(head))
        pipe.zadd(self.keys.batches(), {batch_id: now})
        for i, record in enumerate(records):
            pipe.hset(self.keys.file(batch_id, record.index), mapping=_fields(record.to_redis()))
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()

    def drop_batch(self, batch_id: str, size: int) -> None:
        """Remove a batch refused before anything of it was queued: header, records, its place in the list."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.batches(), batch_id)
        pipe.delete(self.keys.batch(batch_id), self.keys.failed(batch_id))
        for index in range(size):
            pipe.delete(self.keys.file(batch_id, index))
            if index % 2000 == 1999:
                pipe.execute()
        pipe.execute()

    def batch(self, batch_id: str) -> dict[str, str]:
        return text_dict(self.redis.hgetall(self.keys.batch(batch_id)))

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

    def settle_file(self, target: str, state: FileState, job_key: str = "",
                    **fields: Any) -> bool:
        """Move one input to `state` (with its fields); True if that completed its batch."""
        now = f"{time.time():.3f}"
        pairs: list[str] = ["finished_at", now]
        for k, v in fields.items():
            pairs += [k, f"{v:.3f}" if isinstance(v, float) else str(v)]
        return bool(self._scripts["settle"](args=[self.prefix, target, state.value, job_key, *pairs]))

    # ---- output claims: no two running batches write one file ------------------------

    def claim_outputs(self, batch_id: str, outputs: Sequence[tuple[str, str]],
                      chunk: int = 5000) -> list[tuple[str, str]]:
        """Claim each (output path, input path) for `batch_id`; returns the clashes (output, batch
        holding it for another input).

        A clash means a batch that is still running writes that file for another input: then this
        batch keeps no claim (each chunk's script is all-or-nothing; earlier chunks are released,
        and an output taken over from a batch with the same input is left unclaimed by that). The
        same input submitted again takes its output over. A claim is one field of one hash (16-byte
        digest → 16-byte input tag + batch id, ~120 bytes) until `release_outputs`; a completed
        batch's leftover claims are stale and simply taken over.
        """
        digests = [_path_digest(o) for o, _ in outputs]
        pairs = [x for (_, path), digest in zip(outputs, digests) for x in (digest, _path_digest(path))]
        for start in range(0, len(digests), chunk):
            reply = [as_text(x) for x in self._scripts["claim_outputs"](
                args=[self.prefix, batch_id, *pairs[2 * start:2 * (start + chunk)]])]
            if reply:
                self._release_digests(batch_id, digests[:start], chunk)
                return [(outputs[start + int(pos) - 1][0], other)
                        for pos, other in zip(reply[0::2], reply[1::2])]
        return []

    def release_outputs(self, batch_id: str, outputs: Sequence[str], chunk: int = 5000) -> None:
        """Drop the claims `batch_id` still holds on these output paths (it completed)."""
        self._release_digests(batch_id, [_path_digest(o) for o in outputs], chunk)

    def _release_digests(self, batch_id: str, digests: Sequence[bytes], chunk: int) -> None:
        for start in range(0, len(digests), chunk):
            self._scripts["release_outputs"](args=[self.prefix, batch_id, *digests[start:start + chunk]])

    # ---- jobs (dedupe) -----------------------------------------------------------------

    def claim(self, items: Sequence[tuple[str, str, float]], owner: str, ttl: int,
              chunk: int = 500) -> list[str]:
        """Claim or attach to each (job_key, target, duration); one round trip per chunk."""
        out: list[str] = []
        now = f"{time.time():.3f}"
        for start in range(0, len(items), chunk):
            args: list[Any] = [self.prefix, now, owner, ttl]
            for job_key, target, duration in items[start:start + chunk]:
                args += [job_key, target, f"{duration:.3f}"]
            out += [as_text(r) for r in self._scripts["claim"](args=args)]
        return out

    def mark_published(self, job_keys: Sequence[str], owner: str, chunk: int = 2000) -> None:
        for start in range(0, len(job_keys), chunk):
            self._scripts["published"](args=[self.prefix, owner, *job_keys[start:start + chunk]])

    def job(self, job_key: str) -> dict[str, str]:
        return text_dict(self.redis.hgetall(self.keys.job(job_key)))

    def job_states(self, job_keys: Sequence[str]) -> list[tuple[str, float]]:
        """(state, claim deadline) per job, pipelined."""
        pipe = self.redis.pipeline(transaction=False)
        for jk in job_keys:
            pipe.hmget(self.keys.job(jk), "state", "claim_deadline")
        return [(as_text(s), float(d or 0)) for s, d in pipe.execute()]

    def start_job(self, job_key: str, endpoint: str, delivery: str, lease_ttl: float = 30,
                  defer_spec: str = "", max_bounces: int = 0, bounce_delay: float = 0.3) -> JobStart:
        """Take the job for this delivery, unless another delivery holds a live lease on it, or
        the job's last attempt failed on this endpoint (then, up to `max_bounces` times, it goes
        back to the pool after `bounce_delay` so that another endpoint can take it).

        `defer_spec` is the task to publish again (via the delayed set) when it is not run.
        """
        now = time.time()
        r = self._scripts["start"](args=[self.prefix, job_key, endpoint, f"{now:.3f}", delivery,
                                         lease_ttl, defer_spec, max_bounces, f"{now + bounce_delay:.3f}"])
        v = [as_text(x) for x in r]
        return JobStart(previous=v[0], attempts=int(v[1]), crashes=int(v[2]), reroutes=int(v[3]),
                        first_started_at=float(v[4] or 0), crashed_endpoint=v[5],
                        lease_until=float(v[6]), targets=v[7:])

    def requeue_job(self, job_key: str, delivery: str, error_class: str, reason: str,
                    spend_attempt: bool, due: float, spec: str) -> int:
        """Job goes back to waiting (retrying or queued) and into the delayed set, atomically.

        Returns how often it was rerouted, or -1 when `delivery` no longer holds the job (another
        delivery took it over: leave its state alone).
        """
        state = "retrying" if spend_attempt else "queued"
        r = self._scripts["requeue"](args=[self.prefix, job_key, delivery, state, error_class, reason[:2000],
                                           f"{time.time():.3f}", "1" if spend_attempt else "0",
                                           f"{due:.3f}", spec])
        return int(r)

    def finish_job(self, job_key: str, result: dict[str, Any] | None, ttl: int,
                   error_class: str = "", reason: str = "") -> list[str]:
        """Record the job's outcome (and cache its result); returns the targets to write for."""
        state = "done" if result is not None else "failed"
        blob = pack_result(result) if result is not None else b""
        r = self._scripts["finish"](args=[self.prefix, job_key, state, error_class, reason[:2000],
                                          f"{time.time():.3f}", ttl, blob])
        return [as_text(t) for t in r]

    # ---- leases and the delayed set ----------------------------------------------------

    def extend_leases(self, items: Sequence[LeaseItem], lease_ttl: float,
                      unacked_index: str) -> list[tuple[bool, bool]]:
        """Extend each lease still held by its delivery; mark its kombu delivery tag seen now.

        Returns (lease extended, tag found in kombu's unacked index) per item.
        """
        if not items:
            return []
        now = time.time()
        args: list[Any] = [self.prefix, f"{now:.3f}", f"{now + lease_ttl:.3f}", unacked_index]
        for item in items:
            args += [item.job_key, item.delivery, item.tag]
        r = [int(x) for x in self._scripts["extend"](args=args)]
        return [(bool(r[i]), bool(r[i + 1])) for i in range(0, len(r), 2)]

    def claim_due(self, claim_ttl: float, limit: int) -> tuple[str, list[tuple[str, str]]]:
        """Claim up to `limit` due delayed jobs until now + claim_ttl.

        Returns the claim deadline (to release with) and (job_key, spec) pairs.
        """
        now = time.time()
        deadline = f"{now + claim_ttl:.3f}"
        raw = self._scripts["claim_due"](args=[self.prefix, f"{now:.3f}", deadline, limit])
        r = [as_text(x) for x in raw]
        return deadline, list(zip(r[0::2], r[1::2]))

    def release_claims(self, deadline: str, job_keys: Sequence[str]) -> None:
        if job_keys:
            self._scripts["release"](args=[self.prefix, deadline, *job_keys])

    def delayed(self) -> list[tuple[str, float]]:
        """(job_key, due time) of every delayed job, soonest first (status and tests)."""
        entries = cast("list[tuple[bytes, float]]",
                       self.redis.zrange(self.keys.delayed(), 0, -1, withscores=True))
        return [(as_text(m), float(t)) for m, t in entries]

    # ---- per-endpoint outcome counters (circuit breaker, status, metrics) -------------

    def record_attempt(self, endpoint: str, error_class: str = "", audio_seconds: float = 0.0) -> None:
        """Count one attempt's outcome on an endpoint ("" = success).

        `consecutive_failures` counts endpoint and transient errors since the last success, which
        is what a circuit breaker needs; `failed_<class>` counts attempts, not files.
        """
        key = self.keys.endpoint_stats(endpoint)
        pipe = self.redis.pipeline(transaction=True)
        if not error_class:
            pipe.hincrby(key, "done", 1)
            pipe.hincrbyfloat(key, "audio_seconds", audio_seconds)
            pipe.hset(key, "consecutive_failures", 0)
        else:
            pipe.hincrby(key, f"failed_{error_class}", 1)
            if error_class in ("endpoint", "transient"):
                pipe.hincrby(key, "consecutive_failures", 1)
        pipe.execute()

    def endpoint_stats(self, name: str) -> dict[str, str]:
        """The endpoint's counters plus `in_flight` (deliveries running on it now)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.endpoint_stats(name))
        pipe.zcard(self.keys.inflight(name))
        raw, in_flight = pipe.execute()
        stats = text_dict(raw)
        stats["in_flight"] = str(in_flight)
        return stats

    def results(self, job_keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Cached results of done jobs (dedupe hits)."""
        if not job_keys:
            return {}
        blobs = cast("list[bytes | None]", self.redis.mget([self.keys.result(jk) for jk in job_keys]))
        return {jk: unpack_result(b) for jk, b in zip(job_keys, blobs) if b}

    # ---- probe cache (hash + duration of unchanged files) ------------------------------

    def probe_lookup(self, fingerprints: Sequence[str]) -> list[str | None]:
        out: list[str | None] = []
        for start in range(0, len(fingerprints), 5000):
            chunk = fingerprints[start:start + 5000]
            out += [as_text(v) or None for v in self.redis.hmget(self.keys.probe_cache(), chunk)]
        return out

    def probe_store(self, entries: dict[str, str]) -> None:
        if entries:
            self.redis.hset(self.keys.probe_cache(), mapping=_fields(entries))

    # ---- the event log -----------------------------------------------------------------

    def log_event(self, **fields: Any) -> None:
        entry = {k: str(v) for k, v in fields.items()}
        self.redis.xadd(self.keys.events(), _fields(entry), maxlen=200_000, approximate=True)

    def events(self, last_id: str = "0-0", count: int = 1000, block_ms: int | None = None
               ) -> list[tuple[str, dict[str, str]]]:
        resp = self.redis.xread({self.keys.events(): last_id}, count=count, block=block_ms)
        # Our client speaks RESP2: a [stream name, entries] pair per stream read (a dict is RESP3).
        streams = cast("list[tuple[bytes, StreamRangeResponse]]", resp or [])
        return [event for _stream, entries in streams for event in _stream_entries(entries)]

    def recent_events(self, count: int) -> list[tuple[str, dict[str, str]]]:
        """The last `count` events, oldest first."""
        entries = self.redis.xrevrange(self.keys.events(), count=count) or []
        return _stream_entries(entries[::-1])
