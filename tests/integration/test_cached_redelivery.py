"""The worker's side of the result cache (common/cache.py), on a real Redis with a counting engine:
the entry is stored before its pointer is recorded, a redelivery of a finished job writes its
outputs from the store without an engine call, and one whose entry cannot be trusted runs again.

Whole batches (submit into a new folder, deleted and corrupted entries, an unwritable store, a
blob output) are in tests/acceptance/test_result_cache.py.
"""

from __future__ import annotations

import gzip
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchscribe.common.cache import STORE_FOLDER, entry_location
from batchscribe.common.config import Endpoint
from batchscribe.common.publish import TaskSpec
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.worker.engines.base import PreparedAudio, Recognition
from batchscribe.worker.jobs import Delivery, JobRunner
from tests.support.emulator import tone_wav
from tests.support.jobs import submitted

PHRASE = {"RecognitionStatus": "Success", "DisplayText": "stored words", "Offset": 0, "Duration": 5_000_000}


class CountingEngine:
    takes_samples = False

    def __init__(self) -> None:
        self.calls = 0

    def transcribe(self, audio: PreparedAudio, options: Any, progress: Any = None,
                   stop: threading.Event | None = None, log_file: Any = None) -> Recognition:
        self.calls += 1
        return Recognition(phrases=[dict(PHRASE)], duration=audio.duration, engine="azure")

    def close(self) -> None:
        pass


def runner_for(settings: Settings, store: StateStore) -> tuple[JobRunner, CountingEngine]:
    engine = CountingEngine()
    return JobRunner(settings, store, Endpoint(name="ep1", engine="azure"), engine=engine), engine


def delivery(path: Path, n: int = 1) -> Delivery:
    return Delivery(TaskSpec("j", {"language": "en-US"}, str(path), 1.0, "ep.ep1"), id=f"ep1@vm1/t/{n}")


def died_before_delivering(store: StateStore, output: Path) -> None:
    """The job is recorded done, its input still a target without its output: what a worker killed
    between `FINISH` and writing the outputs leaves for the redelivery of its message."""
    store.redis.rpush(store.keys.targets("j"), "b:0")
    output.unlink()


def display(output: Path) -> str:
    return str(json.loads(output.read_text())["AudioFileResults"][0]["CombinedResults"][0]["Display"])


def test_a_redelivery_of_a_finished_job_is_written_from_the_store_without_an_engine_call(
        tmp_path: Path, settings: Settings, store: StateStore) -> None:
    wav = tmp_path / "in.wav"
    tone_wav(wav, 0.5)
    record = submitted(store, path=str(wav))
    runner, engine = runner_for(settings, store)
    assert runner.run(delivery(wav)).verdict == "done" and engine.calls == 1
    entry = Path(entry_location(str(tmp_path / STORE_FOLDER), "j"))  # the batch's output folder's store
    assert json.loads(gzip.decompress(entry.read_bytes()))["phrases"] == [PHRASE]
    assert b"stored words" not in store.redis.get(store.keys.result("j")), "only a pointer in Redis"

    died_before_delivering(store, Path(record.output))
    assert runner.run(delivery(wav, 2)).verdict == "cached"
    assert engine.calls == 1 and display(Path(record.output)) == "stored words"


def test_a_redelivery_whose_entry_was_changed_runs_the_job_again_and_stores_it_anew(
        tmp_path: Path, settings: Settings, store: StateStore) -> None:
    wav = tmp_path / "in.wav"
    tone_wav(wav, 0.5)
    record = submitted(store, path=str(wav))
    central = tmp_path / "central"
    runner, engine = runner_for(replace(settings, result_store=str(central)), store)
    runner.run(delivery(wav))
    entry = Path(entry_location(str(central), "j"))  # BATCHSCRIBE_RESULT_STORE, not the output folder
    assert entry.is_file() and not (tmp_path / ".batchscribe").exists()
    entry.write_bytes(gzip.compress(json.dumps({"phrases": [{**PHRASE, "DisplayText": "forged"}]}).encode()))
    died_before_delivering(store, Path(record.output))

    assert runner.run(delivery(wav, 2)).verdict == "done", "the pointer was forgotten: redo"
    assert engine.calls == 2 and display(Path(record.output)) == "stored words"
    assert json.loads(gzip.decompress(entry.read_bytes()))["phrases"] == [PHRASE], "written back"
    assert store.results(["j"])["j"]["artifact"] == str(entry)
