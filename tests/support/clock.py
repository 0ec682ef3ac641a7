"""A clock tests move by hand: `StateStore.connect(settings, clock=clock)` instead of sleeping."""

from __future__ import annotations

import time


class ManualClock:
    """Starts at the real time (scores and TTLs stay plausible) and moves only when told."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
