"""`run_summary.json`: the batch at a glance, written by whoever settles its last file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.output import write_json_atomic
from batchscribe.common.state import StateStore

SUMMARY_NAME = "run_summary.json"


def build_summary(header: dict[str, str], records: list[FileRecord]) -> dict[str, Any]:
    done = [r for r in records if r.state is FileState.DONE]
    failed = [r for r in records if r.state is FileState.FAILED]
    created = float(header.get("created_at") or 0)
    finished = float(header.get("finished_at") or 0) or time.time()
    by_class: dict[str, int] = {}
    for r in failed:
        by_class[r.error_class or "unknown"] = by_class.get(r.error_class or "unknown", 0) + 1
    audio_done = sum(r.duration for r in done)
    wall = max(finished - created, 1e-9)
    return {
        "overall_summary": {
            "batch_id": header.get("id", ""),
            "input": header.get("input", ""),
            "output_folder": header.get("out", ""),
            "total_files": len(records),
            "succeeded": len(done),
            "failed": len(failed),
            "cancelled": sum(1 for r in records if r.state is FileState.CANCELLED),
            "cancelled_at": float(header.get("cancelled_at") or 0) or None,
            "failed_by_class": by_class,
            "skipped_not_media": int(header.get("skipped", 0) or 0),
            "skipped_symlinked_folders": int(header.get("links", 0) or 0),
            "audio_seconds": round(audio_done, 3),
            "wall_seconds": round(wall, 3),
            "speed_x_realtime": round(audio_done / wall, 3),
            "created_at": created,
            "finished_at": finished,
        },
        "file_summaries": [
            {"file": r.path, "output": r.output, "status": r.state.value, "duration": r.duration,
             "attempts": r.attempts, "endpoint": r.endpoint, "error_class": r.error_class or None,
             "reason": r.reason or None,
             "processing_seconds": round(max(0.0, r.finished_at - r.started_at), 3) if r.started_at else None}
            for r in records
        ],
    }


def complete_batch(store: StateStore, batch_id: str) -> Path | None:
    """The batch's last file settled: write `run_summary.json`, then release its output reservations
    (`StateStore.reserve_outputs`) so that later batches may write those files."""
    header = store.batch(batch_id)
    if not header:
        return None
    records = store.files(batch_id, range(int(header.get("total", 0))))
    path = None
    if header.get("out"):
        path = Path(header["out"]) / SUMMARY_NAME
        write_json_atomic(path, build_summary(header, records))
    store.release_outputs(batch_id, [r.output for r in records])
    return path
