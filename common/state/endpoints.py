"""Endpoints as the cluster sees them: the published endpoint set (hot-swap), each endpoint's
outcome counters (circuit breaker, status, metrics), what runs on it now, and its health as its
owner last saw it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchscribe.common.state.client import StoreBase, as_text, boundary, stamp, text_dict


@dataclass(frozen=True)
class Breaker:
    """An endpoint's circuit breaker: opens after `threshold` files in a row failed there (endpoint or
    transient errors), for `cooldown` seconds, doubling while it keeps re-opening, up to
    `max_cooldown`. One per endpoint, kept in its stats and moved by `record_attempt`, atomically
    with the failure that trips it; the endpoint's health (`worker.health`) reads it."""

    threshold: int = 5
    cooldown: float = 10.0
    max_cooldown: float = 120.0


@dataclass(frozen=True)
class CircuitOpened:
    until: float
    reason: str


@dataclass(frozen=True)
class PublishedSet:
    """The endpoint set as published (`batchscribe endpoints apply`): its YAML text, not parsed."""

    version: int
    yaml: str
    source: str
    applied_at: float


@boundary
class Endpoints(StoreBase):
    # ---- the published endpoint set ----------------------------------------------------

    def publish_endpoint_set(self, text: str, source: str) -> int:
        """Publish the set's text; the same text again keeps its version. Returns the version."""
        return int(self._run("publish_endpoints", [self.keys.endpoint_set()],
                             [text, source, stamp(self.clock())]))

    def endpoint_set_version(self) -> int:
        return int(self.redis.hget(self.keys.endpoint_set(), "version") or 0)

    def endpoint_set(self) -> PublishedSet | None:
        data = text_dict(self.redis.hgetall(self.keys.endpoint_set()))
        if "yaml" not in data:
            return None
        return PublishedSet(int(data.get("version", 0)), data["yaml"], data.get("source", ""),
                            float(data.get("applied_at", 0) or 0))

    # ---- outcome counters ----------------------------------------------------------------

    def record_attempt(self, endpoint: str, error_class: str = "", audio_seconds: float = 0.0,
                       breaker: Breaker | None = None, busy_seconds: float = 0.0) -> CircuitOpened | None:
        """Count one attempt's outcome on an endpoint ("" = success) and run its circuit breaker.
        A success adds its audio and its wall time (`busy_seconds`) to the endpoint's totals.

        `consecutive_failures` counts endpoint and transient errors since the last success (the
        breaker's input); `failed_<class>` counts attempts, not files. Returns how long and why
        when this attempt opened the circuit (`circuit_open_until` and `circuit_reason` in the
        stats say whether it is open now).
        """
        b = breaker or Breaker()
        opened = self._run("record_attempt", [self.keys.endpoint_stats(endpoint)],
                           [stamp(self.clock()), error_class, audio_seconds, b.threshold, b.cooldown,
                            b.max_cooldown, endpoint, busy_seconds])
        return CircuitOpened(float(opened[0]), as_text(opened[1])) if opened else None

    def endpoint_stats(self, name: str) -> dict[str, str]:
        """The endpoint's counters plus `in_flight` (deliveries running on it now)."""
        return self.endpoints_stats([name])[name]

    def endpoints_stats(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """`endpoint_stats` of each of `names`, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.endpoint_stats(name))
            pipe.zcard(self.keys.inflight(name))
        replies = pipe.execute()
        found = {}
        for name, raw, in_flight in zip(names, replies[0::2], replies[1::2]):
            found[name] = {**text_dict(raw), "in_flight": str(in_flight)}
        return found

    # ---- in flight -------------------------------------------------------------------------

    def track_inflight(self, endpoint: str, job_key: str) -> int:
        """A delivery of `job_key` starts calling `endpoint`'s engine; returns how many run there."""
        keys = [self.keys.inflight(endpoint), self.keys.endpoint_stats(endpoint)]
        return int(self._run("track_inflight", keys, [stamp(self.clock()), job_key, endpoint]))

    def release_inflight(self, endpoint: str, job_key: str) -> None:
        self.redis.zrem(self.keys.inflight(endpoint), job_key)

    def prune_inflight(self, endpoints: Sequence[str]) -> None:
        """Drop in-flight entries whose job no longer runs there under a live lease (a consumer
        SIGKILLed mid-file never released its entry), so in-flight counts do not drift."""
        if endpoints:
            self._run("prune_inflight", (), [stamp(self.clock()), *endpoints])

    # ---- health --------------------------------------------------------------------------

    def publish_health(self, endpoint: str, health: dict[str, Any], ttl: float) -> None:
        """The endpoint's health as its owner assessed it now; gone after `ttl` seconds unless
        published again (an owner that stops assessing stops vouching)."""
        self.redis.set(self.keys.health(endpoint), json.dumps(health), px=int(ttl * 1000))

    def health(self, endpoints: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each endpoint's health as its owner last published it; endpoints nobody assesses now
        are left out."""
        if not endpoints:
            return {}
        raw = self.redis.mget([self.keys.health(name) for name in endpoints])
        return {name: json.loads(doc) for name, doc in zip(endpoints, raw) if doc}
