"""Who is alive: heartbeats with a TTL from each worker VM's supervisor and from each consumer.

A supervisor says which consumers it runs (`VMBeat`); each consumer says it is alive, which queues
it consumes and which deliveries it runs (`ConsumerBeat`). A heartbeat that is not renewed expires,
so a dead process stops vouching for itself. Readers: `batchscribe health` (is this VM's worker
alive?), `submit`/`status` (does any live consumer serve this batch's queue?) and the supervisor
(which deliveries to hand back after it had to kill a consumer during a planned stop).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from batchscribe.common.state.client import StoreBase, as_text, boundary
from batchscribe.common.state.jobs import LeaseItem


@dataclass(frozen=True)
class ConsumerSlot:
    """One consumer as its supervisor sees it. `state`: starting (just spawned: it has not had time
    to beat yet), running, restarting (it exited; the next start waits out a backoff) or stopping."""

    pid: int
    state: str


@dataclass(frozen=True)
class VMBeat:
    hostname: str
    pid: int
    beat_at: float
    consumers: dict[str, ConsumerSlot] = field(default_factory=dict)  # by endpoint name
    restarts: dict[str, int] = field(default_factory=dict)  # unplanned consumer exits, by endpoint

    @classmethod
    def from_json(cls, raw: str) -> VMBeat:
        data = json.loads(raw)
        slots = {name: ConsumerSlot(**slot) for name, slot in data.pop("consumers", {}).items()}
        return cls(consumers=slots, **data)


@dataclass(frozen=True)
class ConsumerBeat:
    node: str  # Celery's node name, ENDPOINT@HOST
    endpoint: str
    pid: int
    queues: tuple[str, ...]
    beat_at: float
    deliveries: tuple[LeaseItem, ...] = ()  # what it runs now
    concurrency: int = 0  # files it runs at once at most (its endpoint's concurrency)
    rtf: float = 0.0  # its endpoint's speed, × real time (0: unknown) — `worker.placement` reads it

    @classmethod
    def from_json(cls, raw: str) -> ConsumerBeat:
        """Fields a newer version added are left out, so a rolling upgrade can read them."""
        data: dict[str, Any] = json.loads(raw)
        data["queues"] = tuple(data.get("queues", ()))
        data["deliveries"] = tuple(LeaseItem(**d) for d in data.get("deliveries", ()))
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def _json(record: Any) -> str:
    return json.dumps(asdict(record), separators=(",", ":"))


@boundary
class Liveness(StoreBase):
    # ---- worker VMs (supervisors) ----------------------------------------------------------

    def beat_vm(self, beat: VMBeat, ttl: float) -> None:
        self.redis.set(self.keys.vm(beat.hostname), _json(beat), px=int(ttl * 1000))

    def vm_beat(self, hostname: str) -> VMBeat | None:
        raw = self.redis.get(self.keys.vm(hostname))
        return VMBeat.from_json(as_text(raw)) if raw else None

    def forget_vm(self, hostname: str) -> None:
        """A supervisor that stops on purpose stops vouching at once."""
        self.redis.delete(self.keys.vm(hostname))

    # ---- consumers ---------------------------------------------------------------------------

    def beat_consumer(self, beat: ConsumerBeat, ttl: float) -> None:
        """Renew the consumer's heartbeat; forget consumers silent for ten TTLs from the index."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.consumer(beat.node), _json(beat), px=int(ttl * 1000))
        pipe.zadd(self.keys.consumers(), {beat.node: beat.beat_at})
        pipe.zremrangebyscore(self.keys.consumers(), 0, beat.beat_at - 10 * ttl)
        pipe.execute()

    def consumer_beats(self, nodes: list[str] | None = None) -> dict[str, ConsumerBeat]:
        """The live consumers' heartbeats by node (those of `nodes`, or all)."""
        if nodes is None:
            members = cast("list[bytes]", self.redis.zrange(self.keys.consumers(), 0, -1))  # no scores
            nodes = [as_text(n) for n in members]
        if not nodes:
            return {}
        raw = self.redis.mget([self.keys.consumer(node) for node in nodes])
        return {node: ConsumerBeat.from_json(as_text(doc)) for node, doc in zip(nodes, raw) if doc}

    def forget_consumer(self, node: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.consumer(node))
        pipe.zrem(self.keys.consumers(), node)
        pipe.execute()

    def unblock_pops(self) -> int:
        """End every BRPOP waiting on this Redis as if its timeout had come (CLIENT UNBLOCK): a consumer
        that is stopping closes its channel only once its BRPOP has returned, so it stops at once
        instead of up to a broker poll later. Only for a Redis that one VM uses alone (a private one):
        a consumer that is not stopping just pops again. Returns how many were ended."""
        waiting = [int(c["id"]) for c in self.redis.client_list(_type="normal")
                   if c.get("cmd") == "brpop" and "b" in c.get("flags", "")]
        for client in waiting:
            self.redis.client_unblock(client)
        return len(waiting)


def served_queues(beats: Mapping[str, ConsumerBeat]) -> set[str]:
    """Every queue some live consumer consumes."""
    return {queue for beat in beats.values() for queue in beat.queues}
