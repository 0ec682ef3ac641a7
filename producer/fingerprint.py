"""Content hash and duration of each input: streamed sha256, cached in Redis by path+size+mtime.

Each file not in the cache is stat'ed once and opened once: its first block feeds both the hash
and the header parsers (WAV's RIFF chunks, MP4's boxes: `common.media.probe_duration_from_head`);
only other formats (ffprobe), WAVs with more than `HEAD` bytes of chunks before their audio and
MP4s whose `moov` lies past `HEAD` (box headers only) are opened again.

A blob is cached by location+size+ETag (what its listing said: an unchanged blob is never read
again). One that is not is downloaded once, hashed as it streams, into a temp file that its
duration is read from, then removed: dedupe is by content, so the producer reads each new blob
once; its worker reads it again to process it (docs/design.md §Blob storage).
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from batchscribe.common.errors import ProcessingError
from batchscribe.common.locations import is_blob, name_of, parse_blob
from batchscribe.common.media import HEAD_BYTES, not_found_reason, probe_duration_from_head
from batchscribe.common.state import StateStore

if TYPE_CHECKING:
    from batchscribe.common.blob import StoredObject

CHUNK = 1 << 20
# Local files below this are measured on the calling thread: their cost is a few system calls under
# the GIL, where more threads only contend for it (20,000 files of 3 KB: 25 µs per file on one
# thread, 49 on eight; from ~100 KB, where hashing runs without the GIL, two threads are ~1.6-1.9×
# faster than one: docs/benchmarks.md §1).
INLINE_BYTES = 64 * 1024
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


class Seen(NamedTuple):
    """What a file's stat (or a blob's listing) says: enough to tell it unchanged."""

    size: int
    version: str  # mtime in ns, or the blob's ETag


def _stat(path: str, blobs: Mapping[str, StoredObject]) -> tuple[Seen | None, str]:
    if is_blob(path):
        return _stat_blob(path, blobs)
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
    return Seen(st.st_size, str(st.st_mtime_ns)), ""


def _stat_blob(location: str, blobs: Mapping[str, StoredObject]) -> tuple[Seen | None, str]:
    from batchscribe.common.storage import blob_store

    try:
        item = blobs.get(location) or blob_store().stat(parse_blob(location))
    except ProcessingError as exc:
        return None, exc.reason
    if item is None:
        return None, "blob not found (deleted after it was listed?)"
    if item.size == 0:
        return None, "empty file (0 bytes)"
    return Seen(item.size, item.version), ""


def _measure(path: str, size: int) -> Fingerprint:
    if is_blob(path):
        return _measure_blob(path, size)
    try:
        sha, head = hash_and_head(path)
        duration = probe_duration_from_head(path, head, size, strict=True)
    except ProcessingError as exc:
        return Fingerprint(size=size, error=exc.reason)
    except OSError as exc:
        return Fingerprint(size=size, error=f"cannot read file: {exc.strerror or exc}")
    return Fingerprint(sha256=sha, size=size, duration=duration)


def _measure_blob(location: str, size: int) -> Fingerprint:
    """Hash a blob as it downloads into a temp file, then read its duration from that file."""
    from batchscribe.common.storage import read_chunks

    digest, head = hashlib.sha256(), b""
    suffix = Path(name_of(location)).suffix  # the probe judges a misnamed file by its extension
    with tempfile.NamedTemporaryFile(prefix="bs-probe-", suffix=suffix) as spool:
        try:
            for block in read_chunks(location):
                digest.update(block)
                if len(head) < HEAD:
                    head += block[: HEAD - len(head)]
                spool.write(block)
            spool.flush()
            duration = probe_duration_from_head(spool.name, head, size, strict=True)
        except ProcessingError as exc:
            return Fingerprint(size=size, error=exc.reason)
        except OSError as exc:
            return Fingerprint(size=size, error=f"cannot read blob: {exc.strerror or exc}")
    return Fingerprint(sha256=digest.hexdigest(), size=size, duration=duration)


def fingerprint_files(paths: Sequence[str], store: StateStore | None, threads: int = 8,
                      blobs: Mapping[str, StoredObject] | None = None) -> list[Fingerprint]:
    """Fingerprints in input order; unchanged files come from the cache without reading them.
    `blobs`: what the listing said of blob inputs (else each is looked up)."""
    stats = [_stat(p, blobs or {}) for p in paths]
    keys = [f"{p}|{st.size}|{st.version}" if st else "" for p, (st, _) in zip(paths, stats)]
    cached = store.fingerprint_lookup([k for k in keys if k]) if store else []
    hits = dict(zip([k for k in keys if k], cached))
    out: list[Fingerprint | None] = [None] * len(paths)
    todo: list[int] = []
    for i, ((st, err), key) in enumerate(zip(stats, keys)):
        if st is None:
            out[i] = Fingerprint(error=err)
        elif hits.get(key):
            sha, dur = hits[key]  # type: ignore[misc]
            out[i] = Fingerprint(sha256=sha, size=st.size, duration=dur)
        else:
            todo.append(i)

    def measure(chunk: list[int]) -> list[Fingerprint]:
        return [_measure(paths[i], stats[i][0].size) for i in chunk]  # type: ignore[union-attr]

    inline: list[int] = []
    pooled: list[int] = []
    for i in todo:
        small = stats[i][0].size < INLINE_BYTES and not is_blob(paths[i])  # type: ignore[union-attr]
        (inline if small else pooled).append(i)
    # Hand the threads slices of files, not single files: a future per file costs as much as hashing
    # a small one. Four slices per thread at least, so slow (large, remote) files still spread out.
    workers = max(1, threads)
    step = max(1, min(64, math.ceil(len(pooled) / (workers * 4))))
    slices = [pooled[k:k + step] for k in range(0, len(pooled), step)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(measure, slices)  # the large files start now; the small ones meanwhile here
        for i, fp in zip(inline, measure(inline)):
            out[i] = fp
        for chunk, measured in zip(slices, results):
            for i, fp in zip(chunk, measured):
                out[i] = fp
    if store:
        store.fingerprint_store({keys[i]: (out[i].sha256, out[i].duration)  # type: ignore[union-attr]
                                 for i in todo if not out[i].error})  # type: ignore[union-attr]
    return [fp or Fingerprint(error="internal: not measured") for fp in out]
