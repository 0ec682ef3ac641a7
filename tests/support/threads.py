"""Threads in tests: callables run at the same time, and an action repeated in the background."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable


def run_concurrently(target: Callable[..., None], args: Iterable[tuple[object, ...]],
                     timeout: float = 60.0) -> None:
    """One thread per argument tuple, started together, joined (bounded by `timeout` each)."""
    threads = [threading.Thread(target=target, args=a) for a in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)


class Repeater:
    """Runs `action(tick)` every `period` seconds on a thread while in its `with` block (a fault
    injector, a sampler, a scraper). An exception does not stop it: it is kept in `errors`, for
    the test to report (a sampler that died silently would prove nothing)."""

    def __init__(self, period: float, action: Callable[[int], None]) -> None:
        self.period = period
        self.action = action
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for tick in itertools.count():
            if self._stop.wait(self.period):
                return
            try:
                self.action(tick)
            except Exception as exc:  # noqa: BLE001 - reported by the test after stop
                self.errors.append(exc)

    def __enter__(self) -> Repeater:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
