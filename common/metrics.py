"""Prometheus metrics of the cluster, read from Redis when scraped (`batchscribe worker
--metrics-port`, `batchscribe serve`'s /metrics): docs/monitoring.md lists them.

Why from Redis, not counted in each process: the truth already lives there (per-endpoint counters
moved by the same Lua scripts that move files, in-flight sets, the queues, heartbeats). Counters
read from it never reset when a consumer or a worker restarts, every scrape target reports the
same cluster-wide numbers (so a dashboard survives the loss of any one VM), and the hot path pays
nothing for metrics. The cost is one scrape's reads (14 pipelined round trips, whatever the
cluster's size, plus one command per queue list and per recent batch).

Names follow Prometheus' conventions: `batchscribe_` prefix, base units (`_seconds`), counters end
in `_total`, labels are bounded (endpoint, queue, error class, VM, state; batch ids only for the
live batches among the newest `BATCHES_LOOKED_AT`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from batchscribe.common.config import Endpoint, EndpointSet, parse_without_secrets
from batchscribe.common.errors import ConfigError, ErrorClass, StateError
from batchscribe.common.models import FileState, options_from_dict
from batchscribe.common.queues import consumer_queues, queue_for
from batchscribe.common.state import ConsumerBeat, StateStore

log = logging.getLogger(__name__)

BATCHES_LOOKED_AT = 100  # the newest batches whose unfinished ones are reported one by one
HEALTH_STATES = ("up", "down", "tripped", "unknown")
CONSUMER_STATES = ("starting", "running", "restarting", "stopping")
CLASSES = tuple(c.value for c in ErrorClass)
Batches = list[tuple[str, dict[str, str]]]  # (batch id, its counters, finished_at and options)


@dataclass(frozen=True)
class Cluster:
    """One scrape's reading of the endpoints and who serves them."""

    configured: dict[str, Endpoint]  # the endpoint set, by name
    beats: dict[str, ConsumerBeat]  # live consumers by node

    def endpoints(self) -> list[str]:
        return sorted(set(self.configured) | {b.endpoint for b in self.beats.values()})

    def slots(self, endpoint: str) -> int:
        """Files the endpoint's live consumers can run at once (a `local` endpoint: one per VM)."""
        live = [b for b in self.beats.values() if b.endpoint == endpoint]
        configured = self.configured.get(endpoint)
        return sum(b.concurrency or (configured.concurrency if configured else 0) for b in live)


