"""worker.audio's in-process decode (PyAV) for the local engine, on real files made with ffmpeg and
espeak-ng: the samples ffmpeg's WAV gives, with ffmpeg's guarantees and error words (the bad and
truncated inputs of tests/integration/test_audio.py run through both paths)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from batchscribe.common.errors import AudioError
from batchscribe.worker import audio
from batchscribe.worker.audio import prepare
from batchscribe.worker.engines.base import EngineStopped, PreparedAudio
from batchscribe.worker.engines.local import read_samples
from tests.support.speech import CODECS, synthesize, video_with_speech

np = pytest.importorskip("numpy")
av = pytest.importorskip("av")
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                reason="needs ffmpeg and espeak-ng")

TEXT = "Please remember to save your work."
LONG_TEXT = "Thank you for calling. Your order has been shipped and will arrive on Monday."
ROOT = Path(__file__).resolve().parents[2]
FORMATS = [  # name, rate, channels
    ("a.mp3", 22050, 1), ("a.m4a", 44100, 2), ("a.ogg", 24000, 1), ("a.flac", 16000, 1),
    ("stereo44k.wav", 44100, 2), ("a.opus", 48000, 1),
]


def in_memory(source: Path, workdir: Path) -> PreparedAudio:
    return prepare(source, workdir, in_memory=True)


def assert_like_ffmpeg(source: Path, tmp_path: Path, tolerance: float = 0.01) -> PreparedAudio:
    """In-process samples against ffmpeg's WAV of the same file: as many, and (resampler versions
    apart) the same values; nothing written to the workdir."""
    decoded = in_memory(source, tmp_path / "mem")
    assert decoded.samples is not None and decoded.samples.dtype == np.float32
    assert not (tmp_path / "mem").exists(), "no WAV is written"
    assert decoded.path == source and decoded.sample_rate == 16000
    reference = read_samples(prepare(source, tmp_path / "ffmpeg"))
    assert len(decoded.samples) == len(reference)
    assert decoded.duration == len(reference) / 16000
    assert float(np.abs(decoded.samples - reference).max()) <= tolerance
    return decoded


@pytest.mark.parametrize(("name", "rate", "channels"), FORMATS)
def test_every_format_decodes_to_the_samples_ffmpeg_gives(tmp_path: Path, name: str, rate: int,
                                                           channels: int) -> None:
    assert_like_ffmpeg(synthesize(TEXT, tmp_path / name, rate=rate, channels=channels), tmp_path)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "samples").glob("*")
                                        if p.suffix != ".json"))
def test_shipped_samples_decode_as_faster_whisper_itself_decodes_them(tmp_path: Path, name: str) -> None:
    """The very array faster-whisper's `decode_audio` makes of the original (same PyAV, same
    resampler), so the engine hears what faster-whisper alone would."""
    from faster_whisper.audio import decode_audio

    source = ROOT / "samples" / name
    decoded = assert_like_ffmpeg(source, tmp_path)
    assert np.array_equal(decoded.samples, decode_audio(str(source)))


def test_video_keeps_only_its_first_audio_stream(tmp_path: Path) -> None:
    decoded = assert_like_ffmpeg(video_with_speech(TEXT, tmp_path / "talk.mp4"), tmp_path)
    assert decoded.duration > 1.0


def test_a_damaged_stretch_is_skipped_as_ffmpeg_skips_it(tmp_path: Path) -> None:
    whole = synthesize(LONG_TEXT, tmp_path / "whole.mp3", codec=(*CODECS["mp3"], "-write_xing", "0"))
    data = bytearray(whole.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200] = bytes(200)  # a few frames' worth of zeros
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    decoded = in_memory(damaged, tmp_path / "work")
    assert decoded.duration == pytest.approx(prepare(damaged, tmp_path / "ffmpeg").duration, abs=0.1)


def test_a_format_change_mid_stream_is_resampled_on(tmp_path: Path) -> None:
    """Two MP3s of other rates and channel counts one after the other, as a recorder's split
    files `cat`-ed together: ffmpeg decodes all of it, so must we."""
    first = synthesize(TEXT, tmp_path / "first.mp3", rate=22050, codec=(*CODECS["mp3"], "-write_xing", "0"))
    second = synthesize(LONG_TEXT, tmp_path / "second.mp3", rate=44100, channels=2,
                        codec=(*CODECS["mp3"], "-write_xing", "0"))
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    decoded = in_memory(joined, tmp_path / "work")
    parts = in_memory(first, tmp_path / "work").duration + in_memory(second, tmp_path / "work").duration
    assert decoded.duration == pytest.approx(parts, abs=0.1)
    assert decoded.duration == pytest.approx(prepare(joined, tmp_path / "ffmpeg").duration, abs=0.1)


def test_names_ffmpeg_would_read_as_options_or_protocols(tmp_path: Path) -> None:
    source = synthesize(TEXT, tmp_path / "a.mp3")
    for name in ("-y.mp3", "http:x.mp3", "concat:a.mp3"):
        shutil.copy(source, tmp_path / name)
        assert in_memory(tmp_path / name, tmp_path / "work").duration > 1.0


def test_canonical_wav_is_still_linked_not_decoded(tmp_path: Path) -> None:
    source = synthesize(TEXT, tmp_path / "ready.wav", rate=16000)
    prepared = in_memory(source, tmp_path / "work")
    assert prepared.samples is None and prepared.path.samefile(source)


def test_the_decode_is_bounded_by_a_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bound (and class) as ffmpeg's timeout, here made 0 s: checked between packets."""
    monkeypatch.setattr(audio, "TIMEOUT_FLOOR", 0.0)
    monkeypatch.setattr(audio, "TIMEOUT_PER_MB", 0.0)
    source = synthesize(LONG_TEXT, tmp_path / "a.mp3")
    with pytest.raises(AudioError, match=r"^cannot decode: the decoder gave up after 0 s$"):
        in_memory(source, tmp_path / "work")


def test_a_stopping_consumer_ends_the_decode(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(EngineStopped):
        prepare(synthesize(TEXT, tmp_path / "a.mp3"), tmp_path / "work", in_memory=True, stop=stop)
