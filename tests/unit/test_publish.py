"""The submit fast paths, without Redis: message templates, argument reprs, one-read fingerprints,
WAV headers from bytes already read, file records. Each is checked against the slow original."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from celery.utils.saferepr import saferepr

from batchscribe.common.celery_app import make_app
from batchscribe.common.errors import AudioError
from batchscribe.common.media import (
    parse_wav_header,
    probe_duration,
    probe_duration_from_head,
    read_wav_header,
)
from batchscribe.common.models import FileRecord, FileState, TranscriptionOptions, job_key, job_key_for
from batchscribe.common.publish import _BODY, _EMBED, TaskSpec, _MessageBuilder
from batchscribe.common.settings import Settings
from batchscribe.producer.fingerprint import _measure, hash_and_head, sha256_file

OPTIONS = TranscriptionOptions(language="de-DE", candidate_languages=("en-US", "it's")).to_dict()
AWKWARD = ["/in/a.wav", "/in/naïve ü 日本.wav", "/in/it's.wav", '/in/"q".wav', "/in/back\\slash.wav",
           "/in/tab\there.wav", "/in/nl\nx.wav", "/in/\udcff-surrogate.wav", "/in/emoji😀.wav",
           "/" + "x" * 1500]


def body_of(message: dict[str, Any]) -> bytes:
    """A message's body as kombu decodes it (base64, or JSON text as it is: the app's setting)."""
    if message["properties"]["body_encoding"] == "base64":
        return base64.b64decode(message["body"])
    return str(message["body"]).encode()


@pytest.fixture(scope="module")
def builder() -> _MessageBuilder:
    app = make_app(Settings.from_env({}, redis_url="redis://127.0.0.1:1/0"), "unit")
    return _MessageBuilder(app, "gen1@host", events=True)


@pytest.mark.parametrize("path", AWKWARD)
def test_message_is_what_celery_would_encode(builder: _MessageBuilder, path: str) -> None:
    s = TaskSpec("ab" * 32 + ".0123456789abcdef", OPTIONS, path, 1.23456, "pool.de-DE", "batch-7")
    raw, event_raw = builder(s, "t1")
    message = json.loads(raw)
    args, kwargs = [s.job_key, OPTIONS], {"path": path, "duration": 1.235, "batch": "batch-7"}
    body = body_of(message)
    assert body == json.dumps([args, kwargs, _EMBED]).encode()  # byte for byte
    headers = message["headers"]
    assert headers["argsrepr"] == saferepr(args, 1024, maxlevels=3)
    assert headers["kwargsrepr"] == saferepr(kwargs, 1024, maxlevels=3)
    assert headers["id"] == headers["root_id"] == message["properties"]["correlation_id"] == "t1"
    assert message["properties"]["delivery_info"] == {"exchange": "", "routing_key": "pool.de-DE"}
    # the template path gives exactly json.dumps of the same document
    assert raw == json.dumps({**message, "body": message["body"]})
    event = json.loads(event_raw)
    fields = json.loads(body_of(event))
    assert fields["uuid"] == "t1" and fields["type"] == "task-sent" and fields["queue"] == "pool.de-DE"
    assert fields["args"] == headers["argsrepr"] and fields["kwargs"] == headers["kwargsrepr"]
    assert body_of(event) == json.dumps(fields).encode()
    assert event_raw == json.dumps(event)


def test_body_template_matches_json_dumps_for_odd_values() -> None:
    for job in ["j", 'q"uote', "ü\x00"]:
        for duration in (0.1, 3, 1e-7, 123456789.125):
            expected = json.dumps([[job, OPTIONS], {"path": job, "duration": duration, "batch": job}, _EMBED])
            got = _BODY.fill({"job_key": json.dumps(job), "options": json.dumps(OPTIONS),
                              "path": json.dumps(job), "duration": json.dumps(duration),
                              "batch": json.dumps(job)})
            assert got == expected


def test_options_with_awkward_strings_take_saferepr(builder: _MessageBuilder) -> None:
    options = {**OPTIONS, "language": "x'y\\z"}
    raw, _ = builder(TaskSpec("k", options, "/p.wav", 1.0, "q"), "t2")
    assert json.loads(raw)["headers"]["argsrepr"] == saferepr(["k", options], 1024, maxlevels=3)


# ---- one read per file ----------------------------------------------------------------------------


def wav(tmp_path: Path, name: str, data: bytes = b"\x01\x00" * 800, extra: bytes = b"", rate: int = 16000,
        declared: int | None = None) -> Path:
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    size = len(data) if declared is None else declared
    body = b"WAVE" + extra + fmt + struct.pack("<4sI", b"data", size) + data
    path = tmp_path / name
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_hash_and_head_equals_hashlib(tmp_path: Path) -> None:
    for size in (1, 3244, 1 << 16, (1 << 20) + 17, 3 << 20):
        blob = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        path = tmp_path / f"f{size}"
        path.write_bytes(blob)
        sha, head = hash_and_head(str(path))
        assert sha == hashlib.sha256(blob).hexdigest() == sha256_file(str(path), chunk=4096)
        assert head == blob[: 1 << 16]


def test_header_from_bytes_equals_header_from_file(tmp_path: Path) -> None:
    cases = [wav(tmp_path, "plain.wav"),
             wav(tmp_path, "list.wav", extra=struct.pack("<4sI", b"LIST", 5) + b"abcde\0"),
             wav(tmp_path, "big-list.wav", extra=struct.pack("<4sI", b"JUNK", 70000) + b"\0" * 70000),
             wav(tmp_path, "truncated.wav", declared=10_000),
             wav(tmp_path, "streaming.wav", declared=0xFFFFFFFF)]
    for path in cases:
        blob = path.read_bytes()
        head = blob[: 1 << 16]
        from_file = read_wav_header(path)
        parsed = parse_wav_header(head, len(blob))
        if path.name == "big-list.wav":
            assert parsed is None  # chunks beyond the first block: the caller reads the file
        else:
            assert parsed == from_file
        for strict in (False, True):
            try:
                expected: Any = probe_duration(path, strict=strict)
            except AudioError as exc:
                expected = exc.reason
            try:
                got: Any = probe_duration_from_head(path, head, len(blob), strict=strict)
            except AudioError as exc:
                got = exc.reason
            assert got == expected, path.name


def test_header_errors_from_bytes_equal_file_errors(tmp_path: Path) -> None:
    bad = {"no-fmt.wav": b"RIFF\x10\0\0\0WAVEdata\x02\0\0\0\0\0",
           "short.wav": b"RIFF\x10\0\0\0WAVEfmt ",
           "chunk-past-end.wav": b"RIFF\x10\0\0\0WAVELIST\xff\0\0\0ab",
           "text.wav": b"hello, this is not audio at all\n"}
    for name, blob in bad.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(AudioError) as slow:
            probe_duration(path, strict=True)
        with pytest.raises(AudioError) as fast:
            probe_duration_from_head(path, blob, len(blob), strict=True)
        assert fast.value.reason == slow.value.reason, name


def test_measure_reads_like_before(tmp_path: Path) -> None:
    path = wav(tmp_path, "a.wav")
    fp = _measure(str(path), path.stat().st_size)
    assert fp.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fp.duration == probe_duration(path, strict=True) == 0.05 and not fp.error
    cut = wav(tmp_path, "cut.wav", declared=10_000)
    assert "truncated WAV" in _measure(str(cut), cut.stat().st_size).error


# ---- records and keys ------------------------------------------------------------------------------


def old_to_redis(record: FileRecord) -> dict[str, str]:
    data = {k: v for k, v in asdict(record).items() if k != "extra"}
    data["state"] = record.state.value
    out = {k: (f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in data.items()}
    out.update(record.extra)
    return out


def test_to_redis_equals_the_asdict_version() -> None:
    records = [FileRecord("b", 3, "/p", "r", "o"),
               FileRecord("b", 3, "/p", "r", "o", sha256="x", size=5, duration=1.23456, job="j",
                          state=FileState.FAILED, attempts=2, endpoint="e", error_class="c", reason="r",
                          queued_at=1.5, started_at=2, finished_at=3.0, extra={"k": "v", "path": "override"})]
    for record in records:
        assert record.to_redis() == old_to_redis(record)
        assert list(record.to_redis()) == list(old_to_redis(record))
        assert FileRecord.from_redis(record.to_redis()).to_redis() == FileRecord.from_redis(
            old_to_redis(record)).to_redis()


def test_cache_key_is_computed_once_and_stays_out_of_the_fields() -> None:
    options = TranscriptionOptions(language="fr-FR", nbest=3)
    key = options.cache_key()
    assert options.cache_key() is key
    assert options == TranscriptionOptions(language="fr-FR", nbest=3)
    assert hash(options) == hash(TranscriptionOptions(language="fr-FR", nbest=3))
    assert "_cache_key" not in options.to_dict()
    assert job_key("s", options) == job_key_for("s", key) == f"s.{key}"