class ClusterCollector(Collector):
    """A prometheus_client collector: every scrape reads the cluster's state (see module docstring).

    `local_endpoints`: the endpoint set of this process when nothing is published (a worker VM
    running a file that writes a key out, or its built-in local endpoint).
    """

    def __init__(self, store: StateStore, local_endpoints: Callable[[], EndpointSet] | None = None,
                 batches_looked_at: int = BATCHES_LOOKED_AT) -> None:
        self.store = store
        self.local_endpoints = local_endpoints
        self.batches_looked_at = batches_looked_at
        self._published: tuple[int, dict[str, Endpoint]] = (-1, {})
        self._lock = threading.Lock()
        self._failing = ""

    def collect(self) -> Iterator[Metric]:
        began = time.perf_counter()
        try:
            families = list(self._families())
        except StateError as exc:  # Redis away: say so in a metric, not with a failed scrape
            families = []
            if str(exc) != self._failing:
                log.warning("metrics: %s", exc)
            self._failing = str(exc)
        else:
            self._failing = ""
        yield from families
        yield _gauge("batchscribe_redis_up", "1 when this scrape could read Redis, else 0",
                     [((), 0.0 if self._failing else 1.0)])
        yield _gauge("batchscribe_metrics_collect_seconds", "how long this scrape took to read Redis",
                     [((), time.perf_counter() - began)])

    def _families(self) -> Iterator[Metric]:
        cluster = Cluster(self._configured(), self.store.consumer_beats())
        batches = self._live_batches()
        yield from self._endpoint_families(cluster)
        yield from self._queue_families(cluster, batches)
        yield from _batch_families(batches)
        yield from self._vm_families(cluster)

    # ---- endpoints ---------------------------------------------------------------------------------

    def _configured(self) -> dict[str, Endpoint]:
        """The published endpoint set (parsed once per version), else this process's own set."""
        version = self.store.endpoint_set_version()
        if not version:
            return {e.name: e for e in (self.local_endpoints() if self.local_endpoints else ())}
        with self._lock:
            if version != self._published[0]:
                self._published = (version, self._parse_published())
            return dict(self._published[1])

    def _parse_published(self) -> dict[str, Endpoint]:
        published = self.store.endpoint_set()
        if published is None:
            return {}
        try:
            endpoints, _ = parse_without_secrets(published.yaml, published.source)
        except ConfigError as exc:
            log.warning("metrics: the published endpoint set cannot be parsed here: %s", exc)
            return {}
        return {e.name: e for e in endpoints}

    def _endpoint_families(self, cluster: Cluster) -> Iterator[Metric]:
        names = cluster.endpoints()
        stats = self.store.endpoints_stats(names)
        health = self.store.health(names)
        owners = self.store.owners(names)
        now = self.store.clock()
        per = [((name,), stats[name]) for name in names]
        yield _gauge("batchscribe_endpoint_in_flight", "files calling the endpoint's engine now",
                     [(k, _num(s, "in_flight")) for k, s in per], ["endpoint"])
        yield _gauge("batchscribe_endpoint_slots", "files the endpoint's live consumers can run at once",
                     [((n,), cluster.slots(n)) for n in names], ["endpoint"])
        yield _counter("batchscribe_endpoint_files_done", "files transcribed on the endpoint",
                       [(k, _num(s, "done")) for k, s in per], ["endpoint"])
        for name, what, field in (
                ("files_failed", "files that ended failed, by the class of their last error",
                 "files_failed_"),
                ("attempts_failed", "attempts that failed on the endpoint (a file may fail several)",
                 "failed_"),
                ("retries", "files sent back to the pool after an error (transient: backoff; endpoint: "
                 "at once)", "retries_")):
            yield _counter(f"batchscribe_endpoint_{name}", what,
                           [((n, c), _num(s, field + c)) for (n,), s in per for c in CLASSES],
                           ["endpoint", "error_class"])
        yield _counter("batchscribe_endpoint_handbacks", "files handed back by a planned stop of a consumer",
                       [(k, _num(s, "handbacks")) for k, s in per], ["endpoint"])
        yield _counter("batchscribe_endpoint_audio_seconds", "seconds of audio transcribed on the endpoint",
                       [(k, _num(s, "audio_seconds")) for k, s in per], ["endpoint"])
        yield _counter("batchscribe_endpoint_busy_seconds", "wall time of the endpoint's successful attempts "
                       "(audio / busy seconds = the real-time factor it achieves)",
                       [(k, _num(s, "busy_seconds")) for k, s in per], ["endpoint"])
        yield _gauge("batchscribe_endpoint_real_time_factor", "seconds of audio transcribed per second of "
                     "a successful attempt on the endpoint, over its counters' whole life (x real time, as "
                     "the endpoint's `rtf`; per file, not times its concurrency)",
                     [(k, _num(s, "audio_seconds") / _num(s, "busy_seconds")) for k, s in per
                      if _num(s, "busy_seconds") > 0], ["endpoint"])
        yield _gauge("batchscribe_endpoint_health", "the endpoint's health as its owner last assessed it "
                     "(1 for the current state)",
                     [((n, st), float(_health_state(health.get(n)) == st))
                      for n in names for st in HEALTH_STATES],
                     ["endpoint", "state"])
        yield _gauge("batchscribe_endpoint_circuit_open", "1 while the endpoint's circuit breaker is open",
                     [(k, float(now < _num(s, "circuit_open_until"))) for k, s in per], ["endpoint"])
        yield _info("batchscribe_endpoint_owner", "the worker VM that runs the endpoint's consumer",
                    [{"endpoint": n, "vm": vm} for n in names for vm in _runs_on(n, owners.get(n), cluster)])

    # ---- queues ------------------------------------------------------------------------------------

    def _queue_families(self, cluster: Cluster, batches: Batches) -> Iterator[Metric]:
        queues = sorted(_queues(cluster, batches))
        depths = self.store.queue_depths(queues)
        now = self.store.clock()
        yield _gauge("batchscribe_queue_messages", "ready messages in the queue (every priority list)",
                     [((q,), depths[q].messages) for q in queues], ["queue"])
        yield _gauge("batchscribe_queue_oldest_age_seconds", "how long the queue's oldest message has "
                     "waited (0: empty)",
                     [((q,), _age(depths[q].oldest_queued_at, depths[q].messages, now)) for q in queues],
                     ["queue"])
        delayed = self.store.delayed_counts()
        yield _gauge("batchscribe_delayed_jobs", "jobs waiting in the delayed set (retry backoff, bounces)",
                     [((), delayed.waiting)])
        yield _gauge("batchscribe_delayed_due_jobs", "delayed jobs due now: promoters publish them within "
                     "a second", [((), delayed.due)])
        yield _gauge("batchscribe_delayed_promoting_jobs", "delayed jobs a promoter is publishing",
                     [((), delayed.promoting)])
        yield _gauge("batchscribe_unacked_messages", "messages consumers hold and have not acked",
                     [((), self.store.unacked_count())])

    def _live_batches(self) -> Batches:
        recent = self.store.recent_batches(self.batches_looked_at)
        return [(b, f) for b, f in recent if not f.get("finished_at")]

    # ---- worker VMs --------------------------------------------------------------------------------

    def _vm_families(self, cluster: Cluster) -> Iterator[Metric]:
        vms = self.store.seen_vms()
        alive: dict[str, int] = {}
        for beat in cluster.beats.values():
            host = beat.node.rpartition("@")[2]
            alive[host] = alive.get(host, 0) + 1
        yield _gauge("batchscribe_vm_up", "1 while the VM's supervisor sends heartbeats; 0 once silent "
                     "(the VM is dropped after 10 ownership TTLs)",
                     [((v.hostname,), float(v.beat is not None)) for v in vms], ["vm"])
        live = [(v.hostname, v.beat) for v in vms if v.beat is not None]
        yield _gauge("batchscribe_vm_consumers", "the VM's consumers by state, as its supervisor reports "
                     "them", [((vm, st), sum(s.state == st for s in beat.consumers.values()))
                              for vm, beat in live for st in CONSUMER_STATES], ["vm", "state"])
        yield _gauge("batchscribe_vm_consumers_alive", "the VM's consumers that send heartbeats",
                     [((v.hostname,), alive.get(v.hostname, 0)) for v in vms], ["vm"])
        yield _counter("batchscribe_vm_consumer_restarts", "consumers that exited unexpectedly and were "
                       "restarted, since the VM's supervisor started",
                       [((vm, ep), n) for vm, beat in live for ep, n in sorted(beat.restarts.items())],
                       ["vm", "endpoint"])


