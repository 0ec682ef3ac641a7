"""Is an endpoint usable? Probes (containers: GET /ready and /status; cloud: a TLS connect), a
hysteresis on their answers, and a circuit breaker fed by real outcomes.

The probe says whether the endpoint *answers*; the breaker says whether files *succeed* there
(a container can answer /ready while rejecting our key, or while every recognition fails).
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from batchscribe.common.config import Endpoint

PROBE_TIMEOUT = 2.0
CIRCUIT_THRESHOLD = 5  # files failed in a row on one endpoint that open its circuit


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str = ""


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """One look at the endpoint; never raises."""
    if endpoint.engine == "local":
        return ProbeResult(True)
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

    def observe(self, result: ProbeResult) -> bool:
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
            self.since = time.time()
        return changed


@dataclass
class CircuitBreaker:
    """Opens after `threshold` consecutive failed files; stays open `cooldown` seconds (doubling
    while it keeps re-opening, up to `max_cooldown`), then lets the endpoint try again."""

    threshold: int = CIRCUIT_THRESHOLD
    cooldown: float = 10.0
    max_cooldown: float = 120.0
    open_until: float = 0.0
    opens: int = 0

    def is_open(self, now: float | None = None) -> bool:
        return (now or time.time()) < self.open_until

    def observe(self, consecutive_failures: int, now: float | None = None) -> bool:
        """Feed the endpoint's consecutive-failure count; True when this call opened the breaker."""
        now = now or time.time()
        if self.is_open(now):
            return False
        if consecutive_failures < self.threshold:
            if consecutive_failures == 0 and now > self.open_until + 2 * self.cooldown:
                self.opens = 0  # healthy for a while since it last reopened: forget its history
            return False
        self.opens += 1
        self.open_until = now + min(self.max_cooldown, self.cooldown * 2 ** (self.opens - 1))
        return True
