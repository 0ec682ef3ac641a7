"""`run_summary.json` (the batch at a glance, kept fresh while it runs) and `results.json` (every
file's result in one document, `--combined-json`), both in batch-processing-kit's shape.

`run_summary.json` holds batch-kit's fields — `overall_summary.audio_stats`,
`overall_summary.file_stats`, `processed_files[]` — alongside ours (the rest of `overall_summary`,
`file_summaries[]`).

Who writes it, and when:

* **while the batch runs**: `refresh_live`, called every `REFRESH_TICK` seconds by every worker
  VM's supervisor (the one process sure to live as long as the batch) and by a command that waits
  for the batch. Each batch has one clock in Redis (`StateStore.take_summary_turn`), so of N callers one
  rewrites it: when files moved since the last rewrite, at most once per max(`min_gap`,
  `factor` × the last rewrite's cost), and every `period` anyway (batch-kit's 30 s: the elapsed time
  moves); `CLOCK` holds the numbers. A rewrite of a huge batch therefore costs at most ~1/`factor`
  of one process's time, whatever its size.
* **at the end**: `complete_batch`, by whoever settles the last file (or cancels the batch).

A rewrite reads the records page by page (`file_pages`) and spools the two per-file arrays to
temp files (`common.output.JsonArray`), so memory stays bounded for a batch of any size. The new
file is renamed into place under a short lock, and a mid-batch rewrite only while the batch is
still incomplete: a slow refresh never lands over the final summary.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchscribe.common.errors import ProcessingError
from batchscribe.common.locations import join
from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.output import COMBINED_JSON, JsonArray, write_json_document
from batchscribe.common.state import StateStore, SummaryClock, file_pages
from batchscribe.common.storage import pending_output, read_bytes

log = logging.getLogger(__name__)

SUMMARY_NAME = "run_summary.json"
COMBINED_NAME = "results.json"  # batch-kit's `-combined_json` file

REFRESH_TICK = 2.0  # seconds between looks at the live batches (supervisor, waiting commands)
# Rewrites: after files moved, 2 s apart at least; every 30 s anyway (batch-kit's period); and
# never sooner than 10 × what the last one cost (a huge batch costs ≤ ~10 % of one process).
CLOCK = SummaryClock(min_gap=2.0, period=30.0, factor=10.0)
LOCK_TTL = 10.0  # seconds a rename may hold the summary lock (it takes milliseconds)

Sink = Callable[[dict[str, Any]], None]


def batch_complete(header: dict[str, str]) -> bool:
    """Every file of the batch is done, failed or cancelled (its header's counters say so)."""
    settled = sum(int(header.get(f"n_{s.value}", 0) or 0) for s in FileState if s.terminal)
    return bool(header) and settled >= int(header.get("total", 0) or 0)


def _signature(header: dict[str, str]) -> str:
    """What a summary shows that moves when files move: the batch's counters."""
    return ",".join(header.get(f"n_{s.value}", "0") for s in FileState)


@dataclass
class Tally:
    """What `overall_summary` needs, gathered while the records stream past once."""

    counts: dict[str, int] = field(default_factory=dict)  # files by state
    failed_by_class: dict[str, int] = field(default_factory=dict)
    audio_done: float = 0.0
    audio_decoded: float = 0.0  # batch-kit's total_decoded_seconds: done, not from the cache
    cached: int = 0
    endpoints: set[str] = field(default_factory=set)
    total: int = 0

    def add(self, r: FileRecord) -> None:
        self.total += 1
        self.counts[r.state.value] = self.counts.get(r.state.value, 0) + 1
        if r.endpoint:
            self.endpoints.add(r.endpoint)
        if r.state is FileState.DONE:
            self.audio_done += r.duration
            if _cached(r):
                self.cached += 1
            else:
                self.audio_decoded += r.duration
        elif r.state is FileState.FAILED:
            cls = r.error_class or "unknown"
            self.failed_by_class[cls] = self.failed_by_class.get(cls, 0) + 1

    @property
    def complete(self) -> bool:
        return sum(self.counts.get(s.value, 0) for s in FileState if s.terminal) >= self.total


def _cached(r: FileRecord) -> bool:
    """Done from the dedupe cache at submit (`common.outcomes.deliver_success(cached=True)`)."""
    return r.extra.get("cached") == "1"


def overall_summary(header: dict[str, str], tally: Tally, now: float) -> dict[str, Any]:
    created = float(header.get("created_at") or 0)
    finished = (float(header.get("finished_at") or 0) or now) if tally.complete else None
    wall = max((finished or now) - created, 1e-9)
    c = tally.counts
    return {
        "audio_stats": {  # batch-kit's
            "time_elapsed_seconds": round(wall, 3),
            "total_decoded_seconds": round(tally.audio_decoded, 3),
            "num_endpoints": len(tally.endpoints),  # endpoints that have run files of this batch
            "decode_ratio": round(tally.audio_decoded / wall, 3),
        },
        "file_stats": {  # batch-kit's
            "passed": c.get("done", 0), "failed": c.get("failed", 0), "in_retry": c.get("retrying", 0),
            "queued": c.get("queued", 0), "running": c.get("running", 0), "cached": tally.cached,
            "total": tally.total,
        },
        "batch_id": header.get("id", ""),
        "input": header.get("input", ""),
        "output_folder": header.get("out", ""),
        "complete": tally.complete,
        "total_files": tally.total,
        "succeeded": c.get("done", 0),
        "failed": c.get("failed", 0),
        "cancelled": c.get("cancelled", 0),
        "cancelled_at": float(header.get("cancelled_at") or 0) or None,
        "failed_by_class": tally.failed_by_class,
        "skipped_not_media": int(header.get("skipped", 0) or 0),
        "skipped_symlinked_folders": int(header.get("links", 0) or 0),
        "audio_seconds": round(tally.audio_done, 3),
        "wall_seconds": round(wall, 3),
        "speed_x_realtime": round(tally.audio_done / wall, 3),
        "created_at": created,
        "finished_at": finished,
        "updated_at": round(now, 3),
    }


def file_summary(r: FileRecord) -> dict[str, Any]:
    """Ours: one entry per input, whatever its state."""
    return {"file": r.path, "output": r.output, "status": r.state.value, "duration": r.duration,
            "attempts": r.attempts, "endpoint": r.endpoint, "error_class": r.error_class or None,
            "reason": r.reason or None, "cached": _cached(r),
            "processing_seconds": round(max(0.0, r.finished_at - r.started_at), 3) if r.started_at else None}


def processed_file(r: FileRecord) -> dict[str, Any] | None:
    """batch-kit's entry, for an input that has an outcome (done, failed, cancelled, or failed once
    and waiting for its retry); None for one that has none yet."""
    if not (r.state.terminal or r.state is FileState.RETRYING or r.attempts > 1):
        return None
    passed = r.state is FileState.DONE
    settled = r.state.terminal and r.started_at and r.finished_at
    error = "cancelled" if r.state is FileState.CANCELLED else r.error_class
    return {"filepath": r.path, "passed": passed, "endpoint": r.endpoint or None,
            "latency": round(max(0.0, r.finished_at - r.started_at), 3) if settled else None,
            # `retry-failed` may cure every class but permanent; a cancelled batch is not retried.
            "can_retry": not passed and r.state is not FileState.CANCELLED and r.error_class != "permanent",
            "cached": _cached(r), "error_type": None if passed else (error or None),
            "failed_reason": None if passed else (r.reason or None), "audio_duration": r.duration,
            "retries": max(0, r.attempts - 1)}


def collect(records: Iterable[FileRecord], processed: Sink, files: Sink) -> Tally:
    """One pass: each record's entries go to the sinks, the totals into the returned tally."""
    tally = Tally()
    for record in records:
        tally.add(record)
        entry = processed_file(record)
        if entry is not None:
            processed(entry)
        files(file_summary(record))
    return tally


def build_summary(header: dict[str, str], records: Iterable[FileRecord],
                  now: float | None = None) -> dict[str, Any]:
    """The summary as one document in memory (the HTTP API's report)."""
    processed: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    tally = collect(records, processed.append, files.append)
    return {"overall_summary": overall_summary(header, tally, time.time() if now is None else now),
            "processed_files": processed, "file_summaries": files}


def _records(store: StateStore, batch_id: str, total: int,
             on_page: Callable[[list[FileRecord]], None] | None = None) -> Iterator[FileRecord]:
    for page in file_pages(store, batch_id, range(total)):
        if on_page is not None:
            on_page(page)
        yield from page


def write_summary(store: StateStore, batch_id: str, header: dict[str, str], final: bool,
                  on_page: Callable[[list[FileRecord]], None] | None = None) -> str | None:
    """Write `OUT/run_summary.json` from the records, page by page; the path, or None when a
    mid-batch rewrite (`final` False) found the batch complete and left the final summary alone."""
    path = join(header["out"], SUMMARY_NAME)
    with JsonArray() as processed, JsonArray() as files:
        records = _records(store, batch_id, int(header.get("total", 0) or 0), on_page)
        tally = collect(records, processed.append, files.append)
        document = {"overall_summary": overall_summary(header, tally, store.clock()),
                    "processed_files": processed, "file_summaries": files}
        with pending_output(path) as pending:
            write_json_document(pending, document)
            with _summary_lock(store, batch_id):
                if final or not batch_complete(store.batch(batch_id)):
                    pending.commit()
    return path if pending.committed else None


@contextmanager
def _summary_lock(store: StateStore, batch_id: str) -> Iterator[None]:
    """Held while a summary is checked and renamed into place (milliseconds; the TTL frees it from
    a holder that died)."""
    holder = uuid.uuid4().hex
    while not store.hold_summary_lock(batch_id, holder, LOCK_TTL):
        time.sleep(0.02)
    try:
        yield
    finally:
        store.release_summary_lock(batch_id, holder)


def refresh_live(store: StateStore, batch_ids: Iterable[str] | None = None) -> int:
    """Rewrite the summary of each live batch (or of `batch_ids`) whose clock says it is due; returns
    how many were rewritten. Safe to call from any number of processes at once."""
    rewritten = 0
    for batch_id in store.live_batch_ids() if batch_ids is None else batch_ids:
        header = store.batch(batch_id)
        if not header:  # removed while it ran
            store.set_live(batch_id, False)
        elif batch_complete(header):
            _finish_abandoned(store, batch_id, header)
        elif header.get("out"):
            rewritten += _refresh(store, batch_id, header)
    return rewritten


def _refresh(store: StateStore, batch_id: str, header: dict[str, str]) -> int:
    signature = _signature(header)
    if not store.take_summary_turn(batch_id, signature, CLOCK):
        return 0
    started, began = store.clock(), time.monotonic()
    try:
        written = write_summary(store, batch_id, header, final=False)
    except OSError as exc:  # the output folder is unwritable now: say so, try again next period
        log.warning("cannot write the run summary of batch %s: %s", batch_id, exc)
        return 0
    store.summary_written(batch_id, signature, started, time.monotonic() - began)
    return int(written is not None)


ABANDONED_AFTER = 300.0  # seconds a complete batch may stay live before its completion is redone


def _finish_abandoned(store: StateStore, batch_id: str, header: dict[str, str]) -> None:
    """A complete batch still live: its completer is writing the final summary now, or died doing
    it. After ABANDONED_AFTER seconds, complete it again (idempotent), once cluster-wide."""
    finished = float(header.get("finished_at") or 0)
    if store.clock() - finished > ABANDONED_AFTER and store.take_summary_turn(batch_id, "complete", CLOCK):
        log.warning("batch %s is complete without its final summary; writing it now", batch_id)
        complete_batch(store, batch_id)


def read_document(location: str | Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(read_bytes(location))
    return document


def _combined_entries(store: StateStore, batch_id: str, total: int) -> Iterator[dict[str, Any]]:
    """Each settled input's `AudioFileResults` entries, read back from its output, in input order."""
    for record in _records(store, batch_id, total):
        if record.state not in (FileState.DONE, FileState.FAILED):
            continue
        try:
            yield from read_document(record.output)["AudioFileResults"]
        except (OSError, ProcessingError, ValueError, KeyError, TypeError) as exc:
            log.warning("results.json of batch %s: skipping %s (%s)", batch_id, record.output, exc)


def write_combined(store: StateStore, batch_id: str, header: dict[str, str]) -> str:
    """batch-kit's `OUT/results.json`: ``{"AudioFileResults": [...]}`` of every file, streamed into
    a temp file and renamed (never a list of a million documents in memory)."""
    path = join(header["out"], COMBINED_NAME)
    entries = _combined_entries(store, batch_id, int(header.get("total", 0) or 0))
    with pending_output(path) as pending:
        write_json_document(pending, {"AudioFileResults": entries})
        pending.commit()
    return path


def complete_batch(store: StateStore, batch_id: str) -> str | None:
    """The batch's last file settled: write `results.json` (when asked) and the final
    `run_summary.json`, release its output reservations (`StateStore.reserve_outputs`) so that
    later batches may write those files, and take it off the live batches."""
    header = store.batch(batch_id)
    if not header:
        return None

    def release(page: list[FileRecord]) -> None:
        store.release_outputs(batch_id, [r.output for r in page])

    path, released = None, False
    try:
        if header.get("out") and COMBINED_JSON in (header.get("formats") or "").split(","):
            write_combined(store, batch_id, header)
        if header.get("out"):
            path = write_summary(store, batch_id, header, final=True, on_page=release)
            released = True
    except OSError as exc:  # the folder is unwritable: the outputs are written, say what is missing
        log.error("batch %s complete, but its summary could not be written: %s", batch_id, exc)
    if not released:  # (releasing twice is harmless)
        for page in file_pages(store, batch_id, range(int(header.get("total", 0) or 0))):
            release(page)
    store.set_live(batch_id, False)
    return path
