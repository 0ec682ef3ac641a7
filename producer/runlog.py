"""`--log-folder DIR`: batch-processing-kit's `run.log` — every attempt on the batch's files, one
line each, and what the waiting command says (the batch submitted, its progress every 30 s, its
failures at the end).

Written by the command that follows the batch (`run`, `submit --wait`, `retry-failed --wait`): it
tails the attempt log the workers write (the Redis stream `batchscribe log` shows) and keeps its
batch's lines. One writer per file, so the rotation (batch-kit's: 50 MiB × 20 files, the standard
library's RotatingFileHandler) is safe, also on shared storage, where several processes rotating
one file would lose lines. Without `--wait` nothing writes run.log (`batchscribe log -f` shows the
same lines); each file's Speech SDK log is written by the worker that ran it, wait or not.

An attempt of a job that serves inputs of several batches (dedupe) is logged under the first of
them only. The attempt log keeps its last EVENTS_KEPT entries: a follower that could not read it for
longer than that (Redis away, the command stopped) says in run.log how many attempts it missed;
run_summary.json has every file's outcome all the same.
"""

from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

from batchscribe.common.names import printable
from batchscribe.common.state import EVENTS_KEPT, EVENTS_PER_READ, EventCursor, StateStore

RUN_LOG = "run.log"
MAX_BYTES = 50 * 1024 * 1024  # batch-kit's rotation
BACKUPS = 20
PROGRESS_EVERY = 30.0  # seconds between progress lines (batch-kit's summary period)
# batch-kit's line format (batchkit/logger.py)
FORMAT = "%(asctime)s.%(msecs)03d:%(levelname)s:%(processName)s:%(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_LEVELS = {"done": logging.INFO, "cached": logging.INFO, "error": logging.WARNING, "crash": logging.WARNING,
           "deferred": logging.INFO, "handback": logging.INFO, "yielded": logging.INFO,
           "failed": logging.ERROR}


def attempt_line(event: dict[str, str]) -> str:
    """One attempt as run.log says it: outcome, file, endpoint, attempt, seconds, class and reason."""
    parts = [event.get("outcome", ""), printable(event.get("file", "")), "on", event.get("endpoint", "")]
    if event.get("attempt"):
        parts.append(f"attempt {event['attempt']}")
    if event.get("seconds"):
        parts.append(f"{event['seconds']} s")
    if event.get("error_class"):
        parts.append(f"[{event['error_class']}] {printable(event.get('reason', ''))}")
    elif event.get("reason"):
        parts.append(printable(event["reason"]))
    return " ".join(parts)


class RunLog:
    """`DIR/run.log` for one batch being followed; `follow` copies its new attempts in."""

    def __init__(self, folder: str | Path, batch_id: str, cursor: EventCursor | None = None) -> None:
        self.batch_id = batch_id
        self.cursor = cursor or EventCursor()
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._handler = RotatingFileHandler(Path(folder) / RUN_LOG, maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                            encoding="utf-8", errors="backslashreplace")
        self._handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        self._last_progress = 0.0

    def note(self, message: str, level: int = logging.INFO, at: float | None = None,
             source: str = "batchscribe") -> None:
        """One line; `source` takes batch-kit's process-name column (the endpoint, for an attempt)."""
        record = logging.LogRecord("batchscribe", level, "", 0, message, None, None)
        record.processName = source
        if at is not None:  # the time the attempt happened, not when we read it
            record.created, record.msecs = at, int(at * 1000) % 1000
        self._handler.handle(record)

    def progress(self, line: str, now: float) -> None:
        """A progress line, at most every PROGRESS_EVERY seconds."""
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self.note(f"batch {self.batch_id}: {line}")

    def follow(self, store: StateStore) -> int:
        """Copy the batch's attempts logged since the last call; returns how many."""
        copied = 0
        while True:
            page = store.follow_events(self.cursor, self.batch_id)
            self.cursor = page.cursor
            if page.missed:
                self.missed(page.missed)
            for _event_id, event in page.events:
                level = _LEVELS.get(event.get("outcome", ""), logging.INFO)
                self.note(attempt_line(event), level, at=float(event["ts"]),
                          source=printable(event.get("endpoint", "")))
            copied += len(page.events)
            if page.read < EVENTS_PER_READ:
                return copied

    def missed(self, count: int) -> None:
        """Say that `count` attempts were trimmed from the attempt log before they were copied."""
        self.note(f"{count} attempt(s) of the cluster's log (this batch's and others') were trimmed from "
                  f"Redis before they could be copied here: the log keeps its last {EVENTS_KEPT:,}; "
                  f"run_summary.json has every file's outcome", logging.WARNING)

    def close(self) -> None:
        self._handler.close()
