"""Turn any input media into what every engine accepts: 16 kHz mono 16-bit PCM WAV in the workdir.

One ffmpeg call does it (`run_ffmpeg`, also used by media conversion); the duration engines and
outputs report is read back from the WAV ffmpeg wrote, never trusted from the input's header.
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
from batchscribe.common.media import check_file, media_arg, read_wav_header, run_tool
from batchscribe.worker.engines.base import PreparedAudio

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# ffmpeg decodes audio at hundreds of times real time; these bounds only catch a hung decoder
# (e.g. a stalled network mount) or a pathological file, scaled to the input's size.
TIMEOUT_FLOOR = 60.0  # seconds
TIMEOUT_PER_MB = 2.0  # seconds per megabyte of input
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
    if not _link_if_canonical(source, out):
        run_ffmpeg(normalise_args(source, out), ffmpeg_timeout(size), source)
    info = read_wav_header(out)
    if info.data_size < 2:
        raise AudioError("no audio: the file decodes to zero samples")
    return PreparedAudio(path=out, duration=info.duration, sample_rate=SAMPLE_RATE)


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
