"""The consumer processes of one worker VM: start what is wanted, stop what is not, restart what dies.

A consumer that exits unexpectedly is restarted with exponential backoff (2 s, 4 s … 60 s; at once
after a healthy minute). A consumer that must go gets SIGTERM — a planned stop: it hands its in-flight
files back at once (`worker.tasks`) — and SIGKILL after the grace period; then `on_killed` lets the
supervisor hand back whatever it was still running. Its replacement starts only after it has
exited, so an endpoint never sees more than its concurrency.

How a process is started (`spawn`) and the time (`clock`, monotonic) are passed in, so the pool is
tested without processes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from batchscribe.common.config import Endpoint
from batchscribe.common.state import ConsumerSlot

log = logging.getLogger(__name__)

STARTUP = 30.0  # seconds a new consumer may take before it must be heard from (its heartbeat)
HEALTHY_RUN = 60.0  # seconds a consumer must live for its exit not to count towards the backoff
MAX_BACKOFF = 60.0
KILL_RETRY = 5.0  # seconds between SIGKILLs of a consumer that has not gone yet


class ConsumerProcess(Protocol):
    """What the pool needs of a started consumer."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def signal(self, sig: int) -> None: ...


class PopenConsumer:
    """A real consumer: a `subprocess.Popen` in its own session; signals go to its whole group."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


Spawn = Callable[[Endpoint], ConsumerProcess]


@dataclass
class Consumer:
    endpoint: Endpoint
    proc: ConsumerProcess | None = None
    failures: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    stop_deadline: float = 0.0  # > 0 while a planned stop is under way
    killed: bool = False  # the planned stop ran out of grace

    @property
    def stopping(self) -> bool:
        return self.stop_deadline > 0

    def slot(self, now: float) -> ConsumerSlot:
        pid = self.proc.pid if self.proc is not None else 0
        if self.stopping:
            return ConsumerSlot(pid, "stopping")
        if self.proc is None:
            return ConsumerSlot(0, "restarting")
        return ConsumerSlot(pid, "starting" if now - self.started_at < STARTUP else "running")


class Pool:
    def __init__(self, spawn: Spawn, clock: Callable[[], float] = time.monotonic, grace: float = 30.0,
                 on_killed: Callable[[Endpoint], None] | None = None) -> None:
        self.spawn = spawn
        self.clock = clock
        self.grace = grace
        self.on_killed = on_killed
        self.consumers: dict[str, Consumer] = {}
        self.restarts: dict[str, int] = {}  # unplanned exits by endpoint, since this pool started

    def names(self) -> set[str]:
        """Endpoints that have a consumer (running, starting again or still stopping)."""
        return set(self.consumers)

    def slots(self) -> dict[str, ConsumerSlot]:
        now = self.clock()
        return {name: consumer.slot(now) for name, consumer in self.consumers.items()}

    def reconcile(self, wanted: Mapping[str, Endpoint]) -> None:
        """Start what is wanted and not running; stop what runs and is not wanted (or changed)."""
        for name, consumer in list(self.consumers.items()):
            if consumer.stopping:
                continue
            want = wanted.get(name)
            if want is not None and want.fingerprint() == consumer.endpoint.fingerprint():
                continue
            if consumer.proc is None:  # waiting out a restart backoff: nothing to stop
                del self.consumers[name]
            else:
                self._begin_stop(consumer, "its settings changed" if want else
                                 "no longer wanted here (removed, down, tripped or not owned)")
        for name, endpoint in wanted.items():
            if name not in self.consumers:
                consumer = Consumer(endpoint)
                self.consumers[name] = consumer
                self._start(consumer)

    def stop_all(self) -> None:
        """The VM stops: every consumer gets its planned stop; those waiting to restart just go."""
        for name, consumer in list(self.consumers.items()):
            if consumer.proc is None:
                del self.consumers[name]
            elif not consumer.stopping:
                self._begin_stop(consumer, "this worker stops")

    def check(self) -> None:
        """Reap exits (planned ones free the slot, others restart with backoff); kill stops that
        outlast the grace period; start what is due."""
        now = self.clock()
        for name, consumer in list(self.consumers.items()):
            if consumer.proc is not None and consumer.proc.poll() is not None:
                if consumer.stopping:
                    self._stopped(name, consumer)
                    continue
                self._exited(consumer, now)
            elif consumer.stopping and now > consumer.stop_deadline:
                if not consumer.killed:
                    log.warning("consumer of %s did not stop within %.0f s; killing it", name, self.grace)
                consumer.killed = True
                self._signal(consumer, signal.SIGKILL)
                consumer.stop_deadline = now + KILL_RETRY
            if consumer.proc is None and not consumer.stopping and now >= consumer.next_start:
                self._start(consumer)

    def _stopped(self, name: str, consumer: Consumer) -> None:
        del self.consumers[name]
        if consumer.killed and self.on_killed is not None:
            self.on_killed(consumer.endpoint)

    def _exited(self, consumer: Consumer, now: float) -> None:
        assert consumer.proc is not None
        healthy_run = now - consumer.started_at > HEALTHY_RUN
        consumer.failures = 0 if healthy_run else consumer.failures + 1
        consumer.next_start = now + (min(MAX_BACKOFF, 2.0 ** consumer.failures) if consumer.failures else 0)
        self.restarts[consumer.endpoint.name] = self.restarts.get(consumer.endpoint.name, 0) + 1
        log.warning("consumer of %s exited with %s; restarting in %.0f s",
                    consumer.endpoint.name, consumer.proc.poll(), consumer.next_start - now)
        consumer.proc = None

    def _start(self, consumer: Consumer) -> None:
        consumer.proc = self.spawn(consumer.endpoint)
        consumer.started_at = self.clock()
        log.info("started consumer for endpoint %s (pid %d, concurrency %d)",
                 consumer.endpoint.name, consumer.proc.pid, consumer.endpoint.concurrency)

    def _begin_stop(self, consumer: Consumer, why: str) -> None:
        log.info("stopping consumer of %s: %s", consumer.endpoint.name, why)
        consumer.stop_deadline = self.clock() + self.grace
        self._signal(consumer, signal.SIGTERM)

    @staticmethod
    def _signal(consumer: Consumer, sig: int) -> None:
        if consumer.proc is not None:
            consumer.proc.signal(sig)
