"""Every file of a batch with its status and transcript text (or failure reason): the records read a
page at a time, so a batch of any size streams in bounded memory (`batchscribe results`, the HTTP
API's file listing and file documents).

A file's output document is read from its output file; when that is gone (or not readable here),
a done file's is rebuilt from its cached transcript (`common.cache`) and a failed file's from its
record.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from batchscribe.common.cache import CacheMiss, load_result
from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.names import printable
from batchscribe.common.output import failure_document, success_document
from batchscribe.common.state import FILE_PAGE, StateStore
from batchscribe.producer.discover import outside_roots
from batchscribe.producer.status import iso_time, iter_records

FORMATS = ("json", "jsonl", "csv", "txt")
CSV_COLUMNS = ("index", "input", "status", "durationSeconds", "errorClass", "reason", "text", "output")


def file_entry(record: FileRecord) -> dict[str, Any]:
    """One input of a batch as JSON (the API's file listing; `results` adds the text)."""
    return {
        "index": record.index,
        "input": record.path,
        "output": record.output,
        "status": record.state.value,
        "durationSeconds": round(record.duration, 3),
        "attempts": record.attempts,
        "endpoint": record.endpoint or None,
        "errorClass": record.error_class or None,
        "reason": record.reason or None,
        "startedDateTime": iso_time(record.started_at),
        "finishedDateTime": iso_time(record.finished_at) if record.state.terminal else None,
    }


def file_document(store: StateStore, record: FileRecord, roots: Sequence[Path] = ()) -> dict[str, Any] | None:
    """The file's output JSON; None while it has none (queued, running, cancelled).

    With `roots`, an output file outside them is not read (the document is rebuilt instead).
    """
    if record.state not in (FileState.DONE, FileState.FAILED):
        return None
    if not roots or not outside_roots([record.output], roots):
        try:
            document: dict[str, Any] = json.loads(Path(record.output).read_bytes())
            return document
        except (OSError, ValueError):
            pass
    if record.state is FileState.FAILED:
        return failure_document(record, record.error_class, record.reason)
    entry = store.results([record.job]).get(record.job) if record.job else None
    try:
        return success_document(record, load_result(entry)) if entry is not None else None
    except CacheMiss:  # read only: the next dedupe hit finds it gone too, and does the job again
        return None


def transcript_text(document: dict[str, Any] | None) -> str:
    entries = (document or {}).get("AudioFileResults") or [{}]
    combined = entries[0].get("CombinedResults") or [{}]
    return str(combined[0].get("Display") or "")


def iter_results(store: StateStore, batch_id: str, total: int,
                 page: int = FILE_PAGE) -> Iterator[dict[str, Any]]:
    """Every file of the batch in order, with `text`: the transcript, "" when it has none."""
    for record in iter_records(store, batch_id, range(total), page):
        entry = file_entry(record)
        entry["text"] = transcript_text(file_document(store, record))
        yield entry


def write_results(rows: Iterable[dict[str, Any]], fmt: str, out: BinaryIO, terminal: bool = False) -> int:
    """Write `rows` to `out` as they come, in one of FORMATS; returns how many.

    Names that are not UTF-8 keep their bytes in csv and txt; in JSON they are the escapes
    ``\\udcXX`` the output files use (`common.output.write_json_atomic`). On a terminal, txt shows
    control characters escaped (`common.names.printable`).
    """
    count = 0
    if fmt == "json":
        out.write(b"[")
    for row in rows:
        out.write(_encode_row(row, fmt, count, terminal))
        count += 1
    if fmt == "json":
        out.write(b"\n]\n" if count else b"]\n")
    out.flush()
    return count


def _encode_row(row: dict[str, Any], fmt: str, count: int, terminal: bool) -> bytes:
    if fmt in ("json", "jsonl"):
        text = json.dumps(row, ensure_ascii=False)
        lead = ("\n" if count == 0 else ",\n") if fmt == "json" else ""
        return (lead + text + ("" if fmt == "json" else "\n")).encode("utf-8", "backslashreplace")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if count == 0:
            writer.writerow(CSV_COLUMNS)
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS])
        return buffer.getvalue().encode("utf-8", "surrogateescape")
    show = printable if terminal else str
    body = row["text"] if row["status"] == "done" else (
        f"{row['errorClass']}: {row['reason']}" if row["status"] == "failed" else f"({row['status']})")
    return f"== {show(row['input'])} [{row['status']}]\n{show(body)}\n\n".encode("utf-8", "surrogateescape")
