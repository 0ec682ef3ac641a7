"""The Celery side of the worker: the transcribe and convert tasks, and how a consumer learns its
endpoint.

A consumer is started either by `batchscribe worker` (which passes the endpoint in
BATCHSCRIBE_ENDPOINT_JSON) or by hand as a plain Celery worker:

    celery -A batchscribe.worker.app worker -Q ep.NAME,pool.en-US -c N -P threads
    celery -A batchscribe.worker.app worker -Q convert -c N -P threads -n convert@%h

in which case the endpoint is the one named by its `ep.NAME` queue, looked up in
BATCHSCRIBE_CONFIG (or the built-in local endpoint when NAME is `local`); a consumer of the
`convert` queue alone is a media converter running N ffmpeg at once.

A consumer told to stop (SIGTERM from its supervisor, `docker stop`, systemd; SIGINT, SIGQUIT)
does not finish its files: it sets its stop event, each running engine call ends within about a
second, and each job is handed back (queued again at once, attempt undone, no crash); the task
returns, so its message is acked, and another consumer starts the file within seconds.

What Flower shows (task events; there is no result backend): the task's result says what became of
the delivery (`done: …`, `requeued: transient, retry in 4 s (attempt 2 of 4): …`, `deferred: …`,
`cached: …`, `handback: …`); a file that ends failed raises `FileFailed` as the very last step, after
its state and output are written, so the task shows as FAILURE with the error class and reason and
its message is still acked (task_acks_on_failure_or_timeout), never redelivered.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task, bootsteps
from celery.exceptions import Reject
from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown, worker_shutting_down

from batchscribe.common.config import Endpoint, converter_endpoint, default_local_endpoints, load_endpoints
from batchscribe.common.errors import ConfigError, StateError
from batchscribe.common.models import options_from_dict
from batchscribe.common.processes import exit_now
from batchscribe.common.publish import TaskSpec, is_input_ref
from batchscribe.common.queues import (
    CONVERT_QUEUE,
    CONVERT_TASK,
    TRANSCRIBE_TASK,
    endpoint_from_queues,
    queue_for,
    task_for,
)
from batchscribe.common.settings import Settings, redact
from batchscribe.common.state import LeaseItem, StateStore
from batchscribe.worker.jobs import Delivery, JobRunner, Outcome
from batchscribe.worker.leases import LeaseKeeper
from batchscribe.worker.liveness import ConsumerPresence
from batchscribe.worker.outage import redis_errors_in_one_line
from batchscribe.worker.placement import Placement
from batchscribe.worker.scratch import Scratch

log = logging.getLogger(__name__)


class FileFailed(Exception):
    """The file of this task ended failed (its state, output and summary are settled already): raised
    last so Flower shows a FAILURE with "CLASS: reason". One of the task's expected errors, so Celery
    logs it in one line, without a traceback. One argument, so it pickles (Celery checks)."""


class SignalWakeup(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery ships no types
    """Wake the consumer's event loop the moment a signal arrives.

    Celery's handler only sets a flag that its loop checks between two polls, and the kernel gives a
    process-wide SIGTERM to whichever thread does not block it — one of the pool's or the Speech SDK's
    threads, as often as not — so the main thread's poll ran to its timeout before a planned stop
    began (0.1–0.5 s measured per consumer at the end of a `run`). With a wakeup fd
    (`signal.set_wakeup_fd`: the interpreter writes the signal's number to it from its C handler,
    whatever thread received it) registered in the loop, the poll returns at once."""

    requires = ("celery.worker.components:Hub",)

    def __init__(self, worker: Any, **_: Any) -> None:
        self._read: int | None = None

    def include_if(self, worker: Any) -> bool:
        return bool(getattr(worker, "use_eventloop", False))

    def register_with_event_loop(self, worker: Any, hub: Any) -> None:
        if self._read is None:  # once; after a reconnect only the reader is added again
            self._read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        hub.add_reader(self._read, self._drain)

    def _drain(self, *_: Any) -> None:
        assert self._read is not None
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass


def resolve_endpoint(environ: Mapping[str, str], queues: list[str], concurrency: int = 0) -> Endpoint:
    """Which endpoint this consumer serves (see module docstring); a plain `-Q convert` consumer is a
    converter with its own -c."""
    if environ.get("BATCHSCRIBE_ENDPOINT_JSON"):
        return Endpoint.from_dict(json.loads(environ["BATCHSCRIBE_ENDPOINT_JSON"]))
    if queues == [CONVERT_QUEUE]:
        return converter_endpoint(concurrency or None)
    name = environ.get("BATCHSCRIBE_ENDPOINT") or endpoint_from_queues(queues)
    if environ.get("BATCHSCRIBE_CONFIG"):
        endpoints = load_endpoints(environ["BATCHSCRIBE_CONFIG"], environ)
        only = endpoints.endpoints[0] if len(endpoints) == 1 else None
        found = endpoints.get(name) if name else only
        if found is None:
            raise ConfigError(f"{environ['BATCHSCRIBE_CONFIG']}: no endpoint named {name!r} "
                              f"(consume exactly one ep.NAME queue, or set BATCHSCRIBE_ENDPOINT)")
        return found
    if name in (None, "local"):
        return default_local_endpoints().endpoints[0]
    raise ConfigError(f"endpoint {name!r}: set BATCHSCRIBE_CONFIG to the endpoint YAML that defines it")


def delivery_of(request: Any, job_key: str, options: dict[str, Any], path: str,
                duration: float, batch: str = "") -> Delivery:
    """The Delivery of the task being executed, from Celery's request context.

    Celery 5 does not put the delivery tag on the request; kombu's virtual transports carry it in
    the message properties (set at publish, kept when kombu restores the message).
    """
    properties = getattr(request, "properties", None) or {}
    info = getattr(request, "delivery_info", None) or {}
    opts = options_from_dict(options)
    queue = info.get("routing_key") or queue_for(opts)
    return Delivery(
        task=TaskSpec(job_key, options, path, duration, queue, batch, task_for(opts)),
        id=f"{request.hostname}/{request.id}/{uuid.uuid4().hex[:8]}",
        tag=str(properties.get("delivery_tag") or ""),
    )


class ConsumerRuntime:
    """Lazily built per process: the endpoint is known only once Celery has parsed -Q."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queues: list[str] = []
        self.node = ""  # Celery's node name (ENDPOINT@HOST), known once Celery has set up
        self.concurrency = 0  # the worker's -c, known once Celery has set up
        self.stopping = threading.Event()  # a planned stop: running files are handed back
        self._runner: JobRunner | None = None
        self._leases: LeaseKeeper | None = None
        self._lock = threading.Lock()

    def runner(self) -> JobRunner:
        return self._parts()[0]

    def _parts(self) -> tuple[JobRunner, LeaseKeeper]:
        """The runner and its lease keeper, built together on first use (the keeper starts then)."""
        with self._lock:
            if self._runner is None or self._leases is None:
                endpoint = resolve_endpoint(os.environ, self.queues, self.concurrency)
                store = StateStore.connect(self.settings, check=False)
                scratch = Scratch.for_node(self.node or endpoint.name)
                scratch.clean_leftovers()  # what a SIGKILLed predecessor left
                self._runner = JobRunner(self.settings, store, endpoint, stop=self.stopping, scratch=scratch,
                                         placement=Placement(store, endpoint))
                presence = ConsumerPresence(store, self.node, endpoint.name, self.queues,
                                            self.settings.lease_ttl,
                                            concurrency=endpoint.concurrency,
                                            rtf=endpoint.rtf) if self.node else None
                self._leases = LeaseKeeper(store, self.settings.lease_ttl, self.settings.heartbeat,
                                           presence=presence).start()
                log.info("consumer serves endpoint %s (%s, concurrency %d)",
                         endpoint.name, endpoint.engine, endpoint.concurrency)
            return self._runner, self._leases

    def run(self, delivery: Delivery) -> Outcome:
        """Run one delivery while the lease keeper keeps its lease and its delivery tag fresh."""
        runner, leases = self._parts()
        item = LeaseItem(delivery.job_key, delivery.id, delivery.tag, delivery.pool_spec().to_json())
        with leases.hold(item):
            outcome = runner.run(delivery)
        log.info("delivery %s of %s: %s", delivery.id, delivery.job_key, outcome.verdict)
        return outcome

    def begin_stop(self) -> None:
        """Called inside Celery's signal handler (so it only sets the event the engine calls watch;
        each runner thread logs its own hand back)."""
        self.stopping.set()

    def leave(self) -> None:
        """The consumer has stopped: withdraw its heartbeat."""
        keeper = self._leases
        if keeper is not None:
            keeper.stop()
            if keeper.presence is not None:
                try:
                    keeper.presence.leave()
                except StateError as exc:  # it expires by itself
                    log.warning("could not withdraw this consumer's heartbeat: %s", exc)

    def warm_up(self) -> None:
        if self.runner().endpoint.engine == "ffmpeg":  # a converter: ffmpeg runs per file, nothing to load
            return
        engine = self.runner().engine
        load = getattr(engine, "load", None)
        if callable(load):
            try:
                load()
            except Exception:  # the first file will report it with its class
                log.exception("engine of %s failed to load", self.runner().endpoint.name)


