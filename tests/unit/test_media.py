"""common.media: extension filter, the RIFF and MP4 header fast paths, and the reasons bad files give."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from batchscribe.common import media
from batchscribe.common.errors import AudioError, PermanentError
from batchscribe.common.media import (
    HEAD_BYTES,
    MEDIA_EXTENSIONS,
    check_file,
    ffprobe_duration,
    header_duration,
    is_media,
    probe_duration,
    probe_duration_from_head,
    read_wav_header,
    stated_duration,
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


# ---- ISO-BMFF (MP4, M4A, MOV, 3GP) from their boxes ------------------------------------------------

VIDEO = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=3"]
SINE = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=3"]
AV = [*VIDEO, *SINE, "-c:v", "mpeg4", "-q:v", "2", "-c:a", "aac"]  # > HEAD_BYTES: mdat ends past the head
MADE = {  # name -> ffmpeg arguments before the output
    "moov-last.mp4": AV,
    "faststart.mp4": [*AV, "-movflags", "+faststart"],
    "small.mp4": [*VIDEO, *SINE, "-s", "64x48", "-c:v", "mpeg4", "-c:a", "aac"],  # all in the head
    "voice.m4a": ["-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000:duration=2.5", "-c:a", "aac"],
    "clip.mov": [*VIDEO, "-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:v", "mpeg4", "-c:a", "aac"],
    "phone.3gp": [*VIDEO, "-f", "lavfi", "-i", "sine=sample_rate=8000:duration=3", "-s", "176x144",
                  "-c:v", "mpeg4", "-c:a", "aac", "-ac", "1"],
    "late-audio.mp4": [*VIDEO, "-itsoffset", "0.5", *SINE, "-c:v", "mpeg4", "-c:a", "aac"],  # empty edit
    "video-only.mp4": [*VIDEO, "-c:v", "mpeg4"],
    "fragmented.mp4": [*AV, "-movflags", "frag_keyframe+empty_moov"],
}
GOOD = ["moov-last.mp4", "faststart.mp4", "small.mp4", "voice.m4a", "clip.mov", "phone.3gp",
        "late-audio.mp4", "misnamed.wav"]
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="needs ffmpeg and ffprobe")


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files above, made once, plus copies cut short and an MP4 named like a WAV."""
    folder = tmp_path_factory.mktemp("iso")
    for name, args in MADE.items():
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, str(folder / name)], check=True)
    shutil.copy(folder / "faststart.mp4", folder / "misnamed.wav")
    last, fast = (folder / "moov-last.mp4").read_bytes(), (folder / "faststart.mp4").read_bytes()
    moov_at = last.rindex(b"moov") - 4
    (folder / "cut-in-mdat.mp4").write_bytes(last[: moov_at // 2])
    (folder / "cut-before-moov.mp4").write_bytes(last[:moov_at])  # every box whole, the index missing
    (folder / "cut-in-moov.mp4").write_bytes(last[: moov_at + 500])
    (folder / "faststart-cut-in-mdat.mp4").write_bytes(fast[: len(fast) // 2])
    return folder


def ffprobe_audio_duration(path: Path) -> float:
    """What ffprobe says the first audio stream lasts: the oracle for the box walker."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-of", "json",
                          "-show_entries", "stream=duration", str(path)], capture_output=True, check=True)
    return float(json.loads(out.stdout)["streams"][0]["duration"])


def without_ffprobe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing on PATH: running ffprobe would raise ConfigError."""
    monkeypatch.setenv("PATH", str(tmp_path))


def outcome(probe: Callable[[Path], float], path: Path) -> float | str:
    """A duration, or the reason a file is refused."""
    try:
        return probe(path)
    except AudioError as exc:
        return exc.reason


@needs_ffmpeg
@pytest.mark.parametrize("name", GOOD)
def test_iso_bmff_duration_is_its_audio_track_s_read_without_ffprobe(
        iso: Path, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = iso / name
    expected = ffprobe_audio_duration(path)
    without_ffprobe(monkeypatch, tmp_path)
    assert probe_duration(path, strict=True) == pytest.approx(expected, abs=0.001)
    head = path.read_bytes()[:HEAD_BYTES]
    size = path.stat().st_size
    for cut in (len(head), 4096, 12):  # moov or an mdat header past the head: read from the file
        assert probe_duration_from_head(path, head[:cut], size, strict=True) == pytest.approx(expected, abs=0.001)


@needs_ffmpeg
def test_a_mov_lasts_as_long_as_its_audio_not_its_longer_video(iso: Path) -> None:
    assert ffprobe_duration(iso / "clip.mov") == pytest.approx(3.0)  # the container's length
    assert probe_duration(iso / "clip.mov") == pytest.approx(2.0, abs=0.001)


def boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each box (32-bit sizes: what ffmpeg writes for files this small)."""
    pos = 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + size]
        pos += size


def box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def as_version_1(kind: bytes, body: bytes) -> bytes:
    """The same box with its mvhd, mdhd and elst in version 1 (64-bit times)."""
    if kind in (b"moov", b"trak", b"mdia", b"edts"):
        return box(kind, b"".join(as_version_1(k, b) for k, b in boxes(body)))
    if kind in (b"mvhd", b"mdhd"):
        created, modified, scale, duration = struct.unpack(">IIII", body[4:20])
        return box(kind, b"\x01" + body[1:4] + struct.pack(">QQIQ", created, modified, scale, duration) + body[20:])
    if kind == b"elst":
        count = struct.unpack(">I", body[4:8])[0]
        edits = [struct.unpack(">IiI", body[8 + 12 * i:20 + 12 * i]) for i in range(count)]
        return box(kind, b"\x01" + body[1:8] + b"".join(struct.pack(">QqI", *edit) for edit in edits))
    return box(kind, body)


@needs_ffmpeg
@pytest.mark.parametrize("name", ["moov-last.mp4", "late-audio.mp4", "voice.m4a"])
def test_version_1_boxes_read_like_version_0(iso: Path, name: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = (iso / name).read_bytes()
    moov_at = data.rindex(b"moov") - 4  # last: rewriting it moves no sample
    kind, body = next(boxes(data[moov_at:]))
    path = write(tmp_path, "v1-" + name, data[:moov_at] + as_version_1(kind, body))
    expected = ffprobe_audio_duration(path)
    assert expected == ffprobe_audio_duration(iso / name)
    without_ffprobe(monkeypatch, tmp_path)
    assert probe_duration(path) == pytest.approx(expected, abs=0.001)


@needs_ffmpeg
def test_an_audio_track_that_states_no_duration_lasts_as_long_as_the_movie(
        iso: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray((iso / "voice.m4a").read_bytes())
    mdhd = data.index(b"mdhd") + 4
    data[mdhd + 16:mdhd + 20] = bytes(4)  # version 0: duration after version/flags, 2 times, timescale
    path = write(tmp_path, "no-track-duration.m4a", bytes(data))
    expected = ffprobe_duration(path)  # the container's (mvhd's) duration
    without_ffprobe(monkeypatch, tmp_path)
    assert probe_duration(path) == pytest.approx(expected, abs=0.001) == 2.5


@needs_ffmpeg
def test_video_only_iso_bmff_has_no_audio_stream_as_ffprobe_says(
        iso: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = iso / "video-only.mp4"
    with pytest.raises(AudioError) as probed:
        ffprobe_duration(path)
    without_ffprobe(monkeypatch, tmp_path)
    with pytest.raises(AudioError) as parsed:
        probe_duration(path, strict=True)
    assert parsed.value.reason == probed.value.reason == "no audio stream"


@needs_ffmpeg
@pytest.mark.parametrize("name", ["cut-in-mdat.mp4", "cut-before-moov.mp4", "cut-in-moov.mp4",
                                  "faststart-cut-in-mdat.mp4", "fragmented.mp4"])
def test_iso_bmff_whose_boxes_do_not_add_up_is_left_to_ffprobe(
        iso: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A box past the end of the file, no moov, fragments: never guessed at, ffprobe's words."""
    path = iso / name
    expected = outcome(ffprobe_duration, path)
    runs: list[object] = []
    run = media._run

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(args)
        return run(*args, **kwargs)

    monkeypatch.setattr(media, "_run", counted)
    assert outcome(lambda p: probe_duration(p, strict=True), path) == expected
    assert len(runs) == 1


# ---- MP3 / FLAC / Ogg durations from their headers (what the worker compares a decode with) -------

TONE = ("-f", "lavfi", "-i", "sine=frequency=440:duration=3.7")
HEADERS = {  # name -> ffmpeg output arguments; all state their length in a header
    "mpeg1-stereo.mp3": ("-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k"),
    "mpeg1-mono-vbr.mp3": ("-ar", "32000", "-ac", "1", "-c:a", "libmp3lame", "-q:a", "6"),
    "mpeg2-stereo.mp3": ("-ar", "22050", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "48k"),
    "mpeg2-mono.mp3": ("-ar", "16000", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "32k"),
    "mpeg25-mono.mp3": ("-ar", "8000", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "16k"),
    "tagged.mp3": ("-ar", "22050", "-c:a", "libmp3lame", "-metadata", "title=A title", "-metadata",
                   "artist=Someone"),
    "long-tag.mp3": ("-ar", "22050", "-c:a", "libmp3lame", "-metadata", "comment=" + "x" * 70_000),
    "s16.flac": ("-ar", "16000", "-c:a", "flac"),
    "s24-stereo.flac": ("-ar", "44100", "-ac", "2", "-sample_fmt", "s32", "-c:a", "flac"),
    "vorbis.ogg": ("-ar", "24000", "-c:a", "libvorbis"),
    "opus.opus": ("-c:a", "libopus", "-b:a", "24k"),
}
UNSETTLED = {  # headers that do not say: ffprobe's call, as before
    "no-xing.mp3": ("-ar", "44100", "-c:a", "libmp3lame", "-write_xing", "0"),
    "flac-in-ogg.oga": ("-ar", "16000", "-c:a", "flac"),
}


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("headers")
    for name, args in {**HEADERS, **UNSETTLED}.items():
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *TONE, *args, str(folder / name)], check=True)
    for name in ("mpeg1-stereo.mp3", "s16.flac", "vorbis.ogg", "opus.opus"):
        data = (folder / name).read_bytes()
        (folder / f"cut-{name}").write_bytes(data[: len(data) // 3])
    return folder


@needs_ffmpeg
@pytest.mark.parametrize("name", sorted(HEADERS))
def test_mp3_flac_and_ogg_headers_state_what_ffprobe_says(headers: Path, name: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = headers / name
    expected = ffprobe_audio_duration(path)
    assert header_duration(path, path.read_bytes()[:HEAD_BYTES]) == pytest.approx(expected, abs=0.001)
    without_ffprobe(monkeypatch, tmp_path)  # the worker's check starts no process for them
    assert stated_duration(path) == pytest.approx(expected, abs=0.001)


@needs_ffmpeg
@pytest.mark.parametrize("name", ["cut-mpeg1-stereo.mp3", "cut-s16.flac"])
def test_a_copy_cut_short_still_states_its_whole_length(headers: Path, name: str) -> None:
    """What lets `prepare` refuse it: the header promises more than the file holds, as ffprobe says."""
    path = headers / name
    whole = ffprobe_audio_duration(headers / name.removeprefix("cut-"))
    assert header_duration(path, path.read_bytes()[:HEAD_BYTES]) == pytest.approx(whole, abs=0.001)
    assert ffprobe_audio_duration(path) == pytest.approx(whole, abs=0.001)


@needs_ffmpeg
@pytest.mark.parametrize("name", [*sorted(UNSETTLED), "cut-vorbis.ogg", "cut-opus.opus"])
def test_headers_that_do_not_settle_it_are_left_to_ffprobe(headers: Path, name: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No frame count (ffmpeg would estimate from the bit rate), FLAC inside Ogg, an Ogg cut short
    (no end-of-stream page ends it): not guessed at; ffprobe runs, as before."""
    path = headers / name
    assert header_duration(path, path.read_bytes()[:HEAD_BYTES]) is None
    runs: list[object] = []
    run = media._run

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(args)
        return run(*args, **kwargs)

    monkeypatch.setattr(media, "_run", counted)
    try:
        stated_duration(path)
    except AudioError:
        pass  # ffprobe gives up on some cut Ogg files: the worker then has nothing to compare with
    assert len(runs) == 1


@pytest.mark.parametrize("data", [b"", b"ID3", b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f", b"\xff\xfb\x90",
                                  b"fLaC\x00\x00\x00\x22" + b"\x00" * 30, b"OggS" + b"\x00" * 40,
                                  bytes(range(256)) * 4])
def test_junk_headers_settle_nothing(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "junk", data)
    assert header_duration(path, data) is None
