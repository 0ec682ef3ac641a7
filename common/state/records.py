"""How a file record is kept in Redis: compact, and without a path written twice.

64 records of a batch share one hash (`Keys.file`), so a record costs its bytes and not a key's
~100 bytes of overhead. Each record is two fields of that hash:

* ``SLOT`` (index % 64): what the producer knows, written once (again by `retry-failed`): ``h`` and
  the sha256's 32 bytes (``-`` without one), then NUL-separated: duration; where the relative path
  is ("": the path as stored, ``#N``: its last N characters, else ``=REL``); the path (``.TAIL``
  below the batch's `base`, else ``!PATH``); the output and the job key, each "" when it is the
  one derived from the batch (`output_for(out, rel, options)`, ``sha256.options_key``); trailing
  empty fields are left out.
* ``SLOTs``: what became of it, written by the scripts (`common.lua` ``_RECORDS``):
  ``state|attempts|endpoint|started_at|finished_at|error_class|cached|reason`` (finished_at as
  ``+SECONDS`` after started_at when it is not before it); absent while the
  file is queued and untouched.

The output path, the job key and the relative path are therefore not stored at all for the files
of an ordinary batch, and the input path only below the folder the batch was submitted from.
NUL never occurs in a file or blob name; ``|`` may, which is why the path and the reason come last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from batchscribe.common.models import FileRecord, FileState, JobOptions, options_from_dict
from batchscribe.common.output import output_for

STATE_FIELDS = ("state", "attempts", "endpoint", "started_at", "finished_at", "error_class", "cached",
                "reason")
REASON_KEPT = 800  # characters of a reason kept in the record (outputs keep all of it, the attempt log 300)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def short_float(value: float) -> str:
    """Seconds with at most 3 decimals and no trailing zeros ("1.5", "0.01", "3")."""
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


@dataclass(frozen=True)
class BatchContext:
    """What every record of a batch shares (from its header): how its paths are spelled."""

    batch_id: str
    base: str  # a prefix of the input paths: they are stored below it
    out: str
    options: JobOptions
    options_key: str

    @classmethod
    def of_header(cls, batch_id: str, header: dict[str, str]) -> BatchContext:
        options = options_from_dict(json.loads(header.get("options") or "{}"))
        return cls(batch_id, header.get("base", ""), header.get("out", ""), options,
                   header.get("options_key") or options.cache_key())

    def job_key(self, sha256: str) -> str:
        return f"{sha256}.{self.options_key}" if sha256 else ""

    def output(self, rel: str) -> str:
        return output_for(self.out, rel, self.options) if self.out else ""


def pack_info(record: FileRecord, ctx: BatchContext, derived_output: bool = False) -> bytes:
    """The producer's half of a record (see the module docstring). `derived_output`: the record's
    output is known to be `ctx.output(rel)`."""
    try:
        head = b"h" + bytes.fromhex(record.sha256) if record.sha256 else b"-"
        sha_ok = len(head) in (1, 33)
    except ValueError:
        sha_ok = False
    if not sha_ok:  # not a sha256 (tests write any text): keep it as the job key says nothing else
        head = b"-"
    path, rel = record.path, record.rel
    spelled = f".{path[len(ctx.base):]}" if ctx.base and path.startswith(ctx.base) else f"!{path}"
    where = "" if rel == spelled[1:] else f"#{len(rel)}" if rel and path.endswith(rel) else f"={rel}"
    output = "" if derived_output or record.output == ctx.output(rel) else record.output
    derived = ctx.job_key(record.sha256) if len(head) == 33 else ""
    job = "" if record.job == derived else (record.job or "\x01")  # \x01: no job although a sha
    extra = "" if len(head) == 33 or not record.sha256 else record.sha256
    fields = [short_float(record.duration), where, spelled, output, job, extra]
    while fields[-1] == "":  # trailing empty fields are left out
        fields.pop()
    return head + _raw("\0".join(fields))


def unpack(batch_id: str, index: int, info: bytes, state: bytes | None, ctx: BatchContext) -> FileRecord:
    """A FileRecord from its two fields."""
    sha = info[1:33].hex() if info[:1] == b"h" else ""
    parts = _text(info[33:] if sha else info[1:]).split("\0")
    parts += [""] * (6 - len(parts))
    duration, where, spelled, output, job = parts[:5]
    if parts[5]:
        sha = parts[5]
    path = ctx.base + spelled[1:] if spelled[:1] == "." else spelled[1:]
    rel = spelled[1:] if not where else path[len(path) - int(where[1:]):] if where[:1] == "#" else where[1:]
    if job == "\x01":
        job = ""
    elif not job and info[:1] == b"h":
        job = ctx.job_key(sha)
    record = FileRecord(batch_id=batch_id, index=index, path=path, rel=rel, output=output or ctx.output(rel),
                        sha256=sha, duration=float(duration or 0), job=job)
    if state:
        values = _text(state).split("|", len(STATE_FIELDS) - 1)
        record.state = FileState(values[0])
        record.attempts = int(values[1] or 0)
        record.endpoint = values[2]
        record.started_at = float(values[3] or 0)
        finished = values[4]
        record.finished_at = (round(record.started_at + float(finished[1:]), 3) if finished[:1] == "+"
                              else float(finished or 0))
        record.error_class = values[5]
        if values[6]:
            record.extra["cached"] = values[6]
        record.reason = values[7]
    return record


def settled_fields(values: dict[str, Any]) -> list[str]:
    """Field/value pairs for the scripts: only what a record's second half holds."""
    out: list[str] = []
    for name, value in values.items():
        if name in STATE_FIELDS:
            text = f"{value:.3f}" if isinstance(value, float) else str(value)
            out += [name, text[:REASON_KEPT] if name == "reason" else text]
    return out
