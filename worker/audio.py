"""Turn any input media into what every engine accepts: 16 kHz mono 16-bit PCM.

For engines that read a file (azure), one ffmpeg call writes a canonical WAV in the workdir
(`run_ffmpeg`, also used by media conversion); the duration engines and outputs report is read back
from the WAV ffmpeg wrote, never trusted from the input's header. For an engine that takes samples
(local: `Engine.takes_samples`), `decode_in_process` decodes with PyAV (FFmpeg's libraries, in this
process) into memory instead, with the same guarantees and error words: no process start, no WAV
(docs/design.md §The audio path says why, and what it costs in isolation).

What the header states is only used to refuse a file that decodes to well under it: a truncated
MP3 or M4A (a copy still running) fails like a truncated WAV instead of giving half a transcript.
An input that already is canonical 16 kHz mono PCM skips both: it is hard-linked (or copied
across file systems) so the caller may delete the workdir without touching the input.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from batchscribe.common.errors import AudioError
from batchscribe.common.media import (
    CUT_SHORT_HINT,
    NO_AUDIO,
    check_file,
    failure_reason,
    media_arg,
    read_wav_header,
    run_tool,
    stated_duration,
    truncation,
)
from batchscribe.worker.engines.base import EngineStopped, PreparedAudio

if TYPE_CHECKING:  # PyAV and numpy come with the local engine only
    import numpy as np
    from av.audio.frame import AudioFrame
    from av.audio.resampler import AudioResampler
    from av.container import InputContainer
    from numpy.typing import NDArray

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


def prepare(path: str | os.PathLike[str], workdir: str | os.PathLike[str], in_memory: bool = False,
            stop: threading.Event | None = None) -> PreparedAudio:
    """Normalise `path` into `workdir/audio.wav`; bad input raises PermanentError/AudioError.

    `in_memory` (an engine that takes samples): a non-canonical input is decoded in this process
    into `PreparedAudio.samples` instead (`decode_in_process`; `stop` ends it between packets).
    """
    source = Path(path)
    size = check_file(source)
    canonical = _is_canonical(source)
    if in_memory and not canonical:
        return decode_in_process(source, size, stop)
    out = Path(workdir) / "audio.wav"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # it may be a hard link to an earlier input: never write through it
    stated = None
    if canonical:
        _link(source, out)
    else:
        run_ffmpeg(normalise_args(source, out), ffmpeg_timeout(size), source)
        stated = stated_seconds(source)
    info = read_wav_header(out)
    check_decoded(source, stated, info.data_size // 2)
    return PreparedAudio(path=out, duration=info.duration, sample_rate=SAMPLE_RATE)


def decode_in_process(source: Path, size: int, stop: threading.Event | None = None) -> PreparedAudio:
    """`source`'s first audio stream as 16 kHz mono float32 samples, decoded with PyAV in this process.

    The samples the local engine gets from ffmpeg's WAV (s16 from FFmpeg's resampler, / 32768), with
    ffmpeg's guarantees: video and subtitles ignored, damaged packets skipped, the truncation check,
    and a deadline as `ffmpeg_timeout` (checked between packets). Memory per slot: 2 bytes a sample
    while decoding (~115 MB for an hour), then the 4-byte samples the engine holds until its call
    ends (~230 MB for an hour); ~345 MB for a moment in between.
    """
    pcm = _decode_s16(source, ffmpeg_timeout(size), stop)
    check_decoded(source, stated_seconds(source), len(pcm) // 2)
    return PreparedAudio(path=source, duration=len(pcm) // 2 / SAMPLE_RATE, sample_rate=SAMPLE_RATE,
                         samples=pcm16_to_float(pcm))


def pcm16_to_float(pcm: bytes | bytearray) -> NDArray[np.float32]:
    """Little-endian s16 PCM as float32 in [-1, 1): faster-whisper's own scaling (/ 32768), in place."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.float32)
    samples /= 32768.0
    return samples


