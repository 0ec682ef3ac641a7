"""The dedupe result cache: what a finished job leaves for later dedupe hits, and how a hit reads it.

Redis keeps one small **pointer** per done job (`Keys.result`, for `BATCHSCRIBE_RESULT_TTL`): where
the job's result is stored (`artifact`: a path or a blob), its size and the sha256 of the stored
bytes. The bytes themselves are on the output storage (`common.storage`), never in Redis:

* a transcription's result (the phrases, as the engine gave them) is a gzip JSON **entry** at
  ``STORE/<aa>/<job_key>.json.gz``, addressed by the job key (the input's content hash + the
  digest of its options), where STORE is `BATCHSCRIBE_RESULT_STORE` (a folder or blob prefix the
  cluster shares) or, by default, ``OUT/.batchscribe/results`` of the batch that first wanted the
  job (`store_root`). The worker writes the entry before it records the pointer (`FINISH`);
* a conversion's result is its first output (no second copy of converted media).

A dedupe hit reads the stored bytes and checks them against the pointer's sha256 (`load_result`;
a conversion's copy is checked as it is copied out, `storage.copy_verified`). An entry that is
gone, unreadable or changed raises `CacheMiss`: the caller forgets the pointer and the job runs
again (`common.outcomes.deliver_cached`), which writes the entry back — a cache that cannot be
trusted is work to redo, never a wrong output. An entry that cannot be *written* (permissions, a
full disk, a blob SAS without write) leaves the job done without a pointer: its outputs are
delivered all the same, said once in the worker log (`keep_transcript`).

The pointers have a key family of their own (``cached:JOB``): versions before the store kept the
transcript itself in ``result:JOB``, and neither may take the other's value for its own (an older
producer would write an empty transcript from a pointer). Those old keys are never read; they
expire, and submitting their files again transcribes them once more.

Entries are never deleted by batchscribe: the pointer's TTL is the cache's lifetime. A job done
again overwrites its own entry (same address), so a store holds at most one entry per job; an
entry older than `BATCHSCRIBE_RESULT_TTL` has no pointer left and may be deleted (any entry may
be, at any time: the next hit transcribes again). docs/design.md §The result cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import threading
from typing import Any, cast

from batchscribe.common.conversion import is_conversion
from batchscribe.common.errors import ProcessingError
from batchscribe.common.locations import join, shown
from batchscribe.common.names import printable
from batchscribe.common.storage import read_verified, write_bytes

log = logging.getLogger(__name__)

STORE_FOLDER = ".batchscribe/results"  # the default store, in each batch's output folder
ENTRY_SUFFIX = ".json.gz"


class CacheMiss(Exception):  # noqa: N818 - not an error: the cached artefact is gone, redo the job
    """A dedupe hit whose stored result is gone or changed: the job must run again."""


def store_root(configured: str, out: str) -> str:
    """Where a job wanted by a batch writing to `out` keeps its transcript: the cluster's
    `BATCHSCRIBE_RESULT_STORE` (`configured`), else the output folder's own ``.batchscribe/results``."""
    return configured or (join(out, STORE_FOLDER) if out else "")


def entry_location(root: str, job_key: str) -> str:
    """``ROOT/<aa>/<job_key>.json.gz``: 256 sub-folders, so no folder grows past a few thousand."""
    return join(root, f"{job_key[:2]}/{job_key}{ENTRY_SUFFIX}")


def pointer(location: str, size: int, sha256: str) -> dict[str, Any]:
    """What Redis keeps of a stored result (a conversion's result adds its own facts to it)."""
    return {"artifact": location, "size": size, "sha256": sha256}


def put_transcript(root: str, job_key: str, result: dict[str, Any]) -> dict[str, Any]:
    """Store a transcription's result under `root`; its pointer. Raises OSError or
    ProcessingError (a blob refused) when it cannot be written."""
    data = gzip.compress(json.dumps(result, separators=(",", ":")).encode(), compresslevel=6, mtime=0)
    location = entry_location(root, job_key)
    write_bytes(location, data)
    return pointer(location, len(data), hashlib.sha256(data).hexdigest())


def keep_transcript(root: str, job_key: str, result: dict[str, Any]) -> dict[str, Any] | None:
    """`put_transcript`, or None when the store cannot be written: said once per store in the log
    (again only after a write there worked), since every file after the first would say the same."""
    try:
        entry = put_transcript(root, job_key, result)
    except (OSError, ProcessingError) as exc:
        why = exc.reason if isinstance(exc, ProcessingError) else str(exc)
        with _said_lock:
            first = root not in _unwritable
            _unwritable.add(root)
        log.log(logging.WARNING if first else logging.DEBUG,
                "cannot write the result cache at %s (%s): outputs are written all the same, but the "
                "files finished meanwhile are not cached (submitting them again transcribes them again)%s",
                printable(shown(root)), printable(why), "; said once until it works again" if first else "")
        return None
    with _said_lock:
        recovered = root in _unwritable
        _unwritable.discard(root)
    if recovered:
        log.info("the result cache at %s is writable again", printable(shown(root)))
    return entry


_unwritable: set[str] = set()  # stores whose last write failed in this process (said once)
_said_lock = threading.Lock()


def load_result(entry: dict[str, Any]) -> dict[str, Any]:
    """The job's result from its pointer: a transcription's read from its store and checked
    against the sha256 (`CacheMiss` when gone, unreadable or changed); a conversion's is the
    pointer itself (its copy is checked as each output is copied from it)."""
    if is_conversion(entry.get("options") or {}):
        return entry
    location, sha256 = str(entry.get("artifact") or ""), str(entry.get("sha256") or "")
    if not location:
        raise CacheMiss("the pointer names no stored result")
    try:
        data = read_verified(location, sha256)
    except (OSError, ProcessingError) as exc:
        raise CacheMiss(f"cannot read {shown(location)}: {exc}") from exc
    if data is None:
        raise CacheMiss(f"{shown(location)} is gone or changed")
    return cast("dict[str, Any]", json.loads(gzip.decompress(data)))
