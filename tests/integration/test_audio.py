"""worker.audio.prepare with the real ffmpeg: every common container in, 16 kHz mono PCM out."""

from __future__ import annotations

import os
import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest

from batchscribe.common.errors import AudioError, PermanentError
from batchscribe.common.media import probe_duration, read_wav_header
from batchscribe.worker.audio import prepare, run_ffmpeg
from tests.support.speech import CODECS, synthesize, video_with_speech

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                reason="needs ffmpeg and espeak-ng")

TEXT = "Please remember to save your work."
LONG_TEXT = "Thank you for calling. Your order has been shipped and will arrive on Monday."
FORMATS = [  # name, rate, channels
    ("mono8k.wav", 8000, 1), ("stereo44k.wav", 44100, 2), ("mono48k.wav", 48000, 1),
    ("a.mp3", 22050, 1), ("a.m4a", 16000, 2), ("a.ogg", 24000, 1), ("a.opus", 48000, 1),
    ("a.flac", 16000, 1),
]
ROOT = Path(__file__).resolve().parents[2]
# Both decode paths: ffmpeg writing a WAV, PyAV in process (the local engine's, `Engine.takes_samples`).
PATHS = pytest.mark.parametrize("in_memory", [
    False, pytest.param(True, marks=pytest.mark.skipif(find_spec("av") is None, reason="needs PyAV"))],
    ids=["ffmpeg", "pyav"])


def assert_canonical(path: Path, duration: float) -> None:
    info = read_wav_header(path)
    assert info.is_canonical(16000), info
    assert info.duration == pytest.approx(duration, abs=0.1)


@pytest.mark.parametrize(("name", "rate", "channels"), FORMATS)
def test_every_format_normalises_to_16k_mono_pcm(tmp_path: Path, name: str, rate: int, channels: int) -> None:
    source = synthesize(TEXT, tmp_path / name, rate=rate, channels=channels)
    prepared = prepare(source, tmp_path / "work")
    assert prepared.path.parent == tmp_path / "work"
    assert prepared.sample_rate == 16000
    assert prepared.duration == pytest.approx(probe_duration(source), abs=0.1)
    assert_canonical(prepared.path, prepared.duration)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "samples").glob("*") if p.suffix != ".json"))
def test_shipped_samples_normalise(tmp_path: Path, name: str) -> None:
    prepared = prepare(ROOT / "samples" / name, tmp_path)
    assert 2.0 <= prepared.duration <= 8.0
    assert_canonical(prepared.path, prepared.duration)


def test_video_keeps_only_its_audio(tmp_path: Path) -> None:
    video = video_with_speech(TEXT, tmp_path / "talk.mp4")
    prepared = prepare(video, tmp_path / "work")
    assert_canonical(prepared.path, prepared.duration)
    assert prepared.duration > 1.0


@PATHS
def test_video_without_audio_stream(tmp_path: Path, in_memory: bool) -> None:
    video = video_with_speech(TEXT, tmp_path / "silent.mp4", audio=False)
    with pytest.raises(AudioError, match="^no audio stream$"):
        prepare(video, tmp_path / "work", in_memory)


def test_canonical_wav_is_linked_not_decoded(tmp_path: Path) -> None:
    source = synthesize(TEXT, tmp_path / "ready.wav", rate=16000)
    prepared = prepare(source, tmp_path / "work")
    assert os.path.samefile(prepared.path, source), "a canonical WAV on the same file system is hard-linked"
    assert source.stat().st_nlink == 2
    prepared.path.unlink()  # the caller's cleanup of its workdir leaves the input alone
    assert source.exists()


def test_reusing_a_workdir_never_writes_through_a_link_to_an_input(tmp_path: Path) -> None:
    ready = synthesize(TEXT, tmp_path / "ready.wav", rate=16000)
    original = ready.read_bytes()
    prepare(ready, tmp_path / "work")
    prepare(synthesize(TEXT, tmp_path / "other.mp3"), tmp_path / "work")  # ffmpeg writes audio.wav
    assert ready.read_bytes() == original


