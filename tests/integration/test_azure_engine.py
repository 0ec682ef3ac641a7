"""The azure engine with the real Speech SDK against the emulator: text, errors, options, resources."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscribe.cli.emulator import local_recognizer
from batchscribe.common.errors import AudioError, EndpointError, ProcessingError, StallError, TransientError
from batchscribe.common.models import TranscriptionOptions
from batchscribe.emulator import Emulator, duration_text
from batchscribe.worker.engines.azure import AzureEngine
from batchscribe.worker.engines.base import EngineStopped, PreparedAudio
from tests.support.emulator import (
    endpoint_for,
    native_threads,
    rss_mb,
    running_emulator,
    speech_wav,
    tone_wav,
)
from tests.support.poll import wait_for
from tests.support.threads import run_concurrently

pytestmark = pytest.mark.timeout(60)
# 3.0003 s = 48,005 samples: not a whole millisecond (the SDK replays a partial last ms unless
# the final phrase covers it).
DURATIONS = (0.7, 1.5, 2.25, 4.0, 3.0003)
# Above the SDK's own reconnect cycle (~2 s without any event), which must not look like a stall.
STALL_FLOOR = 2.5


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with running_emulator(transcribe="duration") as server:
        yield server


@pytest.fixture()
def port(emu: Emulator) -> Iterator[int]:
    emu.reset(emu.ports[0])
    yield emu.ports[0]
    emu.reset(emu.ports[0])


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> list[PreparedAudio]:
    folder = tmp_path_factory.mktemp("tones")
    return [tone_wav(folder / f"tone{i}.wav", seconds) for i, seconds in enumerate(DURATIONS)]


def text_of(phrases: list[dict]) -> str:
    return " ".join(p["DisplayText"] for p in phrases)


@pytest.mark.parametrize("input_mode", ["push", "file"])
def test_each_file_is_answered_for_its_own_audio(port: int, tones: list[PreparedAudio],
                                                 input_mode: str) -> None:
    """One phrase per file (no second turn), stating exactly the audio that file sent."""
    engine = AzureEngine(endpoint_for(port), input_mode=input_mode)
    for audio in tones:
        result = engine.transcribe(audio, TranscriptionOptions())
        assert [p["DisplayText"] for p in result.phrases] == [duration_text(audio.duration)]
        assert result.engine == "azure" and result.duration == audio.duration
    engine.close()


@pytest.mark.parametrize(("seconds", "rtf", "expected"),
                         [(180.0, 20.0, (8.9, 11.0)), (60.0, 1000.0, (0.0, 3.0))],
                         ids=["180s-rtf20", "60s-rtf1000"])
def test_long_file_is_acknowledged_while_it_uploads(tmp_path: Path, seconds: float, rtf: float,
                                                    expected: tuple[float, float]) -> None:
    """Past ~30 s of unanswered audio the SDK stops sending (ServiceTimeout): the emulator must
    acknowledge segments as they arrive, paced by its rtf, and still say the whole duration once."""
    audio = tone_wav(tmp_path / "long.wav", seconds)
    with running_emulator(rtf=rtf) as server:
        engine = AzureEngine(endpoint_for(server.ports[0], rtf=rtf))
        seen: list[float] = []
        started = time.monotonic()
        result = engine.transcribe(audio, TranscriptionOptions(), progress=seen.append)
        elapsed = time.monotonic() - started
        engine.close()
        session = server.stats(server.ports[0])["sessions"][-1]
    assert [p["DisplayText"] for p in result.phrases] == [duration_text(seconds)]
    assert expected[0] <= elapsed < expected[1], f"{elapsed:.2f} s for {seconds} s at rtf {rtf}"
    assert session["turns"] == 1 and session["phrases"] >= seconds / 10  # word-less ones included
    assert seen == sorted(seen) and seen[-1] == pytest.approx(seconds, abs=0.01)


def test_local_transcripts_through_the_wire(tmp_path: Path) -> None:
    from tests.support.wer import wer

    text = "the quick brown fox jumps over the lazy dog near the river bank"
    audio = speech_wav(tmp_path / "speech.wav", text)
    with running_emulator(transcribe="local", recognize=local_recognizer()) as server:
        engine = AzureEngine(endpoint_for(server.ports[0]), stall_floor=60.0)
        result = engine.transcribe(audio, TranscriptionOptions())
        engine.close()
    assert wer(text, text_of(result.phrases)) <= 0.25, text_of(result.phrases)


FAULTS = [
    ("refuse", EndpointError, "ConnectionFailure"),
    ("http429", TransientError, "TooManyRequests"),
    ("close1011", TransientError, "ServiceError"),
    ("stall", StallError, "no progress"),
    ("http401", EndpointError, "AuthenticationFailure"),
    ("error", TransientError, "ServiceError"),
]


@pytest.mark.parametrize(("mode", "error", "words"), FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_maps_to_its_error_class(emu: Emulator, port: int, tones: list[PreparedAudio], mode: str,
                                       error: type[ProcessingError], words: str) -> None:
    emu.set_fault(port, mode)
    engine = AzureEngine(endpoint_for(port), stall_floor=STALL_FLOOR)
    started = time.monotonic()
    with pytest.raises(error) as caught:
        engine.transcribe(tones[1], TranscriptionOptions())
    elapsed = time.monotonic() - started
    engine.close()
    assert type(caught.value) is error and words in caught.value.reason
    assert elapsed < STALL_FLOOR + 2.0  # the SDK gives up within ~2 s; the watchdog after its floor


def test_stall_watchdog_scales_with_remaining_audio_and_rtf() -> None:
    engine = AzureEngine(endpoint_for(1, rtf=2.0), stall_floor=5.0, stall_margin=3.0)
    audio = PreparedAudio(path=Path("x.wav"), duration=60.0)
    assert engine._stall_limit(audio, heard=0.0) == pytest.approx(90.0)
    assert engine._stall_limit(audio, heard=58.0) == pytest.approx(5.0)


def test_missing_file_is_an_audio_error(port: int, tmp_path: Path) -> None:
    for mode in ("push", "file"):
        with pytest.raises(AudioError):
            AzureEngine(endpoint_for(port), input_mode=mode).transcribe(
                PreparedAudio(path=tmp_path / "gone.wav", duration=1.0), TranscriptionOptions())


def test_options_reach_the_wire(emu: Emulator, port: int, tones: list[PreparedAudio]) -> None:
    options = TranscriptionOptions(language="de-DE", nbest=2, word_timestamps=True, profanity="raw")
    engine = AzureEngine(endpoint_for(port))
    result = engine.transcribe(tones[0], options)
    engine.close()
    session = emu.stats(port)["sessions"][-1]
    assert session["query"]["language"].lower() == "de-de"
    assert session["query"]["format"] == "detailed" and session["query"]["wordLevelTimestamps"] == "true"
    assert session["query"]["profanity"] == "raw"
    assert session["context"]["phraseOutput"]["format"] == "Detailed"
    assert "WordTimings" in session["context"]["phraseOutput"]["detailed"]["options"]
    assert session["audio_seconds"] == pytest.approx(tones[0].duration, abs=0.01)
    nbest = result.phrases[0]["NBest"]
    assert len(nbest) == 2 and nbest[0]["Words"][0]["Word"] == "duration"


def test_without_word_timestamps_no_words_and_one_alternative(port: int, tones: list[PreparedAudio]) -> None:
    """SDK 1.53 asks for word timings with every Detailed request; the engine drops what was not asked."""
    engine = AzureEngine(endpoint_for(port))
    result = engine.transcribe(tones[0], TranscriptionOptions())
    engine.close()
    assert [list(alt) for alt in result.phrases[0]["NBest"]] == [
        ["Confidence", "Lexical", "ITN", "MaskedITN", "Display"]]


def test_diarization_gives_speaker_ids(emu: Emulator, port: int, tones: list[PreparedAudio]) -> None:
    result = AzureEngine(endpoint_for(port)).transcribe(tones[0], TranscriptionOptions(diarization=True))
    session = emu.stats(port)["sessions"][-1]
    assert session["context"]["phraseDetection"]["speakerDiarization"]["mode"] == "Anonymous"
    assert result.phrases[0]["SpeakerId"] == "Guest-1"


def test_candidate_languages_record_the_detected_one(emu: Emulator, port: int,
                                                     tones: list[PreparedAudio]) -> None:
    options = TranscriptionOptions(language="en-US", candidate_languages=("de-DE", "en-US"))
    result = AzureEngine(endpoint_for(port)).transcribe(tones[0], options)
    assert emu.stats(port)["sessions"][-1]["context"]["languageId"]["languages"] == ["de-DE", "en-US"]
    assert result.language == "de-DE"  # the emulator "detects" the first candidate


def test_progress_reports_recognised_seconds(port: int, tones: list[PreparedAudio]) -> None:
    seen: list[float] = []
    AzureEngine(endpoint_for(port)).transcribe(tones[3], TranscriptionOptions(), progress=seen.append)
    assert seen and seen[-1] == pytest.approx(tones[3].duration, abs=0.01)


def test_concurrent_calls_run_side_by_side(tmp_path: Path) -> None:
    """N threads on one engine: the emulator sees N simultaneous sessions, each file answered right."""
    n = 6
    files = [tone_wav(tmp_path / f"c{i}.wav", 1.0 + i / 4) for i in range(n)]
    with running_emulator(rtf=1.5) as server:  # ~1-2 s per file, so the sessions overlap
        engine = AzureEngine(endpoint_for(server.ports[0]))
        texts: dict[int, str] = {}
        barrier = threading.Barrier(n)

        def run(i: int) -> None:
            barrier.wait(timeout=10)
            texts[i] = text_of(engine.transcribe(files[i], TranscriptionOptions()).phrases)

        run_concurrently(run, [(i,) for i in range(n)], timeout=30)
        stats = server.stats(server.ports[0])
        engine.close()
    assert texts == {i: duration_text(files[i].duration) for i in range(n)}
    assert stats["max_active"] == n and stats["sessions_total"] == n


def test_open_sessions_never_exceed_the_endpoints_concurrency(tmp_path: Path) -> None:
    """More threads than the endpoint's concurrency on one engine: a file waits for a permit that only
    a completed close gives back (closes run after the call has returned), so an emulator that
    refuses beyond 2 sessions refuses none, and every file is answered."""
    files = [tone_wav(tmp_path / f"p{i}.wav", 0.5 + i / 10) for i in range(6)]
    with running_emulator(rtf=4, capacity=2) as server:
        engine = AzureEngine(endpoint_for(server.ports[0], concurrency=2))
        texts: dict[tuple[int, int], str] = {}

        def run(i: int) -> None:
            for round_ in range(3):
                texts[i, round_] = text_of(engine.transcribe(files[i], TranscriptionOptions()).phrases)

        run_concurrently(run, [(i,) for i in range(len(files))], timeout=45)
        engine.close()
        stats = server.stats(server.ports[0])
    assert texts == {(i, r): duration_text(files[i].duration) for i in range(len(files)) for r in range(3)}
    assert stats["refused"].get("capacity", 0) == 0
    assert stats["max_active"] == 2 and stats["sessions_total"] == 18 and stats["active"] == 0


def test_a_stop_ends_the_wait_for_a_session_permit(tmp_path: Path) -> None:
    """A planned stop while a file waits for its endpoint's only permit hands the file back at once
    (EngineStopped), without opening a session."""
    long, short = tone_wav(tmp_path / "long.wav", 6.0), tone_wav(tmp_path / "short.wav", 0.5)
    with running_emulator(rtf=1) as server:
        engine = AzureEngine(endpoint_for(server.ports[0], concurrency=1))
        holder = threading.Thread(target=engine.transcribe, args=(long, TranscriptionOptions()), daemon=True)
        holder.start()
        wait_for(lambda: server.stats(server.ports[0])["active"] == 1, 10, "the first session open")
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        with pytest.raises(EngineStopped, match="before the file was sent"):
            engine.transcribe(short, TranscriptionOptions(), stop=stop)
        assert server.stats(server.ports[0])["sessions_total"] == 1
        holder.join(timeout=20)
        engine.close()


def test_memory_and_threads_stay_flat_over_many_files(port: int, tones: list[PreparedAudio]) -> None:
    engine = AzureEngine(endpoint_for(port))
    options = TranscriptionOptions()
    for _ in range(10):  # warm-up: SDK pools, reaper threads
        engine.transcribe(tones[0], options)
    rss0, threads0 = rss_mb(), native_threads()
    for _ in range(100):
        engine.transcribe(tones[0], options)
    engine.close()
    # A session's native threads end shortly after it does: wait (bounded) for them to go.
    wait_for(lambda: native_threads() <= threads0, 10, "the SDK's threads to end",
             on_timeout=lambda: f"{native_threads()} threads, {threads0} after the warm-up")
    assert rss_mb() - rss0 < 10.0


def test_each_file_gets_the_sdk_s_own_trace_in_its_log(emu: Emulator, port: int, tones: list[PreparedAudio],
                                                       tmp_path: Path) -> None:
    engine = AzureEngine(endpoint_for(port), stall_floor=STALL_FLOOR)
    logs = [tmp_path / "sub" / f"tone{i}_wav.emu@vm1.sdk.log" for i in range(3)]
    try:
        run_concurrently(lambda audio, log: engine.transcribe(audio, TranscriptionOptions(), log_file=log),
                         list(zip(tones[:3], logs)))
        emu.set_fault(port, "http401")
        with pytest.raises(EndpointError):
            engine.transcribe(tones[3], TranscriptionOptions(), log_file=logs[0])  # a retry appends
    finally:
        engine.close()
    for log in logs:
        text = log.read_text()
        first, *trace, last = text.splitlines()
        assert first.startswith("[batchscribe] ") and f"endpoint emu (ws://127.0.0.1:{port})" in first
        assert sum("SPX_TRACE" in line for line in trace) > 50, text[:2000]  # the SDK's own lines
        assert "recognizer" in text.lower()
    assert "ended: 1 phrase(s)" in logs[1].read_text().splitlines()[-1]
    failed = logs[0].read_text().split("[batchscribe] ")[-1]
    assert failed.startswith(tuple("0123456789")) and "ended: EndpointError" in failed
    assert "401" in logs[0].read_text().split("[batchscribe] ")[-2]  # the SDK traced the refusal


def test_a_file_s_sdk_log_is_capped(port: int, tones: list[PreparedAudio], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from batchscribe.worker.engines import sdk_trace

    monkeypatch.setattr(sdk_trace, "MAX_BYTES", 20_000)
    engine = AzureEngine(endpoint_for(port), stall_floor=STALL_FLOOR)
    log = tmp_path / "tone_wav.emu@vm1.sdk.log"
    try:
        engine.transcribe(tones[3], TranscriptionOptions(), log_file=log)
    finally:
        engine.close()
    lines = log.read_text().splitlines()
    assert log.stat().st_size < 20_000 + 1000
    assert "log capped at" in lines[-2] and "ended: 1 phrase(s)" in lines[-1]
