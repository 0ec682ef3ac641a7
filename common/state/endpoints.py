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

    def record_attempt(self, endpoint: str, error_class: str = "", audio_seconds: float = 0.0) -> None:
        """Count one attempt's outcome on an endpoint ("" = success).

        `consecutive_failures` counts endpoint and transient errors since the last success, which
        is what a circuit breaker needs; `failed_<class>` counts attempts, not files.
        """
        key = self.keys.endpoint_stats(endpoint)
        pipe = self.redis.pipeline(transaction=True)
        if not error_class:
            pipe.hincrby(key, "done", 1)
            pipe.hincrbyfloat(key, "audio_seconds", audio_seconds)
            pipe.hset(key, "consecutive_failures", 0)
        else:
            pipe.hincrby(key, f"failed_{error_class}", 1)
            if error_class in ("endpoint", "transient"):
                pipe.hincrby(key, "consecutive_failures", 1)
        pipe.execute()

    def reset_consecutive_failures(self, endpoint: str) -> None:
        """The circuit breaker opened on this count: the next run of failures starts from 0."""
        self.redis.hset(self.keys.endpoint_stats(endpoint), "consecutive_failures", 0)

    def endpoint_stats(self, name: str) -> dict[str, str]:
        """The endpoint's counters plus `in_flight` (deliveries running on it now)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.endpoint_stats(name))
        pipe.zcard(self.keys.inflight(name))
        raw, in_flight = pipe.execute()
        stats = text_dict(raw)
        stats["in_flight"] = str(in_flight)
        return stats

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

    def publish_health(self, endpoint: str, health: dict[str, Any]) -> None:
        self.redis.hset(self.keys.health(), endpoint, json.dumps(health))

    def health(self) -> dict[str, dict[str, Any]]:
        """Each endpoint's health as its owner last published it."""
        return {as_text(k): json.loads(v) for k, v in self.redis.hgetall(self.keys.health()).items()}
