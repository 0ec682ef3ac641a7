"""common.media: extension filter, the RIFF header fast path, and the reasons bad files give."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from batchscribe.common.errors import AudioError, PermanentError
from batchscribe.common.media import (
    MEDIA_EXTENSIONS,
    check_file,
    is_media,
    probe_duration,
    read_wav_header,
    stderr_reason,
)


def chunk(chunk_id: bytes, body: bytes, size: int | None = None) -> bytes:
    """One RIFF chunk with its pad byte; `size` lets a test lie about the length."""
    header = struct.pack("<4sI", chunk_id, len(body) if size is None else size)
    return header + body + (b"\0" if len(body) % 2 else b"")


def fmt_body(rate: int = 16000, channels: int = 1, bits: int = 16, tag: int = 1) -> bytes:
    block = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)


def extensible_fmt(rate: int, channels: int, bits: int) -> bytes:
    pcm_guid = struct.pack("<H", 1) + bytes.fromhex("000000001000800000aa00389b71")
    return fmt_body(rate, channels, bits, tag=0xFFFE) + struct.pack("<HHI", 22, bits, 3) + pcm_guid


def wav_bytes(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["a.wav", "B.MP3", "c.m4a", "talk.mp4", "x.Ogg", "y.opus", "z.flac",
                                  "clip.webm", "v.mkv", "v.mov", "v.avi", "p.amr", "p.3gp", "w.wma"])
def test_media_extensions_are_recognised_case_insensitively(name: str) -> None:
    assert is_media(name)


@pytest.mark.parametrize("name", ["notes.txt", "out.json", "wav", "archive.wav.gz", "README"])
def test_other_files_are_not_media(name: str) -> None:
    assert not is_media(name)


def test_media_extensions_cover_audio_and_video() -> None:
    assert {"wav", "mp3", "m4a", "mp4", "ogg", "oga", "opus", "flac", "aac", "wma", "webm", "mkv",
            "mov", "avi", "amr", "3gp"} <= MEDIA_EXTENSIONS


def test_plain_pcm_wav_duration_comes_from_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "a.wav", wav_bytes(chunk(b"fmt ", fmt_body()), chunk(b"data", b"\0" * 32000)))
    assert probe_duration(path) == pytest.approx(1.0)
    assert read_wav_header(path).is_canonical()


def test_any_rate_channels_and_depth(tmp_path: Path) -> None:
    data = b"\0" * (44100 * 2 * 3 * 2)  # 2 s of 44.1 kHz stereo 24-bit
    path = write(tmp_path, "a.wav", wav_bytes(chunk(b"fmt ", fmt_body(44100, 2, 24)), chunk(b"data", data)))
    assert probe_duration(path) == pytest.approx(2.0)
    assert not read_wav_header(path).is_canonical()


def test_wave_format_extensible_is_read_as_its_subformat(tmp_path: Path) -> None:
    path = write(tmp_path, "a.wav", wav_bytes(chunk(b"fmt ", extensible_fmt(48000, 2, 16)),
                                              chunk(b"data", b"\0" * 48000 * 4)))
    info = read_wav_header(path)
    assert (info.format_tag, info.channels, info.duration) == (1, 2, pytest.approx(1.0))


def test_odd_sized_chunks_before_data_are_padded(tmp_path: Path) -> None:
    path = write(tmp_path, "a.wav", wav_bytes(chunk(b"LIST", b"INFOodd"), chunk(b"fmt ", fmt_body()),
                                              chunk(b"junk", b"x" * 3), chunk(b"data", b"\0" * 16000)))
    assert probe_duration(path) == pytest.approx(0.5)


@pytest.mark.parametrize("declared", [0, 0xFFFFFFFF])
def test_streaming_header_sizes_fall_back_to_the_file_size(tmp_path: Path, declared: int) -> None:
    path = write(tmp_path, "a.wav", wav_bytes(chunk(b"fmt ", fmt_body()),
                                              chunk(b"data", b"\0" * 64000, size=declared)))
    info = read_wav_header(path)
    assert info.duration == pytest.approx(2.0)
    assert info.warning is None


def test_truncated_wav_reports_what_it_holds_and_warns(tmp_path: Path) -> None:
    header_says = 320000  # 10 s
    path = write(tmp_path, "a.wav", wav_bytes(chunk(b"fmt ", fmt_body()),
                                              chunk(b"data", b"\0" * 67200, size=header_says)))
    assert probe_duration(path) == pytest.approx(2.1)
    assert read_wav_header(path).warning == "truncated WAV: header says 10.0 s, file holds 2.1 s"


def test_compressed_wav_uses_the_fact_chunk(tmp_path: Path) -> None:
    adpcm = fmt_body(44100, 2, 4, tag=0x11)[:8] + struct.pack("<IHH", 16000, 2048, 4)  # lying byte rate
    path = write(tmp_path, "a.wav", wav_bytes(chunk(b"fmt ", adpcm), chunk(b"fact", struct.pack("<I", 88200)),
                                              chunk(b"data", b"\0" * 45000)))
    assert probe_duration(path) == pytest.approx(2.0)


def test_header_ending_before_the_data_is_an_audio_error(tmp_path: Path) -> None:
    path = write(tmp_path, "a.wav", wav_bytes(chunk(b"fmt ", fmt_body()))[:30])
    with pytest.raises(AudioError, match="truncated WAV: the file ends before its audio data starts"):
        probe_duration(path)


def test_wav_without_fmt_chunk_is_corrupt(tmp_path: Path) -> None:
    path = write(tmp_path, "a.wav", wav_bytes(chunk(b"data", b"\0" * 100)))
    with pytest.raises(AudioError, match="no 'fmt ' chunk"):
        probe_duration(path)


@pytest.mark.parametrize(("data", "looks"), [
    (b"hello, this is not audio\n" * 10, "looks like text"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "looks like HTML/XML"),
    (b"\x00\x01\x02\x03\x04\x05\x06\x07\x08", "looks like binary data starting 00 01 02"),
    (b"RIFF\x10\x00\x00\x00AVI LIST", "looks like RIFF 'AVI ', not WAVE"),
])
def test_a_wav_that_is_not_riff_says_what_it_looks_like(tmp_path: Path, data: bytes, looks: str) -> None:
    with pytest.raises(AudioError, match=f"^not a WAV file \\(no RIFF header\\): {looks}"):
        probe_duration(write(tmp_path, "a.wav", data))


def test_missing_file_is_permanent_not_audio(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"file not found \(deleted after it was submitted\?\)") as err:
        check_file(tmp_path / "gone.wav")
    assert not isinstance(err.value, AudioError)


def test_empty_file_is_an_audio_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"^empty file \(0 bytes\)$"):
        probe_duration(write(tmp_path, "a.mp3", b""))


def test_directory_named_like_media_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.wav").mkdir()
    with pytest.raises(PermanentError, match="is a directory"):
        probe_duration(tmp_path / "x.wav")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.wav")
    with pytest.raises(PermanentError, match="not a regular file"):
        check_file(tmp_path / "x.wav")


@contextmanager
def as_user(uid: int) -> Iterator[None]:
    """Drop the effective uid for a moment (root ignores file modes, so tests run as root need it)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


def test_unreadable_file_says_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path, "a.wav", b"RIFF")
    path.chmod(0)
    with as_user(65534), pytest.raises(PermanentError, match="permission denied"):
        check_file(path)


@pytest.mark.parametrize(("stderr", "reason"), [
    ("file:/in/x.mp3: Invalid data found when processing input\n",
     "Invalid data found when processing input"),
    ("[mp3 @ 0x55e2dd07d680] Failed to read frame size\nfile:/in/x.mp3: Invalid argument\n",
     "Invalid argument"),
    ("Stream map '0:a:0' matches no streams.\nTo ignore this, add a trailing '?' to the map.\n",
     "no audio stream"),
    ("", "the decoder failed without a message"),
    ("x" * 500, "x" * 199 + "…"),
])
def test_ffmpeg_stderr_becomes_a_short_reason(stderr: str, reason: str) -> None:
    assert stderr_reason(stderr, "/in/x.mp3") == reason
