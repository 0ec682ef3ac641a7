"""Run one delivery of a job: start it, prepare audio, call the engine, hand out the outcome.

The retry decision lives here, by error class (design.md §Error classes):

* transient → back to the pool after an exponential backoff with jitter; spends an attempt;
* endpoint  → back to the pool at once (≤ 1 s); does not spend an attempt; capped by a reroute
  count and by the time since the job first started, so nothing loops forever;
* permanent → failed now, with the reason;
* crash     → seen at start as a running job whose lease ran out; poison after N.

A planned stop of the consumer (`stop` is set) is none of these: the engine call ends early and
the job is handed back (`StateStore.hand_back_job`): queued again at once, the attempt undone, no
crash counted, so another consumer starts it within seconds.

"Back to the pool" means the delayed set (`worker.scheduler`), written by the same script that
moves the job's state; the Celery task then just returns and its message is acked. A delivery that
finds the job running under a live lease is deferred the same way, without running anything.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from batchscribe.common.cache import keep_transcript, pointer, store_root
from batchscribe.common.config import Endpoint
from batchscribe.common.conversion import ConversionOptions
from batchscribe.common.errors import (
    ErrorClass,
    ProcessingError,
    RedisUnavailableError,
    StateError,
    TransientError,
)
from batchscribe.common.models import FileRecord, JobOptions, TranscriptionOptions, options_from_dict
from batchscribe.common.names import output_name, printable
from batchscribe.common.outcomes import deliver_cached, deliver_failure, deliver_success, records_for
from batchscribe.common.publish import Publisher, TaskSpec
from batchscribe.common.queues import endpoint_queue, queue_for
from batchscribe.common.settings import RetryPolicy, Settings
from batchscribe.common.state import JobStart, StateStore
from batchscribe.worker.engines import build_engine
from batchscribe.worker.engines.base import Engine, EngineStopped
from batchscribe.worker.health import HealthGate
from batchscribe.worker.inputs import local_input
from batchscribe.worker.placement import FALLBACK as YIELD_FALLBACK
from batchscribe.worker.placement import Placement
from batchscribe.worker.scratch import Scratch

log = logging.getLogger(__name__)
R = TypeVar("R")

REDIS_OUTAGE_PATIENCE = 60.0  # seconds a finished transcript waits for Redis to come back
ENDPOINT_REQUEUE_DELAY = 0.5  # seconds: another endpoint gets the file, not a tight loop on this one
# A retry that comes back to the endpoint it just failed on goes back to the pool this many times
# (after BOUNCE_DELAY each), so another endpoint of the pool gets it if there is one; then it runs.
MAX_BOUNCES = 3
BOUNCE_DELAY = 0.3

# What became of one delivery (for logs and tests).
Verdict = Literal["done", "failed", "requeued", "deferred", "bounced", "cached", "stale", "superseded",
                  "cancelled", "handback", "yielded"]
REASON_SHOWN = 300  # characters of an error's reason in a task's result (the output has all of it)


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery: its verdict and, in words, what it means for the file (a failed
    file's class and reason, the retry a requeue scheduled). `str()` is what Flower shows as the
    task's result (`worker.tasks`)."""

    verdict: Verdict
    note: str = ""
    error_class: str = ""  # of a failed file
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.verdict}: {self.note}" if self.note else self.verdict


@dataclass(frozen=True)
class Work:
    """What one engine call or conversion produced: the job's result (its outputs are made from it;
    the dedupe cache keeps it, `JobRunner._cache_entry`) and, for a conversion, the converted file
    in the delivery's scratch folder."""

    result: dict[str, Any]
    artifact: Path | None = None


@dataclass(frozen=True)
class Delivery:
    """One receipt of a transcribe or convert task message: what to run, and how to find it again."""

    task: TaskSpec  # what was received; its queue is where it came from
    id: str  # unique per receipt: the job's lease holder
    tag: str = ""  # kombu's delivery tag (its key in the unacked index); "" when unknown

    @property
    def job_key(self) -> str:
        return self.task.job_key

    @property
    def worker(self) -> str:
        """The consumer that received it (Celery's node name, ENDPOINT@HOST): the id's first part."""
        return self.id.split("/", 1)[0]

    @property
    def options(self) -> dict[str, Any]:
        return self.task.options

    def spec(self, queue: str | None = None) -> TaskSpec:
        """The task to publish to run this job again (on `queue`, default: where it came from)."""
        return replace(self.task, queue=queue or self.task.queue)

    def pool_spec(self) -> TaskSpec:
        """The task that runs the job again wherever its pool (language, or the converters) has a
        free slot."""
        return self.spec(queue_for(options_from_dict(self.options)))


