"""Redis as the system of record: batches, file records, dedupe jobs, cached results, the event
log, the endpoint set and who runs what. This package is the state boundary: the only code that
talks to Redis (the task publisher, `common.publish`, keeps its own connection on purpose), and
the one place redis-py's errors become ours (`client.translate`).

All multi-key transitions run as Lua scripts (`common.lua`) so two producers and any number of
workers see one consistent order of events:

* a **job** is one unit of engine work (content hash + result-changing options); inputs that want
  its result are its **targets** (`jobs`);
* a **file** is one input of one batch (`FileRecord`); its state follows its job. Batch counters
  (n_queued, n_running, …) move only inside the file transition script, so they never drift
  (`batches`);
* a job that must run later sits in the **delayed** set (`delays`);
* endpoints: the published set, counters, in-flight deliveries, health (`endpoints`), and which
  VM owns each (`ownership`); attempt outcomes go to the event stream (`events`);
* batch-processing-kit's integer batch ids and the batches they name (`aliases`).
* heartbeats of supervisors and consumers, with a TTL: who is alive, what it serves (`liveness`).
* what the Prometheus metrics read: queue depths, the delayed set, recent batches, VMs (`monitoring`).

Every `now` comes from the store's clock (`StateStore.connect(…, clock=…)`).
"""

from batchscribe.common.state.batches import (
    FILE_PAGE,
    CancelOutcome,
    SummaryClock,
    common_base,
    failed_counts,
    file_pages,
    split_target,
    target_id,
)
from batchscribe.common.state.client import as_text, describe, text_dict, translate
from batchscribe.common.state.endpoints import Breaker, CircuitOpened, PublishedSet
from batchscribe.common.state.events import EVENTS_KEPT, EVENTS_PER_READ, EventCursor, EventPage
from batchscribe.common.state.jobs import JobStart, LeaseItem, pack_result, unpack_result
from batchscribe.common.state.liveness import ConsumerBeat, ConsumerSlot, VMBeat, served_queues
from batchscribe.common.state.monitoring import DelayedCounts, QueueDepth, SeenVM
from batchscribe.common.state.store import StateStore

__all__ = ["EVENTS_KEPT", "EVENTS_PER_READ", "FILE_PAGE", "Breaker", "CancelOutcome", "CircuitOpened",
           "ConsumerBeat", "ConsumerSlot", "DelayedCounts", "EventCursor", "EventPage", "JobStart",
           "LeaseItem", "PublishedSet", "QueueDepth", "SeenVM", "StateStore", "SummaryClock", "VMBeat",
           "as_text", "common_base", "describe", "failed_counts", "file_pages", "pack_result",
           "served_queues", "split_target", "target_id", "text_dict", "translate", "unpack_result"]