def _batch_families(batches: Batches) -> Iterator[Metric]:
    states = [s.value for s in FileState]
    yield _gauge("batchscribe_batches_live", "batches not finished yet (among the newest "
                 f"{BATCHES_LOOKED_AT})", [((), len(batches))])
    yield _gauge("batchscribe_batch_files", "files of each live batch by state",
                 [((b, st), _num(f, f"n_{st}")) for b, f in batches for st in states], ["batch", "state"])


def _queues(cluster: Cluster, batches: Batches) -> set[str]:
    """Every queue worth watching: those of the endpoint set and of live consumers, and the pools
    of live batches (which may have no consumer at all)."""
    found = {q for beat in cluster.beats.values() for q in beat.queues}
    for endpoint in cluster.configured.values():
        found.update(consumer_queues(endpoint))
    for _, fields in batches:
        try:
            opts = options_from_dict(json.loads(fields.get("options") or "{}"))
        except (ValueError, TypeError):
            continue
        found.add(queue_for(opts))
    return found


def _runs_on(endpoint: str, owner: str | None, cluster: Cluster) -> list[str]:
    """The VM that owns a shared endpoint; for a `local` one (every VM's own), each VM running it."""
    if owner:
        return [owner]
    return sorted({b.node.rpartition("@")[2] for b in cluster.beats.values() if b.endpoint == endpoint})


def _health_state(health: dict[str, Any] | None) -> str:
    """The word `batchscribe status` shows for the endpoint."""
    if not health:
        return "unknown"
    if health.get("usable"):
        return "up"
    return "tripped" if health.get("up") else "down"


def _age(queued_at: float | None, messages: int, now: float) -> float:
    return max(0.0, now - queued_at) if messages and queued_at else 0.0


def _num(fields: dict[str, str], name: str) -> float:
    try:
        return float(fields.get(name) or 0)
    except ValueError:
        return 0.0


Samples = Iterable[tuple[tuple[str, ...], float]]


def _gauge(name: str, documentation: str, samples: Samples, labels: list[str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=labels or [])
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _counter(name: str, documentation: str, samples: Samples, labels: list[str] | None = None) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels or [])
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _info(name: str, documentation: str, entries: list[dict[str, str]]) -> Metric:
    family = InfoMetricFamily(name, documentation, labels=[])
    for entry in entries:
        family.add_metric([], entry)
    return family


def registry_for(store: StateStore, local_endpoints: Callable[[], EndpointSet] | None = None
                 ) -> CollectorRegistry:
    """The registry `/metrics` serves: the cluster's metrics and the serving process's own
    (`process_cpu_seconds_total`, memory, open files)."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry()
    registry.register(ClusterCollector(store, local_endpoints))
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """`/metrics` over HTTP on a thread of this process (prometheus_client's server: also answers
    `/` and HEAD). `port` 0 takes a free port; `port` says which one it got."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        self.host = host
        self.port = int(self._server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