def durably(call: Callable[[], R], what: str, patience: float = REDIS_OUTAGE_PATIENCE) -> R:
    """Retry Redis writes across a short outage (a restart takes seconds): a finished transcript
    must be recorded, not thrown away and transcribed again. Gives up after `patience` seconds."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return call()
        except RedisUnavailableError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unavailable while %s (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Exponential with jitter, capped. Delays wait in Redis, so any length is safe."""
    rng = rng or random.Random()
    raw = min(policy.backoff_cap, policy.backoff_base * (2 ** max(0, attempt - 1)))
    return max(0.0, float(raw) * (1 + rng.uniform(-policy.jitter, policy.jitter)))


_SUPERSEDED = Outcome("superseded", "another delivery took the job over; it goes on there")
_REDO = Outcome("cached", "the cached result is gone: the job runs again")


class JobRunner:
    """Everything one consumer process needs to run jobs for its endpoint; shared by its threads."""

    def __init__(self, settings: Settings, store: StateStore, endpoint: Endpoint,
                 engine: Engine | None = None, stop: threading.Event | None = None,
                 gate: HealthGate | None = None, scratch: Scratch | None = None,
                 placement: Placement | None = None) -> None:
        self.settings = settings
        self.store = store
        self.endpoint = endpoint
        self.stop = stop or threading.Event()  # set when the consumer is told to stop (planned)
        self.gate = gate or HealthGate(store, endpoint.name)
        self.scratch = scratch or Scratch.for_node(endpoint.name)
        self.placement = placement  # None: every file runs where it lands (worker.placement)
        self._engine = engine
        self._engine_lock = threading.Lock()
        self._publisher: Publisher | None = None

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = build_engine(self.endpoint)
            return self._engine

    def run(self, delivery: Delivery, redo: bool = True) -> Outcome:
        """Process one delivery. Whatever happens, the task's message can be acked afterwards.

        `redo`: a finished job whose cached artefact turns out to be gone runs again (once)."""
        job_key = delivery.job_key
        start = self.store.start_job(job_key, self.endpoint.name, delivery.id, self.settings.lease_ttl,
                                     delivery.spec().to_json(), MAX_BOUNCES, BOUNCE_DELAY)
        if not start.runs:
            outcome = self._not_run(delivery, start)
            if outcome is _REDO and redo:
                return self.run(delivery, redo=False)
            return outcome
        records = records_for(self.store, start.targets)
        if start.crashed_endpoint:  # (the script counted it in the endpoint's stats)
            self._log(job_key, records, "crash", attempt=start.attempts, error_class=ErrorClass.CRASH.value,
                      reason=f"lease of the previous delivery on {start.crashed_endpoint} ran out")
        if start.crashes >= self.settings.retry.max_crashes:
            reason = f"worker died {start.crashes} times while processing this file (poison)"
            return self._fail(job_key, records, ErrorClass.CRASH, reason, start.attempts)
        closed = self.gate.closed()
        if closed:  # the endpoint's owner says not to call it: back to the pool, no attempt spent
            self._log(job_key, records, "deferred", attempt=start.attempts,
                      error_class=ErrorClass.ENDPOINT.value, reason=closed)
            return self._requeue(delivery, ErrorClass.ENDPOINT, closed, spend=False,
                                 delay=ENDPOINT_REQUEUE_DELAY)
        if self.placement is not None and not start.first_started_at:  # a first start only: once
            home = self.placement.better_home(delivery.pool_spec())
            if home is not None:
                return self._yield(delivery, records, start.attempts, home)
        opts = options_from_dict(delivery.options)
        began = time.time()
        with self.scratch.workdir() as workdir:
            try:
                work = self._perform(job_key, records, opts, delivery.worker, workdir)
            except EngineStopped:
                return self._hand_back(delivery, records, start.attempts)
            except ProcessingError as exc:
                return self._on_error(delivery, start, records, exc, time.time() - began)
            except Exception as exc:  # a bug or an untranslated library error: never leave it "running"
                log.exception("unexpected error on %s", job_key)
                internal = TransientError(f"internal error: {type(exc).__name__}: {exc}")
                return self._on_error(delivery, start, records, internal, time.time() - began)
            seconds = time.time() - began
            result = work.result
            cached = self._cache_entry(job_key, records, work)  # stored before its pointer is recorded

            def record() -> None:
                self._log(job_key, records, "done", attempt=start.attempts, seconds=seconds)
                self.store.record_attempt(self.endpoint.name,
                                          audio_seconds=float(result.get("duration") or 0),
                                          busy_seconds=seconds)
                targets = self.store.finish_job(job_key, cached, self.settings.result_ttl)
                deliver_success(self.store, job_key, records_for(self.store, targets, records), result,
                                artifact=work.artifact)

            durably(record, f"recording the result of {job_key}")
        return Outcome("done", f"{float(result.get('duration') or 0):.1f} s of audio in {seconds:.1f} s")

    def _cache_entry(self, job_key: str, records: list[FileRecord], work: Work) -> dict[str, Any] | None:
        """What the dedupe cache keeps of the job (`common.cache`): a conversion's result points at
        its first output already; a transcription's is written to the result store now, and its
        pointer kept. None when the store cannot be written: the outputs are delivered anyway."""
        if work.artifact is not None:
            return work.result
        configured = self.settings.result_store
        out = "" if configured or not records else durably(
            lambda: self.store.batch(records[0].batch_id).get("out", ""),
            f"reading where {job_key}'s batch writes")
        root = store_root(configured, out)
        return keep_transcript(root, job_key, work.result) if root else None

    def _perform(self, job_key: str, records: list[FileRecord], opts: JobOptions, worker: str,
                 workdir: Path) -> Work:
        """The engine call (or the conversion), counted in flight on this endpoint while it runs."""
        endpoint = self.endpoint.name
        self.store.track_inflight(endpoint, job_key)
        try:
            self._check_stop()
            source = local_input(records, workdir)
            self._check_stop()
            if isinstance(opts, ConversionOptions):
                return self._convert(records, opts, source, workdir)
            return self._transcribe(records, opts, source, worker, workdir)
        finally:
            durably(lambda: self.store.release_inflight(endpoint, job_key), f"releasing {job_key}'s slot")

    def _not_run(self, delivery: Delivery, start: JobStart) -> Outcome:
        """A delivery that must not call the engine: deferred duplicate, finished or stale job."""
        if start.previous == "deferred":
            log.info("job %s runs elsewhere (lease until %.0f); deferred this delivery", delivery.job_key,
                     start.lease_until)
            return Outcome("deferred", "another delivery runs the file now; looked at again when its "
                           "lease would run out")
        if start.previous == "bounced":
            log.info("job %s last failed on %s; back to the pool for another endpoint", delivery.job_key,
                     self.endpoint.name)
            return Outcome("bounced", f"its last attempt failed on {self.endpoint.name}: back to the pool "
                           "for another endpoint")
        if start.previous == "cancelled":  # every batch that wanted it was cancelled (`producer.cancel`)
            log.info("job %s was cancelled; dropping its delivery", delivery.job_key)
            return Outcome("cancelled", "its batch was cancelled")
        if start.previous == "failed":  # a stale copy: a failed job runs again only if re-submitted
            log.info("job %s already failed; dropping a stale delivery", delivery.job_key)
            return Outcome("stale", "a late copy of a file that already failed")
        if not self._deliver_cached(delivery.job_key, records_for(self.store, start.targets)):
            return _REDO
        return Outcome("cached", "already done: outputs written from the cached result")

    def _deliver_cached(self, job_key: str, records: list[FileRecord]) -> bool:
        """A redelivery of a finished job (e.g. crash after finishing): outputs only, no engine.
        False when the cached result is gone or changed: it is forgotten, the job must run again."""
        cached = self.store.results([job_key]).get(job_key)
        if cached is None or not records:
            return True
        return not deliver_cached(self.store, job_key, records, cached)

    def _transcribe(self, records: list[FileRecord], opts: TranscriptionOptions, source: Path,
                    worker: str, workdir: Path) -> Work:
        from batchscribe.worker.audio import prepare  # ffmpeg/PyAV side; imported lazily like the engines

        engine = self.engine
        audio = prepare(source, workdir, in_memory=engine.takes_samples, stop=self.stop)
        self._check_stop()
        recognition = engine.transcribe(audio, opts, stop=self.stop,
                                        log_file=self._engine_log(records, worker))
        return Work({"phrases": recognition.phrases, "duration": recognition.duration,
                     "language": recognition.language, "engine": recognition.engine or self.endpoint.engine,
                     "endpoint": self.endpoint.name, "options": opts.to_dict()})

    def _convert(self, records: list[FileRecord], opts: ConversionOptions, source: Path,
                 workdir: Path) -> Work:
        """ffmpeg into the scratch folder; the result points at the first input's output, where the
        converted file will be stored (later dedupe hits copy it from there)."""
        from batchscribe.worker.convert import convert

        converted = convert(source, opts, workdir, stop=self.stop)
        return Work({"kind": "convert", "duration": converted.duration,
                     **pointer(records[0].output, converted.size, converted.sha256), "engine": "ffmpeg",
                     "endpoint": self.endpoint.name, "options": opts.to_dict()}, converted.path)

    def _engine_log(self, records: list[FileRecord], worker: str) -> Path | None:
        """Where the engine traces this attempt when the batch has a `--log-folder`: batch-kit's
        ``<name>_<ext>.<worker>.sdk.log``, in the input's mirrored sub-folder (two inputs of one name
        in two folders keep two logs); the worker is this consumer, ENDPOINT@HOST."""
        for record in records[:1]:  # several inputs share a job only by dedupe: the first one's batch
            folder = self.store.batch_log_folder(record.batch_id)
            if folder:
                rel = Path(record.rel)
                return Path(folder) / rel.parent / output_name(rel.name, f".{worker}.sdk.log")
        return None

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise EngineStopped("the consumer is stopping")

    def _on_error(self, delivery: Delivery, start: JobStart, records: list[FileRecord],
                  exc: ProcessingError, seconds: float) -> Outcome:
        job_key, cls, attempt = delivery.job_key, exc.error_class, start.attempts
        self._log(job_key, records, "error", attempt=attempt, seconds=seconds,
                  error_class=cls.value, reason=exc.reason)
        opened = self.store.record_attempt(self.endpoint.name, cls.value)
        if opened is not None:
            log.warning("endpoint %s: %s; circuit open for %.0f s", self.endpoint.name, opened.reason,
                        opened.until - time.time())
            self.gate.tripped(opened.until, opened.reason)
        if cls is ErrorClass.PERMANENT:
            return self._fail(job_key, records, cls, exc.reason, attempt)
        if cls is ErrorClass.ENDPOINT:
            give_up = self._endpoint_give_up(start)
            if give_up:
                return self._fail(job_key, records, cls, f"{exc.reason} ({give_up})", attempt)
            return self._requeue(delivery, cls, exc.reason, spend=False, delay=ENDPOINT_REQUEUE_DELAY)
        if attempt >= self.settings.retry.transient_attempts:
            return self._fail(job_key, records, cls, f"{exc.reason} (after {attempt} attempts)", attempt)
        return self._requeue(delivery, cls, exc.reason, spend=True,
                             delay=backoff_delay(self.settings.retry, attempt), attempt=attempt)

    def _endpoint_give_up(self, start: JobStart) -> str:
        """Why endpoint errors must stop moving this job around ("" = keep trying)."""
        policy = self.settings.retry
        if start.reroutes + 1 > policy.endpoint_reroutes:
            return f"rerouted {start.reroutes + 1} times"
        waited = self.store.clock() - start.first_started_at  # the store's clock wrote first_started_at
        if start.first_started_at and waited > policy.endpoint_max_wait:
            return f"no endpoint could take it for {waited:.0f} s"
        return ""

    def _requeue(self, delivery: Delivery, cls: ErrorClass, reason: str, spend: bool,
                 delay: float, attempt: int = 0) -> Outcome:
        """Back to the language pool after `delay`, in the delayed set, atomically with the state."""
        spec = delivery.pool_spec()
        held = self.store.requeue_job(delivery.job_key, delivery.id, cls.value, reason, spend,
                                      self.store.clock() + delay, spec.to_json())
        if held == -2:
            log.info("job %s: its batches were cancelled while it ran; not requeued", delivery.job_key)
            return Outcome("cancelled", "its batch was cancelled while it ran")
        if held < 0:
            log.warning("job %s was taken over while delivery %s ran; leaving it to the new holder",
                        delivery.job_key, delivery.id)
            return _SUPERSEDED
        when = (f"retry in {delay:.0f} s (attempt {attempt + 1} of {self.settings.retry.transient_attempts})"
                if spend else f"back to the pool in {delay:.1f} s, no attempt spent")
        return Outcome("requeued", f"{cls.value}, {when}: {reason[:REASON_SHOWN]}")

    def _hand_back(self, delivery: Delivery, records: list[FileRecord], attempt: int) -> Outcome:
        """A planned stop interrupted the engine: queued again at once, attempt undone, no crash."""
        spec = delivery.pool_spec()
        if not durably(lambda: self.store.hand_back_job(delivery.job_key, delivery.id, spec.to_json()),
                       f"handing {delivery.job_key} back"):
            log.warning("job %s was taken over while delivery %s ran; leaving it to the new holder",
                        delivery.job_key, delivery.id)
            return _SUPERSEDED
        reason = "the consumer was stopped (planned); another one starts it"
        self._log(delivery.job_key, records, "handback", attempt=attempt - 1, reason=reason)
        return Outcome("handback", reason)

    def _yield(self, delivery: Delivery, records: list[FileRecord], attempt: int, home: str) -> Outcome:
        """Leave the file to the faster endpoint `home` (`worker.placement`): handed back (queued, the
        attempt undone) with a fallback copy for the pool, then pinned to `home`'s own queue."""
        fallback = delivery.pool_spec()
        if not self.store.hand_back_job(delivery.job_key, delivery.id, fallback.to_json(),
                                        due=self.store.clock() + YIELD_FALLBACK):
            return _SUPERSEDED
        try:
            self.publisher().publish([delivery.spec(endpoint_queue(home))])
        except StateError as exc:  # the fallback copy puts it back on the pool
            log.warning("could not pin %s to %s (%s); it goes back to the pool in %.0f s",
                        delivery.job_key, home, exc, YIELD_FALLBACK)
        reason = f"{home} ends it sooner (longest files to the fastest endpoints)"
        self._log(delivery.job_key, records, "yielded", attempt=attempt - 1, reason=reason)
        return Outcome("yielded", reason)

    def publisher(self) -> Publisher:
        """The task publisher of `_yield`, made on first use (most consumers never yield)."""
        with self._engine_lock:
            if self._publisher is None:
                from batchscribe.common.celery_app import make_app

                self._publisher = Publisher(make_app(self.settings, "batchscribe-placement"))
            return self._publisher

    def _fail(self, job_key: str, records: list[FileRecord], cls: ErrorClass, reason: str,
              attempt: int) -> Outcome:
        self._log(job_key, records, "failed", attempt=attempt, error_class=cls.value, reason=reason)
        targets = self.store.finish_job(job_key, None, 0, cls.value, reason)
        deliver_failure(self.store, job_key, records_for(self.store, targets, records), cls.value, reason)
        return Outcome("failed", error_class=cls.value, reason=reason)

    def _log(self, job_key: str, records: list[FileRecord], outcome: str, **fields: Any) -> None:
        path = records[0].path if records else ""
        named = {"batch": records[0].batch_id, "index": records[0].index} if records else {"job": job_key}
        self.store.log_event(outcome=outcome, endpoint=self.endpoint.name, **named, **fields)
        log.info("%s %s on %s: %s %s", outcome, printable(path), self.endpoint.name,
                 fields.get("error_class", ""), printable(str(fields.get("reason", ""))))
