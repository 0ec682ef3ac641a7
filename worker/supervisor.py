"""The per-VM worker: one Celery consumer per endpoint this VM owns, kept alive, kept healthy and
kept in line with the cluster's endpoint set. This module is the loop; each decision has its part:

* `endpoint_source.EndpointSource` — the endpoint set (the `--config` file, the published set);
* `ownership.Ownership` / `ownership.Rebalancer` — which shared endpoints this VM runs (a `local`
  endpoint and the `ffmpeg` converter are every VM's own);
* `health.EndpointHealth` — which of them are usable: probes (on their own thread) and one circuit
  breaker per endpoint, published with a TTL for the consumers;
* `pool.Pool` — a consumer process for exactly the wanted endpoints:
  `celery -A batchscribe.worker.app worker -Q ep.NAME,pool.LANG… -c CONCURRENCY -P threads`,
  forked by this VM's zygote (`launch.Launcher`, `zygote`: imported once, not per consumer);

Every `poll_interval` a tick runs them in that order, prunes stale in-flight entries and renews
this VM's heartbeat (`batchscribe health`); every 0.25 s the pool reaps and restarts. The prober,
the delayed-retry promoter and the run-summary refresher (`common.summary.refresh_live`) run on
watched threads: if one dies the worker stops.

A planned stop (`request_stop`: SIGTERM, SIGINT) stops every consumer — each hands its in-flight
files back at once — kills those that outlast the grace period and hands back what they ran (so
no file counts a crash), then gives the endpoints back.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import IO

from batchscribe.common.config import Endpoint, EndpointSet
from batchscribe.common.errors import StateError
from batchscribe.common.publish import TaskSpec
from batchscribe.common.queues import consumer_queues
from batchscribe.common.settings import Settings
from batchscribe.common.state import LeaseItem, StateStore, VMBeat, split_target
from batchscribe.worker.endpoint_source import EndpointSource
from batchscribe.worker.health import EndpointHealth
from batchscribe.worker.launch import Launcher
from batchscribe.worker.outage import RedisTrouble
from batchscribe.worker.ownership import Ownership, Rebalancer
from batchscribe.worker.pool import KILL_RETRY, ConsumerProcess, Pool, Spawn

log = logging.getLogger(__name__)

LOOP = 0.25  # seconds between reaps of the pool
STOP_POLL = 0.02  # seconds between reaps while stopping: `run` exits as soon as its consumers have
SUMMARY_JOIN = 60.0  # seconds a stopping supervisor waits for a run-summary rewrite under way


def consumer_command(endpoint: Endpoint, hostname: str) -> list[str]:
    """The plain Celery command line of one endpoint's consumer (also shown in docs)."""
    return [sys.executable, "-m", "celery", "-A", "batchscribe.worker.app", "worker",
            "-Q", ",".join(consumer_queues(endpoint)), "-c", str(endpoint.concurrency), "-P", "threads",
            "-n", node_name(endpoint.name, hostname), "-E", "--without-gossip", "--without-mingle",
            "-l", "INFO"]


def node_name(endpoint: str, hostname: str) -> str:
    """Celery's node name of an endpoint's consumer on a VM; deliveries' ids start with it."""
    return f"{endpoint}@{hostname}"


def wanted(desired: EndpointSet, owned: set[str], usable: set[str]) -> dict[str, Endpoint]:
    """The endpoints that get a consumer here: in the set, run by this VM, usable."""
    return {e.name: e for e in desired if e.name in owned and e.name in usable}


