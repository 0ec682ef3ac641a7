"""Jobs: one unit of engine work (content hash + result-changing options), shared by every input
with those bytes. Claimed by a producer, started, requeued or finished by deliveries that hold a
lease on it; a pointer to its stored result is kept for dedupe hits (`common.cache`).

Life of a job: ``claimed`` (a producer will publish it; expires after claim_ttl) → ``queued`` →
``running`` ⇄ ``retrying`` → ``done`` | ``failed``. Until its first start a job is one field of a
shared hash (`Keys.waiting_jobs`: a few dozen bytes instead of a hash and a list of its own); from
then on a hash and its targets list, dropped again once its last input has its outcome: a done job
is then just its cached result (`job` still says ``done``). A running job holds a **lease** (`delivery`,
`lease_until` in its hash) that its consumer's lease keeper extends; a delivery that finds a live
lease is deferred, one that finds an expired lease counts a crash and takes over
(docs/design.md §Deliveries, leases and retries).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from batchscribe.common.keys import KOMBU_UNACKED, KOMBU_UNACKED_INDEX, job_field
from batchscribe.common.state.client import StoreBase, as_text, boundary, stamp, text_dict


@dataclass(frozen=True)
class JobStart:
    """What the worker learns when it starts a job's delivery.

    `previous` is the job's state before (done/missing/failed: nothing to run), or "deferred"
    when another delivery holds a live lease (the job is in the delayed set until `lease_until`),
    or "cancelled" when no input wants it any more (dropped without an engine call).
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
        return self.previous not in ("done", "missing", "failed", "deferred", "bounced", "cancelled")


@dataclass(frozen=True)
class LeaseItem:
    """One running delivery whose lease (and kombu delivery tag) a lease keeper keeps fresh.

    `spec` is the task to publish should the delivery be handed back (`hand_back_job`).
    """

    job_key: str
    delivery: str
    tag: str
    spec: str = ""


def pack_result(result: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(result, separators=(",", ":")).encode(), 6)


def unpack_result(blob: bytes) -> dict[str, Any]:
    return cast("dict[str, Any]", json.loads(zlib.decompress(blob)))


_WAITING_STATES = {"c": "claimed", "q": "queued", "x": "cancelled", "d": "done"}


def waiting_fields(entry: str) -> dict[str, str]:
    """A waiting or retired entry ("KIND|A|B|rest", `common.lua` ``_WAITING``) as the job hash
    would say it ("target": its first input, for a job that waits)."""
    kind, a, b, target = entry.split("|", 3)
    state = _WAITING_STATES.get(kind, kind)
    if kind == "c":
        return {"state": state, "owner": a, "claim_deadline": b, "target": target}
    if kind == "q":
        return {"state": state, "queued_at": a, "target": target}
    if kind == "d":
        endpoint, _, rest = target.partition("|")
        handbacks, _, reroutes = rest.partition("|")
        return {"state": state, "attempts": a, "crashes": b, "endpoint": endpoint,
                "handbacks": handbacks or "0", "reroutes": reroutes or "0"}
    return {"state": state, "finished_at": a}


