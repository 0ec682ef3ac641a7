"""Per-file outputs in batch-processing-kit's schema, written atomically, and the run summary.

Schema (one file per input, ``<name>_<ext>.json`` in the input's mirrored sub-folder):

    {"AudioFileResults": [{
        "AudioFileName", "AudioFileUrl", "AudioFileHash", "AudioLengthInSeconds",
        "TranscriptionStatus": "Succeeded" | "Failed",
        "CombinedResults": [{"ChannelNumber", "Lexical", "ITN", "MaskedITN", "Display"}],
        "SegmentResults": [{"RecognitionStatus", "Offset", "Duration", "OffsetInSeconds",
                            "DurationInSeconds", "Language", "ChannelNumber", "NBest": [...]}],
        "LastProcessedOffsetInSeconds",
        # ours, on failures: "FailureReason", "ErrorClass"
    }]}
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from batchscribe.common.conversion import ConversionOptions
from batchscribe.common.errors import InputError
from batchscribe.common.locations import join, name_of, with_suffix
from batchscribe.common.models import FileRecord
from batchscribe.common.names import fitted, output_name
from batchscribe.common.phrases import lexical, seconds
from batchscribe.common.storage import Pending, write_bytes
from batchscribe.common.subtitles import srt, vtt


def output_path(out_dir: str | Path, rel: str) -> Path:
    """``sub/dir/call.wav`` → ``OUT/sub/dir/call_wav.json`` (`common.names.output_name`)."""
    rel_path = Path(rel)
    return Path(out_dir) / rel_path.parent / output_name(rel_path.name)


def output_location(out: str | Path, rel: str, suffix: str = ".json") -> str:
    """`output_path` for any location: a folder or a blob prefix (`common.locations`)."""
    parent, _, name = rel.replace(os.sep, "/").rpartition("/")
    return join(out, f"{parent}/{output_name(name, suffix)}" if parent else output_name(name, suffix))


def write_atomic(location: str | Path, data: bytes) -> None:
    """Readers never see half a file (`common.storage.write_bytes`: a path or a blob)."""
    write_bytes(location, data)


def _json_bytes(value: Any, pad: str = "") -> bytes:
    """`value` as indented JSON (indent 2, nested under `pad`); a name byte that is not UTF-8 (a lone
    surrogate, see `common.names`) is written as the JSON escape ``\\udcXX``, which `json.load` reads
    back to the same name."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    if pad:
        text = text.replace("\n", "\n" + pad)
    return text.encode("utf-8", "backslashreplace")


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """UTF-8 JSON, indented, written atomically (`write_atomic`)."""
    write_atomic(path, _json_bytes(payload) + b"\n")


class JsonArray:
    """A JSON array whose items are appended one by one to an anonymous temp file, for a document
    whose head needs totals known only once every item has been seen (`run_summary.json`): a
    summary of a million files never sits in memory. `write_json_document` copies it in."""

    def __init__(self) -> None:
        self._spool: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.count = 0

    def append(self, item: Any) -> None:
        self._spool.write(_array_item(item, first=not self.count))
        self.count += 1

    def copy_into(self, pending: Pending) -> None:
        self._spool.seek(0)
        pending.copy_from(self._spool)

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> JsonArray:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


_ITEM_PAD = "    "  # items of a top-level array, as `json.dumps(indent=2)` indents them


def _array_item(item: Any, first: bool) -> bytes:
    return (b"\n" if first else b",\n") + _ITEM_PAD.encode() + _json_bytes(item, _ITEM_PAD)


