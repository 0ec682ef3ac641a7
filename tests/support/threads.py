"""Run test callables at the same time and wait for all of them."""

from __future__ import annotations

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
