"""What the emulator says for a turn's audio: known text, the audio's duration, or the local engine.

Every phrase list is stretched so that its last phrase ends exactly at (or after) the end of the
audio received: otherwise the SDK opens a second turn and replays the tail.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import threading
import wave
from pathlib import Path
from typing import Any, Protocol

from emulator.protocol import SAMPLE_RATE, AudioTurn

TRANSCRIBE_MODES = ("duration", "fixed", "local")
NBEST_ALTERNATIVES = 3


def duration_text(seconds: float) -> str:
    """The text of `duration` mode: lets a test tell which file arrived (the SDK never sends names)."""
    return f"duration {seconds:.2f} seconds"


class Transcriber(Protocol):
    async def phrases(self, turn: AudioTurn, language: str, since: int) -> list[dict[str, Any]]:
        """The final phrase(s) of a turn. The audio before `since` (ticks) was already
        acknowledged by word-less intermediate phrases while it arrived (emulator.session)."""
        ...


def _lexical(text: str) -> str:
    return re.sub(r"[^\w\s'.-]", "", text).lower().strip()


def _words(lexical: str, offset: int, duration: int) -> list[dict[str, Any]]:
    tokens = lexical.split() or [""]
    step = max(1, duration // len(tokens))
    return [{"Word": w, "Offset": offset + i * step, "Duration": step, "Confidence": 0.9}
            for i, w in enumerate(tokens)]


def text_phrase(text: str, offset: int, duration: int) -> dict[str, Any]:
    """A Success phrase in the detailed shape, NBest alternatives with decreasing confidence."""
    lexical = _lexical(text)
    nbest = []
    for rank in range(NBEST_ALTERNATIVES):
        variant_text = text if rank == 0 else f"{text} ({rank})"
        variant_lex = lexical if rank == 0 else f"{lexical} {rank}"
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


class LocalTranscriber:
    """Real text from worker.engines.local, run in a thread (it is CPU-bound and blocking).

    The whole turn is transcribed once, when its audio is complete: the phrases keep the local
    engine's own times from the start of the turn, even where they overlap audio that was already
    acknowledged by the word-less intermediate phrases (the SDK passes them through unchanged).
    """

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()

    def _get_engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                from common.config import Endpoint
                from worker.engines.local import LocalEngine

                self._engine = LocalEngine(Endpoint(name="emulator", engine="local"))
            return self._engine

    def _transcribe(self, pcm: bytes, seconds: float, language: str) -> list[dict[str, Any]]:
        from common.models import TranscriptionOptions
        from worker.engines.base import PreparedAudio

        with tempfile.TemporaryDirectory(prefix="bs-emulator-") as folder:
            path = Path(folder) / "turn.wav"
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(SAMPLE_RATE)
                out.writeframes(pcm)
            options = TranscriptionOptions(language=language or "en-US", nbest=NBEST_ALTERNATIVES,
                                           word_timestamps=True)
            result = self._get_engine().transcribe(PreparedAudio(path=path, duration=seconds), options)
        return list(result.phrases)

    async def phrases(self, turn: AudioTurn, language: str, since: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._transcribe, bytes(turn.pcm), turn.seconds, language)


def make_transcriber(mode: str, text: str) -> Transcriber:
    if mode == "fixed":
        return FixedTranscriber(text)
    if mode == "duration":
        return DurationTranscriber()
    if mode == "local":
        return LocalTranscriber()
    raise ValueError(f"unknown transcribe mode {mode!r}; known: {', '.join(TRANSCRIBE_MODES)}")