def _decode_s16(source: Path, timeout: float, stop: threading.Event | None) -> bytearray:
    """The first audio stream, resampled to 16 kHz mono s16, as bytes (a growing bytearray: no
    per-frame objects are kept)."""
    import av

    try:
        container = av.open(media_arg(source), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise AudioError(_pyav_reason(exc, source)) from exc
    pcm = bytearray()
    resample = _Resampler()
    with container:
        frames = _audio_frames(container, source, time.monotonic() + timeout, timeout, stop)
        for frame in itertools.chain(frames, [None]):  # None: flush the resampler
            for out in resample(frame):
                pcm += out.to_ndarray().tobytes()
    return pcm


def _audio_frames(container: InputContainer, source: Path, deadline: float, timeout: float,
                  stop: threading.Event | None) -> Iterator[AudioFrame]:
    """Decoded frames of the first audio stream; other streams are not even demuxed.

    As ffmpeg does, a packet that does not decode is skipped and a read error ends the input (what
    was cut short is then the truncation check's call); only a file of which nothing decodes fails
    with PyAV's reason.
    """
    import av

    if not container.streams.audio:
        raise AudioError(NO_AUDIO)
    packets = container.demux(container.streams.audio[0])
    error: av.error.FFmpegError | None = None
    decoded = False
    while True:
        if stop is not None and stop.is_set():
            raise EngineStopped("the consumer is stopping")
        if time.monotonic() > deadline:
            raise AudioError(f"cannot decode: the decoder gave up after {timeout:.0f} s")
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as exc:
            error = exc
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            error = exc
            continue
        decoded = decoded or bool(frames)
        yield from frames
    if not decoded and error is not None:
        raise AudioError(_pyav_reason(error, source))


class _Resampler:
    """FFmpeg's resampler to 16 kHz mono s16, set up again when the input's format, layout or rate
    changes mid-stream (as ffmpeg reconfigures its filters; PyAV's resampler would refuse the frame).
    `None` flushes what it holds."""

    def __init__(self) -> None:
        self._resampler = self._make()
        self._shape: tuple[str, str, int] | None = None

    @staticmethod
    def _make() -> AudioResampler:
        from av.audio.resampler import AudioResampler

        return AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, frame: AudioFrame | None) -> list[AudioFrame]:
        if frame is None:
            return self._resampler.resample(None)
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        held: list[AudioFrame] = []
        if self._shape not in (None, shape):
            held = self._resampler.resample(None)
            self._resampler = self._make()
        self._shape = shape
        frame.pts = None  # timestamps play no part here (faster-whisper's decode_audio does the same)
        return held + self._resampler.resample(frame)


def _pyav_reason(exc: Exception, source: Path) -> str:
    """A PyAV error worded as ffmpeg's are (`failure_reason`): its message, without the path."""
    return failure_reason(getattr(exc, "strerror", None) or str(exc), source)


def check_decoded(source: Path, stated: float | None, samples: int) -> None:
    """Refuse a decode that gave no audio, or well under what the header states (`check_whole`)."""
    if samples < 1:
        raise AudioError("no audio: the file decodes to zero samples")
    check_whole(source, stated, samples / SAMPLE_RATE)


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


def _is_canonical(source: Path) -> bool:
    """The fast path's test: a WAV that already is 16 kHz mono s16 with a plain 44-byte header."""
    if source.suffix.lower() not in (".wav", ".wave"):
        return False
    try:
        return read_wav_header(source).is_canonical(SAMPLE_RATE)
    except AudioError:
        return False  # let the decoder try, and word the error


def _link(source: Path, out: Path) -> None:
    """The canonical input itself as `out`, so the caller may delete its workdir freely."""
    try:
        os.link(source, out)
    except OSError:  # another file system, or links not supported: a copy is still cheap
        shutil.copyfile(source, out)
    log.debug("%s is already 16 kHz mono PCM: linked, not decoded", source.name)
