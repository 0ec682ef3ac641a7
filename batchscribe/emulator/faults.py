"""Fault injection per port: one active fault, chosen per session by rate, optionally for N sessions.

Modes (what the SDK then reports, from shared/speech-protocol.md):

    none        healthy
    refuse      TCP connection refused (the listening socket is closed) -> ConnectionFailure
    http429     HTTP 429 on the websocket upgrade                        -> TooManyRequests
    http401     HTTP 401 on the websocket upgrade                        -> AuthenticationFailure
    close1011   close code 1011 after the first audio arrives            -> ServiceError
    stall       accept everything, never answer                          -> nothing: the client's watchdog
    error       a phrase with RecognitionStatus "Error"                  -> ServiceError
    unready     GET /ready answers 503 (recognition still works)

`refuse` at rate 1 closes the listener (true refusal); at a rate below 1 the accepted TCP
connection is aborted instead, which the SDK also reports as ConnectionFailure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class FaultMode(str, Enum):
    NONE = "none"
    REFUSE = "refuse"
    HTTP429 = "http429"
    HTTP401 = "http401"
    CLOSE1011 = "close1011"
    STALL = "stall"
    ERROR = "error"
    UNREADY = "unready"

    @classmethod
    def parse(cls, text: str) -> FaultMode:
        try:
            return cls(text.strip().lower())
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown fault mode {text!r}; known modes: {known}") from None


@dataclass
class Fault:
    """The fault of one port. `count` limits how many sessions it hits (None: no limit)."""

    mode: FaultMode = FaultMode.NONE
    rate: float = 1.0
    count: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be between 0 and 1, got {self.rate}")
        if self.count is not None and self.count < 0:
            raise ValueError(f"fault count must be ≥ 0, got {self.count}")

    def draw(self, rng: random.Random) -> FaultMode:
        """Decide the fault for one new session, spending one unit of `count` when it hits."""
        if self.mode in (FaultMode.NONE, FaultMode.UNREADY) or self.count == 0:
            return FaultMode.NONE
        if self.rate < 1.0 and rng.random() >= self.rate:
            return FaultMode.NONE
        if self.count is not None:
            self.count -= 1
        return self.mode

    @property
    def closes_listener(self) -> bool:
        return self.mode is FaultMode.REFUSE and self.rate >= 1.0 and self.count is None

    def to_dict(self) -> dict[str, object]:
        return {"mode": self.mode.value, "rate": self.rate, "count": self.count}
