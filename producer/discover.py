"""Recursive discovery of media under the submitted paths, with a count of what was skipped."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchscribe.common.errors import InputError
from batchscribe.common.media import is_media


@dataclass
class Discovered:
    files: list[tuple[str, str]] = field(default_factory=list)  # (absolute path, relative path)
    skipped: list[str] = field(default_factory=list)  # not media (by extension)


def discover(inputs: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> Discovered:
    """Walk files and folders; relative paths mirror the tree (prefixed by the root when several)."""
    roots = [Path(p).expanduser() for p in inputs]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        raise InputError(f"input path not found: {', '.join(missing)}")
    excluded = {os.path.realpath(e) for e in exclude}
    found = Discovered()
    several = len(roots) > 1
    for root in roots:
        root_abs = root.resolve()
        prefix = root_abs.name if several else ""
        if root_abs.is_file():
            _add(found, str(root_abs), os.path.join(prefix, root_abs.name))
            continue
        for dirpath, dirnames, filenames in os.walk(root_abs):
            dirnames[:] = sorted(d for d in dirnames
                                 if os.path.realpath(os.path.join(dirpath, d)) not in excluded)
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                _add(found, full, os.path.join(prefix, os.path.relpath(full, root_abs)))
    return found


def _add(found: Discovered, path: str, rel: str) -> None:
    if is_media(path):
        found.files.append((path, rel))
    else:
        found.skipped.append(path)
