"""`results` and `status` read a batch page by page: every file once, in order, whatever the page
size; names that are not UTF-8 keep their bytes (csv, txt) or their JSON escape (json, jsonl)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from batchscribe.common.cache import put_transcript
from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.output import success_document, write_document
from batchscribe.common.state import StateStore
from batchscribe.producer.results import iter_results, write_results
from batchscribe.producer.status import SHOW_FAILURES, load_view, render_failures

ODD = os.fsdecode(b"caf\xe9.wav")  # a name that is not UTF-8


def make_batch(store: StateStore, tmp_path: Path, names: list[str]) -> list[FileRecord]:
    records = [FileRecord(batch_id="b", index=i, path=str(tmp_path / name), rel=name,
                          output=str(tmp_path / "out" / f"{i}.json"), duration=1.0, job=f"j{i}")
               for i, name in enumerate(names)]
    store.create_batch("b", {"out": str(tmp_path / "out")}, records)
    return records


def test_results_stream_every_file_in_order_page_by_page(store: StateStore, tmp_path: Path) -> None:
    records = make_batch(store, tmp_path, ["a.wav", ODD, "c.wav", "d.wav", "e.wav"])
    for record in records[:2]:
        result = {"phrases": [{"DisplayText": f"text of {record.index}", "Offset": 0, "Duration": 10}]}
        write_document(record, success_document(record, result), ["json"])
        store.settle_file(f"b:{record.index}", FileState.DONE)
    cached = put_transcript(str(tmp_path / "store"), "j2",
                            {"phrases": [{"DisplayText": "from the cache", "Offset": 0, "Duration": 1}]})
    store.finish_job("j2", cached, 60)
    store.settle_file("b:2", FileState.DONE)  # its output file is gone: rebuilt from the cached result
    store.settle_file("b:3", FileState.FAILED, error_class="permanent", reason="not a WAV file")

    rows = list(iter_results(store, "b", 5, page=2))
    assert [(r["index"], r["status"], r["text"]) for r in rows] == [
        (0, "done", "text of 0"), (1, "done", "text of 1"), (2, "done", "from the cache"), (3, "failed", ""),
        (4, "queued", "")]
    assert rows[3]["reason"] == "not a WAV file"

    as_json = io.BytesIO()
    assert write_results(rows, "json", as_json) == 5
    assert [r["input"] for r in json.loads(as_json.getvalue())][1] == str(tmp_path / ODD)
    lines = io.BytesIO()
    write_results(rows, "jsonl", lines)
    assert len(lines.getvalue().splitlines()) == 5 and b"\\udce9" in lines.getvalue()
    table = io.BytesIO()
    write_results(rows, "csv", table)
    assert os.fsencode(str(tmp_path / ODD)) in table.getvalue()  # the name's own bytes
    parsed = list(csv.DictReader(io.StringIO(table.getvalue().decode("utf-8", "replace"))))
    assert [p["status"] for p in parsed] == ["done", "done", "done", "failed", "queued"]
    text = io.BytesIO()
    write_results(rows, "txt", text, terminal=True)
    assert b"caf\\xe9.wav" in text.getvalue() and b"[failed]\npermanent: not a WAV file" in text.getvalue()
    Path(cached["artifact"]).unlink()  # its cache entry is gone too: no text, and no error
    assert [r["text"] for r in iter_results(store, "b", 5)][2] == ""

    empty = io.BytesIO()
    write_results([], "json", empty)
    assert json.loads(empty.getvalue()) == []


def test_status_counts_every_failure_and_keeps_a_few_per_class(store: StateStore, tmp_path: Path) -> None:
    n = 2 * SHOW_FAILURES  # a fifth of them transient
    make_batch(store, tmp_path, [f"{i}.wav" for i in range(n + 1)])
    for i in range(n):
        store.settle_file(f"b:{i}", FileState.FAILED, error_class="permanent" if i % 5 else "transient",
                          reason=f"reason {i}")
    view = load_view(store, "b")
    transient = n // 5
    assert view.failed_by_class == {"permanent": n - transient, "transient": transient}
    assert len(view.failures["permanent"]) == SHOW_FAILURES and len(view.failures["transient"]) == transient
    shown = "\n".join(render_failures(view))
    assert f"permanent ({n - transient}):" in shown and f"… and {n - transient - SHOW_FAILURES} more" in shown
    assert view.status == "running" and not view.complete
