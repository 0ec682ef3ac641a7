"""The per-VM worker: one Celery consumer process per endpoint, kept alive and kept in line with
the endpoint file.

* each endpoint gets `celery -A worker.app worker -Q ep.NAME,pool.LANG… -c CONCURRENCY -P threads`,
  so its simultaneous requests never exceed the YAML's `concurrency`;
* a consumer that dies is restarted with exponential backoff (reap-and-restart loop);
* the endpoint file is polled by content every `poll_interval` (inotify misses NFS and
  rename-replace): added endpoints start, removed ones stop gracefully, changed ones restart;
  an invalid file is reported and the running set stays;
* shutdown is two-stage: stop() asks consumers for a warm shutdown (finish in-flight files),
  and kills what is still running after the grace period.
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.config import Endpoint, EndpointSet, load_endpoints
from common.errors import ConfigError
from common.queues import consumer_queues
from common.settings import Settings

log = logging.getLogger(__name__)

Spawn = Callable[[Endpoint], "subprocess.Popen[bytes]"]


def consumer_command(endpoint: Endpoint, hostname: str) -> list[str]:
    """The plain Celery command line of one endpoint's consumer (also shown in docs)."""
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker",
            "-Q", ",".join(consumer_queues(endpoint)), "-c", str(endpoint.concurrency), "-P", "threads",
            "-n", f"{endpoint.name}@{hostname}", "-E", "--without-gossip", "--without-mingle",
            "-l", "INFO"]


def _die_with_parent() -> None:
    """Linux: a consumer gets SIGTERM (warm shutdown) when its supervisor dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Consumer:
    endpoint: Endpoint
    proc: subprocess.Popen[bytes] | None = None
    failures: int = 0
    next_start: float = 0.0
    started_at: float = 0.0


class Supervisor:
    def __init__(self, settings: Settings, endpoints: EndpointSet, config_path: str | None = None,
                 hostname: str | None = None, log_file: IO[bytes] | None = None,
                 poll_interval: float = 2.0, grace: float = 30.0) -> None:
        self.settings = settings
        self.config_path = config_path
        self.hostname = hostname or socket.gethostname()
        self.log_file = log_file
        self.poll_interval = poll_interval
        self.grace = grace
        self.consumers: dict[str, Consumer] = {}
        self._desired = endpoints
        self._config_digest = self._digest()
        self._stop = threading.Event()

    # ---- processes ---------------------------------------------------------------------

    def _spawn(self, endpoint: Endpoint) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(self.settings.to_env())
        env["BATCHSCRIBE_ENDPOINT_JSON"] = json.dumps(endpoint.to_dict())
        env["PYTHONUNBUFFERED"] = "1"
        out = self.log_file if self.log_file is not None else None
        return subprocess.Popen(consumer_command(endpoint, self.hostname), env=env,
                                stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True, preexec_fn=_die_with_parent)

    def _start(self, consumer: Consumer) -> None:
        consumer.proc = self._spawn(consumer.endpoint)
        consumer.started_at = time.monotonic()
        log.info("started consumer for endpoint %s (pid %d, concurrency %d)",
                 consumer.endpoint.name, consumer.proc.pid, consumer.endpoint.concurrency)

    @staticmethod
    def _terminate(consumer: Consumer, sig: int = signal.SIGTERM) -> None:
        if consumer.proc is not None and consumer.proc.poll() is None:
            try:
                os.killpg(consumer.proc.pid, sig)
            except ProcessLookupError:
                pass

    # ---- the loop ----------------------------------------------------------------------

    def reconcile(self) -> None:
        """Make the running consumers match the desired endpoint set."""
        desired = {e.name: e for e in self._desired}
        for name in list(self.consumers):
            current = self.consumers[name]
            if name not in desired or desired[name].fingerprint() != current.endpoint.fingerprint():
                log.info("endpoint %s %s: stopping its consumer", name,
                         "removed" if name not in desired else "changed")
                self._stop_consumers([current])
                del self.consumers[name]
        for name, endpoint in desired.items():
            if name not in self.consumers:
                consumer = Consumer(endpoint)
                self.consumers[name] = consumer
                self._start(consumer)

    def check(self) -> None:
        """Reap dead consumers and restart them with backoff (1 s, 2 s, 4 s … 60 s)."""
        now = time.monotonic()
        for consumer in self.consumers.values():
            if consumer.proc is not None and consumer.proc.poll() is not None:
                code = consumer.proc.returncode
                healthy_run = now - consumer.started_at > 60
                consumer.failures = 0 if healthy_run else consumer.failures + 1
                consumer.next_start = now + min(60.0, 2.0 ** consumer.failures) if consumer.failures else now
                log.warning("consumer of %s exited with %s; restarting in %.0f s",
                            consumer.endpoint.name, code, consumer.next_start - now)
                consumer.proc = None
            if consumer.proc is None and now >= consumer.next_start:
                self._start(consumer)

    def poll_config(self) -> None:
        digest = self._digest()
        if digest == self._config_digest or self.config_path is None:
            return
        self._config_digest = digest
        try:
            self._desired = load_endpoints(self.config_path)
        except ConfigError as exc:
            log.error("endpoint file changed but is invalid; keeping the running set: %s", exc)
            return
        log.info("endpoint file changed: %s", ", ".join(e.name for e in self._desired))
        self.reconcile()

    def _digest(self) -> str:
        if self.config_path is None:
            return ""
        try:
            return hashlib.sha256(Path(self.config_path).read_bytes()).hexdigest()
        except OSError:
            return ""

    def run(self) -> None:
        """Supervise until stop() is called (from a signal handler or another thread)."""
        self.reconcile()
        next_poll = time.monotonic() + self.poll_interval
        while not self._stop.wait(0.5):
            self.check()
            if time.monotonic() >= next_poll:
                self.poll_config()
                next_poll = time.monotonic() + self.poll_interval
        self._stop_consumers(list(self.consumers.values()))

    def request_stop(self) -> None:
        self._stop.set()

    def _stop_consumers(self, consumers: list[Consumer]) -> None:
        """Warm shutdown (finish in-flight files), then kill what outlives the grace period."""
        for consumer in consumers:
            self._terminate(consumer, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for consumer in consumers:
            if consumer.proc is None:
                continue
            try:
                consumer.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("consumer of %s did not stop within %.0f s; killing it",
                            consumer.endpoint.name, self.grace)
                self._terminate(consumer, signal.SIGKILL)
                consumer.proc.wait()
            consumer.proc = None
