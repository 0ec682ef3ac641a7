"""Cluster-wide concurrency: exactly one worker VM runs an endpoint's consumer at a time.

Each endpoint has an owner key with a TTL. The owner renews it every poll; a VM that dies stops
renewing, the key expires and another VM takes the endpoint over (within ttl + one poll).
Endpoints are spread: a VM takes a free endpoint only while it owns fewer than its fair share
(endpoints / live VMs), unless the endpoint has stayed free for a while; a VM that owns more than
its share (another VM joined) hands one over at a time, after its consumer has stopped.
"""

from __future__ import annotations

import math
import time

from batchscribe.common.state import StateStore, as_text

_CLAIM = """
local cur = redis.call("GET", KEYS[1])
if cur == ARGV[1] then redis.call("PEXPIRE", KEYS[1], ARGV[2]) return 1 end
if (not cur) and ARGV[3] == "1" then redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2]) return 1 end
return 0
"""
_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"""


class Ownership:
    def __init__(self, store: StateStore, hostname: str, ttl: float = 15.0) -> None:
        self.store = store
        self.hostname = hostname
        self.ttl = ttl
        self._claim = store.redis.register_script(_CLAIM)
        self._release = store.redis.register_script(_RELEASE)
        self._free_since: dict[str, float] = {}

    def heartbeat(self) -> int:
        """Say this VM is alive; returns how many VMs are."""
        now = time.time()
        key = self.store.keys.vms()
        pipe = self.store.redis.pipeline()
        pipe.zadd(key, {self.hostname: now})
        pipe.zremrangebyscore(key, 0, now - 10 * self.ttl)
        pipe.zcount(key, now - self.ttl, "+inf")
        return int(pipe.execute()[2])

    def sync(self, names: list[str]) -> set[str]:
        """Renew what we own, take free endpoints up to our fair share; returns what we own."""
        live = max(1, self.heartbeat())
        fair = math.ceil(len(names) / live)
        ttl_ms = int(self.ttl * 1000)
        owned = {n for n in names if self._claim(keys=[self.store.keys.owner(n)],
                                                 args=[self.hostname, ttl_ms, "0"])}
        now = time.monotonic()
        for name in names:
            if name in owned:
                continue
            holder = self.store.redis.get(self.store.keys.owner(name))
            if holder is not None:
                self._free_since.pop(name, None)
                continue
            free_for = now - self._free_since.setdefault(name, now)
            if len(owned) < fair or free_for > 2 * self.ttl:
                if self._claim(keys=[self.store.keys.owner(name)], args=[self.hostname, ttl_ms, "1"]):
                    owned.add(name)
                    self._free_since.pop(name, None)
        return owned

    def fair_share(self, count: int) -> int:
        """How many of `count` endpoints this VM should own with the VMs alive now."""
        live = max(1, int(self.store.redis.zcount(self.store.keys.vms(), time.time() - self.ttl, "+inf")))
        return math.ceil(count / live)

    def owners(self, names: list[str]) -> dict[str, str | None]:
        values = self.store.redis.mget([self.store.keys.owner(n) for n in names]) if names else []
        return {n: as_text(v) or None for n, v in zip(names, values)}

    def release(self, name: str) -> None:
        self._release(keys=[self.store.keys.owner(name)], args=[self.hostname])

    def leave(self, names: list[str]) -> None:
        for name in names:
            self.release(name)
        self.store.redis.zrem(self.store.keys.vms(), self.hostname)
