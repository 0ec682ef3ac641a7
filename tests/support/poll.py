"""The one way tests wait: poll a condition until it holds, with a deadline and a clear failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.1, on_timeout: Callable[[], str] | None = None) -> None:
    """Return as soon as `predicate()` is truthy; AssertionError naming `what` after `timeout` s.

    `on_timeout` adds diagnostics (the symptom) to the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f"\n{on_timeout()}" if on_timeout else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
