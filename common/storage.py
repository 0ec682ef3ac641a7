"""Reading and writing outputs and inputs wherever they live: a path, or a blob (`common.locations`).

Every output batchscribe writes goes through `pending_output` (or `write_bytes`, built on it), so
it appears only once complete, on disk and in blob storage alike:

* on disk, a hidden temp file next to the target (`.bs-<random>.tmp`), fsynced, renamed over it;
* in blob storage, a local spool file uploaded as a block blob at commit (the blob service makes a
  block blob visible only when its block list is committed).

The blob side is `common.blob.BlobStore`, built once per process from the environment (its
credentials never come from Redis); it is imported only when a blob location is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from batchscribe.common.errors import PermanentError
from batchscribe.common.locations import is_blob, parse_blob

if TYPE_CHECKING:
    from batchscribe.common.blob import BlobStore

TEMP_PREFIX = ".bs-"  # hidden temp files of `PendingFile`: `.bs-<random>.tmp`
COPY_CHUNK = 1 << 20

_blob_store: BlobStore | None = None
_blob_lock = threading.Lock()


def blob_store() -> BlobStore:
    """This process's blob client (credentials from its environment), built on first use."""
    global _blob_store
    with _blob_lock:
        if _blob_store is None:
            from batchscribe.common.blob import BlobStore

            _blob_store = BlobStore()
        return _blob_store


SAS_BY_CONTAINER = "BATCHSCRIBE_BLOB_SAS"  # JSON {container: SAS}; read by `common.blob` (its credentials)


def adopt_sas(locations: Iterable[str | Path], environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Keep the SAS tokens typed in blob URLs (`https://…/container?sv=…`) in this process's
    environment, per container, where this process and the workers it starts find them; they go
    nowhere else (not to Redis, logs or outputs). Returns the containers that got one."""
    env = os.environ if environ is None else environ
    typed = {b.container_key: b.sas for b in (parse_blob(str(p)) for p in locations if is_blob(str(p)))
             if b.sas}
    if typed:
        known = json.loads(env.get(SAS_BY_CONTAINER) or "{}")
        env[SAS_BY_CONTAINER] = json.dumps({**known, **typed})
        global _blob_store
        with _blob_lock:
            _blob_store = None  # built again with them
    return sorted(typed)


class Pending(Protocol):
    """An output being written: nothing is visible at its location until `commit()`."""

    committed: bool

    def write(self, data: bytes) -> None: ...

    def copy_from(self, source: IO[bytes]) -> None: ...

    def commit(self) -> None: ...

    def __enter__(self) -> Pending: ...

    def __exit__(self, *_: object) -> None: ...


class _Spooled:
    """What both kinds of pending output share: bytes go to an open temp file until `commit()`."""

    _fh: IO[bytes]
    committed: bool

    def write(self, data: bytes) -> None:
        self._fh.write(data)

    def copy_from(self, source: IO[bytes]) -> None:
        shutil.copyfileobj(source, self._fh, COPY_CHUNK)


class PendingFile(_Spooled):
    """A file being written in a temp file next to `path`: `commit()` fsyncs it and renames it over
    `path` (readers never see half a file); leaving the `with` block without a commit removes it.

    The temp file has a short name of its own (a long output name plus a suffix would not fit in
    255 bytes) and is created with the process umask like any other file (`mkstemp` makes 0600).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.temp = _create_temp(self.path.parent)
        self._fh = os.fdopen(fd, "wb")
        self.committed = False

    def commit(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.temp, self.path)
        self.committed = True

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, *_: object) -> None:
        if not self.committed:
            self._fh.close()
            self.temp.unlink(missing_ok=True)


class PendingBlob(_Spooled):
    """A blob being written: spooled to a local temp file, uploaded at `commit()`."""

    def __init__(self, location: str) -> None:
        self.location = parse_blob(location)
        fd, name = tempfile.mkstemp(prefix="bs-upload-")
        self.temp = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self.committed = False

    def commit(self) -> None:
        self._fh.close()
        blob_store().upload(self.temp, self.location)
        self.committed = True

    def __enter__(self) -> PendingBlob:
        return self

    def __exit__(self, *_: object) -> None:
        self._fh.close()
        self.temp.unlink(missing_ok=True)


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


def pending_output(location: str | Path) -> Pending:
    """An output at `location` (a path or a blob), visible only once committed."""
    text = str(location)
    return PendingBlob(text) if is_blob(text) else PendingFile(text)


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write `data` at `location` atomically (readers see the old content or the new, never half)."""
    with pending_output(location) as pending:
        pending.write(data)
        pending.commit()


def read_bytes(location: str | Path) -> bytes:
    text = str(location)
    if is_blob(text):
        return blob_store().read(parse_blob(text))
    return Path(text).read_bytes()


def size_of(location: str | Path) -> int | None:
    """The size of the file or blob at `location`, None when there is none."""
    text = str(location)
    if is_blob(text):
        found = blob_store().stat(parse_blob(text))
        return found.size if found is not None else None
    try:
        return os.stat(text).st_size
    except FileNotFoundError:
        return None


def remove(location: str | Path) -> None:
    """Delete the file or blob at `location`, if there is one."""
    text = str(location)
    if is_blob(text):
        blob_store().delete(parse_blob(text))
    else:
        Path(text).unlink(missing_ok=True)


def read_chunks(location: str | Path, chunk: int = COPY_CHUNK) -> Iterator[bytes]:
    """The content at `location`, streamed."""
    text = str(location)
    if is_blob(text):
        yield from blob_store().read_chunks(parse_blob(text), chunk)
        return
    with open(text, "rb") as fh:
        while block := fh.read(chunk):
            yield block


def copy_verified(source: str | Path, target: str | Path, sha256: str) -> bool:
    """Copy `source` to `target` (atomically) if its content still hashes to `sha256`; False (and
    nothing written) when it does not or is gone — a cached artefact that can no longer be trusted."""
    with pending_output(target) as pending:
        if not _stream_verified(source, sha256, pending.write):
            return False
        pending.commit()
    return True


def read_verified(location: str | Path, sha256: str) -> bytes | None:
    """The content at `location` if it still hashes to `sha256`; None when it does not or is gone
    (what `copy_verified` copies, kept in memory: a cached transcript)."""
    content = bytearray()
    return bytes(content) if _stream_verified(location, sha256, content.extend) else None


def _stream_verified(source: str | Path, sha256: str, sink: Callable[[bytes], object]) -> bool:
    """Hand `source`'s content to `sink` block by block; whether it was all there and hashed to
    `sha256` (the one check of every cached artefact)."""
    digest = hashlib.sha256()
    try:
        for block in read_chunks(source):
            digest.update(block)
            sink(block)
    except (FileNotFoundError, PermanentError):  # gone, or no longer readable here
        return False
    return digest.hexdigest() == sha256


def sha256_of(location: str | Path) -> str:
    digest = hashlib.sha256()
    for block in read_chunks(location):
        digest.update(block)
    return digest.hexdigest()
