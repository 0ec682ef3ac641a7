"""One websocket session with the SDK: collect audio per turn, answer at the configured speed.

Answer timing: the final phrase is sent at max(end of upload, first audio + audio seconds / rtf),
like a container that decodes while it receives. While waiting, a hypothesis goes out about once
a second so clients see progress, as they would from a real container.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from emulator.faults import FaultMode
from emulator.protocol import (
    BYTES_PER_SECOND,
    AudioTurn,
    Frame,
    build_text,
    new_service_tag,
    parse_binary,
    parse_text,
)
from emulator.stats import SessionInfo
from emulator.transcribers import Transcriber, shape_for_wire

log = logging.getLogger(__name__)
HYPOTHESIS_INTERVAL = 1.0  # seconds of wall time between hypotheses


@dataclass
class _Turn:
    audio: AudioTurn
    started: float
    ended: asyncio.Event = field(default_factory=asyncio.Event)


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
        self.info.audio_seconds += (len(turn.audio.pcm) - before) / BYTES_PER_SECOND
        if self.fault is FaultMode.CLOSE1011 and turn.audio.pcm:
            await self.ws.close(1011, "injected fault: internal error")
            return True
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
            await self._wait_until_decoded(turn)
            for phrase in await self._phrases(turn):
                await self._send("speech.phrase", rid, phrase)
                self.info.phrases += 1
            await self._send("turn.end", rid, {})
        except ConnectionClosed:
            pass
        except Exception:  # a bug here must show, not hang the client silently
            log.exception("emulator: answering turn %s failed", rid)
            await self.ws.close(1011, "emulator error")

    async def _wait_until_decoded(self, turn: _Turn) -> None:
        """Sleep until the upload ended and the audio is 'decoded' at rtf; hypotheses meanwhile."""
        last_sent = 0.0
        while True:
            now = self.loop.time()
            heard = turn.audio.seconds
            decoded = heard if self.rtf <= 0 else min(heard, (now - turn.started) * self.rtf)
            if turn.ended.is_set() and decoded >= heard:
                return
            if decoded - last_sent >= 1.0:
                last_sent = decoded
                await self._send("speech.hypothesis", turn.audio.request_id,
                                 {"Text": "decoding", "Offset": 0, "Duration": int(decoded * 10_000_000)})
            if turn.ended.is_set():
                due = turn.started + heard / self.rtf
                await asyncio.sleep(max(0.0, min(HYPOTHESIS_INTERVAL, due - now)))
                continue
            try:
                await asyncio.wait_for(turn.ended.wait(), timeout=HYPOTHESIS_INTERVAL)
            except asyncio.TimeoutError:
                pass

    async def _phrases(self, turn: _Turn) -> list[dict[str, Any]]:
        if self.fault is FaultMode.ERROR:
            return [{"RecognitionStatus": "Error", "Offset": 0, "Duration": turn.audio.ticks,
                     "DisplayText": ""}]
        phrases = await self.transcriber.phrases(turn.audio, self.info.language)
        candidates = [c for c in self.info.query.get("lidEnabled", "").split(",") if c]
        for phrase in phrases:  # language identification: the first candidate always "wins"
            if candidates:
                phrase["PrimaryLanguage"] = {"Language": candidates[0], "Confidence": "High"}
            if self.info.diarized:
                phrase["SpeakerId"] = "Guest-1"
        return shape_for_wire(phrases, turn.audio.ticks, self.info.detailed, self.info.word_timestamps)
