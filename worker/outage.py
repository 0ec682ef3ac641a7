"""Say when Redis fails under a loop that must outlive outages, without a line per tick."""

from __future__ import annotations

import logging
import time

from batchscribe.common.errors import StateError
from batchscribe.common.state import describe


class RedisTrouble:
    """One warning when a loop's Redis calls start failing (again only if the reason changes), one
    line when they work again. The loop itself keeps going: Redis restarts, memory gets freed."""

    def __init__(self, log: logging.Logger, loop: str) -> None:
        self.log = log
        self.loop = loop
        self._said = ""

    def failed(self, exc: StateError) -> None:
        if str(exc) != self._said:
            self._said = str(exc)
            self.log.warning("%s: %s (retrying)", self.loop, exc)

    def ok(self) -> None:
        if self._said:
            self._said = ""
            self.log.info("%s: Redis answers again", self.loop)


# Where a consumer's Celery and kombu log a Redis failure with a traceback: kombu's timers (the
# sweep that restores unacked deliveries, every few seconds), its Redis transport (refreshing
# queue bindings, every second) and Celery's start-up ("Unrecoverable error": the consumer exits
# and its supervisor restarts it with backoff).
_CELERY_LOGGERS = ("kombu.asynchronous.hub", "kombu.transport.redis", "celery.worker")


def redis_errors_in_one_line(where: str) -> None:
    """Make the consumer's Celery and kombu say Redis failures in one line (`where`: redacted URL)."""
    one_line = RedisErrorsInOneLine(where)
    for name in _CELERY_LOGGERS:
        logging.getLogger(name).addFilter(one_line)


class RedisErrorsInOneLine(logging.Filter):
    """A log record whose exception is a Redis failure (out of memory, gone, refused credentials)
    keeps its first words and gets the state boundary's words instead of the traceback; the same
    line again within `quiet` seconds is dropped (these loops retry every second or so)."""

    def __init__(self, where: str, quiet: float = 60.0) -> None:
        super().__init__()
        self.where = where
        self.quiet = quiet
        self._said: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        words = describe(record.exc_info[1] if record.exc_info else None, self.where)
        if words is None:
            return True
        what = record.getMessage().split(":", 1)[0]  # "Error in timer", "Unrecoverable error"
        line = f"{what}: {words}"
        now = time.monotonic()
        if now - self._said.get(line, -self.quiet) < self.quiet:
            return False
        self._said[line] = now
        record.msg, record.args = "%s", (line,)
        record.exc_info = record.exc_text = None
        return True
