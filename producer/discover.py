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
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchscribe.common.errors import InputError
from batchscribe.common.media import is_media


@dataclass
class Discovered:
    files: list[tuple[str, str]] = field(default_factory=list)  # (absolute path, relative path)
    skipped: list[str] = field(default_factory=list)  # not media (by extension)
    links: list[str] = field(default_factory=list)  # symlinked folders, not followed
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, path: str, rel: str) -> None:
        if path in self._seen:
            return
        self._seen.add(path)
        if is_media(path):
            self.files.append((path, rel))
        else:
            self.skipped.append(path)


def discover(inputs: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> Discovered:
    """Walk files and folders; relative paths as the module docstring says."""
    given = [Path(p).expanduser() for p in inputs]
    missing = [str(r) for r in given if not r.exists()]
    if missing:
        raise InputError(f"input path not found: {', '.join(missing)}")
    excluded = {os.path.realpath(e) for e in exclude}
    roots = list(dict.fromkeys(r.resolve() for r in given))
    labels = root_labels(roots) if len(roots) > 1 else [""]
    found = Discovered()
    for root, label in zip(roots, labels):
        if root.is_file():
            found.add(str(root), label or root.name)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            subdirs = [os.path.join(dirpath, d) for d in sorted(dirnames)]
            found.links += [d for d in subdirs if os.path.islink(d)]
            dirnames[:] = [os.path.basename(d) for d in subdirs
                           if not os.path.islink(d) and os.path.realpath(d) not in excluded]
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                found.add(full, os.path.join(label, os.path.relpath(full, root)))
    return found


def outside_roots(paths: Sequence[str | Path], roots: Sequence[Path]) -> list[str]:
    """The `paths` that are not under one of `roots` once symlinks and '..' are resolved (roots are
    resolved too). A path that does not exist yet (an output folder) is judged by what it would be."""
    real_roots = [os.path.realpath(r) for r in roots]

    def inside(path: str | Path) -> bool:
        real = os.path.realpath(path)
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in real_roots)

    return [str(p) for p in paths if not inside(p)]


def root_labels(roots: Sequence[Path]) -> list[str]:
    """Per root, the shortest tail of its path that no other root's path ends with.

    Counted tail length by tail length, so a shell glob of thousands of files costs
    (roots × depth), not roots².
    """
    parts = [root.parts[1:] for root in roots]  # without the leading "/"
    labels: list[str | None] = [None] * len(parts)
    for k in range(1, max(map(len, parts), default=0) + 1):
        tails = Counter(p[-k:] for p in parts)
        for i, p in enumerate(parts):
            if labels[i] is None and (tails[p[-k:]] == 1 or k >= len(p)):
                labels[i] = os.path.join(*p[-k:]) if p else ""
    return [label or "" for label in labels]
