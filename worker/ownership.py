"""Cluster-wide concurrency: exactly one worker VM runs an endpoint's consumer at a time.

Each endpoint has an owner key with a TTL. The owner renews it every poll; a VM that dies stops
renewing, the key expires and another VM takes the endpoint over (within ttl + one poll).
Endpoints are spread: a VM takes a free endpoint only while it owns fewer than its fair share
(endpoints / live VMs), unless the endpoint has stayed free for a while; a VM that owns more than
its share (another VM joined) hands one over at a time, after its consumer has stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection

from batchscribe.common.state import StateStore

log = logging.getLogger(__name__)


class Ownership:
    """This VM's side of the owner keys. `clock` (monotonic) times how long an endpoint stayed free."""

    def __init__(self, store: StateStore, hostname: str, ttl: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.hostname = hostname
        self.ttl = ttl
        self.clock = clock
        self._free_since: dict[str, float] = {}

    def heartbeat(self) -> int:
        """Say this VM is alive; returns how many VMs are."""
        return self.store.vm_heartbeat(self.hostname, self.ttl)

    def sync(self, names: list[str]) -> set[str]:
        """Renew what we own, take free endpoints up to our fair share; returns what we own."""
        live = max(1, self.heartbeat())
        fair = math.ceil(len(names) / live)
        owned = {n for n in names if self.store.hold_endpoint(n, self.hostname, self.ttl, take_free=False)}
        holders = self.store.owners([n for n in names if n not in owned])
        now = self.clock()
        for name, holder in holders.items():
            if holder is not None:
                self._free_since.pop(name, None)
                continue
            free_for = now - self._free_since.setdefault(name, now)
            if len(owned) < fair or free_for > 2 * self.ttl:
                if self.store.hold_endpoint(name, self.hostname, self.ttl, take_free=True):
                    owned.add(name)
                    self._free_since.pop(name, None)
        return owned

    def fair_share(self, count: int) -> int:
        """How many of `count` endpoints this VM should own with the VMs alive now."""
        return math.ceil(count / max(1, self.store.live_vms(self.ttl)))

    def owners(self, names: list[str]) -> dict[str, str | None]:
        return self.store.owners(names)

    def release(self, name: str) -> None:
        self.store.release_endpoint(name, self.hostname)

    def leave(self, names: list[str]) -> None:
        for name in names:
            self.release(name)
        self.store.vm_leave(self.hostname)


class Rebalancer:
    """Hands one endpoint over while this VM owns more than its fair share for `patience` polls
    (another VM joined).

    The endpoint's consumer stops first; the key is released only once that consumer has exited,
    so the endpoint never runs on two VMs at once.
    """

    def __init__(self, ownership: Ownership, patience: int = 3) -> None:
        self.ownership = ownership
        self.patience = patience
        self.handing_off: str | None = None
        self._over_share = 0

    def adjust(self, owned: set[str], shared: int, running: Collection[str]) -> set[str]:
        """What this VM should run of `owned` (`shared`: how many endpoints have a cluster owner;
        `running`: endpoints whose consumer has not exited yet)."""
        over = len(owned) > self.ownership.fair_share(shared)
        self._over_share = self._over_share + 1 if over else 0
        if self.handing_off is None and self._over_share >= self.patience:
            self.handing_off = sorted(owned)[-1]
            log.info("another VM joined: handing endpoint %s over", self.handing_off)
        name = self.handing_off
        if name is None:
            return owned
        if name not in running:
            self.ownership.release(name)
            self.handing_off, self._over_share = None, 0
        return owned - {name}
