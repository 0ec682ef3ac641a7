"""Media files as producer and worker see them: which files count, how long they last, why they fail.

`probe_duration` runs for every file a producer discovers (it orders work longest first), so WAV,
the common case, is read from its RIFF header and MP4/M4A/MOV/3GP from their box headers, in Python
with no process start (~60 ms of CPU each for ffprobe); every other format, and any of those whose
header does not add up, asks `ffprobe`. Problems become `PermanentError` / `AudioError` with a
reason a user can act on.

A truncated file (the header promises more audio than the file holds: a recorder that died, a
copy cut short) is refused, whatever its format: the producer reads a WAV's header at submit
(`probe_duration(strict=True)`); the worker compares what any file decodes to with what its header
states (`stated_duration`, `worker.audio.prepare`: WAV, MP4, MP3, FLAC and Ogg headers are read in
Python, other formats ask ffprobe). Both say `truncation(...)` + `CUT_SHORT_HINT`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from batchscribe.common.errors import AudioError, ConfigError, PermanentError

AUDIO_EXTENSIONS = frozenset({
    "wav", "wave", "mp3", "m4a", "aac", "ogg", "oga", "opus", "flac", "wma", "amr", "awb",
    "aif", "aiff", "aifc", "au", "snd", "caf", "mka", "ac3", "spx", "gsm", "mp2", "ra",
})
VIDEO_EXTENSIONS = frozenset({
    "mp4", "m4v", "mkv", "mov", "webm", "avi", "wmv", "asf", "flv", "3gp", "3g2", "mpg", "mpeg",
    "ts", "mts", "m2ts", "vob", "ogv",
})
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS

CUT_SHORT_HINT = " (still being copied? fix it and use retry-failed)"
PROBE_TIMEOUT = 30.0  # seconds; ffprobe reads headers only, so this is generous even on NFS
NO_AUDIO = "no audio stream"  # ffprobe_duration's words, also said by the MP4 box walker
HEAD_BYTES = 1 << 16  # the start of a file read once for its header (and hashed with the rest)
_STREAMING_SIZES = (0, 0xFFFFFFFF)  # data sizes written by recorders that never came back to fix them
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_PCM_TAGS = (1, 3)  # integer PCM, IEEE float
_MAGICS = (  # what a file that is not RIFF WAV really is, for ffprobe or for the error message
    (b"RF64", "RF64 WAV"), (b"BW64", "BW64 WAV"), (b"ID3", "MP3"), (b"\xff\xfb", "MP3"),
    (b"\xff\xf3", "MP3"), (b"\xff\xf2", "MP3"), (b"OggS", "Ogg"), (b"fLaC", "FLAC"),
    (b"\x1aE\xdf\xa3", "Matroska/WebM"), (b"FORM", "AIFF"), (b"#!AMR", "AMR"),
    (b"0&\xb2u\x8ef\xcf\x11", "ASF/WMA"),
)


def truncation(kind: str, stated: float, held: float) -> str:
    """How a file cut short is described, by the WAV header check and by the worker's decode check."""
    return f"truncated {kind}: header says {stated:.1f} s, file holds {held:.1f} s"


def is_media(path: str | os.PathLike[str]) -> bool:
    """Whether a discovered file is worth submitting, by extension (case-insensitive)."""
    return Path(path).suffix.lower().lstrip(".") in MEDIA_EXTENSIONS


def not_found_reason(path: str | os.PathLike[str], since: str) -> str:
    """Why a file that was listed cannot be found: a dangling symlink is not a deleted file."""
    if os.path.islink(path):
        return "broken symlink (its target does not exist)"
    return f"file not found (deleted after it was {since}?)"


