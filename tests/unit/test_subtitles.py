"""`--srt` / `--vtt`: subtitles read back by well-kept parsers (`srt` and `webvtt-py` from PyPI), plus
the spec's exact timestamp shapes, which those parsers accept more loosely than players do."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import srt as srt_lib
import webvtt

from batchscribe.common.models import FileRecord
from batchscribe.common.output import output_path, success_document, write_document
from batchscribe.common.phrases import ticks
from batchscribe.common.subtitles import MAX_CUE_CHARS, MAX_CUE_SECONDS, srt, vtt

SRT_TIME = r"\d{2,}:[0-5]\d:[0-5]\d,\d{3}"
VTT_TIME = r"\d{2,}:[0-5]\d:[0-5]\d\.\d{3}"


def phrase(start: float, length: float, display: str, words: list[tuple[str, float, float]] | None = None,
           speaker: str = "") -> dict[str, Any]:
    best: dict[str, Any] = {"Confidence": 0.9, "Lexical": display.lower(), "ITN": display, "MaskedITN": display,
                            "Display": display}
    if words is not None:
        best["Words"] = [{"Word": w, "Offset": ticks(s), "Duration": ticks(d)} for w, s, d in words]
    out: dict[str, Any] = {"RecognitionStatus": "Success", "Offset": ticks(start), "Duration": ticks(length),
                           "DisplayText": display, "NBest": [best]}
    if speaker:
        out["SpeakerId"] = speaker
    return out


LONG = " ".join(f"word{i}" for i in range(40))  # 40 words over 20 s: must be split
LONG_WORDS = [(f"word{i}", 30.0 + 0.5 * i, 0.4) for i in range(40)]
PHRASES = [
    phrase(0.5, 2.0, "Hello there."),
    phrase(3.0, 20.0, LONG.replace("word3 ", "R&D <ok> --> ")),  # no word timings: split by characters
    phrase(30.0, 20.0, LONG, LONG_WORDS),  # word timings: split at words, timed by them
    phrase(49.0, 3.0, "Overlapping speaker.", speaker="Guest-2"),  # starts before the last cue ended
    phrase(3700.0, 1.5, "After an hour."),
]


def document(tmp_path: Path, phrases: list[dict[str, Any]] = PHRASES) -> tuple[FileRecord, dict[str, Any]]:
    record = FileRecord(batch_id="b", index=0, path="/in/call.wav", rel="call.wav",
                        output=str(output_path(tmp_path, "call.wav")), sha256="ab" * 32, duration=3702.0)
    result = {"phrases": phrases, "duration": 3702.0, "engine": "azure", "endpoint": "e",
              "options": {"language": "en-US", "nbest": 1, "word_timestamps": True}}
    return record, success_document(record, result)


def test_srt_is_well_formed_and_its_times_increase(tmp_path: Path) -> None:
    text = srt(document(tmp_path)[1])
    blocks = text.rstrip("\n").split("\n\n")
    for number, block in enumerate(blocks, 1):  # the spec: index, times, 1+ text lines, blank line
        lines = block.split("\n")
        assert lines[0] == str(number) and re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", lines[1]), block
        assert len(lines) >= 3 and all(line.strip() for line in lines[2:]), block
    subs = list(srt_lib.parse(text, ignore_errors=False))
    assert [s.index for s in subs] == list(range(1, len(blocks) + 1))
    for previous, sub in zip(subs, subs[1:]):
        assert sub.start >= previous.end
    assert all(s.start < s.end for s in subs)
    assert subs[-1].start.total_seconds() == 3700.0 and text.count("01:01:40,000") == 1  # hours count
    assert any(s.content.startswith("Guest-2: Overlapping") for s in subs)


def test_vtt_is_well_formed_and_its_times_increase(tmp_path: Path) -> None:
    text = vtt(document(tmp_path)[1])
    assert text.startswith("WEBVTT\n\n")
    for block in text.rstrip("\n").split("\n\n")[1:]:
        lines = block.split("\n")
        assert re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", lines[0]) and len(lines) >= 2, block
        assert "-->" not in "\n".join(lines[1:]), block  # the spec forbids it in cue text
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    for previous, caption in zip(captions, captions[1:]):
        assert caption.start_in_seconds >= previous.end_in_seconds
    assert all(c.start_in_seconds < c.end_in_seconds for c in captions)
    assert any("R&amp;D &lt;ok&gt;" in c.raw_text for c in captions)  # escaped, not markup
    assert any(c.raw_text.startswith("<v Guest-2>Overlapping") for c in captions)


def test_long_segments_are_split_into_readable_cues_timed_by_their_words(tmp_path: Path) -> None:
    subs = list(srt_lib.parse(srt(document(tmp_path)[1])))
    worded = [s for s in subs if 30.0 <= s.start.total_seconds() < 49.0]
    assert len(worded) > 1
    for sub in subs:
        assert (sub.end - sub.start).total_seconds() <= MAX_CUE_SECONDS + 0.5
        assert len(sub.content.replace("\n", " ")) <= MAX_CUE_CHARS + len("Guest-2: ")
        assert all(len(line) <= 42 for line in sub.content.split("\n") if " " in line)
    # Each cue of the worded segment starts exactly at its first word and ends at its last.
    starts = {round(s, 3) for _, s, _ in LONG_WORDS}
    ends = {round(s + d, 3) for _, s, d in LONG_WORDS}
    assert all(round(s.start.total_seconds(), 3) in starts for s in worded)
    assert all(round(s.end.total_seconds(), 3) in ends for s in worded[:-1])
    # Nothing is lost or duplicated by splitting.
    joined = " ".join(s.content.replace("\n", " ") for s in worded)
    assert joined == LONG


def test_subtitles_are_written_next_to_the_json_when_asked(tmp_path: Path) -> None:
    record, doc = document(tmp_path, PHRASES[:1])
    write_document(record, doc, ["json", "srt", "vtt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call_wav.json", "call_wav.srt", "call_wav.vtt"]
    assert (tmp_path / "call_wav.srt").read_text() == "1\n00:00:00,500 --> 00:00:02,500\nHello there.\n"
    assert (tmp_path / "call_wav.vtt").read_text() == "WEBVTT\n\n00:00:00.500 --> 00:00:02.500\nHello there.\n"


def test_a_transcript_without_speech_gives_empty_but_valid_subtitles(tmp_path: Path) -> None:
    doc = document(tmp_path, [])[1]
    assert srt(doc) == "" and list(srt_lib.parse(srt(doc))) == []
    assert webvtt.from_buffer(io.StringIO(vtt(doc))).captions == []
