"""Long files to fast endpoints: heterogeneous longest-first in a pull model.

A batch is published longest first and every endpoint pulls from its pool when a slot frees, so the
next-longest file goes to whichever slot frees first, on a slow endpoint as readily as on a fast
one. For most of a big batch that is what longest-first wants: the files are short against the
batch, and a slow slot that is kept busy is capacity. It goes wrong for a file whose time on *this*
endpoint alone outlasts the batch: a slow endpoint whose consumer comes up first after a cold start
pulls the longest files, and any batch whose longest files are a fair part of its makespan ends
with one slow slot still working on a long file while the others are idle (a 20 s file on an rtf-3
endpoint is 6.7 s, on an rtf-7 one 2.9 s: the whole 40-file batch of the example in docs/design.md
could end at 2.9 s).

So on a file's first start a consumer asks `Placement.better_home`:

    H = max(audio left in the file's batch / Σ(concurrency × rtf) of the live consumers of its queue,
            d / the fastest rtf among them)                         (when the batch can end at best)

and the file *yields* when d / own rtf > B = H × (1 + SLACK) + FLOOR — it would end here well
after the batch could — to a faster endpoint f of the queue with d / r_f ≤ B (the fastest always
is one): the fastest such endpoint with a slot not yet spoken for (files in flight + files already
pinned to it < its concurrency), else the fastest. It is pinned to f's own queue `ep.f`, which f's
consumer reads with the pools, and starts there at f's next free slot. The slot here takes the
next file of the pool instead (shorter: the pool is longest first).

How a yield stays exactly-once (`worker.jobs.JobRunner._yield`): the job is handed back (queued,
the attempt undone; the same atomic script as a planned stop) with a fallback copy for its pool in
the delayed set at now + FALLBACK, and only then a copy is published to `ep.f`. START there runs it
and removes the fallback; if f never takes it (it died or left the set), the fallback publishes it
to the pool. Any late copy meets START's usual verdicts (deferred while it runs, dropped once done).
A job yields at most once — on its first start — so nothing moves back and forth. Only durations
and speeds are used: a consumer knows its peers from their heartbeats (endpoint, queues,
concurrency, rtf) and their usability from the published health verdicts, both cached for a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from batchscribe.common.config import Endpoint
from batchscribe.common.errors import StateError
from batchscribe.common.publish import TaskSpec
from batchscribe.common.queues import endpoint_queue
from batchscribe.common.state import StateStore

log = logging.getLogger(__name__)

SLACK = 0.25  # a file yields only if it would end here more than 25 % after the batch could …
FLOOR = 1.0  # … and more than a second after: short files are never worth moving
FALLBACK = 30.0  # seconds a yielded file waits for its new endpoint before it goes back to the pool
CACHE = 1.0  # seconds the peers and their health are cached


@dataclass(frozen=True)
class Peer:
    """An endpoint that live consumers run for a queue (its slots summed over VMs)."""

    endpoint: str
    rtf: float
    concurrency: int

    @property
    def capacity(self) -> float:
        return self.rtf * self.concurrency


class Placement:
    """One consumer's view of where a file it was handed would finish soonest."""

    def __init__(self, store: StateStore, endpoint: Endpoint, cache: float = CACHE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.endpoint = endpoint
        self.cache = cache
        self.clock = clock
        self._peers: dict[str, list[Peer]] = {}
        self._read_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def peers(self, queue: str) -> list[Peer]:
        """The usable endpoints whose live consumers take `queue`, this one included."""
        with self._lock:
            now = self.clock()
            if now - self._read_at.get(queue, float("-inf")) >= self.cache:
                self._peers[queue] = self._read_peers(queue)
                self._read_at[queue] = now
            return self._peers[queue]

    def _read_peers(self, queue: str) -> list[Peer]:
        slots: dict[str, int] = {}
        speed: dict[str, float] = {}
        for beat in self.store.consumer_beats().values():
            if queue in beat.queues and beat.rtf > 0:
                slots[beat.endpoint] = slots.get(beat.endpoint, 0) + max(1, beat.concurrency)
                speed[beat.endpoint] = beat.rtf
        verdicts = self.store.health(sorted(slots))
        usable = [name for name in slots if verdicts.get(name, {}).get("usable", True)]
        return [Peer(name, speed[name], slots[name]) for name in usable]

    def better_home(self, task: TaskSpec) -> str | None:
        """The endpoint `task` (a first start, on this endpoint) should yield to, or None to run it
        here. Never raises for Redis trouble: the file then just runs here."""
        try:
            return self._better_home(task)
        except StateError as exc:
            log.debug("placement of %s skipped: %s", task.job_key, exc)
            return None

    def _better_home(self, task: TaskSpec) -> str | None:
        d, mine = task.duration, self.endpoint.rtf
        if d <= 0 or mine <= 0 or d / mine <= FLOOR:
            return None
        peers = self.peers(task.queue)
        faster = [p for p in peers if p.rtf > mine and p.endpoint != self.endpoint.name]
        if not faster:  # the fastest endpoint (or alone): every file runs where it lands
            return None
        capacity = sum(p.capacity for p in peers)
        if all(p.endpoint != self.endpoint.name for p in peers):  # its own beat not read yet
            capacity += mine * self.endpoint.concurrency
        header = self.store.batch(task.batch) if task.batch else {}
        left = float(header.get("audio_total") or 0) - float(header.get("audio_done") or 0)
        fastest = max(p.rtf for p in faster)
        horizon = max(max(left, d) / capacity, d / fastest)
        bound = horizon * (1 + SLACK) + FLOOR  # later than this is too late
        if d / mine <= bound:
            return None
        fits = sorted((p for p in faster if d / p.rtf <= bound), key=lambda p: -p.rtf)
        return self._with_room(fits)  # the fastest always fits: d / fastest ≤ horizon

    def _with_room(self, fits: list[Peer]) -> str:
        """The fastest of `fits` with a slot not spoken for, else the fastest."""
        names = [p.endpoint for p in fits]
        stats = self.store.endpoints_stats(names)
        pinned = self.store.queue_depths([endpoint_queue(n) for n in names])
        for peer in fits:
            busy = int(stats.get(peer.endpoint, {}).get("in_flight", 0) or 0)
            depth = pinned.get(endpoint_queue(peer.endpoint))
            waiting = depth.messages if depth is not None else 0
            if busy + waiting < peer.concurrency:
                return peer.endpoint
        return fits[0].endpoint
