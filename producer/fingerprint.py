"""Content hash and duration of each input: streamed sha256, cached in Redis by path+size+mtime.

Each file not in the cache is stat'ed once and opened once: its first block feeds both the hash
and the header parsers (WAV's RIFF chunks, MP4's boxes: `common.media.probe_duration_from_head`);
only other formats (ffprobe), WAVs with more than `HEAD` bytes of chunks before their audio and
MP4s whose `moov` lies past `HEAD` (box headers only) are opened again.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from batchscribe.common.errors import ProcessingError
from batchscribe.common.media import HEAD_BYTES, not_found_reason, probe_duration_from_head
from batchscribe.common.state import StateStore

CHUNK = 1 << 20
HEAD = HEAD_BYTES  # bytes of the first block kept for the header parser
_local = threading.local()


@dataclass
class Fingerprint:
    sha256: str = ""
    size: int = 0
    duration: float = 0.0
    error: str = ""  # why this file cannot be transcribed (permanent), "" if fine


def _buffer(chunk: int) -> bytearray:
    """One read buffer per thread, reused across files (allocating 1 MiB per small file costs more
    than hashing it)."""
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None or len(buf) != chunk:
        buf = _local.buf = bytearray(chunk)
    return buf


def hash_and_head(path: str, chunk: int = CHUNK, head: int = HEAD) -> tuple[str, bytes]:
    """sha256 of the file, streamed, and a copy of its first `min(head, chunk)` bytes."""
    digest = hashlib.sha256()
    buf = _buffer(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        n = fh.readinto(buf)
        first = bytes(view[: min(n, head)])
        while n:
            digest.update(view[:n])  # hashlib releases the GIL for large updates
            n = fh.readinto(buf)
    return digest.hexdigest(), first


def sha256_file(path: str, chunk: int = CHUNK) -> str:
    """Stream the file through sha256 with one reusable per-thread buffer."""
    return hash_and_head(path, chunk, head=0)[0]


def _stat(path: str) -> tuple[os.stat_result | None, str]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, not_found_reason(path, "listed")
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size == 0:
        return None, "empty file (0 bytes)"
    return st, ""


def _measure(path: str, size: int) -> Fingerprint:
    try:
        sha, head = hash_and_head(path)
        duration = probe_duration_from_head(path, head, size, strict=True)
    except ProcessingError as exc:
        return Fingerprint(size=size, error=exc.reason)
    except OSError as exc:
        return Fingerprint(size=size, error=f"cannot read file: {exc.strerror or exc}")
    return Fingerprint(sha256=sha, size=size, duration=duration)


def fingerprint_files(paths: Sequence[str], store: StateStore | None, threads: int = 8) -> list[Fingerprint]:
    """Fingerprints in input order; unchanged files come from the cache without reading them."""
    stats = [_stat(p) for p in paths]
    keys = [f"{p}|{st.st_size}|{st.st_mtime_ns}" if st else "" for p, (st, _) in zip(paths, stats)]
    cached = store.fingerprint_lookup([k for k in keys if k]) if store else []
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

    def measure(chunk: list[int]) -> list[Fingerprint]:
        return [_measure(paths[i], stats[i][0].st_size) for i in chunk]  # type: ignore[union-attr]

    # Hand the threads slices of files, not single files: a future per tiny file costs as much as
    # hashing it. Four slices per thread at least, so slow (large, remote) files still spread out.
    workers = max(1, threads)
    step = max(1, min(64, math.ceil(len(todo) / (workers * 4))))
    slices = [todo[k:k + step] for k in range(0, len(todo), step)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk, measured in zip(slices, pool.map(measure, slices)):
            for i, fp in zip(chunk, measured):
                out[i] = fp
    if store:
        store.fingerprint_store({keys[i]: f"{out[i].sha256}|{out[i].duration:.3f}"  # type: ignore[union-attr]
                           for i in todo if not out[i].error})  # type: ignore[union-attr]
    return [fp or Fingerprint(error="internal: not measured") for fp in out]
