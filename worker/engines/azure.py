"""The azure engine: the real Speech SDK against a container (`ws://HOST:PORT`) or the Azure cloud.

One continuous recognition per file, driven from the calling thread:

* audio goes in through a push stream fed by our own reader thread (the SDK's file input, and its
  pull stream, add ~500 ms to a third of the files; see docs/emulator.md), throttled by the SDK
  to the endpoint's rtf;
* callbacks only record what happened and set an event; starting, stopping and releasing the
  recognizer happen on the calling thread (a blocking stop inside a callback costs ~10 s);
* a stall watchdog abandons a file that makes no progress for max(floor, remaining / rtf × margin):
  a silent endpoint never holds a worker slot, because the SDK itself waits forever; the caller's
  `stop` event (a planned stop of the consumer) abandons it too, within POLL_SECONDS;
* every cancellation code maps to an error class in `_CANCELLATION_ERRORS`, the one table;
* a finished file's websocket is closed on a thread of its own (the SDK's close blocks ~20 ms,
  half of it after the server has seen the close), so the file's task moves on at once; the next
  connection waits for a permit that only a completed close gives back, so the endpoint never sees
  more open sessions than its `concurrency`;
* finished recognizers are destroyed on a reaper thread (the SDK's destructor blocks ~55 ms).

Output is always the service's Detailed format (NBest with Lexical/ITN/MaskedITN), which the
output schema needs for every file; `nbest` trims the alternatives, `word_timestamps` adds Words.
Diarization uses the SDK's ConversationTranscriber, whose phrases carry `SpeakerId`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.cognitiveservices.speech as sdk

from batchscribe.common.config import Endpoint
from batchscribe.common.errors import (
    AudioError,
    EndpointError,
    PermanentError,
    ProcessingError,
    StallError,
    TransientError,
)
from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.phrases import TICKS_PER_SECOND
from batchscribe.worker.engines.base import EngineStopped, PreparedAudio, ProgressCallback, Recognition
from batchscribe.worker.engines.sdk_trace import TRACE

log = logging.getLogger(__name__)

CODE = sdk.CancellationErrorCode
# The one table: SDK cancellation code -> our error class. ConnectionFailure is special-cased in
# `_cancellation_error`: before any result the endpoint is unreachable, after some it broke mid-file.
_CANCELLATION_ERRORS: dict[sdk.CancellationErrorCode, type[ProcessingError]] = {
    CODE.ConnectionFailure: EndpointError,
    CODE.AuthenticationFailure: EndpointError,
    CODE.Forbidden: EndpointError,
    CODE.ServiceRedirectPermanent: EndpointError,
    CODE.TooManyRequests: TransientError,
    CODE.ServiceTimeout: TransientError,
    CODE.ServiceError: TransientError,
    CODE.ServiceUnavailable: TransientError,
    CODE.ServiceRedirectTemporary: TransientError,
    CODE.RuntimeError: TransientError,
    CODE.BadRequest: PermanentError,
    CODE.EmbeddedModelError: PermanentError,
}

_PROFANITY = {"masked": sdk.ProfanityOption.Masked, "removed": sdk.ProfanityOption.Removed,
              "raw": sdk.ProfanityOption.Raw}

INPUT_MODES = ("pull", "push", "file")
POLL_SECONDS = 0.2  # watchdog and progress granularity; completion itself wakes the wait at once
PUSH_LEAD = 10.0  # seconds of audio the push writer may run ahead of the throttled upload
PUSH_PACE = 1.5  # the writer's pace relative to the SDK's rtf throttle (which overshoots by ~16 %)
REAPER_PUT_TIMEOUT = 30.0
CLOSE_JOIN = 10.0  # seconds `close` waits for each websocket still closing
# Audio the SDK sends before its throttle applies. With 0 the throttled SDK held the first audio
# frame back ~42 ms after speech.config, on every file and whatever the rtf (at 50-500 ms still;
# from 1,000 ms it goes out at once): ~half of a file's session overhead (bench/bench_schedule.py,
# docs/emulator.md). One second of audio ahead of real-time pacing is far inside the ~30 s the SDK
# itself holds unacknowledged, and a container decodes at its own pace whatever it has received.
THROTTLE_LEAD_MS = 1000
# How often the SDK's websocket loop looks for work while it connects (its default: 10 ms). The
# upgrade → speech.config step waited for that tick on every file: 9 ms of a ~31 ms per-file session
# overhead, now ~1 ms, for ~2 ms of CPU per session (bench/bench_schedule.py, docs/benchmarks.md §11).
# Its twin for the rest of the session (SPEECH-USPRunPollingInterval) is left at 10 ms: at 5 ms it
# cut ~10 ms more per file but cost +37 % CPU per session-second, and on a full machine that CPU
# came back as longer gaps between sessions.
USP_CONNECT_POLL_MS = 1


def _cancellation_error(code: sdk.CancellationErrorCode, details: str, phrases: int) -> ProcessingError:
    kind = _CANCELLATION_ERRORS.get(code, TransientError)
    if code == CODE.ConnectionFailure and phrases:
        kind = TransientError
    return kind(f"speech SDK cancelled ({code.name}): {details or 'no details'}")


@dataclass
class _Tracker:
    """What the SDK callbacks saw. Written from SDK threads, read by the calling thread."""

    phrases: list[dict[str, Any]] = field(default_factory=list)
    heard: float = 0.0  # seconds of audio the service has answered for
    last_event: float = field(default_factory=time.monotonic)
    languages: list[str] = field(default_factory=list)
    cancel_code: sdk.CancellationErrorCode | None = None
    cancel_details: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def _progress(self, offset: int, duration: int) -> None:
        self.heard = max(self.heard, (offset + duration) / TICKS_PER_SECOND)
        self.last_event = time.monotonic()

    def on_partial(self, evt: Any) -> None:
        self._progress(evt.result.offset, evt.result.duration)

    def on_final(self, evt: Any) -> None:
        result = evt.result
        self._progress(result.offset, result.duration)
        if result.reason != sdk.ResultReason.RecognizedSpeech:
            return
        phrase = json.loads(result.json)
        self.phrases.append(phrase)
        language = (phrase.get("PrimaryLanguage") or {}).get("Language") or result.properties.get(
            sdk.PropertyId.SpeechServiceConnection_AutoDetectSourceLanguageResult, "")
        if language:
            self.languages.append(language)

    def on_canceled(self, evt: Any) -> None:
        details = evt.cancellation_details
        if details.reason == sdk.CancellationReason.Error:
            self.cancel_code = details.code
            self.cancel_details = details.error_details
        self.done.set()

    def on_stopped(self, evt: Any) -> None:
        self.done.set()


@dataclass(frozen=True)
class _Driver:
    """The SDK class and event names for plain recognition or diarized transcription."""

    final: str
    partial: str
    start: str
    stop: str

    def build(self, config: sdk.SpeechConfig, audio: sdk.audio.AudioConfig,
              auto_detect: sdk.languageconfig.AutoDetectSourceLanguageConfig | None) -> sdk.Recognizer:
        if self.final == "transcribed":
            return sdk.transcription.ConversationTranscriber(
                config, audio, auto_detect_source_language_config=auto_detect)
        return sdk.SpeechRecognizer(config, audio, auto_detect_source_language_config=auto_detect)


_RECOGNIZE = _Driver(final="recognized", partial="recognizing", start="start_continuous_recognition_async",
                     stop="stop_continuous_recognition_async")
_DIARIZE = _Driver(final="transcribed", partial="transcribing", start="start_transcribing_async",
                   stop="stop_transcribing_async")


class _PullReader(sdk.audio.PullAudioInputStreamCallback):  # type: ignore[misc]  # the SDK ships no types
    """Feeds the SDK from the WAV's PCM on demand: bounded memory, no extra thread."""

    def __init__(self, wav: wave.Wave_read) -> None:
        super().__init__()
        self._wav = wav
        self._frame_bytes = wav.getsampwidth() * wav.getnchannels()

    def read(self, buffer: memoryview) -> int:
        data = self._wav.readframes(len(buffer) // self._frame_bytes)
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._wav.close()


class _AudioInput:
    """The SDK audio config for one file, plus whatever must be released with it."""

    def __init__(self, audio: PreparedAudio, mode: str) -> None:
        self.mode = mode
        self._wav: wave.Wave_read | None = None
        self._push: sdk.audio.PushAudioInputStream | None = None
        self._writer: threading.Thread | None = None
        self._stopped = threading.Event()
        if mode == "file":
            if not audio.path.is_file():
                raise AudioError(f"prepared audio {audio.path} does not exist")
            self.config = sdk.audio.AudioConfig(filename=str(audio.path))
            return
        try:
            self._wav = wave.open(str(audio.path), "rb")
        except (OSError, EOFError, wave.Error) as exc:
            raise AudioError(f"cannot read prepared audio {audio.path}: {exc}") from exc
        fmt = sdk.audio.AudioStreamFormat(samples_per_second=self._wav.getframerate(),
                                          bits_per_sample=8 * self._wav.getsampwidth(),
                                          channels=self._wav.getnchannels())
        if mode == "pull":
            stream: sdk.audio.AudioInputStream = sdk.audio.PullAudioInputStream(_PullReader(self._wav), fmt)
        else:
            self._push = sdk.audio.PushAudioInputStream(fmt)
            stream = self._push
        self.config = sdk.audio.AudioConfig(stream=stream)

    def start(self, rtf: float) -> None:
        """Push mode: a reader thread writes the file, then closes the stream (= end of audio)."""
        if self._push is not None:
            self._writer = threading.Thread(target=self._pump, args=(rtf,), name="azure-push", daemon=True)
            self._writer.start()

    def _pump(self, rtf: float) -> None:
        """Write 1 s chunks, never more than PUSH_LEAD seconds ahead of the rtf-paced upload, so a
        long file is not buffered whole inside the SDK."""
        assert self._wav is not None and self._push is not None
        frames = self._wav.getframerate()
        started, written = time.monotonic(), 0.0
        while not self._stopped.is_set():
            ahead = written - (time.monotonic() - started) * rtf * PUSH_PACE
            if ahead > PUSH_LEAD:
                self._stopped.wait(min(1.0, (ahead - PUSH_LEAD) / (rtf * PUSH_PACE)))
                continue
            data = self._wav.readframes(frames)
            if not data:
                break
            self._push.write(data)
            written += 1.0
        self._push.close()

    def release(self) -> None:
        self._stopped.set()
        if self._writer is not None:
            self._writer.join(timeout=5.0)
        if self._wav is not None and self.mode != "pull":  # pull: the SDK closes its callback
            self._wav.close()


class _Reaper:
    """Destroys finished recognizers on a few background threads.

    Releasing a recognizer blocks ~55 ms inside the SDK (measured, docs/emulator.md); doing it
    here hands the slot back sooner. The queue is bounded, so native resources stay bounded.
    """

    def __init__(self, threads: int = 2, backlog: int = 32) -> None:
        self._queue: queue.Queue[list[Any] | None] = queue.Queue(maxsize=backlog)
        self._threads = [threading.Thread(target=self._run, name=f"azure-reaper-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while (objects := self._queue.get()) is not None:
            objects.clear()  # the last references: the SDK's destructors run here

    def release(self, objects: list[Any]) -> None:
        self._queue.put(objects, timeout=REAPER_PUT_TIMEOUT)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None, timeout=REAPER_PUT_TIMEOUT)
        for thread in self._threads:
            thread.join(timeout=REAPER_PUT_TIMEOUT)


class AzureEngine:
    """Transcribes one file per call with the real Speech SDK; safe to call from many threads."""

    takes_samples = False  # the SDK reads a WAV (file input, or pushed from the file)

    def __init__(self, endpoint: Endpoint, *, stall_floor: float = 30.0, stall_margin: float = 3.0,
                 input_mode: str = "push", stop_timeout: int = 0) -> None:
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        self.endpoint = endpoint
        self.stall_floor = stall_floor
        self.stall_margin = stall_margin
        self.input_mode = input_mode
        self.stop_timeout = stop_timeout
        self._reaper: _Reaper | None = None
        self._reaper_lock = threading.Lock()
        # Open websockets, counted from before the connect until the close has returned.
        self._sessions = threading.BoundedSemaphore(endpoint.concurrency)
        self._closers: set[threading.Thread] = set()

    def close(self) -> None:
        """Finish closing connections and releasing recognizers; nothing else is held between files."""
        for closer in list(self._closers):
            closer.join(timeout=CLOSE_JOIN)
        with self._reaper_lock:
            if self._reaper is not None:
                self._reaper.close()
                self._reaper = None

    def _release(self, objects: list[Any]) -> None:
        with self._reaper_lock:
            if self._reaper is None:
                self._reaper = _Reaper()
            reaper = self._reaper
        reaper.release(objects)

    # -- configuration -------------------------------------------------------------------------

    def _speech_config(self, options: TranscriptionOptions) -> sdk.SpeechConfig:
        ep = self.endpoint
        if ep.is_cloud_service:
            config = sdk.SpeechConfig(subscription=ep.subscription_key, region=ep.region)
        else:
            config = sdk.SpeechConfig(host=ep.url)
            if ep.subscription_key:  # a container behind a gateway that checks keys
                config.set_property(sdk.PropertyId.SpeechServiceConnection_Key, ep.subscription_key)
        if not options.candidate_languages:
            config.speech_recognition_language = options.language
        else:
            config.set_property(sdk.PropertyId.SpeechServiceConnection_LanguageIdMode, "Continuous")
        config.output_format = sdk.OutputFormat.Detailed
        if options.word_timestamps:
            config.request_word_level_timestamps()
        config.set_profanity(_PROFANITY[options.profanity])
        throttle = str(max(1, int(ep.rtf * 100)))  # percent of real time; the SDK overshoots by 6-16 %
        config.set_property_by_name("SPEECH-AudioThrottleAsPercentageOfRealTime", throttle)
        config.set_property_by_name("SPEECH-TransmitLengthBeforeThrottleMs", str(THROTTLE_LEAD_MS))
        config.set_property_by_name("SPEECH-StopRecognitionTimeoutInSeconds", str(self.stop_timeout))
        config.set_property_by_name("SPEECH-USPConnectPollingInterval", str(USP_CONNECT_POLL_MS))
        return config

    def _auto_detect(self, options: TranscriptionOptions) -> Any:
        if not options.candidate_languages:
            return None
        return sdk.languageconfig.AutoDetectSourceLanguageConfig(languages=list(options.candidate_languages))

    def _stall_limit(self, audio: PreparedAudio, heard: float) -> float:
        remaining = max(0.0, audio.duration - heard)
        return max(self.stall_floor, remaining / self.endpoint.rtf * self.stall_margin)

    # -- one file ------------------------------------------------------------------------------

    def transcribe(self, audio: PreparedAudio, options: TranscriptionOptions,
                   progress: ProgressCallback | None = None,
                   stop: threading.Event | None = None, log_file: Path | None = None) -> Recognition:
        """`log_file`: the Speech SDK's trace of this call is appended there (`sdk_trace`)."""
        if log_file is None:
            return self._transcribe(audio, options, progress, stop)
        ep = self.endpoint
        where = f"the cloud, region {ep.region}" if ep.is_cloud_service else ep.url
        opening = (f"endpoint {ep.name} ({where}): {audio.duration:.3f} s of audio, language "
                   f"{options.language}, Speech SDK {sdk.__version__}")
        with TRACE.recording(log_file, opening) as say:
            try:
                recognition = self._transcribe(audio, options, progress, stop)
            except BaseException as exc:
                say(f"ended: {type(exc).__name__}: {exc}")
                raise
            say(f"ended: {len(recognition.phrases)} phrase(s)")
            return recognition

    def _transcribe(self, audio: PreparedAudio, options: TranscriptionOptions,
                    progress: ProgressCallback | None, stop: threading.Event | None) -> Recognition:
        try:
            source = _AudioInput(audio, self.input_mode)
        except RuntimeError as exc:
            raise _construction_error(audio, exc) from exc
        tracker = self._run(audio, options, progress, source, stop or threading.Event())
        return self._recognition(audio, options, tracker)

    def _run(self, audio: PreparedAudio, options: TranscriptionOptions, progress: ProgressCallback | None,
             source: _AudioInput, stop: threading.Event) -> _Tracker:
        driver = _DIARIZE if options.diarization else _RECOGNIZE
        try:
            recognizer = driver.build(self._speech_config(options), source.config, self._auto_detect(options))
        except RuntimeError as exc:
            source.release()
            raise _construction_error(audio, exc) from exc
        tracker = _Tracker()
        signals = self._connect(recognizer, driver, tracker)
        connection = sdk.Connection.from_recognizer(recognizer)
        permit = False
        try:
            self._open_permit(stop)
            permit = True
            getattr(recognizer, driver.start)().get()
            source.start(self.endpoint.rtf)
            self._wait(audio, tracker, progress, stop)
        finally:
            self._stop(getattr(recognizer, driver.stop))
            for signal in signals:  # nothing reaches the tracker any more: its result is final
                signal.disconnect_all()
            self._close_later(connection, source, recognizer, permit)
            del recognizer, signals, connection
        if tracker.cancel_code is not None:
            raise _cancellation_error(tracker.cancel_code, tracker.cancel_details, len(tracker.phrases))
        return tracker

    def _open_permit(self, stop: threading.Event) -> None:
        """Wait until fewer than `concurrency` of this engine's websockets are open or closing (a
        previous file's close may still be under way); a planned stop ends the wait."""
        while not self._sessions.acquire(timeout=POLL_SECONDS):
            if stop.is_set():
                raise EngineStopped("stopped before the file was sent")

    def _close_later(self, connection: sdk.Connection, source: _AudioInput, recognizer: sdk.Recognizer,
                     permit: bool) -> None:
        """Close the websocket on a thread of its own, then give the permit back, release the audio
        source and hand the recognizer to the reaper."""
        def finish() -> None:
            try:
                _close(connection)
            finally:
                if permit:
                    self._sessions.release()
                self._closers.discard(threading.current_thread())
                source.release()
                self._release([recognizer, source, connection])

        closer = threading.Thread(target=finish, name="azure-close", daemon=True)
        self._closers.add(closer)
        closer.start()

    @staticmethod
    def _connect(recognizer: sdk.Recognizer, driver: _Driver, tracker: _Tracker) -> list[sdk.EventSignal]:
        pairs: list[tuple[str, Callable[[Any], None]]] = [
            (driver.final, tracker.on_final), (driver.partial, tracker.on_partial),
            ("canceled", tracker.on_canceled), ("session_stopped", tracker.on_stopped)]
        signals = []
        for name, handler in pairs:
            signal = getattr(recognizer, name)
            signal.connect(handler)
            signals.append(signal)
        return signals

    def _wait(self, audio: PreparedAudio, tracker: _Tracker, progress: ProgressCallback | None,
              stop: threading.Event) -> None:
        """Block until the session ends; bounded by the stall watchdog, never by the SDK, and ended
        early by `stop` (the recognition is stopped and its connection closed on the way out)."""
        reported = -1.0
        while not tracker.done.wait(POLL_SECONDS):
            if stop.is_set():
                raise EngineStopped(f"stopped after {tracker.heard:.1f} of {audio.duration:.1f} s")
            if progress is not None and tracker.heard > reported:
                reported = tracker.heard
                progress(reported)
            limit = self._stall_limit(audio, tracker.heard)
            if time.monotonic() - tracker.last_event > limit:
                raise StallError(f"endpoint '{self.endpoint.name}' made no progress for {limit:.1f} s "
                                 f"({tracker.heard:.1f} of {audio.duration:.1f} s recognised)")
        if progress is not None and tracker.heard > reported:
            progress(tracker.heard)

    @staticmethod
    def _stop(stop: Callable[[], sdk.ResultFuture]) -> None:
        """Stop from this thread. With SPEECH-StopRecognitionTimeoutInSeconds at its default, a stop
        (or the destructor) after an error or a stall blocks 10 s; `stop_timeout=0` makes it return
        at once (measured: 2.00 s at 2, 0.00 s at 0) and changes nothing on success."""
        try:
            stop().get()
        except RuntimeError as exc:  # stopping a session the SDK already tore down
            log.debug("azure: stop after the session ended: %s", exc)

    def _recognition(self, audio: PreparedAudio, options: TranscriptionOptions,
                     tracker: _Tracker) -> Recognition:
        phrases = [_trim(p, options) for p in tracker.phrases]
        language = max(set(tracker.languages), key=tracker.languages.count) if tracker.languages else None
        return Recognition(phrases=phrases, duration=audio.duration,
                           language=language or options.language, engine="azure",
                           extra={"endpoint": self.endpoint.name, "input": self.input_mode})


def _close(connection: sdk.Connection) -> None:
    """Close the websocket now; the SDK refuses when it is already closing (after a stall)."""
    try:
        connection.close()
    except RuntimeError as exc:
        log.debug("azure: connection close refused: %s", exc)


def _trim(phrase: dict[str, Any], options: TranscriptionOptions) -> dict[str, Any]:
    """Keep the `nbest` best alternatives; drop Words unless word timestamps were asked for."""
    if "NBest" in phrase:
        nbest = phrase["NBest"][:max(1, options.nbest)]
        if not options.word_timestamps:
            nbest = [{k: v for k, v in alt.items() if k != "Words"} for alt in nbest]
        phrase = {**phrase, "NBest": nbest}
    return phrase


def _construction_error(audio: PreparedAudio, exc: RuntimeError) -> ProcessingError:
    text = str(exc)
    if "WAV_READER" in text or "FILE_OPEN" in text or not audio.path.is_file():
        return AudioError(f"the speech SDK cannot read {audio.path}: {text.strip()[-300:]}")
    return PermanentError(f"the speech SDK rejected the request: {text.strip()[-300:]}")
