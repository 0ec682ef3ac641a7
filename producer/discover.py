"""Recursive discovery of media under the submitted paths, with a count of what was skipped.

Where each input's output goes is decided here (its relative path, `rel`), so that no two inputs
of a batch share an output:

* one root: outputs mirror the tree under it (a file given alone: just its name);
* several roots: each root's tree goes under the shortest tail of the root's real path that no
  other root ends with — ``a/in b/in`` → ``OUT/a/in/…``, ``OUT/b/in/…``; ``in calls`` →
  ``OUT/in/…``, ``OUT/calls/…``; files given directly likewise (``c/x.wav d/x.wav`` →
  ``OUT/c/x_wav.json``, ``OUT/d/x_wav.json``);
* a root given twice, or a file found under two roots, is one input.

Symlinked folders inside a root are not followed (a link can loop back up the tree); they are
listed so that `submit` and `status` can say so. A root given as a symlink is followed.

A root may be a blob location (`common.locations`: ``az://CONTAINER/PREFIX``, a blob URL): every
blob under the prefix counts, its name below the prefix as its relative path; what the listing
says of each blob (size, ETag) is kept, so fingerprinting needs no second look.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from batchscribe.common.errors import InputError, ProcessingError
from batchscribe.common.locations import BlobLocation, is_blob, parse_blob, shown
from batchscribe.common.media import is_media

if TYPE_CHECKING:
    from batchscribe.common.blob import StoredObject


KEEP_SKIPPED = 1000  # files that are not media named in a Discovery (all are counted)


@dataclass
class Discovered:
    files: list[tuple[str, str]] = field(default_factory=list)  # (absolute path, relative path)
    skipped: list[str] = field(default_factory=list)  # not media (by extension)
    links: list[str] = field(default_factory=list)  # symlinked folders, not followed
    blobs: dict[str, StoredObject] = field(default_factory=dict)  # what the listing said of each blob
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, path: str, rel: str) -> None:
        if path in self._seen:
            return
        self._seen.add(path)
        if is_media(path):
            self.files.append((path, rel))
        else:
            self.skipped.append(path)


Found = tuple[str, str, "StoredObject | None"]  # (absolute path or location, relative path, its listing)


class Discovery:
    """The media under some roots, found as they are walked or listed: iterate it once for (path,
    rel, listing) of each file in walk order, in memory flat whatever their number. `skipped` (the
    first KEEP_SKIPPED of `skipped_count`) and `links` are complete once it has been iterated."""

    def __init__(self, inputs: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> None:
        given = [str(p) if is_blob(str(p)) else Path(p).expanduser() for p in inputs]
        missing = [str(r) for r in given if isinstance(r, Path) and not r.exists()]
        if missing:
            raise InputError(f"input path not found: {', '.join(missing)}")
        self.excluded = {os.path.realpath(e) for e in exclude if not is_blob(str(e))}
        self.blob_out = [parse_blob(str(e)) for e in exclude if is_blob(str(e))]
        self.roots: list[Path | BlobLocation] = list(dict.fromkeys(
            parse_blob(r) if isinstance(r, str) else r.resolve() for r in given))
        self.labels = root_labels(self.roots) if len(self.roots) > 1 else [""]
        self.skipped: list[str] = []
        self.skipped_count = 0
        self.links: list[str] = []
        spelled = [r.canonical if isinstance(r, BlobLocation) else str(r) for r in self.roots]
        # a file is found twice only under roots inside one another: only then are paths remembered
        self._seen: set[str] | None = set() if any(
            a != b and (b + "/").startswith(a.rstrip("/") + "/") for a in spelled for b in spelled) else None

    @property
    def base(self) -> str:
        """A prefix of every path found: the folder of the roots (records store paths below it)."""
        spelled = [(r.canonical if isinstance(r, BlobLocation) else str(r)) for r in self.roots]
        folders = [s.rstrip("/") + "/" if isinstance(r, BlobLocation) or r.is_dir() else s[:s.rfind("/") + 1]
                   for r, s in zip(self.roots, spelled)]
        base = os.path.commonprefix(folders) if folders else ""
        return base[:base.rfind("/") + 1]

    def __iter__(self) -> Iterator[Found]:
        for root, label in zip(self.roots, self.labels):
            if isinstance(root, BlobLocation):
                found = self._list_blobs(root, label)
            elif root.is_file():
                found = iter([(str(root), label or root.name, None)])
            else:
                found = self._walk(root, label)
            for path, rel, item in found:
                if self._seen is not None:
                    if path in self._seen:
                        continue
                    self._seen.add(path)
                if is_media(path):
                    yield path, rel, item
                else:
                    self.skipped_count += 1
                    if len(self.skipped) < KEEP_SKIPPED:
                        self.skipped.append(path)

    def _walk(self, root: Path, label: str) -> Iterator[Found]:
        top = str(root)
        cut = len(top) + 1 if top != "/" else 1  # os.walk's paths start with the root as given
        for dirpath, dirnames, filenames in os.walk(top):
            subdirs = [os.path.join(dirpath, d) for d in sorted(dirnames)]
            self.links += [d for d in subdirs if os.path.islink(d)]
            dirnames[:] = [os.path.basename(d) for d in subdirs
                           if not os.path.islink(d) and os.path.realpath(d) not in self.excluded]
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                yield full, os.path.join(label, full[cut:]), None

    def _list_blobs(self, root: BlobLocation, label: str) -> Iterator[Found]:
        """Every blob under `root` (the output prefix left out when it lies inside it)."""
        from batchscribe.common.storage import blob_store

        skip = [e.name.rstrip("/") + "/" for e in self.blob_out if e.container_key == root.container_key]
        try:
            for item in blob_store().list(root):
                name = parse_blob(item.location).name
                if any(name.startswith(prefix) for prefix in skip if prefix != "/"):
                    continue
                yield item.location, posixpath.join(label, item.rel) if label else item.rel, item
        except ProcessingError as exc:
            raise InputError(f"cannot list {shown(root.canonical)}: {exc.reason}") from exc


def discover(inputs: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> Discovered:
    """Walk files, folders and blob prefixes; relative paths as the module docstring says (every
    file in memory: `Discovery` streams them)."""
    walk = Discovery(inputs, exclude)
    found = Discovered()
    for path, rel, item in walk:
        found.files.append((path, rel))
        if item is not None:
            found.blobs[path] = item
    found.skipped, found.links = walk.skipped, walk.links
    return found


def _parts(root: Path | BlobLocation) -> tuple[str, ...]:
    """A root's path as parts, for `root_labels`: a folder's, or a blob prefix's (container first)."""
    if isinstance(root, BlobLocation):
        return (root.container, *[p for p in root.name.split("/") if p])
    return root.parts[1:]  # without the leading "/"


def outside_roots(paths: Sequence[str | Path], roots: Sequence[Path]) -> list[str]:
    """The `paths` that are not under one of `roots` once symlinks and '..' are resolved (roots are
    resolved too). A path that does not exist yet (an output folder) is judged by what it would be."""
    real_roots = [os.path.realpath(r) for r in roots]

    def inside(path: str | Path) -> bool:
        real = os.path.realpath(path)
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in real_roots)

    return [str(p) for p in paths if not inside(p)]


def root_labels(roots: Sequence[Path | BlobLocation]) -> list[str]:
    """Per root, the shortest tail of its path (a blob prefix: container/prefix) that no other
    root's path ends with.

    Counted tail length by tail length, so a shell glob of thousands of files costs
    (roots × depth), not roots².
    """
    parts = [_parts(root) for root in roots]
    labels: list[str | None] = [None] * len(parts)
    for k in range(1, max(map(len, parts), default=0) + 1):
        tails = Counter(p[-k:] for p in parts)
        for i, p in enumerate(parts):
            if labels[i] is None and (tails[p[-k:]] == 1 or k >= len(p)):
                labels[i] = os.path.join(*p[-k:]) if p else ""
    return [label or "" for label in labels]
