"""Cancel a batch: `batchscribe cancel` and the HTTP API's DELETE.

Every file that has not finished becomes `cancelled` at once, and the batch ends `cancelled`:

* a queued or retrying file is never started: its job, if no other batch wants it, is cancelled
  in Redis and leaves the delayed set, so a worker that receives its message drops it without an
  engine call;
* a running file is let finish, for nobody: no output is written for the cancelled batch and its
  transcript stays in the dedupe cache (a later submit of the same file costs no engine call).
  Stopping it instead would need a way into a consumer thread's engine call on another VM, and
  would throw away work that is at most one file per endpoint slot;
* a file shared by dedupe with another batch that is still running keeps running for that batch.

The work is done by the state layer's CANCEL script, a chunk of files per call; whoever settles the
last file writes `run_summary.json` and releases the batch's output reservations, as on any completion.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchscribe.common.errors import InputError
from batchscribe.common.state import StateStore
from batchscribe.common.summary import complete_batch
from batchscribe.producer.status import BatchView, load_view


class AlreadyFinished(InputError):
    """The batch had finished (succeeded or failed) before it could be cancelled."""


@dataclass
class CancelReport:
    view: BatchView  # the batch after the cancel
    files: int  # files cancelled by this call (0: it had been cancelled before)
    jobs: int  # queued jobs no other batch wanted, which will now never run


def cancel(store: StateStore, batch_id: str) -> CancelReport:
    """Cancel the batch; raises `NoSuchBatch` or `AlreadyFinished`. Cancelling twice is harmless."""
    outcome = store.cancel_batch(batch_id, load_view(store, batch_id, with_failures=False).total)
    if outcome.verdict == "finished":
        status = load_view(store, batch_id, with_failures=False).status
        raise AlreadyFinished(f"batch {batch_id} has already finished ({status}): nothing to cancel")
    if outcome.completed:
        complete_batch(store, batch_id)
    return CancelReport(load_view(store, batch_id), outcome.files, outcome.jobs)