def register(app: Celery, settings: Settings) -> ConsumerRuntime:
    """Attach the transcribe task and the startup hooks to `app`."""
    runtime = ConsumerRuntime(settings)
    app.steps["worker"].add(SignalWakeup)
    redis_errors_in_one_line(redact(settings.redis_url))

    def execute(task: Task, job_key: str, options: dict[str, Any], path: str, duration: float,
                batch: str) -> str:
        """Never uses Celery's retry/ETA: a job that must run again is in the delayed set by the
        time this returns, so the message is acked. Returns what became of the delivery; raises
        `FileFailed` (acked too) when the file ended failed. `batch`: the batch that published the
        task, for Flower's search (`kwargs:batch=ID`).

        Only when Redis itself fails is the message handed back (acking it would lose the file).
        """
        if runtime.stopping.is_set():  # received as the consumer stops: back to its queue untouched
            raise Reject("the consumer is stopping", requeue=True)
        try:
            if is_input_ref(job_key):  # the message names the input that published it: find its job
                resolved = runtime.runner().store.job_key_of(batch, int(job_key[1:]))
                if not resolved:
                    log.warning("task %s names input %s of batch %s, which has no job: dropped",
                                task.request.id, job_key, batch)
                    return "stale: its input is gone"
                job_key = resolved
            outcome = runtime.run(delivery_of(task.request, job_key, options, path, duration, batch))
        except StateError as exc:
            log.error("Redis failed while running %s; handing the message back: %s", job_key, exc)
            raise Reject(exc, requeue=True) from exc
        if outcome.verdict == "failed":
            raise FileFailed(f"{outcome.error_class}: {outcome.reason}")
        return str(outcome)

    task_options: dict[str, Any] = dict(bind=True, acks_late=True, reject_on_worker_lost=True,
                                        max_retries=None, ignore_result=True, throws=(FileFailed,))

    @app.task(name=TRANSCRIBE_TASK, **task_options)
    def transcribe(self: Task, job_key: str, options: dict[str, Any], path: str = "",
                   duration: float = 0.0, batch: str = "") -> str:
        """Transcribe one unique file (see `execute`)."""
        return execute(self, job_key, options, path, duration, batch)

    @app.task(name=CONVERT_TASK, **task_options)
    def convert(self: Task, job_key: str, options: dict[str, Any], path: str = "",
                duration: float = 0.0, batch: str = "") -> str:
        """Convert one unique file with ffmpeg (see `execute`); consumed from the `convert` queue."""
        return execute(self, job_key, options, path, duration, batch)

    @celeryd_after_setup.connect(weak=False)
    def _learn_queues(sender: Any, instance: Any, conf: Any, **_: Any) -> None:
        if instance.app is not app:
            return
        runtime.queues = list(instance.app.amqp.queues.consume_from or {})
        runtime.node = str(sender)
        runtime.concurrency = int(instance.concurrency or 0)
        endpoint = runtime.runner().endpoint
        if instance.concurrency != endpoint.concurrency:
            log.warning("endpoint %s has concurrency %d in its config but this worker runs -c %d; "
                        "it takes -c files at a time, and an azure endpoint still gets at most its config's "
                        "concurrency of sessions (the other files wait for one)",
                        endpoint.name, endpoint.concurrency, instance.concurrency)

    @worker_shutting_down.connect(weak=False)
    def _planned_stop(sender: Any, **_: Any) -> None:
        if runtime.node and sender == runtime.node:
            runtime.begin_stop()

    @worker_shutdown.connect(weak=False)
    def _stopped(sender: Any, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            runtime.leave()
            exit_now(getattr(sender, "exitcode", None) or 0)

    @worker_ready.connect(weak=False)
    def _warm_up(sender: Any, **_: Any) -> None:
        """Load the engine (e.g. the Whisper model) before the first file, not during it."""
        if getattr(sender, "app", None) is app:
            threading.Thread(target=runtime.warm_up, daemon=True).start()

    return runtime
