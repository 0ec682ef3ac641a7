"""One conversion on real ffmpeg (`worker.convert.convert`): the output and what it reports, a file
cut short refused, a planned stop ending ffmpeg at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from batchscribe.common.conversion import ConversionOptions
from batchscribe.common.errors import AudioError
from batchscribe.worker.convert import convert
from batchscribe.worker.engines.base import EngineStopped
from tests.support.media import FfmpegRuns, make_mp4, probe


def test_an_mp4_becomes_an_mp3_with_its_duration_size_and_hash(tmp_path: Path) -> None:
    source = make_mp4(tmp_path / "talk.mp4", 2.0)
    done = convert(source, ConversionOptions("mp3", "64k"), tmp_path)
    info = probe(done.path)
    assert info["codec"] == "mp3" and not info["video"] and abs(done.duration - 2.0) < 0.1
    assert done.size == done.path.stat().st_size > 0 and len(done.sha256) == 64
    again = convert(source, ConversionOptions("mp3", "64k"), tmp_path / "again")
    assert again.sha256 == done.sha256, "bit-exact: the same input and options give the same bytes"


def test_a_file_cut_short_is_refused_with_the_reason(tmp_path: Path) -> None:
    whole = make_mp4(tmp_path / "whole.mp4", 3.0, faststart=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(AudioError, match=r"truncated MP4: header says 3\.0 s, file holds"):
        convert(cut, ConversionOptions("wav"), tmp_path / "work")


def test_a_planned_stop_ends_the_conversion_and_leaves_no_output(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_mp4(tmp_path / "talk.mp4", 1.0)
    runs = FfmpegRuns(tmp_path)
    for name, value in runs.env(FFMPEG_RUNS_DELAY="30").items():  # an ffmpeg that takes long
        monkeypatch.setenv(name, value)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    with pytest.raises(EngineStopped):
        convert(source, ConversionOptions("mp3"), tmp_path / "work", stop=stop)
    assert runs.count() == 1 and not (tmp_path / "work" / "output.mp3").exists()
