"""Is an endpoint usable? Probes (containers: GET /ready and /status; cloud: a TLS connect), a
hysteresis on their answers, and a circuit breaker fed by real outcomes.

The probe says whether the endpoint *answers*; the breaker says whether files *succeed* there
(a container can answer /ready while rejecting our key, or while every recognition fails).

The breaker is one per endpoint, kept in Redis and moved atomically with the failure that trips it
(`StateStore.record_attempt`, `common.state.Breaker`). One component (`EndpointHealth`, in the
supervisor of the endpoint's owner) combines probes and breaker into a verdict and publishes it
with a TTL; everyone else reads it: the supervisor runs a consumer only for a usable endpoint, a
consumer's `HealthGate` hands files back instead of calling an unusable one, `status` shows it.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from batchscribe.common.config import Endpoint
from batchscribe.common.state import StateStore

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str = ""


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """One look at the endpoint; never raises."""
    if endpoint.engine == "local":
        return ProbeResult(True)
    if endpoint.engine == "ffmpeg":  # the converter needs only its tool
        found = shutil.which("ffmpeg")
        return ProbeResult(True) if found else ProbeResult(False, "ffmpeg is not installed on this VM")
    if endpoint.is_cloud_service:
        return _tls_connect(endpoint.host, endpoint.port, timeout)
    for path in ("/ready", "/status"):
        result = _http_ok(endpoint.http_url + path, timeout)
        if not result.ok:
            return result
    return ProbeResult(True)


def _http_ok(url: str, timeout: float) -> ProbeResult:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our endpoint URL
            if 200 <= response.status < 300:
                return ProbeResult(True)
            return ProbeResult(False, f"GET {url} answered {response.status}")
    except urllib.error.HTTPError as exc:
        return ProbeResult(False, f"GET {url} answered {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return ProbeResult(False, f"GET {url} failed: {reason}")


def _tls_connect(host: str, port: int, timeout: float) -> ProbeResult:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                return ProbeResult(True)
    except (OSError, ssl.SSLError) as exc:
        return ProbeResult(False, f"TLS connect to {host}:{port} failed: {exc}")


@dataclass
class HealthState:
    """Hysteresis: down after `down_after` failed probes in a row, up again after one success."""

    down_after: int = 2
    up: bool = True
    failures: int = 0
    reason: str = ""
    since: float = field(default_factory=time.time)

    def observe(self, result: ProbeResult, now: float | None = None) -> bool:
        """Record a probe; True when the up/down state changed."""
        if result.ok:
            self.failures = 0
            changed = not self.up
            self.up, self.reason = True, ""
        else:
            self.failures += 1
            self.reason = result.reason
            changed = self.up and self.failures >= self.down_after
            if changed:
                self.up = False
        if changed:
            self.since = time.time() if now is None else now
        return changed


class EndpointHealth:
    """The health of every endpoint this VM assesses: probe hysteresis, plus each endpoint's breaker
    read from its stats; the verdict is published.

    `probe_all` runs on the supervisor's prober thread; `assess` on its main loop, for the endpoints
    this VM owns: it publishes each verdict for `ttl` seconds (gone when this VM stops assessing
    the endpoint: its owner changed or died).
    """

    def __init__(self, store: StateStore, hostname: str, ttl: float,
                 clock: Callable[[], float] = time.time,
                 prober: Callable[[Endpoint], ProbeResult] = probe) -> None:
        self.store = store
        self.hostname = hostname
        self.ttl = ttl
        self.clock = clock
        self._probe = prober
        self._states: dict[str, HealthState] = {}
        self._tripped: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")

    def _state(self, name: str) -> HealthState:
        with self._lock:
            if name not in self._states:
                self._states[name] = HealthState(since=self.clock())
            return self._states[name]

    def probe_all(self, endpoints: Sequence[Endpoint]) -> None:
        """Probe every endpoint in parallel and record the answers."""
        for endpoint, result in zip(endpoints, list(self._pool.map(self._probe, endpoints))):
            self.observe(endpoint.name, result)

    def observe(self, name: str, result: ProbeResult) -> None:
        state = self._state(name)
        if state.observe(result, self.clock()):
            log.warning("endpoint %s is %s", name, "up" if state.up else f"DOWN ({state.reason})")

    def assess(self, names: Iterable[str]) -> set[str]:
        """Publish each endpoint's verdict; returns the usable ones."""
        return {name for name in names if self._assess(name)}

    def _assess(self, name: str) -> bool:
        state, now = self._state(name), self.clock()
        stats = self.store.endpoint_stats(name)
        open_until = float(stats.get("circuit_open_until") or 0)
        tripped = now < open_until
        if tripped != (name in self._tripped):
            self._tripped ^= {name}
            log.warning("endpoint %s: %s", name, f"circuit open for {open_until - now:.0f} s: "
                        f"{stats.get('circuit_reason', '')}" if tripped else "circuit closed again")
        usable = state.up and not tripped
        reason = state.reason if not state.up else stats.get("circuit_reason", "") if tripped else ""
        self.store.publish_health(name, {
            "up": state.up, "usable": usable, "reason": reason, "since": round(state.since, 3),
            "owner": self.hostname, "circuit_open_until": round(open_until, 3),
            "checked_at": round(now, 3)}, self.ttl)
        return usable

    def forget(self, keep: Iterable[str]) -> None:
        """Drop what is known of endpoints that left the set."""
        kept = set(keep)
        with self._lock:
            for name in set(self._states) - kept:
                del self._states[name]
            self._tripped &= kept

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def unusable_reason(name: str, health: dict[str, Any] | None) -> str:
    """Why the published verdict says not to call the endpoint ("" = call it, or no verdict)."""
    if not health or health.get("usable", True):
        return ""
    if not health.get("up", True):
        return f"endpoint '{name}' is down: {health.get('reason', '')}"
    return f"circuit open: {health.get('reason', '')}"


class HealthGate:
    """A consumer's look at its endpoint's published verdict, cached for `cache` seconds (one Redis
    read a second at most, however many files start). No verdict (no supervisor assesses this
    endpoint: a plain `celery worker`, or its owner just changed) means go ahead.

    When one of this consumer's own attempts opens the circuit (`tripped`), the gate closes at once
    and stays closed until the circuit's end, without waiting for the verdict to catch up.
    """

    def __init__(self, store: StateStore, endpoint: str, cache: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.endpoint = endpoint
        self.cache = cache
        self.clock = clock
        self._reason = ""
        self._read_at = float("-inf")
        self._tripped_until = 0.0
        self._tripped_reason = ""
        self._lock = threading.Lock()

    def tripped(self, until: float, reason: str) -> None:
        with self._lock:
            self._tripped_until, self._tripped_reason = until, f"circuit open: {reason}"

    def closed(self) -> str:
        """"" when files may go to the engine, else why not."""
        with self._lock:
            now = self.clock()
            if now < self._tripped_until:
                return self._tripped_reason
            if now - self._read_at >= self.cache:
                verdict = self.store.health([self.endpoint]).get(self.endpoint)
                self._reason, self._read_at = unusable_reason(self.endpoint, verdict), now
            return self._reason
