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
import secrets
from pathlib import Path
from typing import Any

from batchscribe.common.models import FileRecord
from batchscribe.common.names import output_name
from batchscribe.common.phrases import lexical, seconds

TEMP_PREFIX = ".bs-"  # hidden temp files of `write_atomic`: `.bs-<random>.tmp`


def output_path(out_dir: str | Path, rel: str) -> Path:
    """``sub/dir/call.wav`` → ``OUT/sub/dir/call_wav.json`` (`common.names.output_name`)."""
    rel_path = Path(rel)
    return Path(out_dir) / rel_path.parent / output_name(rel_path.name)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: readers never see half a file.

    The temp file has a short name of its own (a long output name plus a suffix would not fit in
    255 bytes) and is created with the process umask like any other file (`mkstemp` makes 0600).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_temp(folder: Path) -> tuple[int, Path]:
    """A new hidden `.bs-<random>.tmp` in `folder`, opened for writing (O_EXCL: never an existing file
    or a planted symlink)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = folder / f"{TEMP_PREFIX}{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """UTF-8 JSON; a name byte that is not UTF-8 (a lone surrogate, see `common.names`) is written as
    the JSON escape ``\\udcXX``, which `json.load` reads back to the same name."""
    text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode("utf-8", "backslashreplace"))


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
    return {"AudioFileName": Path(record.path).name, "AudioFileUrl": record.path,
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


def plain_text(document: dict[str, Any]) -> str:
    entry = document["AudioFileResults"][0]
    combined = entry.get("CombinedResults") or [{}]
    return (combined[0].get("Display") or "") + "\n"


def write_document(record: FileRecord, document: dict[str, Any], formats: list[str]) -> None:
    """Write the JSON (always) and the requested extra formats next to it."""
    write_json_atomic(record.output, document)
    if "txt" in formats and document["AudioFileResults"][0]["TranscriptionStatus"] == "Succeeded":
        write_atomic(Path(record.output).with_suffix(".txt"), plain_text(document).encode("utf-8"))
