"""The result cache's entries on disk (common/cache.py): where they go, what the pointer says, and
that a hit gets exactly what was stored or a `CacheMiss` — never other bytes."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from pathlib import Path

import pytest

from batchscribe.common.cache import (
    STORE_FOLDER,
    CacheMiss,
    entry_location,
    keep_transcript,
    load_result,
    put_transcript,
    store_root,
)

JOB = "ab" + "0" * 62 + ".0123456789abcdef"
RESULT = {"phrases": [{"DisplayText": "hello there", "Offset": 0, "Duration": 10_000_000}],
          "duration": 1.0, "language": "en-US", "engine": "azure", "endpoint": "emu",
          "options": {"language": "en-US"}}


def test_entries_live_in_the_configured_store_or_in_the_output_folder() -> None:
    assert store_root("/mnt/cache", "/data/out") == "/mnt/cache"
    assert store_root("", "/data/out") == f"/data/out/{STORE_FOLDER}"
    assert store_root("", "az://c/out") == f"az://c/out/{STORE_FOLDER}"
    assert store_root("", "") == ""  # no batch to ask: nothing is cached
    assert entry_location("/s", JOB) == f"/s/ab/{JOB}.json.gz"
    assert entry_location("az://c/p", JOB) == f"az://c/p/ab/{JOB}.json.gz"


def test_a_stored_transcript_is_read_back_as_it_was_and_its_pointer_describes_the_bytes(tmp_path: Path) -> None:
    entry = put_transcript(str(tmp_path / "store"), JOB, RESULT)
    data = Path(entry["artifact"]).read_bytes()
    assert entry == {"artifact": entry_location(str(tmp_path / "store"), JOB), "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()}
    assert json.loads(gzip.decompress(data)) == RESULT  # zcat-able: gzip JSON
    assert load_result(entry) == RESULT
    assert put_transcript(str(tmp_path / "store"), JOB, RESULT) == entry, "the same result, the same bytes"


def test_an_entry_that_is_gone_changed_or_unreadable_is_a_miss(tmp_path: Path) -> None:
    entry = put_transcript(str(tmp_path), JOB, RESULT)
    path = Path(entry["artifact"])
    forged = gzip.compress(json.dumps({**RESULT, "phrases": []}).encode())
    path.write_bytes(forged)
    with pytest.raises(CacheMiss, match="is gone or changed"):
        load_result(entry)
    path.unlink()
    with pytest.raises(CacheMiss, match="is gone or changed"):
        load_result(entry)
    path.mkdir()  # something that cannot be read as a file
    with pytest.raises(CacheMiss, match="cannot read"):
        load_result(entry)


def test_a_conversion_s_pointer_is_its_result_and_a_pointer_to_nothing_a_miss() -> None:
    converted = {"kind": "convert", "artifact": "/out/a.mp3", "size": 3, "sha256": "x",
                 "options": {"kind": "convert", "target": "mp3"}}
    assert load_result(converted) is converted  # its copy is checked as it is copied out
    with pytest.raises(CacheMiss, match="names no stored result"):
        load_result(RESULT)  # a transcript itself (as versions before the store kept it) is no pointer


def test_an_unwritable_store_is_said_once_until_it_works_again(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file: nothing can be created under it")
    caplog.set_level(logging.DEBUG, logger="batchscribe.common.cache")
    assert keep_transcript(str(blocked), JOB, RESULT) is None
    assert keep_transcript(str(blocked), "cd" + JOB[2:], RESULT) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(blocked) in warnings[0], warnings
    blocked.unlink()
    assert keep_transcript(str(blocked), JOB, RESULT) is not None
    assert any("writable again" in r.getMessage() for r in caplog.records)
    blocked.rename(tmp_path / "moved")
    blocked.write_text("blocked again")
    caplog.clear()
    assert keep_transcript(str(blocked), JOB, RESULT) is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING], "a new outage is said again"
