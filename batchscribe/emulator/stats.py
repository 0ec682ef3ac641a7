"""Per-port counters that tests read to prove concurrency limits and that options reached the wire."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MAX_SESSIONS_KEPT = 1000  # per port; enough for any test, bounded for a long-running demo


@dataclass
class SessionInfo:
    """What one websocket session sent us, as the SDK put it on the wire."""

    id: int
    path: str
    query: dict[str, str]
    fault: str = "none"
    language: str = ""
    config: Any = None  # the speech.config JSON
    context: Any = None  # the last speech.context JSON
    turns: int = 0
    audio_seconds: float = 0.0
    phrases: int = 0
    outcome: str = "open"
    # Wall-clock times (time.time(), comparable across processes) of the session's phases, 0 until
    # they happen: the upgrade request admitted, speech.config, the first and the closing audio
    # frame (of the first turn), turn.end sent (of the last turn), the connection closed. They say
    # where a session's time goes beyond audio / rtf (bench/bench_schedule.py).
    started: float = field(default_factory=time.time)
    configured: float = 0.0
    first_audio: float = 0.0
    audio_ended: float = 0.0
    answered: float = 0.0
    ended: float = 0.0

    @classmethod
    def from_target(cls, session_id: int, target: str) -> SessionInfo:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        return cls(id=session_id, path=parts.path, query=query, language=query.get("language", ""))

    @property
    def detailed(self) -> bool:
        return self.query.get("format", "").lower() == "detailed"

    @property
    def diarized(self) -> bool:
        """The SDK's ConversationTranscriber asks for speaker ids in speech.context."""
        detection = self.context.get("phraseDetection") if isinstance(self.context, dict) else None
        return isinstance(detection, dict) and "speakerDiarization" in detection

    @property
    def word_timestamps(self) -> bool:
        return self.query.get("wordLevelTimestamps", "").lower() == "true"


@dataclass
class PortStats:
    """Counters of one port. `active` counts sessions from upgrade to close."""

    sessions_total: int = 0
    active: int = 0
    max_active: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    sessions: deque[SessionInfo] = field(default_factory=lambda: deque(maxlen=MAX_SESSIONS_KEPT))

    def open(self, info: SessionInfo) -> None:
        self.sessions_total += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.sessions.append(info)

    def close(self, info: SessionInfo, outcome: str) -> None:
        self.active -= 1
        info.outcome = outcome if info.outcome == "open" else info.outcome
        info.ended = time.time()

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessions_total": self.sessions_total,
            "active": self.active,
            "max_active": self.max_active,
            "refused": dict(self.refused),
            "sessions": [asdict(s) for s in self.sessions],
        }
