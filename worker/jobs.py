"""Run one delivery of a job: start it, prepare audio, call the engine, hand out the outcome.

The retry decision lives here, by error class (design.md §Error classes):

* transient → back to the pool after an exponential backoff with jitter; spends an attempt;
* endpoint  → back to the pool at once; does not spend an attempt (reroutes are capped);
* permanent → failed now, with the reason;
* crash     → seen at start as a delivery that never reported back; poison after N.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import Endpoint
from common.errors import ErrorClass, PermanentError, ProcessingError, TransientError
from common.models import FileRecord, TranscriptionOptions
from common.outcomes import deliver_failure, deliver_success, records_for
from common.settings import RetryPolicy, Settings
from common.state import StateStore
from worker.engines import build_engine
from worker.engines.base import Engine

log = logging.getLogger(__name__)

_TRACK_INFLIGHT = """
redis.call("ZADD", KEYS[1], ARGV[1], ARGV[2])
local n = redis.call("ZCARD", KEYS[1])
local best = tonumber(redis.call("HGET", KEYS[2], "max_inflight") or 0)
if n > best then redis.call("HSET", KEYS[2], "max_inflight", n) end
return n
"""


@dataclass(frozen=True)
class Retry:
    """The runner's verdict that the job must be delivered again after `delay` seconds."""

    delay: float
    error_class: ErrorClass
    reason: str


def backoff_delay(policy: RetryPolicy, attempt: int, visibility_timeout: int,
                  rng: random.Random | None = None) -> float:
    """Exponential with jitter, capped well below the visibility timeout (no duplicate delivery)."""
    rng = rng or random.Random()
    raw = min(policy.backoff_cap, policy.backoff_base * (2 ** max(0, attempt - 1)))
    jittered = raw * (1 + rng.uniform(-policy.jitter, policy.jitter))
    return max(0.0, min(jittered, visibility_timeout * 0.5))


class JobRunner:
    """Everything one consumer process needs to run jobs for its endpoint; shared by its threads."""

    def __init__(self, settings: Settings, store: StateStore, endpoint: Endpoint,
                 engine: Engine | None = None) -> None:
        self.settings = settings
        self.store = store
        self.endpoint = endpoint
        self._engine = engine
        self._engine_lock = threading.Lock()
        self._track = store.redis.register_script(_TRACK_INFLIGHT)

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = build_engine(self.endpoint)
            return self._engine

    def run(self, job_key: str, options: dict[str, Any], delivery: str) -> Retry | None:
        """Process one delivery; returns a Retry when the job must come back later."""
        start = self.store.start_job(job_key, self.endpoint.name, delivery)
        records = records_for(self.store, start.targets)
        if start.previous in ("done", "missing"):
            self._deliver_cached(job_key, records)
            return None
        if start.crashes >= self.settings.retry.max_crashes:
            reason = f"worker died {start.crashes} times while processing this file (poison)"
            return self._fail(job_key, records, ErrorClass.CRASH, reason, start.attempts)
        opts = TranscriptionOptions.from_dict(options)
        began = time.time()
        try:
            result = self._transcribe(job_key, records, opts)
        except ProcessingError as exc:
            return self._on_error(job_key, records, exc, start.attempts, time.time() - began)
        except Exception as exc:  # a bug or an untranslated library error: never leave it "running"
            log.exception("unexpected error on %s", job_key)
            internal = TransientError(f"internal error: {type(exc).__name__}: {exc}")
            return self._on_error(job_key, records, internal, start.attempts, time.time() - began)
        self._log(job_key, records, "done", attempt=start.attempts, seconds=time.time() - began)
        targets = self.store.finish_job(job_key, result, self.settings.result_ttl)
        deliver_success(self.store, job_key, records_for(self.store, targets), result)
        return None

    def _deliver_cached(self, job_key: str, records: list[FileRecord]) -> None:
        """A redelivery of a finished job (e.g. crash after finishing): outputs only, no engine."""
        cached = self.store.results([job_key]).get(job_key)
        if cached is not None and records:
            deliver_success(self.store, job_key, records, cached)

    def _transcribe(self, job_key: str, records: list[FileRecord],
                    opts: TranscriptionOptions) -> dict[str, Any]:
        from worker.audio import prepare  # ffmpeg side; imported lazily like the engines

        source = self._pick_input(records)
        inflight = self.store.keys.inflight(self.endpoint.name)
        self._track(keys=[inflight, self.store.keys.endpoint_stats(self.endpoint.name)],
                    args=[time.time(), job_key])
        try:
            with tempfile.TemporaryDirectory(prefix="batchscribe-") as workdir:
                audio = prepare(source, Path(workdir))
                recognition = self.engine.transcribe(audio, opts)
        finally:
            self.store.redis.zrem(inflight, job_key)
        return {"phrases": recognition.phrases, "duration": recognition.duration,
                "language": recognition.language, "engine": recognition.engine or self.endpoint.engine,
                "endpoint": self.endpoint.name, "options": opts.to_dict()}

    @staticmethod
    def _pick_input(records: list[FileRecord]) -> str:
        """Any input with these bytes will do; prefer one that still exists."""
        if not records:
            raise PermanentError("no input file is attached to this job any more")
        for record in records:
            if os.path.exists(record.path):
                return record.path
        return records[0].path

    def _on_error(self, job_key: str, records: list[FileRecord], exc: ProcessingError,
                  attempt: int, seconds: float) -> Retry | None:
        cls, policy = exc.error_class, self.settings.retry
        self._log(job_key, records, "error", attempt=attempt, seconds=seconds,
                  error_class=cls.value, reason=exc.reason)
        if cls is ErrorClass.PERMANENT:
            return self._fail(job_key, records, cls, exc.reason, attempt)
        if cls is ErrorClass.ENDPOINT:
            reroutes = self.store.requeue_job(job_key, cls.value, exc.reason, spend_attempt=False)
            if reroutes > policy.endpoint_reroutes:
                return self._fail(job_key, records, cls, f"{exc.reason} (rerouted {reroutes} times)", attempt)
            return Retry(min(1.0 * reroutes, 10.0), cls, exc.reason)
        if attempt >= policy.transient_attempts:
            return self._fail(job_key, records, cls, f"{exc.reason} (after {attempt} attempts)", attempt)
        self.store.requeue_job(job_key, cls.value, exc.reason, spend_attempt=True)
        return Retry(backoff_delay(policy, attempt, self.settings.visibility_timeout), cls, exc.reason)

    def _fail(self, job_key: str, records: list[FileRecord], cls: ErrorClass, reason: str,
              attempt: int) -> None:
        self._log(job_key, records, "failed", attempt=attempt, error_class=cls.value, reason=reason)
        targets = self.store.finish_job(job_key, None, 0, cls.value, reason)
        deliver_failure(self.store, job_key, records_for(self.store, targets), cls.value, reason)
        return None

    def _log(self, job_key: str, records: list[FileRecord], outcome: str, **fields: Any) -> None:
        path = records[0].path if records else ""
        batch = records[0].batch_id if records else ""
        entry = {"ts": f"{time.time():.3f}", "batch": batch, "file": path, "job": job_key,
                 "endpoint": self.endpoint.name, "outcome": outcome}
        entry.update({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in fields.items()})
        self.store.log_event(**entry)
        log.info("%s %s on %s: %s %s", outcome, path, self.endpoint.name,
                 fields.get("error_class", ""), fields.get("reason", ""))
