"""What the emulator says for a turn's audio: known text, the audio's duration, or the local engine.

Every phrase list is stretched so that its last phrase ends exactly at (or after) the end of the
audio received: otherwise the SDK opens a second turn and replays the tail.
"""

from __future__ import annotations

import asyncio
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from batchscribe.common.phrases import lexical
from batchscribe.emulator.protocol import SAMPLE_RATE, AudioTurn

TRANSCRIBE_MODES = ("duration", "fixed", "local")
NBEST_ALTERNATIVES = 3
DEFAULT_TEXT = "hello from the batchscribe emulator"


def duration_text(seconds: float) -> str:
    """The text of `duration` mode: lets a test tell which file arrived (the SDK never sends names)."""
    return f"duration {seconds:.2f} seconds"


class Transcriber(Protocol):
    async def phrases(self, turn: AudioTurn, language: str, since: int) -> list[dict[str, Any]]:
        """The final phrase(s) of a turn. The audio before `since` (ticks) was already
        acknowledged by word-less intermediate phrases while it arrived (emulator.session)."""
        ...


def _words(lexical: str, offset: int, duration: int) -> list[dict[str, Any]]:
    tokens = lexical.split() or [""]
    step = max(1, duration // len(tokens))
    return [{"Word": w, "Offset": offset + i * step, "Duration": step, "Confidence": 0.9}
            for i, w in enumerate(tokens)]


def text_phrase(text: str, offset: int, duration: int) -> dict[str, Any]:
    """A Success phrase in the detailed shape, NBest alternatives with decreasing confidence."""
    words = lexical(text)
    nbest = []
    for rank in range(NBEST_ALTERNATIVES):
        variant_text = text if rank == 0 else f"{text} ({rank})"
        variant_lex = words if rank == 0 else f"{words} {rank}"
        nbest.append({"Confidence": round(0.9 - 0.2 * rank, 2), "Lexical": variant_lex, "ITN": variant_lex,
                      "MaskedITN": variant_lex, "Display": variant_text,
                      "Words": _words(variant_lex, offset, duration)})
    return {"RecognitionStatus": "Success", "Offset": offset, "Duration": duration,
            "DisplayText": text, "NBest": nbest}


def shape_for_wire(phrases: list[dict[str, Any]], end_ticks: int, detailed: bool,
                   word_timestamps: bool) -> list[dict[str, Any]]:
    """Stretch the last phrase to the end of the audio and drop what the client did not ask for."""
    if not phrases:
        phrases = [{"RecognitionStatus": "NoMatch", "Offset": 0, "Duration": end_ticks}]
    last = phrases[-1]
    last["Duration"] = max(int(last.get("Duration", 0)), end_ticks - int(last.get("Offset", 0)))
    for phrase in phrases:
        if not detailed:
            phrase.pop("NBest", None)
        elif not word_timestamps:
            for alt in phrase.get("NBest", []):
                alt.pop("Words", None)
    return phrases


class FixedTranscriber:
    """`--text` once per turn, in the final phrase (covering the audio not yet acknowledged)."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def phrases(self, turn: AudioTurn, language: str, since: int) -> list[dict[str, Any]]:
        return [text_phrase(self.text, since, turn.ticks - since)]


class DurationTranscriber:
    """`duration X.XX seconds` of the whole turn, once, in the final phrase (so the transcript of a
    file is exactly that text, however many word-less phrases acknowledged its audio before)."""

    async def phrases(self, turn: AudioTurn, language: str, since: int) -> list[dict[str, Any]]:
        return [text_phrase(duration_text(turn.seconds), since, turn.ticks - since)]


# What the `local` mode calls: (16 kHz mono WAV of the turn, its seconds, language, n-best) ->
# phrases in the Speech service's detailed shape. The CLI passes the worker's local engine in, so
# the emulator itself depends on no engine.
Recognize = Callable[[Path, float, str, int], list[dict[str, Any]]]


class LocalTranscriber:
    """Real text from a `Recognize` function (the local engine), run in a thread (it blocks).

    The whole turn is transcribed once, when its audio is complete: the phrases keep the engine's
    own times from the start of the turn, even where they overlap audio that was already
    acknowledged by the word-less intermediate phrases (the SDK passes them through unchanged).
    """

    def __init__(self, recognize: Recognize) -> None:
        self._recognize = recognize

    def _transcribe(self, pcm: bytes, seconds: float, language: str) -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="bs-emulator-") as folder:
            path = Path(folder) / "turn.wav"
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(SAMPLE_RATE)
                out.writeframes(pcm)
            return list(self._recognize(path, seconds, language or "en-US", NBEST_ALTERNATIVES))

    async def phrases(self, turn: AudioTurn, language: str, since: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._transcribe, bytes(turn.pcm), turn.seconds, language)


def make_transcriber(mode: str, text: str, recognize: Recognize | None = None) -> Transcriber:
    if mode == "fixed":
        return FixedTranscriber(text)
    if mode == "duration":
        return DurationTranscriber()
    if mode == "local":
        if recognize is None:
            raise ValueError("transcribe mode 'local' needs a recognizer (batchscribe emulator passes the "
                             "local engine in)")
        return LocalTranscriber(recognize)
    raise ValueError(f"unknown transcribe mode {mode!r}; known: {', '.join(TRANSCRIBE_MODES)}")
