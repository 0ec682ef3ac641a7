"""Redis state as a producer leaves it, for tests of the worker side."""

from __future__ import annotations

from pathlib import Path

from batchscribe.common.models import FileRecord
from batchscribe.common.state import StateStore


def submitted(store: StateStore, job: str = "j", path: str = "/in/0.wav") -> FileRecord:
    """One batch with one file whose job has been claimed and published, as a producer leaves it."""
    record = FileRecord(batch_id="b", index=0, path=path, rel="0.wav", output=f"{path}.json",
                        duration=1.0, job=job)
    store.create_batch("b", {"out": str(Path(path).parent)}, [record])
    store.claim([(job, "b:0", 1.0)], "p", ttl=30)
    store.mark_published([job], "p")
    return record
