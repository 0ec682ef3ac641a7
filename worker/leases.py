"""Delivery leases: a consumer proves, every few seconds, that the files it runs are still alive.

Kombu's Redis transport gives an unacked delivery back to the queue once it is older than the
visibility timeout, whether its worker is alive or not. Rather than a visibility timeout longer than
the longest file (which makes a SIGKILLed worker's files wait that long), each consumer runs one
`LeaseKeeper` thread that, every `heartbeat` seconds, for every delivery it is running:

* extends the job's lease (`lease_until` in the job hash) if this delivery still holds the job, so
  a duplicate delivery defers instead of running the engine a second time, and
* sets the delivery tag's score in kombu's `unacked_index` to now (`ZADD XX`), so kombu restores
  the delivery only when nobody has refreshed it for a visibility timeout: when its worker died;

and renews the consumer's own heartbeat (`worker.liveness.ConsumerPresence`): alive, what it runs.

The keeper is watched: if its thread dies or stops beating, the consumer must not go on running
files unleased (they would be taken over and run twice), so it says so and exits non-zero; the
supervisor restarts it and the files come back through the crash path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from batchscribe.common.errors import StateError
from batchscribe.common.keys import KOMBU_UNACKED_INDEX
from batchscribe.common.state import LeaseItem, StateStore
from batchscribe.worker.liveness import ConsumerPresence

log = logging.getLogger(__name__)

EXIT_LEASES_LOST = 3  # the consumer's exit code when its lease keeper died


def exit_now(reason: str) -> None:
    """Default reaction to a dead keeper: no warm shutdown (that would keep running unleased)."""
    log.critical("%s; stopping this consumer now (exit %d)", reason, EXIT_LEASES_LOST)
    logging.shutdown()
    os._exit(EXIT_LEASES_LOST)


class LeaseKeeper:
    """One per consumer process; `hold()` registers a running delivery for as long as it runs."""

    def __init__(self, store: StateStore, lease_ttl: float, heartbeat: float,
                 on_death: Callable[[str], None] = exit_now,
                 unacked_index: str = KOMBU_UNACKED_INDEX,
                 presence: ConsumerPresence | None = None) -> None:
        self.store = store
        self.presence = presence  # the consumer's own heartbeat, renewed with the leases
        self.lease_ttl = lease_ttl
        self.heartbeat = heartbeat
        self.unacked_index = unacked_index
        self._on_death = on_death
        self._running: dict[str, LeaseItem] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_beat = time.monotonic()
        self._missing_tags: set[str] = set()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None

    # ---- registration ------------------------------------------------------------------

    @contextlib.contextmanager
    def hold(self, item: LeaseItem) -> Iterator[None]:
        """Keep `item`'s lease and delivery tag fresh while the block runs."""
        with self._lock:
            self._running[item.delivery] = item
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(item.delivery, None)

    def running(self) -> list[LeaseItem]:
        with self._lock:
            return list(self._running.values())

    # ---- the loop ----------------------------------------------------------------------

    def beat(self) -> None:
        """One round: extend every running lease, refresh every running delivery tag, say the
        consumer is alive and what it runs."""
        items = self.running()
        if self.presence is not None:
            self.presence.beat(items)
        for item, (ours, seen) in zip(items, self.store.extend_leases(items, self.lease_ttl,
                                                                       self.unacked_index)):
            if not ours:
                log.warning("job %s is no longer held by delivery %s (taken over or finished)",
                            item.job_key, item.delivery)
            if item.tag and not seen and item.tag not in self._missing_tags:
                self._missing_tags.add(item.tag)  # say it once per tag
                log.warning("delivery tag %s of job %s is not in kombu's %s", item.tag, item.job_key,
                            self.unacked_index)

    def _run(self) -> None:
        """Beat until stopped. Redis errors are retried next beat; anything else kills the thread."""
        failing_since: float | None = None
        while not self._stop.wait(self.heartbeat):
            self._last_beat = time.monotonic()
            try:
                self.beat()
                failing_since = None
            except StateError as exc:
                failing_since = failing_since or time.monotonic()
                lapsed = time.monotonic() - failing_since > self.lease_ttl
                (log.error if lapsed else log.warning)(
                    "cannot extend leases%s: %s", " (they may have lapsed)" if lapsed else "", exc)
            except Exception:  # a bug: end the thread; the watchdog stops the consumer
                log.critical("lease keeper crashed", exc_info=True)
                return

    def _watch(self) -> None:
        """Notice a keeper thread that died or hangs, and call `on_death` once."""
        while not self._stop.wait(self.heartbeat):
            thread = self._thread
            if thread is None or not thread.is_alive():
                self._on_death("lease keeper thread died")
                return
            if time.monotonic() - self._last_beat > self.lease_ttl:
                self._on_death(f"lease keeper has not beaten for {self.lease_ttl:.0f} s")
                return

    def start(self) -> LeaseKeeper:
        if self.presence is not None:  # heard from at once, not one heartbeat later
            try:
                self.presence.beat([])
            except StateError as exc:
                log.warning("cannot send this consumer's first heartbeat: %s", exc)
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="lease-watchdog", daemon=True)
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self) -> None:
        self._stop.set()
