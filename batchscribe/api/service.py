"""What the routes do, for both route sets (ours and batch-processing-kit's): one object holding
the store, the submitter and the configuration, passed in (`create_app`), no globals.

Its methods block (Redis, hashing): sync routes run them in the threadpool; long polls are async
and sleep between looks, so a waiting client holds no thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from batchscribe.api.config import ApiConfig
from batchscribe.api.errors import ApiError
from batchscribe.common.models import FileRecord, FileState, TranscriptionOptions
from batchscribe.common.output import Outputs, prepare_log_folder
from batchscribe.common.state import StateStore
from batchscribe.common.summary import build_summary
from batchscribe.producer.cancel import CancelReport, cancel
from batchscribe.producer.results import file_document
from batchscribe.producer.status import BatchView, iter_records, load_view
from batchscribe.producer.submit import SubmitReport, Submitter, confined

SCAN_LIMIT = 5000  # records looked at per page of a filtered file listing (then a shorter page + next link)


class BatchService:
    def __init__(self, config: ApiConfig, store: StateStore, submitter: Submitter) -> None:
        self.config = config
        self.store = store
        self.submitter = submitter

    # ---- submit and read ------------------------------------------------------------------

    def submit(self, inputs: list[str], out: str | Path, options: TranscriptionOptions, outputs: Outputs,
               display_name: str = "") -> tuple[SubmitReport, BatchView]:
        """`submit`'s own code path (dedupe, outputs, clashes), confined to the allowed roots; a
        log folder too, checked before it is created."""
        log_folder = ""
        if outputs.log_folder:
            confined(self.config.roots, [*inputs, out, outputs.log_folder])
            log_folder = prepare_log_folder(outputs.log_folder, "logFolder")
        report = self.submitter.submit(inputs, out, options, formats=outputs.formats,
                                       display_name=display_name, confine=self.config.roots,
                                       log_folder=log_folder)
        return report, load_view(self.store, report.batch_id)

    def view(self, batch_id: str) -> BatchView:
        return load_view(self.store, batch_id)

    async def wait(self, request: Request, batch_id: str, seconds: float | None,
                   reached: Callable[[BatchView], bool]) -> BatchView:
        """The batch once `reached(view)` holds, or when `seconds` (None: no limit) have passed or
        the client has gone; looks every `poll_interval` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            view = await run_in_threadpool(self.view, batch_id)
            if reached(view) or (deadline is not None and loop.time() >= deadline):
                return view
            if await request.is_disconnected():
                return view
            pause = self.config.poll_interval
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - loop.time()))
            await asyncio.sleep(pause)

    def batches(self, skip: int, top: int) -> tuple[list[BatchView], bool]:
        """A page of batches, newest first, and whether more follow."""
        ids = self.store.batch_ids(top + 1, skip)
        views = [load_view(self.store, b) for b in ids[:top]]
        return views, len(ids) > top

    def files(self, batch_id: str, skip: int, top: int,
              state: FileState | None) -> tuple[list[FileRecord], int | None]:
        """Up to `top` files from index `skip` on (only those in `state`, if given), and the
        index to continue from (None: no more). A filtered page looks at SCAN_LIMIT records at
        most, so it may be short and still have a next page."""
        view = load_view(self.store, batch_id, with_failures=False)
        if state is FileState.FAILED:  # kept as sorted sets of indexes: no scan needed
            indexes = self.store.failed_indexes(batch_id, start=skip, count=top + 1)
            chosen = self.store.files(batch_id, indexes[:top])
            return chosen, (indexes[top] if len(indexes) > top else None)
        if state is None:
            end = min(view.total, skip + top)
            return self.store.files(batch_id, range(skip, end)), (end if end < view.total else None)
        found: list[FileRecord] = []
        end = min(view.total, skip + SCAN_LIMIT)
        for record in iter_records(self.store, batch_id, range(skip, end)):
            if record.state is state:
                found.append(record)
                if len(found) == top:
                    end = record.index + 1
                    break
        return found, (end if end < view.total else None)

    def file_record(self, batch_id: str, index: int) -> FileRecord:
        load_view(self.store, batch_id, with_failures=False)  # 404 for an unknown batch
        records = self.store.files(batch_id, [index])
        if not records:
            raise ApiError(404, "NotFound", f"batch {batch_id} has no file {index}")
        return records[0]

    def document(self, batch_id: str, index: int) -> dict[str, object]:
        """The file's output JSON (409 while it has none)."""
        record = self.file_record(batch_id, index)
        document = file_document(self.store, record, self.config.roots)
        if document is None:
            raise ApiError(409, "Conflict", f"file {index} of batch {batch_id} is {record.state.value}: "
                           "it has no output" + ("" if record.state is FileState.CANCELLED else " yet"))
        return document

    def report(self, batch_id: str) -> dict[str, object]:
        """The run summary (what run_summary.json holds once the batch has finished), from Redis."""
        view = load_view(self.store, batch_id, with_failures=False)
        return build_summary(view.header, list(iter_records(self.store, batch_id, range(view.total))))

    def cancel(self, batch_id: str) -> CancelReport:
        return cancel(self.store, batch_id)
