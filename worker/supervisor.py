"""The per-VM worker: one Celery consumer process per endpoint this VM owns, kept alive, kept
healthy and kept in line with the cluster's endpoint set.

Every `poll_interval` the supervisor
* reads the endpoint set: its own `--config` file (polled by content: inotify misses NFS and
  rename-replace; a changed file is validated and published cluster-wide) and the published set
  in Redis (`batchscribe endpoints apply`); an invalid set is reported and the running one stays;
* renews or takes endpoint ownership (one VM per endpoint cluster-wide, see `ownership`);
* reads health (probes run on their own thread) and each endpoint's circuit breaker;
* runs a consumer for exactly the endpoints that are in the set, owned, up and not tripped:
  `celery -A batchscribe.worker.app worker -Q ep.NAME,pool.LANG… -c CONCURRENCY -P threads`.

A consumer that exits unexpectedly is restarted with exponential backoff (reap-and-restart). A
consumer that must go (endpoint removed, changed, down, tripped, lost) gets SIGTERM — Celery's
warm shutdown finishes its in-flight files — and SIGKILL after the grace period; its replacement
starts only after it has exited, so an endpoint never sees more than its concurrency.
Background threads (prober, retry promoter) are watched: if one dies the supervisor stops.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from batchscribe.common.config import Endpoint, EndpointSet, parse_endpoints
from batchscribe.common.errors import ConfigError, StateError
from batchscribe.common.processes import die_with_parent
from batchscribe.common.queues import consumer_queues
from batchscribe.common.registry import EndpointRegistry, LiteralSecretError, validate
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.worker.health import CircuitBreaker, HealthState, probe
from batchscribe.worker.outage import RedisTrouble
from batchscribe.worker.ownership import Ownership

log = logging.getLogger(__name__)


def consumer_command(endpoint: Endpoint, hostname: str) -> list[str]:
    """The plain Celery command line of one endpoint's consumer (also shown in docs)."""
    return [sys.executable, "-m", "celery", "-A", "batchscribe.worker.app", "worker",
            "-Q", ",".join(consumer_queues(endpoint)), "-c", str(endpoint.concurrency), "-P", "threads",
            "-n", f"{endpoint.name}@{hostname}", "-E", "--without-gossip", "--without-mingle",
            "-l", "INFO"]


@dataclass
class Consumer:
    endpoint: Endpoint
    proc: subprocess.Popen[bytes] | None = None
    failures: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    stop_deadline: float = 0.0  # > 0 while a planned stop is under way

    @property
    def stopping(self) -> bool:
        return self.stop_deadline > 0


@dataclass
class EndpointView:
    """What this VM knows about one endpoint of the set."""

    health: HealthState = field(default_factory=HealthState)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)


