"""One conversion: ffmpeg turns a local input into the target format, in the delivery's scratch folder.

The arguments come from `common.conversion.ffmpeg_args` (users choose options, never arguments).
What can go wrong, by class (design.md §Error classes):

* the input is corrupt, unsupported, has no audio stream, or decodes to well under what its header
  states (cut short) → `AudioError` (permanent) with ffmpeg's reason;
* the disk is full or an I/O error hits while writing, ffmpeg hangs (a stalled network mount) →
  `TransientError`: retried with backoff, elsewhere if need be;
* the consumer is told to stop → ffmpeg is killed and `EngineStopped` hands the file back.

ffmpeg can exit 0 after failing to write its output ("Error writing trailer … No space left on
device"), so its stderr is read after every run, not only after a failure.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from batchscribe.common.conversion import ConversionOptions, ffmpeg_args
from batchscribe.common.errors import AudioError, ConfigError, TransientError
from batchscribe.common.media import check_file, failure_reason, media_arg
from batchscribe.worker.audio import check_whole, ffmpeg_timeout, stated_seconds
from batchscribe.worker.engines.base import EngineStopped

POLL = 0.2  # seconds between looks at the stop event while ffmpeg runs
_WRITE_FAILURES = ("No space left on device", "Input/output error", "Disk quota exceeded",
                   "Error writing trailer", "Read-only file system")
_GLOBAL = ("ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y")


@dataclass(frozen=True)
class Converted:
    """The output of one conversion, ready to be copied to each input's output."""

    path: Path
    duration: float  # seconds of audio written
    size: int
    sha256: str


def convert(source: Path, options: ConversionOptions, workdir: Path,
            stop: threading.Event | None = None) -> Converted:
    """Convert `source` into ``workdir/output.EXT`` (see the module docstring for the errors)."""
    size = check_file(source)
    out = workdir / f"output.{options.spec.extension}"
    workdir.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    written = _run(list(_GLOBAL) + ffmpeg_args(options, media_arg(source), media_arg(out)),
                   ffmpeg_timeout(size), source, stop or threading.Event())
    if written <= 0 or not out.is_file() or out.stat().st_size == 0:
        raise AudioError("no audio: the file decodes to zero samples")
    check_whole(source, stated_seconds(source), written)
    return Converted(out, written, out.stat().st_size, _sha256(out))


def _run(cmd: list[str], timeout: float, source: Path, stop: threading.Event) -> float:
    """Run ffmpeg; returns the seconds of audio it reports written (`-progress`). Its output is read
    through pipes, not files: on a full disk, files would lose the very words that say so."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace")
    except FileNotFoundError as exc:
        raise ConfigError("ffmpeg not found on PATH: install ffmpeg on this machine") from exc
    finished = threading.Event()
    watcher = threading.Thread(target=_kill_on_stop, args=(proc, stop, finished), daemon=True)
    watcher.start()
    try:
        progress, stderr = proc.communicate(timeout=timeout)  # returns as soon as ffmpeg exits
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TransientError(f"ffmpeg made no end after {timeout:.0f} s (a stalled disk or network "
                             "mount?)") from None
    finally:
        finished.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if stop.is_set() and proc.returncode != 0:
        raise EngineStopped("the consumer is stopping")
    failed_write = next((line for line in stderr.splitlines() if any(w in line for w in _WRITE_FAILURES)), "")
    if failed_write:
        raise TransientError(f"cannot write the converted file: {failed_write.strip()[-200:]}")
    if proc.returncode != 0:
        raise AudioError(failure_reason(stderr, source))
    return _written_seconds(progress)


def _kill_on_stop(proc: subprocess.Popen[str], stop: threading.Event, finished: threading.Event) -> None:
    """Kill ffmpeg when the consumer is told to stop (a planned stop hands the file back)."""
    while not finished.wait(POLL):
        if stop.is_set():
            proc.kill()
            return


def _written_seconds(progress: str) -> float:
    """The last ``out_time_us=`` of ffmpeg's `-progress` report, in seconds (0 if none)."""
    for line in reversed(progress.splitlines()):
        key, _, value = line.partition("=")
        if key == "out_time_us" and value.strip().lstrip("-").isdigit():
            return max(0, int(value)) / 1e6
    return 0.0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
