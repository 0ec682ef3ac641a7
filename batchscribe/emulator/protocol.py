"""USP framing as the Speech SDK speaks it (see shared/speech-protocol.md).

Text frames: header lines joined by CRLF, a blank line, a JSON body. Binary frames: a 2-byte
big-endian header length, ASCII headers, then the payload. Header names are case-insensitive, so
they are kept lower-cased here.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from batchscribe.common.phrases import TICKS_PER_SECOND

SAMPLE_RATE = 16000
BYTES_PER_SAMPLE = 2
WAV_HEADER_BYTES = 44
TICKS_PER_MS = TICKS_PER_SECOND // 1000
BYTES_PER_SECOND = SAMPLE_RATE * BYTES_PER_SAMPLE
BYTES_PER_MS = BYTES_PER_SECOND // 1000


@dataclass(frozen=True)
class Frame:
    """One client frame: lower-cased headers and the body (text JSON or audio bytes)."""

    headers: dict[str, str]
    body: bytes = b""
    text: str = ""

    @property
    def path(self) -> str:
        return self.headers.get("path", "").lower()

    @property
    def request_id(self) -> str:
        return self.headers.get("x-requestid", "")

    def json(self) -> Any:
        """The JSON body, or the raw text when it is not JSON (the SDK always sends JSON)."""
        try:
            return json.loads(self.text) if self.text else None
        except ValueError:
            return self.text


def _parse_headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def parse_text(message: str) -> Frame:
    head, _, body = message.partition("\r\n\r\n")
    return Frame(headers=_parse_headers(head), text=body)


def parse_binary(message: bytes) -> Frame:
    if len(message) < 2:
        raise ValueError("binary frame shorter than its 2-byte header length")
    (size,) = struct.unpack(">H", message[:2])
    head = message[2:2 + size].decode("ascii", errors="replace")
    return Frame(headers=_parse_headers(head), body=message[2 + size:])


def build_text(path: str, request_id: str, body: dict[str, Any]) -> str:
    """A server → client text frame, headers as the real service writes them."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return (
        f"X-RequestId:{request_id}\r\nPath:{path}\r\n"
        f"Content-Type:application/json; charset=utf-8\r\nX-Timestamp:{stamp}\r\n\r\n"
        + json.dumps(body, separators=(",", ":"))
    )


@dataclass
class AudioTurn:
    """Audio received for one turn (one X-RequestId): the PCM without the WAV header."""

    request_id: str
    context: Any = None
    pcm: bytearray = field(default_factory=bytearray)
    header_seen: bool = False
    ended: bool = False

    def add(self, frame: Frame) -> None:
        """Append an audio frame; the first payload is the WAV header, an empty one ends the audio."""
        if not frame.body:
            self.ended = True
            return
        payload = frame.body
        if not self.header_seen:
            self.header_seen = True
            if payload[:4] == b"RIFF":
                payload = payload[WAV_HEADER_BYTES:]
        self.pcm.extend(payload)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / BYTES_PER_SECOND

    @property
    def ticks(self) -> int:
        """The end of the audio for the final phrase: in ticks, rounded *up* to a whole
        millisecond. The SDK counts acknowledged audio in whole milliseconds: a last phrase ending
        one tick short of that (even inside the last, partial millisecond, e.g. 48,005 samples)
        makes it open a second turn and replay the tail, which yields an extra phrase."""
        return -(-self.ticks_at(len(self.pcm)) // TICKS_PER_MS) * TICKS_PER_MS

    @staticmethod
    def ticks_at(pcm_bytes: int) -> int:
        """The time of a PCM byte position in ticks, rounded up (so phrases tile without gaps)."""
        return -(-pcm_bytes * TICKS_PER_SECOND // BYTES_PER_SECOND)


def new_service_tag() -> str:
    return uuid.uuid4().hex
