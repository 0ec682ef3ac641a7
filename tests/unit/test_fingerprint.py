"""Fingerprints of local files: small ones measured on the calling thread, large ones on the pool,
every answer in input order and the same as reading each file alone would give."""

from __future__ import annotations

import hashlib
import os
import wave
from pathlib import Path

import pytest

from batchscribe.producer import fingerprint as fingerprint_module
from batchscribe.producer.fingerprint import INLINE_BYTES, fingerprint_files


def a_wav(path: Path, seconds: float) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(os.urandom(2 * int(16000 * seconds)))
    return path


def test_small_and_large_files_interleaved_keep_their_order_hash_and_duration(tmp_path: Path) -> None:
    seconds = [0.1, 5.0, 0.5, 0.0001, 12.0, 1.0, 0.2, 3.0] * 5
    paths = [a_wav(tmp_path / f"{i}.wav", s) for i, s in enumerate(seconds)]
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"not a wav" * 10)
    names = [str(p) for p in paths] + [str(tmp_path / "empty.wav"), str(tmp_path / "junk.wav"), str(tmp_path / "gone.wav")]
    sizes = [p.stat().st_size for p in paths]
    assert min(sizes) < INLINE_BYTES < max(sizes)  # both paths are taken
    prints = fingerprint_files(names, None, threads=3)
    for path, seconds_, fp in zip(paths, seconds, prints):
        assert fp.error == "" and fp.size == path.stat().st_size
        assert fp.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert abs(fp.duration - seconds_) < 0.001
    assert [bool(fp.error) for fp in prints[-3:]] == [True, True, True]
    assert "empty" in prints[-3].error


def test_every_file_answers_the_same_whatever_the_inline_threshold(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [str(a_wav(tmp_path / f"{i}.wav", 0.05 * (i + 1))) for i in range(30)]
    inline = fingerprint_files(paths, None, threads=4)
    monkeypatch.setattr(fingerprint_module, "INLINE_BYTES", 0)  # every file on the pool
    pooled = fingerprint_files(paths, None, threads=4)
    assert inline == pooled
