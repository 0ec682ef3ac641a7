"""Heartbeats of a worker VM's processes, and the check `batchscribe health` makes of them.

* Each consumer's lease keeper beats its `ConsumerPresence` every heartbeat (TTL: the lease TTL):
  its node, pid, queues and the deliveries it runs. `submit` and `status` read the queues (is the
  batch's queue served?); the supervisor reads the deliveries to hand them back after it had to kill
  the consumer during a planned stop.
* The supervisor beats a `VMBeat` every tick (TTL: the ownership TTL): its pid and its consumers.

`vm_problem` compares the two: cheap (a ping and two reads), so a container healthcheck can run it
every few seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from batchscribe.common.state import ConsumerBeat, LeaseItem, StateStore


class ConsumerPresence:
    """One consumer's heartbeat writer."""

    def __init__(self, store: StateStore, node: str, endpoint: str, queues: Sequence[str], ttl: float,
                 clock: Callable[[], float] = time.time, concurrency: int = 0, rtf: float = 0.0) -> None:
        self.store = store
        self.node = node
        self.endpoint = endpoint
        self.queues = tuple(queues)
        self.ttl = ttl
        self.clock = clock
        self.concurrency = concurrency
        self.rtf = rtf

    def beat(self, running: Sequence[LeaseItem]) -> None:
        self.store.beat_consumer(ConsumerBeat(self.node, self.endpoint, os.getpid(), self.queues,
                                              round(self.clock(), 3), tuple(running), self.concurrency,
                                              self.rtf),
                                 self.ttl)

    def leave(self) -> None:
        """A clean exit: stop vouching at once."""
        self.store.forget_consumer(self.node)


def vm_problem(store: StateStore, hostname: str) -> tuple[str, str]:
    """("", summary) when the VM's supervisor and each of its consumers are alive, else (problem, "").

    Raises StateError when Redis does not answer.
    """
    store.ping()
    vm = store.vm_beat(hostname)
    if vm is None:
        return (f"no worker supervisor of VM {hostname!r} is alive: no heartbeat in Redis (is "
                f"`batchscribe worker --hostname {hostname}` running against this Redis?)"), ""
    beats = store.consumer_beats([f"{name}@{hostname}" for name in vm.consumers])
    for name, slot in sorted(vm.consumers.items()):
        beat = beats.get(f"{name}@{hostname}")
        if slot.state == "restarting":
            return f"the consumer of endpoint {name} on {hostname} exited and is waiting to restart", ""
        if slot.state == "running" and (beat is None or beat.pid != slot.pid):
            return (f"the consumer of endpoint {name} on {hostname} (pid {slot.pid}) has not sent a "
                    "heartbeat for a lease TTL: it hangs or cannot reach Redis"), ""
    running = [f"{name} ({slot.state}, pid {slot.pid})" for name, slot in sorted(vm.consumers.items())]
    return "", f"worker {hostname}: supervisor pid {vm.pid}; consumers: {', '.join(running) or 'none'}"