def check_file(path: str | os.PathLike[str]) -> int:
    """Fail early, with a clear reason, for inputs no decoder can read; returns the size in bytes.

    Non-regular files are refused before opening them: opening a FIFO would block forever.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as exc:
        raise PermanentError(not_found_reason(p, "submitted")) from exc
    except PermissionError as exc:
        raise PermanentError("cannot read file: permission denied") from exc
    except OSError as exc:
        raise PermanentError(f"cannot read file: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise PermanentError("is a directory, not a media file")
    if not stat.S_ISREG(st.st_mode):
        raise PermanentError("not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        with p.open("rb") as fh:
            fh.read(1)
    except PermissionError as exc:
        raise PermanentError("cannot read file: permission denied") from exc
    except OSError as exc:
        raise PermanentError(f"cannot read file: {exc.strerror or exc}") from exc
    return st.st_size


@dataclass(frozen=True)
class WavInfo:
    """What a RIFF WAV header says, and how much audio the file really holds."""

    format_tag: int  # 1 PCM, 3 float, 0xFFFE extensible resolved to its sub-format
    channels: int
    sample_rate: int
    bits: int
    byte_rate: int
    data_offset: int
    data_size: int  # bytes of audio really present
    declared_size: int  # what the header claims (0 / 0xFFFFFFFF for streaming headers)
    fact_frames: int | None = None  # samples per channel, from the `fact` chunk of compressed WAVs

    @property
    def duration(self) -> float:
        return self._seconds(self.data_size)

    @property
    def exact(self) -> bool:
        """PCM sizes give the duration exactly; compressed data needs a `fact` chunk (else ask ffprobe)."""
        return self.format_tag in _PCM_TAGS or self.fact_frames is not None

    def _seconds(self, nbytes: int) -> float:
        if self.format_tag in _PCM_TAGS or not self.fact_frames or self.declared_size in _STREAMING_SIZES:
            return nbytes / self.byte_rate  # compressed without `fact`: avg bytes/s, an estimate
        return self.fact_frames / self.sample_rate * nbytes / self.declared_size

    @property
    def truncated(self) -> bool:
        return self.declared_size not in _STREAMING_SIZES and self.declared_size > self.data_size

    @property
    def declared_duration(self) -> float | None:
        """What the header says, None for a streaming header (no size written)."""
        return None if self.declared_size in _STREAMING_SIZES else self._seconds(self.declared_size)

    @property
    def warning(self) -> str | None:
        if not self.truncated:
            return None
        return truncation("WAV", self._seconds(self.declared_size), self.duration)

    def is_canonical(self, sample_rate: int = 16000) -> bool:
        """16-bit PCM mono at `sample_rate`, header only fmt + data, nothing after the data."""
        return (self.format_tag == 1 and self.channels == 1 and self.bits == 16
                and self.sample_rate == sample_rate and self.data_offset == 44 and not self.truncated
                and self.declared_size == self.data_size)


def probe_duration(path: str | os.PathLike[str], timeout: float = PROBE_TIMEOUT,
                   strict: bool = False) -> float:
    """Seconds of audio in a file: RIFF header for WAV, ffprobe for everything else.

    `strict` (the producer's choice) refuses a truncated WAV: a recording cut short is usually
    one still being copied, and transcribing half of it would hide that.
    """
    size = check_file(path)
    with Path(path).open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    return probe_duration_from_head(path, head, size, timeout, strict)


def probe_duration_from_head(path: str | os.PathLike[str], head: bytes, size: int,
                             timeout: float = PROBE_TIMEOUT, strict: bool = False) -> float:
    """`probe_duration` for a file whose first bytes the caller has already read (e.g. to hash it).

    `head` is the start of the file (the whole file if it is that short), `size` its size from
    `stat`. The caller has checked what `check_file` checks (a regular, non-empty file it could
    open). A WAV whose chunks before `data`, or an MP4 whose `moov`, do not fit in `head` is read
    again from the file (its headers only).
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        info = parse_wav_header(head, size) or read_wav_header(path, size)
        if strict and info.warning:
            raise AudioError(info.warning + CUT_SHORT_HINT)
        if info.exact:
            return info.duration
    if _is_iso_bmff(head):
        stated = iso_bmff_duration(path, head, size)
        if stated is not None:
            return stated
    if Path(path).suffix.lower() in (".wav", ".wave") and _sniff(head[:12]) is None:
        kind = _looks_like_head(head[:512]) if len(head) >= min(512, size) else _looks_like(path)
        raise AudioError(f"not a WAV file (no RIFF header): looks like {kind}")
    return ffprobe_duration(path, timeout)


# Reads `n` bytes at `offset` for a header walker (fewer at the end of the file); None when they
# are not at hand (bytes beyond what the caller has read).
_ReadAt = Callable[[int, int], "bytes | None"]


def _head_reader(head: bytes, size: int) -> _ReadAt:
    """Reads from the first bytes of a file of `size` bytes: None beyond them unless they are all of it."""
    whole = len(head) >= size

    def read_at(offset: int, n: int) -> bytes | None:
        if offset + n <= len(head) or whole:
            return head[offset:offset + n]
        return None

    return read_at


def _file_reader(fh: BinaryIO) -> _ReadAt:
    """Reads from an open file (buffered: header reads close together cost one system call)."""
    def read_at(offset: int, n: int) -> bytes:
        fh.seek(offset)
        return fh.read(n)

    return read_at


def parse_wav_header(head: bytes, size: int) -> WavInfo | None:
    """`read_wav_header` on bytes already read: None if the chunks before `data` go beyond `head`.

    Same checks and errors as `read_wav_header`; `size` is the file's size (from `stat`).
    """
    return _walk_chunks(_head_reader(head, size), size, lambda: _looks_like_head(head[:512]))


def read_wav_header(path: str | os.PathLike[str], size: int | None = None) -> WavInfo:
    """What the RIFF header of a WAV file says (see `_walk_chunks`)."""
    size = Path(path).stat().st_size if size is None else size
    with Path(path).open("rb") as fh:
        info = _walk_chunks(_file_reader(fh), size, lambda: _looks_like(path))
    assert info is not None  # a file reader always has the bytes
    return info


def _walk_chunks(read_at: _ReadAt, size: int, looks_like: Callable[[], str]) -> WavInfo | None:
    """Walk the RIFF chunks up to `data`, reading only the chunk headers, `fmt ` and `fact`
    (LIST, bext, JUNK chunks of possibly megabytes are skipped); an odd-sized chunk is followed by
    one pad byte. None when `read_at` lacks bytes it needs."""
    riff = read_at(0, 12)
    if riff is None:
        return None
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise AudioError(f"not a WAV file (no RIFF header): looks like {looks_like()}")
    pos = 12
    fmt: tuple[int, int, int, int, int] | None = None
    frames: int | None = None
    while True:
        chunk = read_at(pos, 8)
        if chunk is None:
            return None
        if len(chunk) < 8:
            raise AudioError("truncated WAV: the file ends before its audio data starts")
        chunk_id, chunk_size = struct.unpack("<4sI", chunk)
        pos += 8
        if chunk_id == b"data":
            break
        end = pos + chunk_size + (chunk_size & 1)
        if end > size:
            raise AudioError("truncated WAV: the file ends before its audio data starts")
        if chunk_id == b"fmt ":
            body = read_at(pos, chunk_size)
            if body is None:
                return None
            fmt = _parse_fmt(body)
        elif chunk_id == b"fact" and chunk_size >= 4:
            body = read_at(pos, 4)
            if body is None:
                return None
            frames = struct.unpack("<I", body)[0]
        pos = end
    if fmt is None:
        raise AudioError("corrupt WAV: no 'fmt ' chunk before the audio data")
    present = size - pos
    held = present if chunk_size in _STREAMING_SIZES else min(chunk_size, present)
    tag, channels, rate, byte_rate, bits = fmt
    return WavInfo(tag, channels, rate, bits, byte_rate, pos, max(held, 0), chunk_size, frames)


def _parse_fmt(body: bytes) -> tuple[int, int, int, int, int]:
    if len(body) < 16:
        raise AudioError("corrupt WAV: 'fmt ' chunk shorter than 16 bytes")
    tag, channels, rate, byte_rate, _align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # first two bytes of the sub-format GUID
    if channels == 0 or rate == 0 or byte_rate == 0:
        raise AudioError(f"corrupt WAV: header says {channels} channel(s), {rate} Hz, {byte_rate} bytes/s")
    return tag, channels, rate, byte_rate, bits


class _NotAtHand(Exception):
    """A box lies beyond the bytes already read: walk the file itself."""


class _Unsure(Exception):
    """Boxes that do not settle the duration (a copy cut short, fragments, an odd track): ffprobe's call."""


def iso_bmff_duration(path: str | os.PathLike[str], head: bytes, size: int) -> float | None:
    """Seconds of audio an MP4/M4A/M4V/MOV/3GP states in its `moov`, as ffprobe reports its first
    audio stream; None when the boxes do not settle it (the caller asks ffprobe, which words any
    error as for every other format: a truncated copy is never guessed at).

    Reads box headers only, from `head` when `moov` and every box header lie inside it, else from
    the file (seeking over `mdat`). A file whose tracks are all video is "no audio stream", as
    ffprobe says.
    """
    try:
        try:
            return _walk_boxes(_head_reader(head, size), size)
        except _NotAtHand:
            with Path(path).open("rb") as fh:
                return _walk_boxes(_file_reader(fh), size)
    except _Unsure:
        return None


def _walk_boxes(read_at: _ReadAt, size: int) -> float:
    """Every top-level box must end inside the file (else it was cut short), then `moov`: the
    movie's timescale, and the first audio track's duration (or the movie's if it states none).

    ffmpeg numbers streams in `trak` order and types them by `hdlr`; only a `vide` track can never
    be audio (another handler may be, by its codec), so one before the first `soun` is ffprobe's call.
    """
    moov: tuple[int, int] | None = None
    for kind, start, end in _boxes(read_at, 0, size):
        if kind == b"moov" and moov is None:  # ffmpeg reads the first
            moov = (start, end)
    if moov is None:
        raise _Unsure  # a copy cut before its index (written last unless +faststart)
    movie: tuple[int, int] | None = None
    tracks: list[tuple[int, int]] = []
    for kind, start, end in _boxes(read_at, *moov):
        if kind == b"mvhd":
            movie = _timescale_duration(read_at, start, end)
        elif kind == b"trak":
            tracks.append((start, end))
        elif kind == b"mvex":
            raise _Unsure  # fragmented: the durations are in the fragments
    if movie is None or movie[0] == 0:
        raise _Unsure
    for start, end in tracks:
        handler, seconds = _track(read_at, start, end, movie[0])
        if handler == b"soun":
            if seconds:
                return seconds
            if movie[1] in _UNSTATED:
                raise _Unsure
            return movie[1] / movie[0]
        if handler != b"vide":
            raise _Unsure
    raise AudioError(NO_AUDIO)


_UNSTATED = (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)  # durations of mvhd/mdhd that say nothing


def _track(read_at: _ReadAt, start: int, end: int, movie_scale: int) -> tuple[bytes, float]:
    """A `trak`'s handler and the seconds ffmpeg gives its stream (0.0 if it states none): `mdhd`'s
    duration, cut to the length of its edit list (`elst`, in the movie's timescale), which for AAC
    leaves out the encoder's priming samples."""
    handler = b""
    media: tuple[int, int] | None = None
    edits: tuple[int, int] | None = None
    for kind, box_start, box_end in _boxes(read_at, start, end):
        if kind == b"edts":
            edits = next(((s, e) for k, s, e in _boxes(read_at, box_start, box_end) if k == b"elst"), None)
        elif kind == b"mdia":
            for sub, sub_start, sub_end in _boxes(read_at, box_start, box_end):
                if sub == b"mdhd":
                    media = _timescale_duration(read_at, sub_start, sub_end)
                elif sub == b"hdlr" and sub_end - sub_start >= 12:
                    handler = _need(read_at, sub_start + 8, 4)  # after version/flags, pre_defined
    if handler != b"soun" or media is None or media[0] == 0 or media[1] in _UNSTATED:
        return handler, 0.0
    scale, ticks = media
    listed = None if edits is None else _edit_list_ticks(read_at, *edits, scale, movie_scale)
    return handler, (ticks if listed is None else min(ticks, listed)) / scale


def _edit_list_ticks(read_at: _ReadAt, start: int, end: int, scale: int, movie_scale: int) -> int | None:
    """Length of an edit list (empty edits included) in the track's `scale`, each edit rounded as
    ffmpeg's av_rescale does; None for a list without entries (ffmpeg ignores it)."""
    version, count = struct.unpack(">B3xI", _need(read_at, start, 8))
    entry = 20 if version == 1 else 12  # duration, media time (64- or 32-bit), rate
    if version > 1 or 8 + count * entry > end - start:
        raise _Unsure
    if count == 0:
        return None
    table = _need(read_at, start + 8, count * entry)
    fmt = ">Q" if version == 1 else ">I"
    ticks: int = sum((struct.unpack_from(fmt, table, i * entry)[0] * scale + movie_scale // 2) // movie_scale
                     for i in range(count))
    return ticks


def _timescale_duration(read_at: _ReadAt, start: int, end: int) -> tuple[int, int]:
    """(timescale, duration) of an `mvhd` or `mdhd`: 32-bit times in version 0, 64-bit in version 1."""
    body = _need(read_at, start, min(32, end - start))
    if body[:1] == b"\x01" and len(body) >= 32:
        return struct.unpack(">IQ", body[20:32])
    if body[:1] == b"\x00" and len(body) >= 20:
        return struct.unpack(">II", body[12:20])
    raise _Unsure


def _boxes(read_at: _ReadAt, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, end) of each box in [start, end), from its header alone; a box that runs
    past `end` (the file's, or its parent's) means the file was cut or is corrupt."""
    pos = start
    while pos < end:
        size, kind = struct.unpack(">I4s", _need(read_at, pos, 8))
        body = pos + 8
        if size == 1:  # 64-bit size follows
            size = struct.unpack(">Q", _need(read_at, body, 8))[0]
            body += 8
        elif size == 0:  # runs to the end (of the file: the last box)
            size = end - pos
        if size < body - pos or pos + size > end:
            raise _Unsure
        yield kind, body, pos + size
        pos += size


def _need(read_at: _ReadAt, offset: int, n: int) -> bytes:
    """`n` bytes for the box walker, which unwinds (not at hand / fewer than its boxes say) by raising."""
    data = read_at(offset, n)
    if data is None:
        raise _NotAtHand
    if len(data) < n:
        raise _Unsure
    return data


def ffprobe_duration(path: str | os.PathLike[str], timeout: float = PROBE_TIMEOUT) -> float:
    """Container duration, else the longest audio stream's; a file without audio is an AudioError."""
    out = run_tool(["ffprobe", "-v", "error", "-select_streams", "a", "-of", "json",
                    "-show_entries", "format=duration:stream=duration", media_arg(path)],
                   timeout, path)
    info = json.loads(out or "{}")
    streams = info.get("streams") or []
    if not streams:
        raise AudioError(NO_AUDIO)
    found = [info.get("format", {}).get("duration")] + [s.get("duration") for s in streams]
    durations = [float(d) for d in found if d not in (None, "", "N/A")]
    if not durations:
        raise AudioError("cannot tell the duration (ffprobe reports none)")
    return durations[0]


def stated_duration(path: str | os.PathLike[str], timeout: float = PROBE_TIMEOUT) -> float | None:
    """How long the header says the first audio stream lasts (the one the worker decodes).

    None when it does not say: a streaming WAV header, a stream without a duration of its own
    (the container's may include a longer video), or a duration ffmpeg only estimated from the
    file's size and bit rate (an MP3 without a Xing header: a cut file looks whole, a VBR one
    looks longer than it is).
    """
    with Path(path).open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return read_wav_header(path).declared_duration
    if _is_iso_bmff(head):  # its boxes say it, when they add up (else ffprobe judges a cut copy)
        stated = iso_bmff_duration(path, head, os.path.getsize(path))
        if stated is not None:
            return stated
    stated = header_duration(path, head)  # MP3 / FLAC / Ogg headers that settle it
    if stated is not None:
        return stated
    done = _run(["ffprobe", "-v", "warning", "-select_streams", "a:0", "-of", "json",
                 "-show_entries", "stream=duration", media_arg(path)], timeout, path)
    if "Estimating duration from bitrate" in done.stderr:
        return None
    streams = json.loads(done.stdout or "{}").get("streams") or [{}]
    stated = streams[0].get("duration")
    return None if stated in (None, "", "N/A") else float(stated)


def header_duration(path: str | os.PathLike[str], head: bytes) -> float | None:
    """What ffprobe reports as the first audio stream's duration, read from the headers of an MP3
    (the Xing/Info frame's count of frames, as LAME and ffmpeg write it), a FLAC (STREAMINFO's
    total samples) or an Ogg Vorbis/Opus file (the granule position of its last page); None when
    they do not settle it — an MP3 without a frame count, CRC-protected or not Layer III, a FLAC
    that does not state its length, Ogg with several streams or another codec, anything else —
    and the caller asks ffprobe. No process start: `prepare` asks this of every such input.

    Checked against ffprobe (ffmpeg 5.1) in tests/unit/test_media.py; a copy cut short states
    what its header promised, so `check_whole` still refuses it.
    """
    try:
        if head[:4] == b"OggS":
            return _ogg_duration(Path(path), head)
        offset = _id3v2_size(head)
        if offset + 64 > len(head):  # a long ID3v2 tag (cover art): its end is past the head
            with Path(path).open("rb") as fh:
                fh.seek(offset)
                head, offset = fh.read(64), 0
        if head[offset:offset + 4] == b"fLaC":
            return _flac_duration(head[offset + 4:])
        return _mp3_duration(head[offset:])
    except (struct.error, IndexError, OSError):
        return None


_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version


def _id3v2_size(head: bytes) -> int:
    """Bytes of the ID3v2 tag at the start of an MP3 or FLAC (0 when there is none)."""
    if head[:3] != b"ID3" or len(head) < 10:
        return 0
    size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
    return 10 + size + (10 if head[5] & 0x10 else 0)  # a footer repeats the header


def _mp3_duration(frame: bytes) -> float | None:
    """frames × samples per frame / rate from the Xing/Info tag of the first frame (`frame`)."""
    if len(frame) < 4 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
        return None
    version, layer, unprotected = (frame[1] >> 3) & 3, (frame[1] >> 1) & 3, frame[1] & 1
    rate_index, mono = (frame[2] >> 2) & 3, frame[3] >> 6 == 3
    if version == 1 or layer != 1 or rate_index == 3 or not unprotected:
        return None
    side_info = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    tag = 4 + side_info
    if frame[tag:tag + 4] not in (b"Xing", b"Info"):
        return None
    flags, frames = (int(x) for x in struct.unpack(">II", frame[tag + 4:tag + 12]))
    if not flags & 1 or not frames:
        return None
    samples_per_frame = 1152 if version == 3 else 576
    return frames * samples_per_frame / _MP3_RATES[version][rate_index]


def _flac_duration(blocks: bytes) -> float | None:
    """total samples / rate from STREAMINFO, the first metadata block (0 samples: not stated)."""
    if blocks[0] & 0x7F != 0 or int.from_bytes(blocks[1:4], "big") != 34:
        return None
    packed = int.from_bytes(blocks[14:22], "big")  # rate 20 bits, channels 3, depth 5, samples 36
    rate, total = packed >> 44, packed & ((1 << 36) - 1)
    return total / rate if rate and total else None


OGG_TAIL = 1 << 16  # the last page of an Ogg stream lies in its last 64 KiB (pages are ≤ 65,307 bytes)


def _ogg_duration(path: Path, head: bytes) -> float | None:
    """The granule position of the stream's end-of-stream page, which must end the file, / rate
    (ffprobe's figure: Opus's pre-skip is not taken off)."""
    segments = head[26]
    body = 27 + segments
    serial, packet = head[14:18], head[body:body + 16]
    if packet[:7] == b"\x01vorbis":
        rate = int(struct.unpack("<I", packet[12:16])[0])
    elif packet[:8] == b"OpusHead":
        rate = 48000
    else:
        return None
    after = body + sum(head[27:body])
    if head[after:after + 4] == b"OggS" and head[after + 5] & 2:  # another stream begins: ffprobe's call
        return None
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(max(0, size - OGG_TAIL))
        tail = fh.read()
    last = tail.rfind(b"OggS")
    if last < 0 or last + 27 > len(tail):
        return None
    table = last + 27 + tail[last + 26]
    whole = tail[last + 4] == 0 and tail[last + 5] & 4 and table + sum(tail[last + 27:table]) == len(tail)
    if not whole or tail[last + 14:last + 18] != serial:  # cut (no end-of-stream page at the end), chained
        return None
    granule = int(struct.unpack("<q", tail[last + 6:last + 14])[0])
    return granule / rate if granule > 0 and rate else None


def media_arg(path: str | os.PathLike[str]) -> str:
    """How ffmpeg/ffprobe are given a local file: `file:` so names like `-x.wav` or `a:b.mp3` are safe."""
    return "file:" + os.path.abspath(path)


def run_tool(cmd: Sequence[str], timeout: float, source: str | os.PathLike[str] | None = None) -> str:
    """Run ffmpeg/ffprobe on `source`; failures become AudioError with the tool's own last words."""
    return _run(cmd, timeout, source).stdout


def _run(cmd: Sequence[str], timeout: float, source: str | os.PathLike[str] | None
         ) -> subprocess.CompletedProcess[str]:
    """`run_tool`, keeping stderr (warnings) of a run that succeeded."""
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=True, text=True,
                              errors="replace", stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise ConfigError(f"{cmd[0]} not found on PATH: install ffmpeg on this machine") from exc
    except subprocess.TimeoutExpired as exc:
        raise AudioError(f"cannot decode: {cmd[0]} gave up after {timeout:.0f} s") from exc
    except subprocess.CalledProcessError as exc:
        raise AudioError(failure_reason(exc.stderr or "", source)) from exc
    return done


def failure_reason(stderr: str, source: str | os.PathLike[str] | None) -> str:
    """Say what the file is when that explains it better than ffmpeg ("Invalid argument")."""
    reason = stderr_reason(stderr, source)
    if reason == "no audio stream":
        return reason
    kind = ""
    if source is not None:
        try:
            kind = _looks_like(source)
        except OSError:
            pass
    if kind in ("text", "HTML/XML"):
        return f"not a media file: looks like {kind}"
    return f"cannot decode: {reason}"


_TAG_RE = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\]\s*")  # "[mp3 @ 0x55e2dd07d680] "
_NOISE = ("Conversion failed", "Error opening", "Error while opening", "Exiting normally")


def stderr_reason(stderr: str, source: str | os.PathLike[str] | None = None, limit: int = 200) -> str:
    """The last meaningful line of ffmpeg's stderr, without the input path, at most `limit` chars."""
    lines = [_TAG_RE.sub("", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "the decoder failed without a message"
    if any("matches no streams" in line for line in lines):
        return "no audio stream"
    line = next((ln for ln in reversed(lines) if not ln.startswith(_NOISE)), lines[-1])
    if source is not None:
        for prefix in (media_arg(source), os.fspath(source)):
            line = line.replace(prefix + ": ", "").replace(prefix, Path(source).name)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _sniff(head: bytes) -> str | None:
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    if _is_iso_bmff(head):
        return "MP4/M4A"
    return None


def _is_iso_bmff(head: bytes) -> bool:
    """MP4, M4A, M4V, MOV, 3GP... whatever the name: an ISO base media file opens with `ftyp`."""
    return head[4:8] == b"ftyp"


def _looks_like(path: str | os.PathLike[str]) -> str:
    """A short guess at what a misnamed file really is, for the error message."""
    with Path(path).open("rb") as fh:
        head = fh.read(512)
    return _looks_like_head(head)


def _looks_like_head(head: bytes) -> str:
    """`_looks_like` on the file's first 512 bytes (fewer if the file is shorter)."""
    known = _sniff(head)
    if known:
        return known
    if head[:4] == b"RIFF":
        return f"RIFF {head[8:12].decode('latin-1')!r}, not WAVE"
    if head.lstrip().startswith((b"<!DOCTYPE", b"<html", b"<HTML", b"<?xml")):
        return "HTML/XML"
    text = head[: len(head) - 3 if len(head) == 512 else None].decode("utf-8", errors="replace")
    if all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "text"
    return f"binary data starting {head[:8].hex(' ')}"