def write_json_document(pending: Pending, document: dict[str, Any]) -> None:
    """`document` as `write_json_atomic` writes it, into `pending`; a top-level value may be a
    `JsonArray` (copied from its spool) or an iterator (written item by item as it yields): neither
    is ever a list in memory."""
    pending.write(b"{")
    for i, (key, value) in enumerate(document.items()):
        pending.write((",\n  " if i else "\n  ").encode() + _json_bytes(key) + b": ")
        if isinstance(value, JsonArray):
            pending.write(b"[")
            value.copy_into(pending)
            pending.write(b"\n  ]" if value.count else b"]")
        elif isinstance(value, Iterator):
            pending.write(b"[")
            count = 0
            for item in value:
                pending.write(_array_item(item, first=not count))
                count += 1
            pending.write(b"\n  ]" if count else b"]")
        else:
            pending.write(_json_bytes(value, "  "))
    pending.write(b"\n}\n" if document else b"}\n")


def _with_seconds(entry: dict[str, Any], shift: int = 0) -> dict[str, Any]:
    if "Offset" in entry:
        entry["Offset"] = int(entry["Offset"]) + shift
        entry["OffsetInSeconds"] = seconds(entry["Offset"])
    if "Duration" in entry:
        entry["DurationInSeconds"] = seconds(entry["Duration"])
    return entry


def _segment(phrase: dict[str, Any], language: str, nbest: int) -> dict[str, Any]:
    seg = copy.deepcopy(phrase)
    if not seg.get("NBest"):
        display = seg.get("DisplayText", "")
        seg["NBest"] = [{"Confidence": None, "Lexical": lexical(display), "ITN": display,
                         "MaskedITN": display, "Display": display}]
    seg["NBest"] = seg["NBest"][: max(1, nbest)]
    for alt in seg["NBest"]:
        for word in alt.get("Words", []) or []:
            _with_seconds(word)
    seg.setdefault("RecognitionStatus", "Success")
    seg["Language"] = seg.get("Language") or language
    seg["ChannelNumber"] = None
    return _with_seconds(seg)


