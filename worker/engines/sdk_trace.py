"""The Speech SDK's own trace of one file, for support (`--log-folder`: batch-kit's
`<name>_<ext>.<worker>.sdk.log`).

batch-kit set `Speech_LogFilename` (with `SPEECH-FileLogSizeMB` 10) on each file's SpeechConfig,
which worked because it ran one recognition per process. The SDK's logging is process-wide — its
documentation: "you cannot get a separate log file for each recognizer" — and a consumer runs up to
`concurrency` recognitions on threads of one process, where that property would send every file's
trace to whichever file was named last. So each consumer process registers one callback with the
SDK's `EventLogger` (SDK 1.43+; installed only while some file asked for a log) and copies every
trace line to the log of each file being recognised in that process at that moment. With
concurrency 1 a log is exactly its file's trace; with more, it also holds the interleaved lines of
the recognitions that ran beside it (the SDK's lines carry no recognizer id to tell them apart).

The callback, once installed, stays for the life of the process: the SDK's `set_callback` holds
the lock its own callback takes while the native side waits for a callback in progress, so
removing it while recognitions log deadlocks (seen: the test hung). When no file wants a trace,
the level drops to errors instead, so the SDK sends almost nothing into Python.

A log is appended to (a retry on the same consumer adds to it), framed by our own lines (the
attempt's start and how it ended), and capped at `MAX_BYTES` of trace per file, batch-kit's 10 MB:
past the cap, trace lines are dropped and one line says so; the closing line is always written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from azure.cognitiveservices.speech.diagnostics.logging import EventLogger, LogLevel

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024  # per file, like batch-kit's SPEECH-FileLogSizeMB 10


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


class _Sink:
    """One file's log while its recognition runs."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed by SdkTrace.recording
        self.room = MAX_BYTES - self.fh.tell()
        self.capped = False

    def trace(self, line: bytes) -> None:
        if self.capped:
            return
        if len(line) <= self.room:
            self.fh.write(line)
            self.room -= len(line)
        else:
            self.capped = True
            self.ours(f"log capped at {MAX_BYTES // 2**20} MB: further trace lines of this file dropped")

    def ours(self, message: str) -> None:
        self.fh.write(f"[batchscribe] {_stamp()} {message}\n".encode("utf-8", "backslashreplace"))


class SdkTrace:
    """The process's router of SDK trace lines to per-file logs (one per process: `TRACE`)."""

    def __init__(self) -> None:
        self._sinks: list[_Sink] = []
        self._lock = threading.Lock()  # the sinks; taken inside the SDK's callback
        self._switch = threading.Lock()  # installing the callback, its level; never taken inside it
        self._installed = False

    def _line(self, message: str) -> None:
        """The SDK's callback (it holds EventLogger's own lock while calling it)."""
        data = message.encode("utf-8", "backslashreplace")
        if not data.endswith(b"\n"):
            data += b"\n"
        with self._lock:
            for sink in self._sinks:
                sink.trace(data)

    @contextmanager
    def recording(self, path: Path, opening: str) -> Iterator[Callable[[str], None]]:
        """Copy the SDK's trace into `path` while the block runs, after `opening` (our first line);
        the block gets a function that adds our last line (how the attempt ended). A log
        that cannot be written is not worth failing the file for: one line in the worker log, and
        the file goes on untraced."""
        try:
            sink = _Sink(path)
        except OSError as exc:
            log.warning("cannot write the Speech SDK log %s: %s", path, exc)
            yield lambda _message: None
            return
        closing: list[str] = []
        with sink.fh:
            sink.ours(opening)
            self._attach(sink)
            try:
                yield closing.append
            finally:
                self._detach(sink)
                for message in closing:  # after the last trace line of this attempt
                    sink.ours(message)

    def _attach(self, sink: _Sink) -> None:
        with self._switch:
            with self._lock:
                self._sinks.append(sink)
                first = len(self._sinks) == 1
            if not self._installed:
                EventLogger.set_callback(self._line)
                self._installed = True
            if first:
                EventLogger.set_level(LogLevel.Verbose)

    def _detach(self, sink: _Sink) -> None:
        with self._switch:
            with self._lock:
                self._sinks.remove(sink)
                idle = not self._sinks
            if idle:  # nobody wants the trace: the SDK sends only errors into Python
                EventLogger.set_level(LogLevel.Error)


TRACE = SdkTrace()
