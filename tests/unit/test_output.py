"""Outputs follow batch-processing-kit's schema and naming; written atomically."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from batchscribe.common.models import FileRecord
from batchscribe.common.output import failure_document, output_path, success_document, write_json_atomic

PHRASE = {"RecognitionStatus": "Success", "Offset": 5_000_000, "Duration": 20_000_000,
          "DisplayText": "Hello there.",
          "NBest": [{"Confidence": 0.9, "Lexical": "hello there", "ITN": "hello there",
                     "MaskedITN": "hello there", "Display": "Hello there.",
                     "Words": [{"Word": "hello", "Offset": 5_000_000, "Duration": 8_000_000}]},
                    {"Confidence": 0.5, "Lexical": "hollow there", "ITN": "", "MaskedITN": "",
                     "Display": "Hollow there."}]}


def record(tmp_path: Path) -> FileRecord:
    return FileRecord(batch_id="b", index=0, path="/in/sub/call.wav", rel="sub/call.wav",
                      output=str(output_path(tmp_path, "sub/call.wav")), sha256="ab" * 32, duration=3.0)


def test_output_names_mirror_the_input_tree(tmp_path: Path) -> None:
    assert output_path("/out", "sub/dir/call.wav") == Path("/out/sub/dir/call_wav.json")
    assert output_path("/out", "x.tar.mp3") == Path("/out/x.tar_mp3.json")


def test_success_document_schema(tmp_path: Path) -> None:
    result = {"phrases": [PHRASE], "duration": 3.0, "engine": "local", "endpoint": "e1",
              "options": {"language": "en-US", "nbest": 1}}
    doc = success_document(record(tmp_path), result)
    entry = doc["AudioFileResults"][0]
    assert entry["TranscriptionStatus"] == "Succeeded"
    assert entry["AudioFileName"] == "call.wav" and entry["AudioFileHash"] == "ab" * 32
    assert entry["AudioLengthInSeconds"] == 3.0
    assert entry["CombinedResults"][0]["Display"] == "Hello there."
    seg = entry["SegmentResults"][0]
    assert seg["OffsetInSeconds"] == 0.5 and seg["DurationInSeconds"] == 2.0
    assert len(seg["NBest"]) == 1 and seg["Language"] == "en-US"
    assert seg["NBest"][0]["Words"][0]["OffsetInSeconds"] == 0.5
    assert entry["LastProcessedOffsetInSeconds"] == 2.5
    assert PHRASE["Offset"] == 5_000_000  # the cached result is never modified in place


def test_failure_document_carries_class_and_reason(tmp_path: Path) -> None:
    doc = failure_document(record(tmp_path), "permanent", "empty file (0 bytes)")
    entry = doc["AudioFileResults"][0]
    assert entry["TranscriptionStatus"] == "Failed"
    assert entry["ErrorClass"] == "permanent" and entry["FailureReason"] == "empty file (0 bytes)"


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "x.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_outputs_are_created_with_the_process_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"a": 1})
        os.umask(0o027)
        write_json_atomic(tmp_path / "b.json", {"b": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # mkstemp would make 0600
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def test_an_output_name_near_255_bytes_is_written(tmp_path: Path) -> None:
    target = output_path(tmp_path, "x" * 240 + ".wav")  # 249 bytes: fits, a long temp name would not
    assert target.name == "x" * 240 + "_wav.json"
    write_json_atomic(target, {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_over_long_output_names_are_cut_with_a_hash_of_the_whole_name() -> None:
    one, two = (output_path("/out", "y" * 250 + end + ".wav").name for end in ("1", "2"))
    assert one != two and len(one.encode()) == len(two.encode()) == 255
    assert re.fullmatch(r"y{230,}~[0-9a-f]{12}_wav\.json", one)
    wide = output_path("/out", "é" * 200 + ".mp3").name  # 400 bytes of stem: cut between characters
    assert len(wide.encode("utf-8")) <= 255 and wide.endswith("_mp3.json") and wide.startswith("é" * 100)


def test_a_name_that_is_not_utf8_is_written_as_valid_json_and_reads_back(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.wav")  # what os.walk gives for a Latin-1 name
    target = output_path(os.fsdecode(os.fsencode(tmp_path)), name)
    write_json_atomic(target, {"AudioFileName": name, "Display": "Grüße"})
    assert os.path.basename(os.fsencode(target)) == b"caf\xe9_wav.json"  # the input's bytes: maps back
    raw = Path(target).read_bytes()
    raw.decode("utf-8")  # valid UTF-8 for any JSON reader
    assert "Grüße" in raw.decode() and "\\udce9" in raw.decode()
    assert json.loads(raw)["AudioFileName"] == name
