"""Domain records shared by producer and worker: options of a batch, file states, file records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from batchscribe.common.conversion import ConversionOptions, is_conversion

PROFANITY_MODES = ("masked", "removed", "raw")


class FileState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its batch was cancelled before it finished (`producer.cancel`)

    @property
    def terminal(self) -> bool:
        return self in (FileState.DONE, FileState.FAILED, FileState.CANCELLED)


@dataclass(frozen=True)
class TranscriptionOptions:
    """Per-batch options. Everything here changes the transcript, so all of it is in the dedupe key."""

    language: str = "en-US"
    engine: str | None = None  # restrict to one engine kind; None: any endpoint of the language
    nbest: int = 1
    word_timestamps: bool = False
    profanity: str = "masked"
    diarization: bool = False
    candidate_languages: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidate_languages"] = list(self.candidate_languages)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TranscriptionOptions:
        values = dict(data)
        values["candidate_languages"] = tuple(values.get("candidate_languages") or ())
        return cls(**values)

    def cache_key(self) -> str:
        """Short stable digest of the options, combined with the content hash into the job key.

        Computed once per instance (the options are frozen): `job_key` runs for every file.
        """
        cached: str | None = self.__dict__.get("_cache_key")
        if cached is None:
            raw = json.dumps(self.to_dict(), sort_keys=True).encode()
            cached = hashlib.sha256(raw).hexdigest()[:16]
            object.__setattr__(self, "_cache_key", cached)  # not a field: no effect on eq/hash/asdict
        return cached


JobOptions = TranscriptionOptions | ConversionOptions


def options_from_dict(data: dict[str, Any]) -> JobOptions:
    """A batch's or a task's options, of whichever kind they are (conversions say so)."""
    if is_conversion(data):
        return ConversionOptions.from_dict(data)
    return TranscriptionOptions.from_dict(data)


def compact_options(options: JobOptions) -> dict[str, Any]:
    """The options without the values that are their defaults (a conversion keeps its `kind`):
    what a task message carries. `options_from_dict` reads it back to the same options."""
    default: dict[str, Any] = type(options)().to_dict()
    return {k: v for k, v in options.to_dict().items() if v != default.get(k) or k == "kind"}


def job_key(sha256: str, options: JobOptions) -> str:
    """The unit of dedupe: same bytes + same result-changing options = one engine call."""
    return f"{sha256}.{options.cache_key()}"


def job_key_for(sha256: str, options_key: str) -> str:
    """`job_key` with `options.cache_key()` already computed (once per batch)."""
    return f"{sha256}.{options_key}"


@dataclass
class FileRecord:
    """One input of a batch (`common.state.records` says how Redis keeps it). `size` and
    `queued_at` are not kept there."""

    batch_id: str
    index: int
    path: str  # absolute input path as the producer saw it (shared storage)
    rel: str  # path relative to the submitted root, for mirrored output folders
    output: str  # where its JSON goes
    sha256: str = ""
    size: int = 0
    duration: float = 0.0
    job: str = ""
    state: FileState = FileState.QUEUED
    attempts: int = 0
    endpoint: str = ""
    error_class: str = ""
    reason: str = ""
    queued_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def to_redis(self) -> dict[str, str]:
        """Every field as a string (floats with 3 decimals), then `extra`. Built field by field:
        `dataclasses.asdict` deep-copies, which cost more than the rest of a record's submit."""
        s = _redis_str
        out = {
            "batch_id": s(self.batch_id), "index": s(self.index), "path": s(self.path), "rel": s(self.rel),
            "output": s(self.output), "sha256": s(self.sha256), "size": s(self.size),
            "duration": s(self.duration), "job": s(self.job), "state": self.state.value,
            "attempts": s(self.attempts), "endpoint": s(self.endpoint), "error_class": s(self.error_class),
            "reason": s(self.reason), "queued_at": s(self.queued_at), "started_at": s(self.started_at),
            "finished_at": s(self.finished_at),
        }
        if self.extra:
            out.update(self.extra)
        return out

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> FileRecord:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            batch_id=data.get("batch_id", ""),
            index=int(data.get("index", 0)),
            path=data.get("path", ""),
            rel=data.get("rel", ""),
            output=data.get("output", ""),
            sha256=data.get("sha256", ""),
            size=int(data.get("size", 0) or 0),
            duration=float(data.get("duration", 0) or 0),
            job=data.get("job", ""),
            state=FileState(data.get("state", "queued")),
            attempts=int(data.get("attempts", 0) or 0),
            endpoint=data.get("endpoint", ""),
            error_class=data.get("error_class", ""),
            reason=data.get("reason", ""),
            queued_at=float(data.get("queued_at", 0) or 0),
            started_at=float(data.get("started_at", 0) or 0),
            finished_at=float(data.get("finished_at", 0) or 0),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _redis_str(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
