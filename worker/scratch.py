"""Local scratch space of a consumer: one folder per delivery, removed when it ends, and leftovers of
dead processes removed at start.

A worker downloads blob inputs, normalises audio and converts media here. A delivery's folder is
removed however the delivery ends (`workdir`); a consumer that was SIGKILLed cannot do that, so
each consumer, when it starts, removes the folders of processes that are no longer alive
(`clean_leftovers`): a restart removes what a crash left. Folders are named ``PID-random`` under
``$BATCHSCRIBE_SCRATCH`` (default: the system's temp folder) ``/batchscribe-scratch/NODE``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SCRATCH_ENV = "BATCHSCRIBE_SCRATCH"


class Scratch:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_node(cls, node: str, environ: Mapping[str, str] | None = None) -> Scratch:
        env = os.environ if environ is None else environ
        base = Path(env.get(SCRATCH_ENV) or tempfile.gettempdir())
        return cls(base / "batchscribe-scratch" / node.replace("/", "_"))

    def clean_leftovers(self) -> int:
        """Remove the folders of processes that are gone; returns how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for entry in self.root.iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        if removed:
            log.info("removed %d scratch folder(s) left by stopped processes in %s", removed, self.root)
        return removed

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """A new folder for one delivery; removed when the block ends, however it ends."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.root))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