def test_truncated_wav_is_refused_like_any_file_cut_short(tmp_path: Path) -> None:
    source = synthesize(TEXT, tmp_path / "full.wav", rate=16000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(source.read_bytes()[: 44 + 32000])  # header still promises the whole file
    with pytest.raises(AudioError, match=r"^truncated WAV: header says 2\.\d s, file holds 1\.0 s \(still"):
        prepare(cut, tmp_path / "work")


@pytest.mark.parametrize(("name", "codec", "kind"), [
    ("cut.mp3", CODECS["mp3"], "MP3"),  # the Xing header states the frame count
    ("cut.m4a", (*CODECS["m4a"], "-movflags", "+faststart"), "M4A"),  # moov (durations) up front
    ("cut.flac", CODECS["flac"], "FLAC"),  # STREAMINFO states the total samples
])
@PATHS
def test_truncated_mp3_and_m4a_are_refused(tmp_path: Path, name: str, codec: tuple[str, ...], kind: str,
                                           in_memory: bool) -> None:
    whole = synthesize(LONG_TEXT, tmp_path / f"whole-{name}", codec=codec)
    prepare(whole, tmp_path / "work", in_memory)  # whole: fine (encoder padding is not a shortfall)
    cut = tmp_path / name
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    with pytest.raises(AudioError, match=rf"^truncated {kind}: header says 5\.\d s, file holds 1\.\d s \(still"):
        prepare(cut, tmp_path / "work", in_memory)


def test_an_estimated_duration_is_no_reason_to_refuse(tmp_path: Path) -> None:
    """Without a Xing header ffmpeg guesses an MP3's duration from its size: nothing to compare."""
    whole = synthesize(LONG_TEXT, tmp_path / "noxing.mp3", codec=(*CODECS["mp3"], "-write_xing", "0"))
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    assert prepare(cut, tmp_path / "work").duration == pytest.approx(1.8, abs=0.3)


def test_header_only_wav_has_no_audio(tmp_path: Path) -> None:
    source = synthesize(TEXT, tmp_path / "full.wav", rate=22050)
    stub = tmp_path / "stub.wav"
    stub.write_bytes(source.read_bytes()[:44])
    with pytest.raises(AudioError, match="zero samples"):
        prepare(stub, tmp_path / "work")


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("empty.mp3", b"", r"^empty file \(0 bytes\)$"),
    ("notes.wav", b"meeting notes, not audio\n" * 20, "^not a media file: looks like text$"),
    ("noise.mp3", bytes(range(256)) * 8, "^cannot decode: "),
    ("cut.flac", b"fLaC\x00\x00\x00\x22" + b"\x00" * 30, "^cannot decode: "),
])
@PATHS
def test_bad_inputs_are_audio_errors_with_a_reason(tmp_path: Path, name: str, data: bytes,
                                                   reason: str, in_memory: bool) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(AudioError, match=reason) as err:
        prepare(tmp_path / name, tmp_path / "work", in_memory)
    assert str(tmp_path) not in str(err.value)  # reasons never carry this host's paths


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="file not found"):
        prepare(tmp_path / "gone.wav", tmp_path / "work")


@pytest.mark.parametrize("make", [os.mkdir, os.mkfifo], ids=["directory", "fifo"])
def test_not_a_regular_file(tmp_path: Path, make: object) -> None:
    make(tmp_path / "x.wav")  # type: ignore[operator]
    with pytest.raises(PermanentError):
        prepare(tmp_path / "x.wav", tmp_path / "work")


def test_run_ffmpeg_reports_ffmpeg_words(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="cannot decode: .*No such file or directory"):
        run_ffmpeg(["-i", str(tmp_path / "nope.mp3"), str(tmp_path / "out.mp3")], timeout=30)


def test_run_ffmpeg_timeout_is_an_audio_error(tmp_path: Path) -> None:
    endless = ["-f", "lavfi", "-re", "-i", "sine=frequency=440", "-f", "null", "-"]
    with pytest.raises(AudioError, match="gave up after"):
        run_ffmpeg(endless, timeout=0.5)
