"""Content hash and duration of each input: streamed sha256, cached in Redis by path+size+mtime."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from common.errors import ProcessingError
from common.media import probe_duration
from common.state import StateStore

CHUNK = 1 << 20


@dataclass
class Fingerprint:
    sha256: str = ""
    size: int = 0
    duration: float = 0.0
    error: str = ""  # why this file cannot be transcribed (permanent), "" if fine


def sha256_file(path: str, chunk: int = CHUNK) -> str:
    """Stream the file through sha256 with one reusable buffer (hashlib releases the GIL)."""
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def _stat(path: str) -> tuple[os.stat_result | None, str]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "file not found (deleted after it was listed?)"
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"
    if not os.path.isfile(path):
        return None, "not a regular file"
    if st.st_size == 0:
        return None, "empty file (0 bytes)"
    return st, ""


def _measure(path: str, size: int) -> Fingerprint:
    try:
        sha = sha256_file(path)
        duration = probe_duration(path, strict=True)
    except ProcessingError as exc:
        return Fingerprint(size=size, error=exc.reason)
    except OSError as exc:
        return Fingerprint(size=size, error=f"cannot read file: {exc.strerror or exc}")
    return Fingerprint(sha256=sha, size=size, duration=duration)


def fingerprint_files(paths: Sequence[str], store: StateStore | None, threads: int = 8) -> list[Fingerprint]:
    """Fingerprints in input order; unchanged files come from the cache without reading them."""
    stats = [_stat(p) for p in paths]
    keys = [f"{p}|{st.st_size}|{st.st_mtime_ns}" if st else "" for p, (st, _) in zip(paths, stats)]
    cached = store.probe_lookup([k for k in keys if k]) if store else []
    hits = dict(zip([k for k in keys if k], cached))
    out: list[Fingerprint | None] = [None] * len(paths)
    todo: list[int] = []
    for i, ((st, err), key) in enumerate(zip(stats, keys)):
        if st is None:
            out[i] = Fingerprint(error=err)
        elif hits.get(key):
            sha, _, dur = hits[key].partition("|")  # type: ignore[union-attr]
            out[i] = Fingerprint(sha256=sha, size=st.st_size, duration=float(dur))
        else:
            todo.append(i)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        measured = pool.map(lambda i: _measure(paths[i], stats[i][0].st_size), todo)  # type: ignore[union-attr]
        for i, fp in zip(todo, measured):
            out[i] = fp
    if store:
        store.probe_store({keys[i]: f"{out[i].sha256}|{out[i].duration:.3f}"  # type: ignore[union-attr]
                           for i in todo if not out[i].error})  # type: ignore[union-attr]
    return [fp or Fingerprint(error="internal: not measured") for fp in out]
