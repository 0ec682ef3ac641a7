"""The spine as a user runs it: `run`, and `worker` + `submit --wait` + `status`, on real speech.

Real parts only: redis-server on a free port, `batchscribe worker` processes with Celery consumers,
faster-whisper, ffmpeg, espeak-ng.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from batchscribe.common.state import StateStore
from tests.support.cli import BIN, ROOT, cli_env, run_cli
from tests.support.media import FfmpegRuns
from tests.support.speech import CODECS, synthesize, video_with_speech
from tests.support.wer import wer

SENTENCES = {
    "calls/monday_8k.wav": ("Our meeting starts at ten o'clock in the main conference room.", 8000, 1),
    "calls/stereo_44k.wav": ("Please call the support line on weekdays.", 44100, 2),
    "notes/order.mp3": ("Thank you for calling. Your order has been shipped and will arrive on Monday.",
                        22050, 1),
    "weather.m4a": ("The weather today will be sunny with a light breeze from the west.", 16000, 1),
}


def speech_tree(root: Path, sentences: dict[str, tuple[str, int, int]] = SENTENCES) -> dict[str, str]:
    for rel, (text, rate, channels) in sentences.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        synthesize(text, root / rel, rate=rate, channels=channels)
    return {rel: text for rel, (text, _, _) in sentences.items()}


def output_of(out: Path, rel: str) -> dict:
    stem, ext = os.path.splitext(rel)
    return json.loads((out / f"{stem}_{ext[1:]}.json").read_text())["AudioFileResults"][0]


def assert_transcribed(out: Path, expected: dict[str, str]) -> None:
    for rel, text in expected.items():
        entry = output_of(out, rel)
        assert entry["TranscriptionStatus"] == "Succeeded", entry
        assert entry["AudioFileHash"] and entry["AudioLengthInSeconds"] > 1
        assert entry["SegmentResults"] and entry["SegmentResults"][0]["NBest"][0]["Confidence"] is not None
        hypothesis = entry["CombinedResults"][0]["Display"]
        assert wer(text, hypothesis) <= 0.25, (rel, text, hypothesis)


def engine_calls(store: StateStore) -> int:
    return sum(1 for _, e in store.events() if e.get("outcome") == "done")


LOCAL_2 = "local2:\n  engine: local\n  concurrency: 2\n  cpuThreads: 1\n"


@pytest.fixture
def local_config(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.yaml"
    path.write_text(LOCAL_2)
    return path


def test_run_transcribes_a_tree_of_formats_on_one_machine(tmp_path: Path) -> None:
    expected = speech_tree(tmp_path / "in")
    (tmp_path / "in" / "readme.txt").write_text("not audio")
    out = tmp_path / "out"
    result = run_cli("run", str(tmp_path / "in"), "--out", str(out), "--txt")
    assert result.returncode == 0, result.stderr
    assert "1 skipped" in result.stderr
    assert_transcribed(out, expected)
    assert (out / "calls" / "monday_8k_wav.txt").read_text().strip()
    assert not (out / ".batchscribe").exists(), "run's result cache went with its private Redis"
    summary = json.loads((out / "run_summary.json").read_text())["overall_summary"]
    assert summary["succeeded"] == 4 and summary["failed"] == 0 and summary["skipped_not_media"] == 1


def test_run_decodes_in_the_consumer_for_the_local_engine(tmp_path: Path) -> None:
    """The local engine takes samples: PyAV decodes every input inside the consumer (no ffmpeg runs
    at all), video keeps its speech, and a file without audio, a corrupt one and a truncated one
    fail alone with their reasons."""
    talk = "Good morning everyone, thank you for joining the weekly project review."
    expected = speech_tree(tmp_path / "in", {**SENTENCES, "notes/review.ogg": (talk, 24000, 1),
                                             "notes/review.flac": (talk, 16000, 1)})
    expected["talk.mp4"] = "Please save your work."  # the video lasts 3 s
    video_with_speech(expected["talk.mp4"], tmp_path / "in" / "talk.mp4")
    video_with_speech(talk, tmp_path / "in" / "silent.mp4", audio=False)
    (tmp_path / "in" / "noise.mp3").write_bytes(bytes(range(256)) * 8)
    whole = synthesize(SENTENCES["notes/order.mp3"][0], tmp_path / "whole.mp3", codec=CODECS["mp3"])
    (tmp_path / "in" / "cut.mp3").write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    runs = FfmpegRuns(tmp_path / "ffmpeg")
    out = tmp_path / "out"
    result = run_cli("run", str(tmp_path / "in"), "--out", str(out), **runs.env())
    assert result.returncode == 1, result.stderr
    assert_transcribed(out, expected)
    reasons = {"silent.mp4": "^no audio stream$", "noise.mp3": "^cannot decode: ",
               "cut.mp3": r"^truncated MP3: header says [\d.]+ s, file holds [\d.]+ s"}
    for rel, reason in reasons.items():
        failed = output_of(out, rel)
        assert failed["TranscriptionStatus"] == "Failed" and failed["ErrorClass"] == "permanent", failed
        assert re.match(reason, failed["FailureReason"]), failed["FailureReason"]
    assert runs.count() == 0, "the local engine's inputs are decoded in process, not by ffmpeg"
    assert "Traceback" not in result.stderr


def test_worker_and_submit_with_concurrency_two(tmp_path: Path, redis_server, store: StateStore,
                                                 start_worker, local_config: Path) -> None:
    review = "Good morning everyone, thank you for joining the weekly project review."
    more = {f"extra/{rate}.wav": (review, rate, 1) for rate in (16000, 22050, 24000, 32000)}
    expected = speech_tree(tmp_path / "in", {**SENTENCES, **more})
    start_worker(local_config)
    out = tmp_path / "out"
    result = run_cli("submit", str(tmp_path / "in"), "--out", str(out), "--wait", broker=redis_server.url)
    assert result.returncode == 0, result.stderr
    assert_transcribed(out, expected)
    stats = store.redis.hgetall(store.keys.endpoint_stats("local2"))
    assert int(stats[b"max_inflight"]) == 2  # measured around every engine call: never more than 2
    batch_id = store.batch_ids(1)[0]
    status = run_cli("status", batch_id, broker=redis_server.url)
    assert status.returncode == 0 and "complete" in status.stdout and "8" in status.stdout


def test_dedupe_same_bytes_other_names_and_resubmission(tmp_path: Path, redis_server, store: StateStore,
                                                        start_worker, local_config: Path) -> None:
    inputs = tmp_path / "in"
    speech_tree(inputs, {"a.wav": ("The quick brown fox jumps over the lazy dog.", 16000, 1),
                         "c.mp3": ("Good morning everyone, thank you for joining the weekly project review.",
                                   16000, 1)})
    shutil.copy(inputs / "a.wav", inputs / "copy_of_a.wav")
    start_worker(local_config)
    out = tmp_path / "out"
    first = run_cli("submit", str(inputs), "--out", str(out), "--wait", broker=redis_server.url)
    assert first.returncode == 0, first.stderr
    assert "3 file(s) — 2 queued, 1 duplicate(s), 0 already in progress elsewhere" in first.stderr
    assert engine_calls(store) == 2
    assert output_of(out, "a.wav")["CombinedResults"] == output_of(out, "copy_of_a.wav")["CombinedResults"]
    assert output_of(out, "copy_of_a.wav")["AudioFileName"] == "copy_of_a.wav"

    (out / "c_mp3.json").unlink()  # a user deleted one output; re-submitting brings it back
    again = run_cli("submit", str(inputs), "--out", str(out), "--wait", broker=redis_server.url)
    assert again.returncode == 0 and "0 queued" in again.stderr and "3 from cache" in again.stderr
    other = tmp_path / "other_out"
    third = run_cli("submit", str(inputs), "--out", str(other), "--wait", broker=redis_server.url)
    assert third.returncode == 0 and "3 from cache" in third.stderr
    assert engine_calls(store) == 2  # zero engine calls for both re-submissions
    outputs = {"a_wav.json", "copy_of_a_wav.json", "c_mp3.json", "run_summary.json"}
    assert {p.name for p in other.iterdir()} == outputs  # answered from the first folder's store
    assert {p.name for p in out.iterdir()} == outputs | {".batchscribe"}  # the result cache (common/cache.py)
    assert len(list((out / ".batchscribe" / "results").rglob("*.json.gz"))) == 2


def test_two_producers_at_once_transcribe_each_file_once(tmp_path: Path, redis_server, store: StateStore,
                                                         start_worker, local_config: Path) -> None:
    fox = "The quick brown fox jumps over the lazy dog."
    speech_tree(tmp_path / "in", {f"{rate}.wav": (fox, rate, 1) for rate in (8000, 11025, 16000, 22050, 24000)})
    results: list[subprocess.CompletedProcess[str]] = []

    def producer(n: int) -> None:
        results.append(run_cli("submit", str(tmp_path / "in"), "--out", str(tmp_path / f"out{n}"),
                               "--wait", broker=redis_server.url))

    threads = [threading.Thread(target=producer, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    start_worker(local_config)
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert engine_calls(store) == 5
    for n in (1, 2):
        assert len(list((tmp_path / f"out{n}").glob("*_wav.json"))) == 5


def test_producer_killed_between_claim_and_publish_loses_nothing(tmp_path: Path, redis_server,
                                                                 store: StateStore, start_worker,
                                                                 local_config: Path) -> None:
    speech_tree(tmp_path / "in", {"x.wav": ("Please call the support line on weekdays.", 16000, 1)})
    dying = subprocess.run(  # claims, then dies by SIGKILL before publishing anything
        [str(BIN.parent / "python"), "-c", DIE_AFTER_CLAIM, str(tmp_path / "in"), str(tmp_path / "out1")],
        capture_output=True, text=True, env=cli_env(redis_server.url, BATCHSCRIBE_CLAIM_TTL="3"), cwd=ROOT)
    assert dying.returncode == -9, dying.stderr
    start_worker(local_config)
    result = run_cli("submit", str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--wait",
                     broker=redis_server.url, BATCHSCRIBE_CLAIM_TTL="3")
    assert result.returncode == 0, result.stderr
    assert "taking it over" in result.stderr  # it waited for the dead claim to expire, then published
    assert output_of(tmp_path / "out2", "x.wav")["TranscriptionStatus"] == "Succeeded"
    # the dead producer's batch got its output too: its input was attached to the same job
    assert output_of(tmp_path / "out1", "x.wav")["TranscriptionStatus"] == "Succeeded"
    assert engine_calls(store) == 1


DIE_AFTER_CLAIM = """
import os, signal, sys
from batchscribe.common.celery_app import make_app
from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.common.publish import Publisher
from batchscribe.producer.submit import Submitter

class DiesBeforePublishing(Publisher):
    def publish(self, specs):
        os.kill(os.getpid(), signal.SIGKILL)

settings = Settings.from_env()
store = StateStore.connect(settings)
Submitter(store, DiesBeforePublishing(make_app(settings)), settings.claim_ttl).submit(
    [sys.argv[1]], sys.argv[2], TranscriptionOptions())
"""