def _combined(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tops = [s["NBest"][0] for s in segments if s.get("NBest")]

    def field(name: str) -> str:
        return " ".join(t.get(name, "") for t in tops if t.get(name))

    return [{"ChannelNumber": None, "Lexical": field("Lexical"), "ITN": field("ITN"),
             "MaskedITN": field("MaskedITN"), "Display": field("Display")}]


def _header(record: FileRecord, duration: float) -> dict[str, Any]:
    return {"AudioFileName": name_of(record.path), "AudioFileUrl": record.path,
            "AudioFileHash": record.sha256, "AudioLengthInSeconds": round(duration, 3)}


def success_document(record: FileRecord, result: dict[str, Any]) -> dict[str, Any]:
    """The output of a transcribed file, built from a job result (shared by all its inputs)."""
    options = result.get("options", {})
    language = result.get("language") or options.get("language", "")
    segments = [_segment(p, language, int(options.get("nbest", 1))) for p in result.get("phrases", [])
                if p.get("RecognitionStatus", "Success") == "Success"]
    last = max((s["OffsetInSeconds"] + s["DurationInSeconds"] for s in segments), default=0.0)
    entry = _header(record, float(result.get("duration", record.duration)))
    entry.update(TranscriptionStatus="Succeeded", CombinedResults=_combined(segments),
                 SegmentResults=segments, LastProcessedOffsetInSeconds=round(last, 3),
                 Engine=result.get("engine", ""), Endpoint=result.get("endpoint", ""))
    if result.get("language") and options.get("candidate_languages"):
        entry["DetectedLanguage"] = result["language"]
    return {"AudioFileResults": [entry]}


def failure_document(record: FileRecord, error_class: str, reason: str) -> dict[str, Any]:
    entry = _header(record, record.duration)
    entry.update(TranscriptionStatus="Failed", ErrorClass=error_class, FailureReason=reason,
                 CombinedResults=[], SegmentResults=[], LastProcessedOffsetInSeconds=0.0)
    return {"AudioFileResults": [entry]}


# A conversion batch's per-file output is the converted media itself (its header's `formats`).
MEDIA_FORMAT = "media"
FAILED_SUFFIX = ".failed.json"


def media_output_location(out: str | Path, rel: str, extension: str) -> str:
    """Where a conversion writes: ``sub/talk.mp4`` → ``OUT/sub/talk.mp3`` (the input's stem, the
    target's extension, as ``ffmpeg -i talk.mp4 talk.mp3`` does). Over-long names are cut as
    transcripts' are (`common.names.fitted`); two inputs that would share an output (``talk.mp4``
    and ``talk.mov``) refuse the batch, naming both (`producer.submit.unique_outputs`)."""
    parent, _, name = rel.replace(os.sep, "/").rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
    base = fitted(stem, f".{extension}", name)
    return join(out, f"{parent}/{base}" if parent else base)


def output_for(out: str | Path, rel: str, options: Any) -> str:
    """Where an input's output goes, for either kind of batch (`options`: transcription or conversion)."""
    if isinstance(options, ConversionOptions):
        return media_output_location(out, rel, options.spec.extension)
    return output_location(out, rel)


def failure_location(output: str) -> str:
    """Where a conversion that failed leaves its record: beside the output it could not write."""
    return output + FAILED_SUFFIX


def conversion_failure(record: FileRecord, error_class: str, reason: str) -> dict[str, Any]:
    """The record of a conversion that failed: which input, why, and what was asked."""
    return {"InputFile": name_of(record.path), "InputUrl": record.path, "InputHash": record.sha256,
            "Output": record.output, "Status": "Failed", "ErrorClass": error_class, "FailureReason": reason}


def plain_text(document: dict[str, Any]) -> str:
    entry = document["AudioFileResults"][0]
    combined = entry.get("CombinedResults") or [{}]
    return (combined[0].get("Display") or "") + "\n"


# The extra per-file formats a batch may ask for (its header's `formats`), each written next to
# the JSON with this suffix instead of ``.json``; only for files that succeeded.
TEXT_FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {"txt": plain_text, "srt": srt, "vtt": vtt}
# Not a per-file format: the batch's `OUT/results.json` (`common.summary.write_combined`).
COMBINED_JSON = "combined-json"


@dataclass(frozen=True)
class Outputs:
    """What a batch writes besides each file's JSON, and where its logs go (none of it changes a
    transcript, so none of it is in the dedupe key): `submit`'s --txt, --srt, --vtt,
    --combined-json and --log-folder, the API's options of the same names."""

    txt: bool = False
    srt: bool = False
    vtt: bool = False
    combined_json: bool = False  # OUT/results.json when the batch completes
    log_folder: str | None = None  # run.log and the Speech SDK's log of each file

    @property
    def formats(self) -> list[str]:
        """The batch header's `formats` (`write_document`, `common.summary`)."""
        chosen = {"txt": self.txt, "srt": self.srt, "vtt": self.vtt, COMBINED_JSON: self.combined_json}
        return ["json", *(name for name, on in chosen.items() if on)]

    @classmethod
    def of_batch(cls, header: Mapping[str, str]) -> Outputs:
        """What a batch asked for, from its header (`formats`, `log_folder`)."""
        formats = (header.get("formats") or "").split(",")
        return cls(txt="txt" in formats, srt="srt" in formats, vtt="vtt" in formats,
                   combined_json=COMBINED_JSON in formats, log_folder=header.get("log_folder") or None)


def prepare_log_folder(folder: str, name: str = "--log-folder") -> str:
    """The folder as an absolute path (workers elsewhere write there), created now so that a path
    that cannot be used is refused before anything is queued; `name` is what the user called it."""
    path = Path(folder).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {name} {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{name} {path} is not writable")
    return str(path)


def write_document(record: FileRecord, document: dict[str, Any], formats: list[str]) -> None:
    """Write the JSON (always) and the requested extra formats next to it."""
    write_json_atomic(record.output, document)
    if document["AudioFileResults"][0]["TranscriptionStatus"] != "Succeeded":
        return
    for fmt, render in TEXT_FORMATS.items():
        if fmt in formats:
            write_atomic(with_suffix(record.output, f".{fmt}"), render(document).encode("utf-8"))
