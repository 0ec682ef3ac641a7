"""Turn any input media into what every engine accepts: 16 kHz mono 16-bit PCM WAV in the workdir.

One ffmpeg call does it (`run_ffmpeg`, also used by media conversion); the duration engines and
outputs report is read back from the WAV ffmpeg wrote, never trusted from the input's header. What
the header states is only used to refuse a file that decodes to well under it: a truncated MP3 or
M4A (a copy still running) fails like a truncated WAV instead of giving half a transcript.
An input that already is canonical 16 kHz mono PCM skips ffmpeg: it is hard-linked (or copied
across file systems) so the caller may delete the workdir without touching the input.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from batchscribe.common.errors import AudioError
from batchscribe.common.media import (
    CUT_SHORT_HINT,
    check_file,
    media_arg,
    read_wav_header,
    run_tool,
    stated_duration,
    truncation,
)
from batchscribe.worker.engines.base import PreparedAudio

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# ffmpeg decodes audio at hundreds of times real time; these bounds only catch a hung decoder
# (e.g. a stalled network mount) or a pathological file, scaled to the input's size.
TIMEOUT_FLOOR = 60.0  # seconds
TIMEOUT_PER_MB = 2.0  # seconds per megabyte of input
# Decoded audio this much shorter than the header states means the file was cut short (encoder
# delay and padding make whole files differ by tens of milliseconds).
SHORTFALL_SECONDS, SHORTFALL_FRACTION = 0.5, 0.02
_NORMALISE = ("-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(SAMPLE_RATE),
              "-c:a", "pcm_s16le", "-map_metadata", "-1", "-fflags", "+bitexact",
              "-flags:a", "+bitexact", "-f", "wav")


def prepare(path: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> PreparedAudio:
    """Normalise `path` into `workdir/audio.wav`; bad input raises PermanentError/AudioError."""
    source = Path(path)
    size = check_file(source)
    out = Path(workdir) / "audio.wav"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # it may be a hard link to an earlier input: never write through it
    stated = None
    if not _link_if_canonical(source, out):
        run_ffmpeg(normalise_args(source, out), ffmpeg_timeout(size), source)
        stated = stated_seconds(source)
    info = read_wav_header(out)
    if info.data_size < 2:
        raise AudioError("no audio: the file decodes to zero samples")
    check_whole(source, stated, info.duration)
    return PreparedAudio(path=out, duration=info.duration, sample_rate=SAMPLE_RATE)


def check_whole(source: Path, stated: float | None, decoded: float) -> None:
    """Refuse a file that decoded to well under what its header states: it was cut short."""
    if stated is not None and decoded < stated - max(SHORTFALL_SECONDS, SHORTFALL_FRACTION * stated):
        kind = source.suffix.lstrip(".").upper() or "file"
        raise AudioError(truncation(kind, stated, decoded) + CUT_SHORT_HINT)


def stated_seconds(source: Path) -> float | None:
    """The header's duration; None when it states none, or when only ffmpeg could read the file."""
    try:
        return stated_duration(source)
    except AudioError:
        return None


def normalise_args(source: Path, out: Path) -> list[str]:
    """ffmpeg arguments: first audio stream only (video, subtitles dropped), 16 kHz mono s16, no metadata."""
    return ["-i", media_arg(source), *_NORMALISE, media_arg(out)]


def ffmpeg_timeout(size_bytes: int) -> float:
    return TIMEOUT_FLOOR + TIMEOUT_PER_MB * size_bytes / 1_000_000


def run_ffmpeg(args: Sequence[str], timeout: float, source: str | os.PathLike[str] | None = None) -> None:
    """Run `ffmpeg <args>` (overwriting outputs, errors only); failures raise AudioError with its reason."""
    run_tool(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], timeout, source)


def _link_if_canonical(source: Path, out: Path) -> bool:
    """The fast path: a WAV that already is 16 kHz mono s16 with a plain 44-byte header."""
    if source.suffix.lower() not in (".wav", ".wave"):
        return False
    try:
        canonical = read_wav_header(source).is_canonical(SAMPLE_RATE)
    except AudioError:
        return False  # let ffmpeg try, and word the error
    if not canonical:
        return False
    try:
        os.link(source, out)
    except OSError:  # another file system, or links not supported: a copy is still cheap
        shutil.copyfile(source, out)
    log.debug("%s is already 16 kHz mono PCM: linked, not decoded", source.name)
    return True