class Supervisor:
    def __init__(self, settings: Settings, endpoints: EndpointSet, config_path: str | None = None,
                 hostname: str | None = None, log_file: IO[bytes] | None = None,
                 poll_interval: float = 1.0, grace: float = 30.0, store: StateStore | None = None,
                 follow_registry: bool = True, owner_ttl: float = 15.0) -> None:
        self.settings = settings
        self.config_path = config_path
        self.hostname = hostname or socket.gethostname()
        self.log_file = log_file
        self.poll_interval = poll_interval
        self.grace = grace
        self.store = store or StateStore.connect(settings)
        self.follow_registry = follow_registry
        self.registry = EndpointRegistry(self.store)
        self.ownership = Ownership(self.store, self.hostname, owner_ttl)
        self.consumers: dict[str, Consumer] = {}
        self.views: dict[str, EndpointView] = {}
        self.desired = endpoints
        self._registry_version = -1
        self._config_digest = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failed = False
        self._handing_off: str | None = None
        self._over_share = 0
        self._probe_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._redis_trouble = RedisTrouble(log, "supervisor")

    # ---- the endpoint set ----------------------------------------------------------------

    def refresh_desired(self) -> None:
        """Publish our edited file (if any), then adopt the newest published set."""
        if self.config_path is not None:
            text = self._read_config()
            digest = hashlib.sha256(text.encode()).hexdigest() if text is not None else ""
            if text is not None and digest != self._config_digest:
                self._config_digest = digest
                self._publish_file(text)
        if not self.follow_registry:
            return
        version = self.registry.version()
        if version == self._registry_version:
            return
        current = self.registry.current()
        if current is None:
            return
        self._registry_version = current.version
        try:
            self.desired = parse_endpoints(current.yaml, current.source or "published set")
        except ConfigError as exc:
            log.error("endpoint set v%d cannot be used on this VM; keeping the running set: %s",
                      current.version, exc)
            return
        log.info("endpoint set v%d from %s: %s", current.version, current.source,
                 ", ".join(f"{e.name}×{e.concurrency}" for e in self.desired))

    def _read_config(self) -> str | None:
        try:
            return Path(self.config_path).read_text(encoding="utf-8")  # type: ignore[arg-type]
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read %s (%s); keeping the running set", self.config_path, exc)
            return None

    def _publish_file(self, text: str) -> None:
        source = Path(self.config_path).name  # type: ignore[arg-type]
        try:
            if self.follow_registry and self._publishable(text, source):
                version = self.registry.publish(text, source)
                log.info("%s published as endpoint set v%d", self.config_path, version)
            else:
                self.desired = parse_endpoints(text, source)
        except ConfigError as exc:
            log.error("endpoint file changed but is invalid; keeping the running set: %s", exc)

    def _publishable(self, text: str, source: str) -> bool:
        """A file that writes a key out runs on this VM only (secrets never go to Redis); a newer
        `endpoints apply` still replaces it, as it replaces any published file."""
        try:
            validate(text, source)
        except LiteralSecretError as exc:
            log.warning("%s. This VM runs the file's set without publishing it", exc)
            self._registry_version = self.registry.version()
            return False
        return True

    # ---- health, breakers, ownership ------------------------------------------------------

    def _probe_all(self) -> None:
        """Probe every endpoint of the set in parallel; runs on the prober thread."""
        endpoints = list(self.desired)
        results = list(self._probe_pool.map(probe, endpoints))
        for endpoint, result in zip(endpoints, results):
            view = self.views.setdefault(endpoint.name, EndpointView())
            if view.health.observe(result):
                state = "up" if view.health.up else f"DOWN ({view.health.reason})"
                log.warning("endpoint %s is %s", endpoint.name, state)

    def _prober(self) -> None:
        while not self._stop.wait(self.poll_interval):
            self._probe_all()

    def _usable(self, name: str, stats: dict[str, str]) -> bool:
        view = self.views.setdefault(name, EndpointView())
        failures = int(stats.get("consecutive_failures", 0) or 0)
        if view.breaker.observe(failures):
            log.warning("endpoint %s: %d files failed in a row; circuit open for %.0f s",
                        name, failures, view.breaker.open_until - time.time())
            self.store.reset_consecutive_failures(name)
        return view.health.up and not view.breaker.is_open()

    def wanted(self) -> dict[str, Endpoint]:
        # A local endpoint is this VM's own CPU: every VM runs its own, so it has no cluster owner.
        shared = [e.name for e in self.desired if e.engine != "local"]
        owned = self._rebalance(self.ownership.sync(shared), len(shared))
        owned |= {e.name for e in self.desired if e.engine == "local"}
        wanted: dict[str, Endpoint] = {}
        for endpoint in self.desired:
            if endpoint.name not in owned:
                continue
            usable = self._usable(endpoint.name, self.store.endpoint_stats(endpoint.name))
            self._publish_health(endpoint.name, usable)
            if usable:
                wanted[endpoint.name] = endpoint
        for name in set(self.consumers) - {e.name for e in self.desired}:
            self.views.pop(name, None)
        return wanted

    def _rebalance(self, owned: set[str], shared: int) -> set[str]:
        """Hand one endpoint over while this VM owns more than its fair share for a few polls.

        Its consumer stops first (in-flight files finish); the key is released only once the
        consumer has exited, so the endpoint never runs on two VMs at once.
        """
        over = len(owned) > self.ownership.fair_share(shared)
        self._over_share = self._over_share + 1 if over else 0
        if self._handing_off is None and self._over_share >= 3:
            self._handing_off = sorted(owned)[-1]
            log.info("another VM joined: handing endpoint %s over", self._handing_off)
        name = self._handing_off
        if name is None:
            return owned
        if name not in self.consumers:
            self.ownership.release(name)
            self._handing_off, self._over_share = None, 0
        return owned - {name}

    def _publish_health(self, name: str, usable: bool) -> None:
        view = self.views[name]
        doc = {"up": view.health.up, "usable": usable, "reason": view.health.reason,
               "since": round(view.health.since, 3), "owner": self.hostname,
               "circuit_open_until": round(view.breaker.open_until, 3), "checked_at": round(time.time(), 3)}
        self.store.publish_health(name, doc)

    # ---- processes -----------------------------------------------------------------------

    def _spawn(self, endpoint: Endpoint) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(self.settings.to_env())
        env["BATCHSCRIBE_ENDPOINT_JSON"] = json.dumps(endpoint.to_dict())
        env["PYTHONUNBUFFERED"] = "1"
        out = self.log_file
        return subprocess.Popen(consumer_command(endpoint, self.hostname), env=env,
                                stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True, preexec_fn=die_with_parent)

    def _start(self, consumer: Consumer) -> None:
        consumer.proc = self._spawn(consumer.endpoint)
        consumer.started_at = time.monotonic()
        log.info("started consumer for endpoint %s (pid %d, concurrency %d)",
                 consumer.endpoint.name, consumer.proc.pid, consumer.endpoint.concurrency)

    @staticmethod
    def _signal(consumer: Consumer, sig: int) -> None:
        if consumer.proc is not None and consumer.proc.poll() is None:
            try:
                os.killpg(consumer.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _begin_stop(self, consumer: Consumer, why: str) -> None:
        log.info("stopping consumer of %s: %s", consumer.endpoint.name, why)
        consumer.stop_deadline = time.monotonic() + self.grace
        self._signal(consumer, signal.SIGTERM)

    def reconcile(self, wanted: dict[str, Endpoint]) -> None:
        """Start what is wanted and not running; stop what runs and is not wanted (or changed)."""
        for name, consumer in self.consumers.items():
            if consumer.stopping:
                continue
            want = wanted.get(name)
            if want is None:
                self._begin_stop(consumer, "no longer wanted here (removed, down, tripped or not owned)")
            elif want.fingerprint() != consumer.endpoint.fingerprint():
                self._begin_stop(consumer, "its settings changed")
        for name, endpoint in wanted.items():
            if name not in self.consumers:
                consumer = Consumer(endpoint)
                self.consumers[name] = consumer
                self._start(consumer)

    def check(self) -> None:
        """Reap exits: planned ones free the slot, unplanned ones restart with backoff (1 s … 60 s)."""
        now = time.monotonic()
        for name, consumer in list(self.consumers.items()):
            if consumer.proc is not None and consumer.proc.poll() is not None:
                if consumer.stopping:
                    del self.consumers[name]
                    continue
                healthy_run = now - consumer.started_at > 60
                consumer.failures = 0 if healthy_run else consumer.failures + 1
                consumer.next_start = now + (min(60.0, 2.0 ** consumer.failures) if consumer.failures else 0)
                log.warning("consumer of %s exited with %s; restarting in %.0f s",
                            name, consumer.proc.returncode, consumer.next_start - now)
                consumer.proc = None
            elif consumer.stopping and now > consumer.stop_deadline:
                log.warning("consumer of %s did not stop within %.0f s; killing it", name, self.grace)
                self._signal(consumer, signal.SIGKILL)
                consumer.stop_deadline = now + 5
            if consumer.proc is None and not consumer.stopping and now >= consumer.next_start:
                self._start(consumer)

    # ---- the loop ------------------------------------------------------------------------

    def _watched(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except Exception:
                log.exception("background loop %s died; stopping this worker", name)
                self._failed = True
                self._stop.set()
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_background(self) -> None:
        self._watched("prober", self._prober)
        try:
            from batchscribe.worker.scheduler import run_promoter
        except ImportError:
            return
        from batchscribe.common.celery_app import make_app
        from batchscribe.common.publish import Publisher

        publisher = Publisher(make_app(self.settings, "batchscribe-promoter"))
        self._watched("promoter", lambda: run_promoter(self._stop, self.store, publisher, 0.5))

    def tick(self) -> None:
        self.refresh_desired()
        self.reconcile(self.wanted())
        # In-flight entries of consumers that died mid-file, on any endpoint this VM knows of.
        self.store.prune_inflight(sorted({e.name for e in self.desired} | set(self.consumers)))

    def run(self) -> None:
        """Supervise until request_stop() (signal handler or another thread)."""
        self.refresh_desired()
        self._probe_all()
        self._start_background()
        next_sync = 0.0
        try:
            while not self._stop.wait(0.25):
                self.check()
                if time.monotonic() >= next_sync:
                    self._tick_safely()
                    next_sync = time.monotonic() + self.poll_interval
        finally:
            self._shutdown()

    def _tick_safely(self) -> None:
        try:
            self.tick()
        except StateError as exc:  # Redis away or refusing writes: keep consumers as they are, try again
            self._redis_trouble.failed(exc)
        except Exception as exc:
            log.warning("supervisor tick failed (%s: %s); retrying", type(exc).__name__, exc)
        else:
            self._redis_trouble.ok()

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopped_by_failure(self) -> bool:
        return self._failed

    def _shutdown(self) -> None:
        """Warm shutdown of every consumer, kill after the grace period, give endpoints back."""
        for consumer in self.consumers.values():
            self._signal(consumer, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for consumer in self.consumers.values():
            if consumer.proc is None:
                continue
            try:
                consumer.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(consumer, signal.SIGKILL)
                consumer.proc.wait()
        self._probe_pool.shutdown(wait=False)
        try:
            self.ownership.leave([e.name for e in self.desired])
        except Exception as exc:  # Redis gone: the keys expire by themselves
            log.warning("could not release endpoint ownership: %s", exc)

