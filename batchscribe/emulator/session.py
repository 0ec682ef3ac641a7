"""One websocket session with the SDK: collect audio per turn, answer at the configured speed.

Answer timing, like a container that recognises while it receives: audio [a, b) of a turn is
"decoded" at max(its arrival, first audio + b / rtf). Every SEGMENT_SECONDS of decoded audio is
acknowledged at once by a word-less phrase (NoMatch), and a hypothesis goes out about once a
second in between; the final phrase (the transcriber's text) follows when the upload has ended and
all of it is decoded, i.e. at max(end of upload, first audio + audio seconds / rtf). Without the
intermediate phrases the SDK stops sending after ~30 s of unacknowledged audio and cancels with
ServiceTimeout ("client buffer exceeded maximum size").
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from batchscribe.emulator.faults import FaultMode
from batchscribe.emulator.protocol import (
    BYTES_PER_MS,
    BYTES_PER_SECOND,
    AudioTurn,
    Frame,
    build_text,
    new_service_tag,
    parse_binary,
    parse_text,
)
from batchscribe.emulator.stats import SessionInfo
from batchscribe.emulator.transcribers import Transcriber, shape_for_wire

log = logging.getLogger(__name__)
HYPOTHESIS_INTERVAL = 1.0  # seconds of wall time between hypotheses
SEGMENT_SECONDS = 5.0  # audio acknowledged by one intermediate phrase (the SDK holds ~30 s unanswered)
SEGMENT_BYTES = int(SEGMENT_SECONDS * BYTES_PER_SECOND)
INTERIM_STATUS = "NoMatch"  # intermediate phrases carry no words: ResultReason.NoMatch in the SDK
HYPOTHESIS_TEXT = "decoding"


@dataclass
class _Turn:
    audio: AudioTurn
    started: float
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # audio arrived (or ended)


class Session:
    """Serves one connection; `fault` was drawn when the upgrade was accepted."""

    def __init__(self, ws: ServerConnection, info: SessionInfo, transcriber: Transcriber,
                 rtf: float, fault: FaultMode) -> None:
        self.ws = ws
        self.info = info
        self.transcriber = transcriber
        self.rtf = rtf
        self.fault = fault
        self.turns: dict[str, _Turn] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()

    async def run(self) -> str:
        """Serve until the client closes; returns the outcome recorded in the stats."""
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    self._on_text(parse_text(message))
                elif await self._on_audio(parse_binary(message)):
                    return "closed-1011"
        except ConnectionClosed:
            pass
        finally:
            for task in self.tasks:
                task.cancel()
        return "stalled" if self.fault is FaultMode.STALL else "done"

    def _on_text(self, frame: Frame) -> None:
        if frame.path == "speech.config":
            self.info.configured = self.info.configured or time.time()
            self.info.config = frame.json()
        elif frame.path == "speech.context":
            self.info.context = frame.json()

    async def _on_audio(self, frame: Frame) -> bool:
        """Handle one audio frame; True when the session was closed by an injected fault."""
        if frame.path != "audio":
            return False
        rid = frame.request_id
        turn = self.turns.get(rid)
        if turn is None:
            turn = self._start_turn(rid)
        before = len(turn.audio.pcm)
        turn.audio.add(frame)
        if not self.info.first_audio:
            self.info.first_audio = time.time()
        if turn.audio.ended and not self.info.audio_ended:
            self.info.audio_ended = time.time()
        self.info.audio_seconds += (len(turn.audio.pcm) - before) / BYTES_PER_SECOND
        if self.fault is FaultMode.CLOSE1011 and turn.audio.pcm:
            await self.ws.close(1011, "injected fault: internal error")
            return True
        turn.changed.set()
        if turn.audio.ended:
            turn.ended.set()
        return False

    def _start_turn(self, rid: str) -> _Turn:
        turn = _Turn(audio=AudioTurn(request_id=rid, context=self.info.context), started=self.loop.time())
        self.turns[rid] = turn
        self.info.turns += 1
        if self.fault is not FaultMode.STALL:
            task = asyncio.create_task(self._answer(turn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return turn

    async def _send(self, path: str, rid: str, body: dict[str, Any]) -> None:
        await self.ws.send(build_text(path, rid, body))

    async def _answer(self, turn: _Turn) -> None:
        rid = turn.audio.request_id
        try:
            await self._send("turn.start", rid, {"context": {"serviceTag": new_service_tag()}})
            acked = await self._acknowledge_while_receiving(turn)
            for phrase in await self._phrases(turn, acked):
                await self._send("speech.phrase", rid, phrase)
                self.info.phrases += 1
            await self._send("turn.end", rid, {})
            self.info.answered = time.time()
        except ConnectionClosed:
            pass
        except Exception:  # a bug here must show, not hang the client silently
            log.exception("emulator: answering turn %s failed", rid)
            await self.ws.close(1011, "emulator error")

    def _decoded_bytes(self, turn: _Turn, now: float) -> int:
        """PCM bytes 'decoded' by now: the audio received, and at rtf > 0 at most (now − start) × rtf
        seconds of it. Whole milliseconds only: the SDK counts acknowledged audio in ms."""
        decoded = len(turn.audio.pcm)
        if self.rtf > 0:
            decoded = min(decoded, int((now - turn.started) * self.rtf * BYTES_PER_SECOND))
        return decoded - decoded % BYTES_PER_MS

    async def _acknowledge_while_receiving(self, turn: _Turn) -> int:
        """Acknowledge audio as it is decoded, like a container that recognises while receiving.

        Every SEGMENT_SECONDS of decoded audio goes out as a word-less phrase (NoMatch) covering
        exactly [last acknowledged, decoded): the SDK counts it as recognised, frees its buffer
        (it stops sending after ~30 s of unacknowledged audio) and raises `recognized` with
        ResultReason.NoMatch, which the azure engine takes as progress, not text. A hypothesis
        goes out at most every HYPOTHESIS_INTERVAL seconds in between. Returns the PCM bytes
        acknowledged when the upload has ended and all of it is decoded (the final phrase
        covers the rest). The `error` fault answers with its Error phrase at the first segment.
        """
        rid = turn.audio.request_id
        acked = hypothesised = 0
        last_hypothesis = self.loop.time()
        while True:
            turn.changed.clear()
            now = self.loop.time()
            heard = len(turn.audio.pcm)
            heard -= heard % BYTES_PER_MS  # what can be decoded, in whole ms
            decoded = self._decoded_bytes(turn, now)
            ended = turn.ended.is_set()
            if ended and decoded >= heard:
                return acked
            if decoded - acked >= SEGMENT_BYTES:
                if self.fault is FaultMode.ERROR:
                    return acked
                start, end = turn.audio.ticks_at(acked), turn.audio.ticks_at(decoded)
                await self._send("speech.phrase", rid, {"RecognitionStatus": INTERIM_STATUS,
                                                        "Offset": start, "Duration": end - start})
                self.info.phrases += 1
                acked = hypothesised = decoded
                last_hypothesis = now
                continue
            if decoded > hypothesised and now - last_hypothesis >= HYPOTHESIS_INTERVAL:
                start, end = turn.audio.ticks_at(acked), turn.audio.ticks_at(decoded)
                await self._send("speech.hypothesis", rid, {"Text": HYPOTHESIS_TEXT, "Offset": start,
                                                            "Duration": end - start})
                hypothesised, last_hypothesis = decoded, now
            # Sleep until the next thing that can happen: more audio, the next segment (or the
            # end) being decoded at rtf, or the next hypothesis.
            target = min(heard, acked + SEGMENT_BYTES)
            timeout = HYPOTHESIS_INTERVAL
            if self.rtf > 0 and decoded < target:
                due = turn.started + target / BYTES_PER_SECOND / self.rtf
                timeout = min(timeout, max(0.0, due - self.loop.time()) + 1e-3)
            if ended:
                await asyncio.sleep(timeout)
                continue
            try:
                await asyncio.wait_for(turn.changed.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass

    async def _phrases(self, turn: _Turn, acked: int) -> list[dict[str, Any]]:
        """The final phrase(s): the transcriber's answer for the audio after `acked` bytes."""
        since = turn.audio.ticks_at(acked)
        if self.fault is FaultMode.ERROR:
            return [{"RecognitionStatus": "Error", "Offset": since, "Duration": turn.audio.ticks - since,
                     "DisplayText": ""}]
        phrases = await self.transcriber.phrases(turn.audio, self.info.language, since)
        candidates = [c for c in self.info.query.get("lidEnabled", "").split(",") if c]
        for phrase in phrases:  # language identification: the first candidate always "wins"
            if candidates:
                phrase["PrimaryLanguage"] = {"Language": candidates[0], "Confidence": "High"}
            if self.info.diarized:
                phrase["SpeakerId"] = "Guest-1"
        return shape_for_wire(phrases, turn.audio.ticks, self.info.detailed, self.info.word_timestamps)