class Supervisor:
    def __init__(self, settings: Settings, endpoints: EndpointSet, config_path: str | None = None,
                 hostname: str | None = None, log_file: IO[bytes] | None = None,
                 poll_interval: float = 1.0, grace: float = 30.0, store: StateStore | None = None,
                 follow_registry: bool = True, owner_ttl: float = 15.0, spawn: Spawn | None = None,
                 clock: Callable[[], float] = time.monotonic, converter: Endpoint | None = None) -> None:
        self.settings = settings
        self.hostname = hostname or socket.gethostname()
        self.log_file = log_file
        self.poll_interval = poll_interval
        self.grace = grace
        self.clock = clock
        self.store = store or StateStore.connect(settings)
        self.owner_ttl = owner_ttl
        self.source = EndpointSource(self.store, endpoints, config_path, follow_registry)
        self.converter = converter  # this VM's media converter, unless the set names one (engine ffmpeg)
        self.ownership = Ownership(self.store, self.hostname, owner_ttl, clock)
        self.rebalancer = Rebalancer(self.ownership)
        self.health = EndpointHealth(self.store, self.hostname, owner_ttl)
        # Real consumers are forked by a zygote that starts importing now (worker.zygote).
        self.launcher = Launcher(self._consumer_env(), log_file) if spawn is None else None
        self.pool = Pool(spawn or self._spawn, clock, grace, on_killed=self._hand_back)
        self._stop = threading.Event()
        self._summary_thread: threading.Thread | None = None
        self._failed = False
        self._alone = False  # on a Redis this VM alone uses (`run_prestarted`)
        self._redis_trouble = RedisTrouble(log, "supervisor")

    # ---- one tick ------------------------------------------------------------------------

    def desired(self, endpoints: EndpointSet | None = None) -> EndpointSet:
        """The set to run here: the endpoint set, plus this VM's converter when the set has none."""
        current = self.source.current if endpoints is None else endpoints
        if self.converter is None or any(e.engine == "ffmpeg" for e in current):
            return current
        return replace(current, endpoints=(*current.endpoints, self.converter))

    def tick(self) -> None:
        desired = self.desired(self.source.refresh())
        shared = [e.name for e in desired if not e.on_every_vm]
        owned = self.rebalancer.adjust(self.ownership.sync(shared), len(shared), self.pool.names())
        owned |= {e.name for e in desired if e.on_every_vm}
        usable = self.health.assess(e.name for e in desired if e.name in owned)
        self.health.forget(e.name for e in desired)
        self.pool.reconcile(wanted(desired, owned, usable))
        # In-flight entries of consumers that died mid-file, on any endpoint this VM knows of.
        self.store.prune_inflight(sorted({e.name for e in desired} | self.pool.names()))
        # beat_at is a wall-clock time other VMs may read: the store's clock (time.time unless a test
        # moves it), as for every time written to Redis; not self.clock, which is monotonic.
        self.store.beat_vm(VMBeat(self.hostname, os.getpid(), round(self.store.clock(), 3), self.pool.slots(),
                                  dict(self.pool.restarts)), self.owner_ttl)

    def run_prestarted(self, redis_up: threading.Event) -> None:
        """`run` for a VM that alone uses its Redis (`run`, `watch`, `serve --local` on their private
        one, where this VM owns every endpoint): a consumer for every endpoint of the set is started
        at once, before Redis answers, and the loop starts once `redis_up` is set. The first tick then
        finds them running and keeps what it wants (an endpoint it would not run — down, or not owned
        after all — gets its planned stop, as in any tick). Run on the supervisor's thread, so that
        the caller goes on meanwhile (`run` submits its batch while the forks wait for the zygote's
        imports, ~0.3 s of a cold start). A stop requested before Redis answered stops them."""
        self._alone = True
        self.pool.reconcile({e.name: e for e in self.desired()})
        while not redis_up.wait(LOOP):
            if self._stop.is_set():
                self._shutdown()
                return
        self.run()

    def _tick_safely(self) -> None:
        try:
            self.tick()
        except StateError as exc:  # Redis away or refusing writes: keep consumers as they are, try again
            self._redis_trouble.failed(exc)
        except Exception as exc:
            log.warning("supervisor tick failed (%s: %s); retrying", type(exc).__name__, exc)
        else:
            self._redis_trouble.ok()

    # ---- processes -----------------------------------------------------------------------

    def _consumer_env(self) -> dict[str, str]:
        """What every consumer's environment holds: ours and the settings; `_spawn` adds its endpoint."""
        return {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, endpoint: Endpoint) -> ConsumerProcess:
        assert self.launcher is not None  # (a Supervisor given its own `spawn` never comes here)
        env = {**self._consumer_env(), "BATCHSCRIBE_ENDPOINT_JSON": json.dumps(endpoint.to_dict())}
        return self.launcher.start(consumer_command(endpoint, self.hostname), env)

    def _hand_back(self, endpoint: Endpoint) -> None:
        """A consumer was killed at the end of a planned stop: hand back the deliveries its last
        heartbeat listed (those it still held), so they run again now and count no crash."""
        node = node_name(endpoint.name, self.hostname)
        try:
            beat = self.store.consumer_beats([node]).get(node)
            if beat is None:
                log.warning("consumer of %s left no heartbeat; its files come back through the crash path",
                            endpoint.name)
                return
            for item in beat.deliveries:
                if self.store.hand_back_job(item.job_key, item.delivery, item.spec, tag=item.tag):
                    self.store.log_event(**self._logged_file(item), endpoint=endpoint.name,
                                         outcome="handback",
                                         reason="its consumer was stopped (killed after the grace period)")
                    log.info("handed back %s of killed consumer %s", item.job_key, node)
            self.store.forget_consumer(node)
        except StateError as exc:
            log.warning("could not hand back the files of killed consumer %s (%s); they come back "
                        "through the crash path", node, exc)

    def _logged_file(self, item: LeaseItem) -> dict[str, str | int]:
        """How the attempt log names a handed-back job: its first input, as the consumer would have."""
        targets = self.store.targets_of(item.job_key)
        if targets:
            batch, index = split_target(targets[0])
            return {"batch": batch, "index": index}
        return {"file": TaskSpec.from_json(item.spec).path, "job": item.job_key}

    # ---- the loop ------------------------------------------------------------------------

    def _watched(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except Exception:
                log.exception("background loop %s died; stopping this worker", name)
                self._failed = True
                self._stop.set()
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def _prober(self) -> None:
        while not self._stop.wait(self.poll_interval):
            self.health.probe_all(list(self.desired()))

    def _summaries(self) -> None:
        """Keep every live batch's run_summary.json fresh (`common.summary.refresh_live`: one VM of the
        cluster rewrites each one when it is due)."""
        from batchscribe.common.summary import REFRESH_TICK, refresh_live

        trouble = RedisTrouble(log, "run summaries")
        while not self._stop.wait(REFRESH_TICK):
            try:
                refresh_live(self.store)
            except StateError as exc:
                trouble.failed(exc)
            except Exception:
                log.exception("refreshing run summaries failed; retrying")
            else:
                trouble.ok()

    def _start_background(self) -> None:
        from batchscribe.common.celery_app import make_app
        from batchscribe.common.publish import Publisher
        from batchscribe.worker.scheduler import run_promoter

        self._watched("prober", self._prober)
        self._summary_thread = self._watched("summaries", self._summaries)
        publisher = Publisher(make_app(self.settings, "batchscribe-promoter"))
        self._watched("promoter", lambda: run_promoter(self._stop, self.store, publisher, 0.5))

    def run(self) -> None:
        """Supervise until request_stop() (signal handler or another thread)."""
        self.health.probe_all(list(self.desired(self.source.refresh())))
        self._start_background()
        next_tick = 0.0
        try:
            while True:  # the first tick at once: consumers start now, not one LOOP later
                self.pool.check()
                if self.clock() >= next_tick:
                    self._tick_safely()
                    next_tick = self.clock() + self.poll_interval
                if self._stop.wait(LOOP):
                    break
        finally:
            self._shutdown()

    def _unblock_pops(self) -> None:
        """Stopping consumers wait for their BRPOP to time out before they close (`unblock_pops`)."""
        try:
            self.store.unblock_pops()
        except StateError as exc:  # Redis gone: nothing is waiting on it either
            log.debug("could not unblock the consumers' pops: %s", exc)

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopped_by_failure(self) -> bool:
        return self._failed

    def _shutdown(self) -> None:
        """Planned stop of every consumer, kill after the grace period, give endpoints back."""
        self.pool.stop_all()
        deadline = self.clock() + self.grace + 2 * KILL_RETRY
        while True:
            if self._alone:
                self._unblock_pops()
            self.pool.check()
            if not self.pool.consumers or self.clock() >= deadline:
                break
            if self.launcher is not None:
                self.launcher.wait_exit(STOP_POLL)
            else:
                time.sleep(STOP_POLL)
        self.health.close()
        if self.launcher is not None:
            self.launcher.close()
        if self._summary_thread is not None:  # a rewrite under way finishes (or removes its temp file)
            self._summary_thread.join(timeout=SUMMARY_JOIN)
        try:
            self.ownership.leave([e.name for e in self.source.current])
            self.store.forget_vm(self.hostname)
        except Exception as exc:  # Redis gone: the keys expire by themselves
            log.warning("could not release endpoint ownership: %s", exc)
