"""Hand a job's outcome to each of its inputs: write its output file, then settle its state.

Used by the worker (after an engine call or a conversion), and by the producer (dedupe hits and
inputs that fail before any task exists): one code path, so every input gets exactly one output
either way. The output is written *before* the state says done, so "done" always means "the file
is there".

A transcription's output is a JSON document built from the job's result (and its extra formats).
A conversion's output is the converted file itself: the worker copies it from its scratch space to
each input's output; a dedupe hit copies it from where the job first wrote it (the result's
`artifact`), verified by its sha256. A dedupe hit of a transcription reads its result from the
result cache likewise (`common.cache`). When what the cache points at is gone or changed,
`deliver_cached` forgets the pointer and tells the caller to do the job again: a cache entry that
cannot be trusted is simply work to redo.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from batchscribe.common.cache import CacheMiss, load_result
from batchscribe.common.conversion import is_conversion
from batchscribe.common.errors import ProcessingError
from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.names import printable
from batchscribe.common.output import (
    MEDIA_FORMAT,
    conversion_failure,
    failure_document,
    failure_location,
    success_document,
    write_document,
    write_json_atomic,
)
from batchscribe.common.state import StateStore, target_id
from batchscribe.common.storage import copy_verified, remove, size_of
from batchscribe.common.summary import complete_batch

log = logging.getLogger(__name__)


def _formats(store: StateStore, batch_id: str, cache: dict[str, list[str]]) -> list[str]:
    if batch_id not in cache:
        cache[batch_id] = store.batch_formats(batch_id)
    return cache[batch_id]


def _settle(store: StateStore, record: FileRecord, write: Callable[[], None], state: FileState,
            job_key: str, **fields: Any) -> None:
    """Run `write()` (the record's output), then move the record to `state`."""
    target = target_id(record.batch_id, record.index)
    try:
        write()
    except (OSError, ProcessingError) as exc:
        # The output storage is the one thing we cannot route around: record it, keep the rest going.
        why = exc.reason if isinstance(exc, ProcessingError) else str(exc)
        state, fields = FileState.FAILED, {"error_class": "permanent",
                                           "reason": f"cannot write output {record.output}: {why}"}
    if store.settle_file(target, state, job_key, **fields):
        path = complete_batch(store, record.batch_id)
        log.info("batch %s complete; summary at %s", record.batch_id, path)


def records_for(store: StateStore, targets: Sequence[str],
                known: Sequence[FileRecord] = ()) -> list[FileRecord]:
    """The inputs behind `targets`; records already read (`known`) are not fetched again."""
    have = {target_id(r.batch_id, r.index): r for r in known}
    reused = [have[t] for t in targets if t in have]
    return reused + store.records([t for t in targets if t not in have])


def deliver_success(store: StateStore, job_key: str, records: Iterable[FileRecord],
                    result: dict[str, Any], cached: bool = False, artifact: Path | None = None) -> None:
    """`cached`: the result came from the dedupe cache at submit (run_summary.json counts those).
    `artifact`: a conversion's output file, just made (else the result's stored copy is used).

    Raises `CacheMiss` (before anything is written for that input) when a conversion's stored copy
    is gone or changed; the inputs before it are delivered."""
    cache: dict[str, list[str]] = {}
    mark = {"cached": "1"} if cached else {}
    converted = is_conversion(result.get("options") or {})
    for record in records:
        if converted:
            write = _media_writer(record, result, artifact)
        else:
            write = partial(write_document, record, success_document(record, result),
                            _formats(store, record.batch_id, cache))
        _settle(store, record, write, FileState.DONE, job_key, error_class="", reason="",
                endpoint=result.get("endpoint", record.endpoint), **mark)


def deliver_cached(store: StateStore, job_key: str, records: Sequence[FileRecord], entry: dict[str, Any],
                   at_submit: bool = False) -> list[FileRecord]:
    """Deliver a done job's outputs from its cache `entry` (`StateStore.results`), no engine call.

    `at_submit`: the producer's dedupe hits (inputs that are not the job's targets; counted as
    `cached` in the summary); else a redelivery of a finished job in a worker. Returns the records
    not delivered because the entry turned out gone or changed (`CacheMiss`): its pointer is
    forgotten, so the caller claims (or runs) the job again, which writes the entry back."""
    settle_as = "" if at_submit else job_key
    for i, record in enumerate(records):
        try:
            if i == 0:
                result = load_result(entry)  # one read for every input of the job
            deliver_success(store, settle_as, [record], result, cached=at_submit)
        except CacheMiss as exc:
            log.info("cached result of job %s is not usable (%s): doing it again", job_key,
                     printable(str(exc)))
            store.forget_result(job_key)
            return list(records[i:])
    return []


def _media_writer(record: FileRecord, result: dict[str, Any], artifact: Path | None) -> Callable[[], None]:
    """How a converted file reaches `record.output`: copied from the fresh `artifact`, or from the
    stored copy — not copied at all when that copy is this very output (a re-run into the same
    folder), which then must still have its size."""
    source = str(artifact) if artifact is not None else str(result.get("artifact") or "")
    sha256, size = str(result.get("sha256") or ""), int(result.get("size") or 0)
    if not source:
        raise CacheMiss(f"no stored copy of job {record.job}")

    def write() -> None:
        in_place = artifact is None and source == record.output and size_of(record.output) == size
        if not in_place and not copy_verified(source, record.output, sha256):
            raise CacheMiss(f"{source} is gone or changed")
        _forget_failure(record.output)

    return write


def _forget_failure(output: str) -> None:
    """Remove the record an earlier failure of this input left (best effort: storage that lets us
    write but not delete keeps it; the output beside it says the file is converted now)."""
    try:
        remove(failure_location(output))
    except (OSError, ProcessingError) as exc:
        kind = type(exc).__name__
        log.log(logging.DEBUG if kind in _refused_removals else logging.WARNING,
                "cannot remove old failure records (first: %s): %s", output, exc)
        _refused_removals.add(kind)


_refused_removals: set[str] = set()  # kinds of refusal already said once (a SAS without delete: every file)


def deliver_failure(store: StateStore, job_key: str, records: Iterable[FileRecord],
                    error_class: str, reason: str) -> None:
    cache: dict[str, list[str]] = {}
    for record in records:
        formats = _formats(store, record.batch_id, cache)
        if MEDIA_FORMAT in formats:  # a conversion: the failure record sits beside the missing output
            write = partial(write_json_atomic, failure_location(record.output),
                            conversion_failure(record, error_class, reason))
        else:
            write = partial(write_document, record, failure_document(record, error_class, reason), formats)
        _settle(store, record, write, FileState.FAILED, job_key, error_class=error_class, reason=reason)
