"""The API's request and response bodies (pydantic): what /docs and /openapi.json describe.

Field names follow the Azure Speech batch-transcription API where it has one (`displayName`,
`self`, `links`, `values` + `@nextLink` pages, camelCase); the rest are ours.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from batchscribe.common.models import PROFANITY_MODES, TranscriptionOptions
from batchscribe.common.output import Outputs

LANGUAGE = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$"  # a BCP-47 tag such as en-US (it names a queue)
_DEFAULTS = TranscriptionOptions()


class Options(BaseModel):
    """The options of `batchscribe submit`; all but the outputs (`txt`, `srt`, `vtt`, `combinedJson`,
    `logFolder`) change the transcript (dedupe key)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    language: str = Field(_DEFAULTS.language, pattern=LANGUAGE)
    engine: Literal["azure", "local"] | None = Field(None, description="only endpoints of this engine")
    nbest: int = Field(_DEFAULTS.nbest, ge=1, le=10)
    word_timestamps: bool = _DEFAULTS.word_timestamps
    profanity: Literal[PROFANITY_MODES] = _DEFAULTS.profanity  # type: ignore[valid-type]
    diarization: bool = _DEFAULTS.diarization
    candidate_languages: list[str] = Field(default_factory=list, description="language identification")
    txt: bool = Field(False, description="also write a plain-text transcript next to each JSON")
    srt: bool = Field(False, description="also write SRT subtitles next to each JSON (name_ext.srt)")
    vtt: bool = Field(False, description="also write WebVTT subtitles next to each JSON (name_ext.vtt)")
    combined_json: bool = Field(False, description="also write OUT/results.json, every file's result, "
                                "when the batch completes")
    log_folder: str | None = Field(None, description="write each file's Speech SDK log here (absolute, "
                                   "under an --allow-root folder)")

    @field_validator("candidate_languages")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not re.match(LANGUAGE, v)]
        if bad:
            raise ValueError(f"not a language tag: {bad[0]!r}")
        return value

    @field_validator("log_folder")
    @classmethod
    def _log_folder(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value, "logFolder")

    def transcription(self) -> TranscriptionOptions:
        return TranscriptionOptions(language=self.language, engine=self.engine, nbest=self.nbest,
                                    word_timestamps=self.word_timestamps, profanity=self.profanity,
                                    diarization=self.diarization,
                                    candidate_languages=tuple(self.candidate_languages))

    def outputs(self) -> Outputs:
        return Outputs(txt=self.txt, srt=self.srt, vtt=self.vtt, combined_json=self.combined_json,
                       log_folder=self.log_folder)


class BatchRequest(BaseModel):
    """POST /batches."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1, description="files and folders on the shared storage "
                              "(absolute paths under the server's --allow-root folders)")
    out: str = Field(description="output folder (absolute, under an --allow-root folder)")
    options: Options = Field(default_factory=lambda: Options.model_validate({}))
    displayName: str | None = Field(None, max_length=256)

    @field_validator("inputs")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            _absolute(path, "inputs")
        return value

    @field_validator("out")
    @classmethod
    def _out(cls, value: str) -> str:
        return _absolute(value, "out")


def _absolute(path: str, field: str) -> str:
    if "://" in path:
        raise ValueError(f"{path!r}: object-storage URLs are not supported yet; "
                         "give a path on the shared storage")
    if not path.startswith("/"):
        raise ValueError(f"{path!r}: {field} must be an absolute path on the shared storage")
    if "\x00" in path:
        raise ValueError(f"{field}: a path cannot hold a NUL character")
    return path


class Counts(BaseModel):
    total: int
    queued: int
    running: int
    retrying: int
    done: int
    failed: int
    cancelled: int


class Audio(BaseModel):
    total: float
    done: float


class Skipped(BaseModel):
    notMedia: int
    symlinkedFolders: int


class Submitted(BaseModel):
    """What POST /batches did with the inputs (the `submit` line)."""

    files: int
    queued: int = Field(description="new engine work: one task per unique content")
    duplicates: int = Field(description="same content as an earlier input of this batch")
    attached: int = Field(description="already queued or running for another batch")
    cached: int = Field(description="transcribed before: output written from the cache")
    unusable: int = Field(description="failed at once, with a reason")


class Batch(BaseModel):
    """A batch: its status (queued, running, succeeded, failed: finished with some files failed,
    cancelled), counts by file state, failures by error class, audio and ETA."""

    id: str
    self_: str = Field(alias="self")
    displayName: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    createdDateTime: str | None
    finishedDateTime: str | None
    cancelledDateTime: str | None
    input: str
    output: str
    options: dict[str, Any]
    counts: Counts
    failures: dict[str, int]
    audioSeconds: Audio
    speedTimesRealTime: float
    etaSeconds: float | None
    skipped: Skipped
    links: dict[str, str]
    submitted: Submitted | None = None

    model_config = ConfigDict(populate_by_name=True)


class BatchPage(BaseModel):
    values: list[Batch]
    nextLink: str | None = Field(None, alias="@nextLink")

    model_config = ConfigDict(populate_by_name=True)


class FileEntry(BaseModel):
    index: int
    self_: str = Field(alias="self")
    input: str
    output: str
    status: Literal["queued", "running", "retrying", "done", "failed", "cancelled"]
    durationSeconds: float
    attempts: int
    endpoint: str | None
    errorClass: str | None
    reason: str | None
    startedDateTime: str | None
    finishedDateTime: str | None

    model_config = ConfigDict(populate_by_name=True)


class FilePage(BaseModel):
    values: list[FileEntry]
    nextLink: str | None = Field(None, alias="@nextLink")

    model_config = ConfigDict(populate_by_name=True)


class ErrorBody(BaseModel):
    code: str
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what} for status, what in (
        (400, "an input that cannot be used"), (401, "no valid bearer token"),
        (403, "a path outside the allowed roots"), (404, "no such batch or file"),
        (409, "conflict with the batch's state or another batch"),
        (422, "the request does not match the schema"),
        (503, "Redis is unavailable"))
}
