"""Processes: children that never outlive the process (thread) that started them, and an exit
that skips the interpreter's teardown."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import NoReturn


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux `preexec_fn`: the child gets `sig` when the thread that started it dies, even by SIGKILL.

    A consumer (SIGKILL) so an endpoint's new owner never runs beside an orphan; `run`'s private
    Redis (SIGTERM) so a killed `run` leaves no redis-server behind. Elsewhere a no-op.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def exit_now(code: int) -> NoReturn:
    """Exit once everything the process started is stopped and its output flushed, without tearing
    down the interpreter first: freeing every module of Celery, kombu, rich and the Speech SDK took
    0.1–0.9 s per process on 2 loaded cores (bench/bench_schedule.py), with nothing left to do —
    at the end of every `run`, and of every consumer after Celery's warm shutdown."""
    logging.shutdown()  # flush and close every handler (the worker log)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
