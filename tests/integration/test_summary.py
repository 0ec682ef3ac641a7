"""`run_summary.json` while the batch runs and at its end, and `results.json`, against a real Redis:
batch-kit's fields, one rewrite at a time per batch, the final summary never overwritten by a late
refresh, and the records read page by page."""

from __future__ import annotations

import json
from pathlib import Path

from batchscribe.common.celery_app import make_app
from batchscribe.common.models import FileRecord, FileState, TranscriptionOptions
from batchscribe.common.outcomes import deliver_failure, deliver_success
from batchscribe.common.output import COMBINED_JSON, output_path
from batchscribe.common.publish import Publisher
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore, target_id
from batchscribe.common.summary import (
    CLOCK,
    COMBINED_NAME,
    SUMMARY_NAME,
    complete_batch,
    refresh_live,
    write_summary,
)
from batchscribe.producer.discover import Discovered
from batchscribe.producer.submit import Submitter
from tests.support.clock import ManualClock

RESULT = {"phrases": [{"RecognitionStatus": "Success", "Offset": 0, "Duration": 10_000_000,
                       "DisplayText": "Hi.", "NBest": [{"Display": "Hi.", "Lexical": "hi"}]}],
          "duration": 2.0, "engine": "azure", "endpoint": "emu_a", "options": {"language": "en-US"}}


def make_batch(store: StateStore, out: Path, n: int, formats: str = "json") -> list[FileRecord]:
    records = [FileRecord(batch_id="b", index=i, path=f"/in/f{i}.wav", rel=f"f{i}.wav",
                          output=str(output_path(out, f"f{i}.wav")), duration=2.0, job=f"j{i}")
               for i in range(n)]
    store.create_batch("b", {"out": str(out), "formats": formats}, records)
    return records


def summary(out: Path) -> dict:
    return json.loads((out / SUMMARY_NAME).read_text())


def test_a_mid_batch_summary_has_batch_kit_s_fields_and_ours(tmp_path: Path, settings: Settings) -> None:
    store = StateStore.connect(settings, clock=ManualClock())
    records = make_batch(store, tmp_path, 5)
    deliver_success(store, "", [records[0]], RESULT)
    deliver_success(store, "", [records[1]], RESULT, cached=True)
    deliver_failure(store, "", [records[2]], "permanent", "not audio")
    store.settle_file(target_id("b", 3), FileState.RETRYING, "", attempts=1, error_class="transient",
                      reason="HTTP 429")
    assert refresh_live(store) == 1
    doc = summary(tmp_path)
    overall = doc["overall_summary"]
    assert overall["file_stats"] == {"passed": 2, "failed": 1, "in_retry": 1, "queued": 1, "running": 0,
                                     "cached": 1, "total": 5}
    assert overall["audio_stats"]["total_decoded_seconds"] == 2.0  # the cached file was not decoded
    assert overall["audio_stats"]["num_endpoints"] == 1
    assert set(overall["audio_stats"]) == {"time_elapsed_seconds", "total_decoded_seconds", "num_endpoints",
                                           "decode_ratio"}
    assert overall["complete"] is False and overall["finished_at"] is None and overall["succeeded"] == 2
    by_path = {p["filepath"]: p for p in doc["processed_files"]}
    assert set(by_path) == {"/in/f0.wav", "/in/f1.wav", "/in/f2.wav", "/in/f3.wav"}  # f4 has no outcome
    for entry in by_path.values():
        assert set(entry) == {"filepath", "passed", "endpoint", "latency", "can_retry", "cached", "error_type",
                              "failed_reason", "audio_duration", "retries"}
    assert by_path["/in/f1.wav"]["cached"] is True and by_path["/in/f0.wav"]["cached"] is False
    assert (by_path["/in/f2.wav"]["error_type"], by_path["/in/f2.wav"]["can_retry"]) == ("permanent", False)
    assert (by_path["/in/f3.wav"]["passed"], by_path["/in/f3.wav"]["can_retry"]) == (False, True)
    assert [f["status"] for f in doc["file_summaries"]] == ["done", "done", "failed", "retrying", "queued"]


