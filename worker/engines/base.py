"""The engine port: every engine turns one prepared file into phrases in the Speech service's shape.

Phrases use the Speech service's *detailed* JSON (what the SDK hands to `recognized` callbacks), so
the azure engine passes them through untouched and the local engine produces the same shape:

    {"RecognitionStatus": "Success", "Offset": 100-ns ticks, "Duration": ticks, "DisplayText": str,
     "NBest": [{"Confidence": float, "Lexical": str, "ITN": str, "MaskedITN": str, "Display": str,
                "Words": [{"Word": str, "Offset": ticks, "Duration": ticks, "Confidence": float}]}],
     "SpeakerId": str (optional, diarization)}

Engines raise only `common.errors.ProcessingError` subclasses; foreign errors are translated where
they enter (SDK cancellation codes, ffmpeg failures, model load errors).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batchscribe.common.config import Endpoint
from batchscribe.common.models import TranscriptionOptions

if TYPE_CHECKING:  # numpy comes with the local engine only
    import numpy as np
    from numpy.typing import NDArray

# Called with the number of seconds of audio the engine has finished so far (for watchdogs, progress).
ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class PreparedAudio:
    """A file normalised for engines: a 16 kHz mono 16-bit PCM WAV at `path`, or, for an engine that
    takes samples (`Engine.takes_samples`), the samples themselves, decoded in the worker's process.

    With `samples` set, `path` is the input they were decoded from (not a WAV): engines read
    `samples`. `duration` is always what was decoded, never the input header's word.
    """

    path: Path
    duration: float
    sample_rate: int = 16000
    samples: NDArray[np.float32] | None = field(default=None, repr=False, compare=False)


@dataclass
class Recognition:
    """One engine's answer for one file."""

    phrases: list[dict[str, Any]]
    duration: float
    language: str | None = None  # the language recognised (language identification)
    engine: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class EngineStopped(Exception):  # noqa: N818 - not an error: the consumer was told to stop
    """The engine gave up a file because its `stop` event was set (a planned stop of the consumer).

    Not a `ProcessingError`: nothing is wrong with the file or the endpoint; the job is handed back.
    """


class Engine(Protocol):
    """Built once per consumer process from its Endpoint; `transcribe` is called from several threads.

    `stop` is set when the consumer is told to stop: the engine ends the call soon (within about a
    second) by raising `EngineStopped`, so the file can be handed back instead of killed mid-way.
    `log_file`: where the engine may append a trace of its own of this call for support (the azure
    engine: the Speech SDK's log, `--log-folder`); engines without one ignore it.
    `takes_samples`: the engine reads `PreparedAudio.samples` (16 kHz mono float32 in memory), so
    the worker decodes non-WAV inputs in its own process instead of running ffmpeg to write a WAV
    (`worker.audio.prepare`); False: it is handed a WAV file.
    """

    endpoint: Endpoint
    takes_samples: bool

    def transcribe(self, audio: PreparedAudio, options: TranscriptionOptions,
                   progress: ProgressCallback | None = None,
                   stop: threading.Event | None = None, log_file: Path | None = None) -> Recognition: ...

    def close(self) -> None: ...