@boundary
class Jobs(StoreBase):
    def _job_keys(self, job_key: str) -> list[str]:
        """KEYS[2..5] of the scripts that move one job: its hash, its targets, the delayed set."""
        k = self.keys
        return [k.job(job_key), k.targets(job_key), k.delayed(), k.delayed_specs()]

    def claim(self, items: Sequence[tuple[str, str, float]], owner: str, ttl: int,
              chunk: int = 500) -> list[str]:
        """Claim or attach to each (job_key, target, duration); one round trip per chunk."""
        out: list[str] = []
        now = stamp(self.clock())
        for start in range(0, len(items), chunk):
            args: list[Any] = [now, owner, ttl]
            for job_key, target, duration in items[start:start + chunk]:
                args += [job_key, target, f"{duration:.3f}"]
            out += [as_text(r) for r in self._run("claim", (), args)]
        return out

    def mark_published(self, job_keys: Sequence[str], owner: str, chunk: int = 2000) -> None:
        for start in range(0, len(job_keys), chunk):
            self._run("published", (), [owner, stamp(self.clock()), *job_keys[start:start + chunk]])

    def job(self, job_key: str) -> dict[str, str]:
        """The job's fields: its hash, or what its waiting entry says (state, owner, claim_deadline,
        queued_at), or ``{"state": "done"}`` when only its cached result is left; {} if unknown."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.job(job_key))
        pipe.hget(self.keys.waiting_jobs(job_key), job_field(job_key))
        pipe.exists(self.keys.result(job_key))
        own, waiting, cached = pipe.execute()
        if own:
            return text_dict(own)
        if waiting is not None:
            found = waiting_fields(as_text(waiting))
            return found if found["state"] != "done" or cached else {}  # done, result gone: forgotten
        return {"state": "done"} if cached else {}

    def job_states(self, job_keys: Sequence[str]) -> list[tuple[str, float]]:
        """(state, claim deadline) per job, pipelined ("" for a job that is neither waiting nor
        under way)."""
        pipe = self.redis.pipeline(transaction=False)
        for jk in job_keys:
            pipe.hmget(self.keys.job(jk), "state", "claim_deadline")
            pipe.hget(self.keys.waiting_jobs(jk), job_field(jk))
        replies = pipe.execute()
        out: list[tuple[str, float]] = []
        for (state, deadline), waiting in zip(replies[0::2], replies[1::2]):
            if state is None and waiting is not None:
                w = waiting_fields(as_text(waiting))
                out.append((w["state"], float(w.get("claim_deadline") or 0)))
            else:
                out.append((as_text(state), float(deadline or 0)))
        return out

    def targets_of(self, job_key: str) -> list[str]:
        """Every input that wants the job's result ("batch_id:index"), first come first."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.waiting_jobs(job_key), job_field(job_key))
        pipe.lrange(self.keys.targets(job_key), 0, -1)
        waiting, listed = pipe.execute()
        first = waiting_fields(as_text(waiting)).get("target") if waiting is not None else None
        return ([first] if first else []) + [as_text(t) for t in listed]

    def start_job(self, job_key: str, endpoint: str, delivery: str, lease_ttl: float = 30,
                  defer_spec: str = "", max_bounces: int = 0, bounce_delay: float = 0.3) -> JobStart:
        """Take the job for this delivery, unless another delivery holds a live lease on it, or
        the job's last attempt failed on this endpoint (then, up to `max_bounces` times, it goes
        back to the pool after `bounce_delay` so that another endpoint can take it).

        `defer_spec` is the task to publish again (via the delayed set) when it is not run.
        """
        now = self.clock()
        r = self._run("start", self._job_keys(job_key),
                      [job_key, endpoint, stamp(now), delivery, lease_ttl, defer_spec, max_bounces,
                       stamp(now + bounce_delay)])
        v = [as_text(x) for x in r]
        return JobStart(previous=v[0], attempts=int(v[1]), crashes=int(v[2]), reroutes=int(v[3]),
                        first_started_at=float(v[4] or 0), crashed_endpoint=v[5],
                        lease_until=float(v[6]), targets=v[7:])

    def requeue_job(self, job_key: str, delivery: str, error_class: str, reason: str,
                    spend_attempt: bool, due: float, spec: str) -> int:
        """Job goes back to waiting (retrying or queued) and into the delayed set, atomically.

        Returns how often it was rerouted, or -1 when `delivery` no longer holds the job (another
        delivery took it over: leave its state alone), or -2 when no input wants it any more (its
        batches were cancelled while it ran): it is cancelled, not requeued.
        """
        state = "retrying" if spend_attempt else "queued"
        return int(self._run("requeue", self._job_keys(job_key),
                             [job_key, delivery, state, error_class, reason[:2000], stamp(self.clock()),
                              "1" if spend_attempt else "0", stamp(due), spec]))

    def hand_back_job(self, job_key: str, delivery: str, spec: str, due: float | None = None,
                      tag: str = "") -> bool:
        """A planned stop: the job goes back to `queued` (into the delayed set, due now by default)
        with the attempt it was on undone and no crash counted, if `delivery` still holds it.

        `tag`: ack this kombu delivery (its consumer is gone; the delayed entry replaces the
        message). Returns False when another delivery holds the job or it no longer runs.
        """
        now = self.clock()
        keys = [*self._job_keys(job_key), KOMBU_UNACKED_INDEX, KOMBU_UNACKED]
        due = now if due is None else due
        return bool(self._run("hand_back", keys, [job_key, delivery, stamp(now), stamp(due), spec, tag]))

    def finish_job(self, job_key: str, cached: dict[str, Any] | None, ttl: int,
                   error_class: str = "", reason: str = "") -> list[str]:
        """Record the job's outcome: failed with `error_class`, else done, with `cached` (a pointer
        to its stored result, `common.cache`) kept for dedupe hits for `ttl` seconds (0: for ever);
        a done job without one (its store could not be written) is simply not cached. Returns the
        targets to write for."""
        state = "failed" if error_class else "done"
        blob = pack_result(cached) if cached is not None and not error_class else b""
        k = self.keys
        r = self._run("finish", [k.job(job_key), k.targets(job_key), k.result(job_key), k.delayed(),
                                 k.delayed_specs()],
                      [job_key, state, error_class, reason[:2000], stamp(self.clock()), ttl, blob])
        return [as_text(t) for t in r]

    def forget_result(self, job_key: str) -> None:
        """Drop a done job's cache pointer (what it points at is gone): the next claim claims it
        again and the next delivery runs it (`redo`)."""
        self.redis.delete(self.keys.result(job_key))

    def results(self, job_keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The cache pointers of done jobs (dedupe hits; `common.cache.load_result` reads them)."""
        if not job_keys:
            return {}
        blobs = cast("list[bytes | None]", self.redis.mget([self.keys.result(jk) for jk in job_keys]))
        return {jk: unpack_result(b) for jk, b in zip(job_keys, blobs) if b}

    def extend_leases(self, items: Sequence[LeaseItem], lease_ttl: float,
                      unacked_index: str) -> list[tuple[bool, bool]]:
        """Extend each lease still held by its delivery; mark its kombu delivery tag seen now.

        Returns (lease extended, tag found in kombu's unacked index) per item.
        """
        if not items:
            return []
        now = self.clock()
        args: list[Any] = [stamp(now), stamp(now + lease_ttl)]
        for item in items:
            args += [item.job_key, item.delivery, item.tag]
        r = [int(x) for x in self._run("extend", [unacked_index], args)]
        return [(bool(r[i]), bool(r[i + 1])) for i in range(0, len(r), 2)]