def test_one_rewrite_per_change_and_gap_and_one_per_period_without_change(tmp_path: Path,
                                                                          settings: Settings) -> None:
    clock = ManualClock()
    store = StateStore.connect(settings, clock=clock)
    records = make_batch(store, tmp_path, 3)
    assert refresh_live(store) == 1
    assert refresh_live(store) == 0  # nothing moved
    deliver_success(store, "", [records[0]], RESULT)
    assert refresh_live(store) == 0  # moved, but within the minimum gap
    clock.advance(CLOCK.min_gap + 0.1)
    assert refresh_live(store) == 1 and summary(tmp_path)["overall_summary"]["succeeded"] == 1
    clock.advance(CLOCK.min_gap + 0.1)
    assert refresh_live(store) == 0  # nothing moved since
    clock.advance(CLOCK.period)
    assert refresh_live(store) == 1  # the period: the elapsed time moves


def test_a_late_refresh_never_lands_over_the_final_summary(tmp_path: Path, store: StateStore) -> None:
    records = make_batch(store, tmp_path, 2)
    header_before = store.batch("b")  # a refresher read the batch while it ran ...
    deliver_success(store, "", records, RESULT)  # ... the last file settled, the final summary written
    final = (tmp_path / SUMMARY_NAME).read_text()
    assert json.loads(final)["overall_summary"]["complete"] is True
    assert write_summary(store, "b", header_before, final=False) is None  # ... its rewrite lands last
    assert (tmp_path / SUMMARY_NAME).read_text() == final
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bs-")] == []  # its temp file is gone
    assert store.live_batch_ids() == []


def test_combined_results_hold_every_settled_file_in_input_order(tmp_path: Path, store: StateStore) -> None:
    records = make_batch(store, tmp_path, 4, formats=f"json,{COMBINED_JSON}")
    deliver_failure(store, "", [records[2]], "permanent", "empty file (0 bytes)")
    deliver_success(store, "", [records[0], records[1]], RESULT)
    assert not (tmp_path / COMBINED_NAME).exists()  # only when the batch completes
    store.cancel_batch("b", 4)
    complete_batch(store, "b")
    combined = json.loads((tmp_path / COMBINED_NAME).read_text())
    entries = combined["AudioFileResults"]
    assert [e["AudioFileUrl"] for e in entries] == ["/in/f0.wav", "/in/f1.wav", "/in/f2.wav"]  # f3 cancelled
    assert [e["TranscriptionStatus"] for e in entries] == ["Succeeded", "Succeeded", "Failed"]
    assert entries[0] == json.loads(Path(records[0].output).read_text())["AudioFileResults"][0]


def test_a_huge_batch_is_read_page_by_page(tmp_path: Path, store: StateStore, monkeypatch) -> None:
    make_batch(store, tmp_path, 2500)
    asked: list[int] = []
    files = store.files

    def counted(batch_id: str, indexes) -> list[FileRecord]:
        indexes = list(indexes)
        asked.append(len(indexes))
        return files(batch_id, indexes)

    monkeypatch.setattr(store, "files", counted)
    assert refresh_live(store) == 1
    assert asked == [1000, 1000, 500]
    assert len(summary(tmp_path)["file_summaries"]) == 2500


def test_a_batch_with_nothing_to_transcribe_is_complete_at_once(tmp_path: Path, settings: Settings,
                                                                 store: StateStore) -> None:
    submitter = Submitter(store, Publisher(make_app(settings)), settings.claim_ttl)
    report = submitter.submit_found(Discovered(files=[], skipped=["/in/readme.txt"]), ["/in"], tmp_path,
                                    TranscriptionOptions())
    overall = summary(tmp_path)["overall_summary"]
    assert overall["complete"] is True and overall["file_stats"]["total"] == 0
    assert overall["batch_id"] == report.batch_id and overall["skipped_not_media"] == 1
    assert store.live_batch_ids() == []  # nothing left for the refreshers
