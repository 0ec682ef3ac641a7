"""SRT and WebVTT subtitles of a transcript (`--srt`, `--vtt`), from its segment and word timings.

One cue per segment (the Speech service's phrase), split when it is too long to read at once
(more than `MAX_CUE_SECONDS` or `MAX_CUE_CHARS`): at word boundaries, each part timed by its words
when the segment has word timings whose count matches the displayed words, else by its share of
the segment's characters. Cues never overlap and their times never go back: a cue starts no
earlier than the previous one ended, and lasts at least `MIN_CUE_SECONDS` (diarized phrases may
overlap in the service's output; subtitles show one line of speech at a time).

The formats, as players read them:

* SRT: ``N`` / ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` / text lines / a blank line;
* WebVTT: ``WEBVTT``, a blank line, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` / text / a blank line;
  ``&``, ``<`` and ``>`` in the text are escaped, a speaker is a voice tag ``<v Guest-1>``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_CUE_SECONDS = 7.0  # longer segments are split (a reader takes in about two lines at once)
MAX_CUE_CHARS = 84  # two lines of LINE_CHARS
LINE_CHARS = 42  # the usual subtitle line length (broadcast guidelines: 37-42)
MIN_CUE_SECONDS = 0.2


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str
    speaker: str = ""


def cues(document: dict[str, Any]) -> list[Cue]:
    """The cues of an output document (`common.output.success_document`), in time order."""
    segments = document["AudioFileResults"][0].get("SegmentResults") or []
    timed = sorted(segments, key=lambda s: float(s.get("OffsetInSeconds", 0)))
    out: list[Cue] = []
    for segment in timed:
        for cue in _segment_cues(segment):
            start = max(cue.start, out[-1].end if out else 0.0)
            out.append(Cue(start, max(cue.end, start + MIN_CUE_SECONDS), cue.text, cue.speaker))
    return out


def _segment_cues(segment: dict[str, Any]) -> Iterator[Cue]:
    best = (segment.get("NBest") or [{}])[0]
    tokens = (best.get("Display") or segment.get("DisplayText") or "").split()
    if not tokens:
        return
    start = float(segment.get("OffsetInSeconds", 0))
    length = float(segment.get("DurationInSeconds", 0))
    speaker = str(segment.get("SpeakerId") or "")
    times = _token_times(tokens, best.get("Words") or [], start, length)
    for first, last in _chunks(tokens, times):
        yield Cue(times[first][0], times[last][1], " ".join(tokens[first:last + 1]), speaker)


def _token_times(tokens: list[str], words: list[dict[str, Any]], start: float,
                 length: float) -> list[tuple[float, float]]:
    """(start, end) of each displayed token: its word's timing when the words match one to one
    (inverse text normalisation may merge or split words: "twenty five" → "25"), else its share
    of the segment by characters."""
    if len(words) == len(tokens) and all("OffsetInSeconds" in w for w in words):
        starts = [float(w["OffsetInSeconds"]) for w in words]
        return [(at, at + float(w.get("DurationInSeconds", 0))) for at, w in zip(starts, words)]
    total = sum(len(t) + 1 for t in tokens)
    times, done = [], 0
    for token in tokens:
        begin = start + length * done / total
        done += len(token) + 1
        times.append((begin, start + length * done / total))
    return times


def _chunks(tokens: list[str], times: list[tuple[float, float]]) -> Iterator[tuple[int, int]]:
    """(first, last) token index of each cue: as many tokens as fit MAX_CUE_CHARS and MAX_CUE_SECONDS
    (at least one)."""
    first, chars = 0, 0
    for i, token in enumerate(tokens):
        chars += len(token) + (1 if i > first else 0)
        too_long = chars > MAX_CUE_CHARS or times[i][1] - times[first][0] > MAX_CUE_SECONDS
        if too_long and i > first:
            yield first, i - 1
            first, chars = i, len(token)
    yield first, len(tokens) - 1


def _lines(text: str) -> list[str]:
    return textwrap.wrap(text, LINE_CHARS, break_long_words=False, break_on_hyphens=False) or [text]


def _clock(seconds: float, separator: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def srt(document: dict[str, Any]) -> str:
    blocks = []
    for number, cue in enumerate(cues(document), 1):
        text = (f"{cue.speaker}: {cue.text}" if cue.speaker else cue.text).replace("-->", "->")
        blocks.append(f"{number}\n{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}\n"
                      + "\n".join(_lines(text)) + "\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt(document: dict[str, Any]) -> str:
    blocks = ["WEBVTT\n"]
    for cue in cues(document):
        lines = [_vtt_escape(line) for line in _lines(cue.text)]
        if cue.speaker:
            lines[0] = f"<v {_vtt_escape(cue.speaker)}>{lines[0]}"
        blocks.append(f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)
