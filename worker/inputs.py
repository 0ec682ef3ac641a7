"""The local file a delivery works on: an input path as it is, or a blob downloaded to scratch.

Every input of a job has the same bytes (that is what a job is), so any of them will do: a path
that exists, else a blob, downloaded into the delivery's scratch folder and checked against the
content hash it was submitted with — a blob rewritten since then is refused, not processed under
the old content's name.
"""

from __future__ import annotations

import os
from pathlib import Path

from batchscribe.common.errors import BlobNotFoundError, PermanentError
from batchscribe.common.locations import is_blob, name_of, parse_blob
from batchscribe.common.models import FileRecord
from batchscribe.common.storage import blob_store


def local_input(records: list[FileRecord], workdir: Path) -> Path:
    """A local file with the job's content (see the module docstring)."""
    if not records:
        raise PermanentError("no input file is attached to this job any more")
    paths = [r for r in records if not is_blob(r.path)]
    for record in paths:
        if os.path.exists(record.path):
            return Path(record.path)
    missing: BlobNotFoundError | None = None
    for record in (r for r in records if is_blob(r.path)):
        try:
            return _download(record, workdir)
        except BlobNotFoundError as exc:  # another input with these bytes may still be there
            missing = exc
    if paths or missing is None:
        return Path(paths[0].path)  # none exists: `check_file` says why, in its words
    raise missing


def _download(record: FileRecord, workdir: Path) -> Path:
    suffix = Path(name_of(record.path)).suffix.lower()
    dest = workdir / f"input{suffix}"
    sha256 = blob_store().download(parse_blob(record.path), dest)
    if record.sha256 and sha256 != record.sha256:
        dest.unlink(missing_ok=True)
        raise PermanentError("the blob changed after it was submitted (its content hash differs): "
                             "submit it again")
    return dest
