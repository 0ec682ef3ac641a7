"""Hand a job's outcome to each of its inputs: write its output file, then settle its state.

Used by the worker (after an engine call), and by the producer (dedupe hits and inputs that
fail before any task exists): one code path, so every input gets exactly one output either way.
The output is written *before* the state says done, so "done" always means "the file is there".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.output import failure_document, success_document, write_document
from batchscribe.common.state import StateStore, target_id
from batchscribe.common.summary import complete_batch

log = logging.getLogger(__name__)


def _formats(store: StateStore, batch_id: str, cache: dict[str, list[str]]) -> list[str]:
    if batch_id not in cache:
        cache[batch_id] = store.batch_formats(batch_id)
    return cache[batch_id]


def _settle(store: StateStore, record: FileRecord, document: dict[str, Any], state: FileState,
            job_key: str, formats: list[str], **fields: Any) -> None:
    target = target_id(record.batch_id, record.index)
    try:
        write_document(record, document, formats)
    except OSError as exc:
        # The output folder is the one thing we cannot route around: record it, keep the rest going.
        state, fields = FileState.FAILED, {"error_class": "permanent",
                                           "reason": f"cannot write output {record.output}: {exc}"}
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
                    result: dict[str, Any], cached: bool = False) -> None:
    """`cached`: the result came from the dedupe cache at submit (run_summary.json counts those)."""
    cache: dict[str, list[str]] = {}
    mark = {"cached": "1"} if cached else {}
    for record in records:
        document = success_document(record, result)
        _settle(store, record, document, FileState.DONE, job_key, _formats(store, record.batch_id, cache),
                error_class="", reason="", endpoint=result.get("endpoint", record.endpoint), **mark)


def deliver_failure(store: StateStore, job_key: str, records: Iterable[FileRecord],
                    error_class: str, reason: str) -> None:
    cache: dict[str, list[str]] = {}
    for record in records:
        document = failure_document(record, error_class, reason)
        _settle(store, record, document, FileState.FAILED, job_key,
                _formats(store, record.batch_id, cache), error_class=error_class, reason=reason)
