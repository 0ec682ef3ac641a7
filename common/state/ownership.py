"""Endpoint ownership: which worker VM runs each endpoint's consumer (a key with a TTL that its
owner renews), and which VMs are alive (`worker.ownership` decides; this is its storage)."""

from __future__ import annotations

from collections.abc import Sequence

from batchscribe.common.state.client import StoreBase, as_text, boundary


@boundary
class Ownership(StoreBase):
    def hold_endpoint(self, endpoint: str, holder: str, ttl: float, take_free: bool) -> bool:
        """Renew `holder`'s ownership of `endpoint`, or take it if free and `take_free`; True if held."""
        return bool(self._run("hold_endpoint", [self.keys.owner(endpoint)],
                              [holder, int(ttl * 1000), "1" if take_free else "0"]))

    def release_endpoint(self, endpoint: str, holder: str) -> None:
        self._run("release_endpoint", [self.keys.owner(endpoint)], [holder])

    def owners(self, endpoints: Sequence[str]) -> dict[str, str | None]:
        values = self.redis.mget([self.keys.owner(n) for n in endpoints]) if endpoints else []
        return {n: as_text(v) or None for n, v in zip(endpoints, values)}

    def vm_heartbeat(self, hostname: str, ttl: float) -> int:
        """Say `hostname` is alive (forgetting VMs silent for 10 TTLs); returns how many VMs are."""
        now = self.clock()
        key = self.keys.vms()
        pipe = self.redis.pipeline()
        pipe.zadd(key, {hostname: now})
        pipe.zremrangebyscore(key, 0, now - 10 * ttl)
        pipe.zcount(key, now - ttl, "+inf")
        return int(pipe.execute()[2])

    def live_vms(self, ttl: float) -> int:
        """How many VMs said they were alive within the last `ttl` seconds."""
        return int(self.redis.zcount(self.keys.vms(), self.clock() - ttl, "+inf"))

    def vm_leave(self, hostname: str) -> None:
        self.redis.zrem(self.keys.vms(), hostname)
