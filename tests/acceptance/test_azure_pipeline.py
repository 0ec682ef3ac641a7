"""`engine: azure` through the whole pipeline: the real Speech SDK in worker processes against the
emulator, which tells us what reached the wire and how many sessions ran at once."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import srt
import webvtt

from batchscribe.common.state import StateStore
from tests.support.cli import run_cli
from tests.support.emulator import endpoints_yaml, running_emulator, tones

DURATIONS = [1.0 + 0.25 * i for i in range(12)]


def transcript(out: Path, name: str) -> dict:
    return json.loads((out / name.replace(".wav", "_wav.json")).read_text())["AudioFileResults"][0]


def test_batch_over_emulator_endpoints(tmp_path: Path, redis_server, store: StateStore,
                                       start_worker) -> None:
    files = tones(tmp_path / "in", DURATIONS)
    with running_emulator(ports=2, rtf=4.0, transcribe="duration") as emu:
        ports = dict(zip(("emu_a", "emu_b"), emu.ports))
        start_worker(endpoints_yaml(tmp_path / "eps.yaml", ports))
        out = tmp_path / "out"
        result = run_cli("submit", str(tmp_path / "in"), "--out", str(out), "--wait", "--nbest", "2",
                         "--word-timestamps", "--language", "en-US", broker=redis_server.url)
        assert result.returncode == 0, result.stderr
        stats = [emu.stats(p) for p in emu.ports]
    for name, seconds in files.items():
        entry = transcript(out, name)
        spoken = re.fullmatch(r"duration (\d+\.\d\d) seconds", entry["CombinedResults"][0]["Display"])
        assert spoken and abs(float(spoken.group(1)) - seconds) < 0.011, (name, entry["CombinedResults"])
        nbest = entry["SegmentResults"][0]["NBest"]
        assert len(nbest) == 2 and nbest[0]["Words"] and "OffsetInSeconds" in nbest[0]["Words"][0]
        assert entry["Engine"] == "azure" and entry["Endpoint"] in ports
    assert sum(s["sessions_total"] for s in stats) == len(files)  # one session per file, no duplicates
    for s in stats:
        assert 1 <= s["max_active"] <= 2  # the emulator's own count: never beyond concurrency 2
        for session in s["sessions"]:
            query = session["query"]
            assert query["language"] == "en-US" and query["format"] == "detailed"
            assert query["wordLevelTimestamps"] == "true"


def test_stalled_endpoint_releases_its_slot_and_the_file_is_retried_elsewhere(
        tmp_path: Path, redis_server, store: StateStore, start_worker) -> None:
    files = tones(tmp_path / "in", DURATIONS[:6])
    with running_emulator(ports=2, rtf=0, transcribe="duration") as emu:
        stalled, healthy = emu.ports
        emu.set_fault(stalled, "stall")
        config = endpoints_yaml(tmp_path / "eps.yaml", {"stalls": stalled, "works": healthy}, stall=2.5)
        start_worker(config, BATCHSCRIBE_BACKOFF_BASE="0.3")
        out = tmp_path / "out"
        result = run_cli("submit", str(tmp_path / "in"), "--out", str(out), "--wait", broker=redis_server.url)
        assert result.returncode == 0, result.stderr
        assert emu.stats(stalled)["sessions_total"] >= 1
    events = [e for _, e in store.events()]
    stalls = [e for e in events if e.get("endpoint") == "stalls" and e.get("outcome") == "error"]
    assert stalls and all(e["error_class"] == "transient" and "progress" in e["reason"] for e in stalls), [
        (e["error_class"], e["reason"]) for e in stalls]
    assert all(float(e["seconds"]) < 10 for e in stalls)  # the watchdog freed the slot in seconds
    for name in files:
        assert transcript(out, name)["Endpoint"] == "works"


@pytest.mark.parametrize("fault, error_class", [("http401", "endpoint"), ("http429", "transient")])
def test_endpoint_faults_reach_the_file_record_with_their_class(tmp_path: Path, redis_server,
                                                                store: StateStore, start_worker,
                                                                fault: str, error_class: str) -> None:
    tones(tmp_path / "in", [1.0])
    with running_emulator(ports=2, rtf=0) as emu:
        bad, good = emu.ports
        emu.set_fault(bad, fault)
        start_worker(endpoints_yaml(tmp_path / "eps.yaml", {"bad": bad, "good": good}, concurrency=1),
                     BATCHSCRIBE_BACKOFF_BASE="0.2")
        result = run_cli("submit", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--wait",
                         broker=redis_server.url)
        assert result.returncode == 0, result.stderr
    errors = [e for _, e in store.events() if e.get("outcome") == "error"]
    assert all(e["endpoint"] == "bad" and e["error_class"] == error_class for e in errors)


def test_log_folder_subtitles_and_combined_results_over_the_real_sdk(tmp_path: Path, redis_server,
                                                                      store: StateStore, start_worker) -> None:
    files = tones(tmp_path / "in", DURATIONS[:4])
    out, logs = tmp_path / "out", tmp_path / "logs"
    with running_emulator(ports=2, rtf=4.0, transcribe="duration") as emu:
        ports = dict(zip(("emu_a", "emu_b"), emu.ports))
        start_worker(endpoints_yaml(tmp_path / "eps.yaml", ports, concurrency=1))  # 1: each trace its own
        result = run_cli("submit", str(tmp_path / "in"), "--out", str(out), "--wait", "--word-timestamps",
                         "--srt", "--vtt", "--combined-json", "--log-folder", str(logs), broker=redis_server.url)
    assert result.returncode == 0, result.stderr
    # One Speech SDK log per file (batch-kit's <name>_<ext>.<worker>.sdk.log), holding the SDK's trace.
    sdk_logs = {p.name.split(".", 1)[0]: p for p in logs.glob("*.sdk.log")}
    assert sorted(sdk_logs) == sorted(name.replace(".wav", "_wav") for name in files), sorted(logs.iterdir())
    for stem, log in sdk_logs.items():
        assert re.fullmatch(rf"{stem}\.emu_[ab]@vm1\.sdk\.log", log.name)
        lines = log.read_text().splitlines()
        assert lines[0].startswith("[batchscribe] ") and "endpoint emu_" in lines[0]
        assert sum("SPX_TRACE" in line for line in lines) > 50 and "ended: 1 phrase(s)" in lines[-1]
    # run.log: batch-kit's line format, one line per attempt.
    run_log = (logs / "run.log").read_text().splitlines()
    done = [line for line in run_log if re.search(r":INFO:emu_[ab]:done ", line)]
    assert len(done) == len(files), run_log
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}:", line) for line in run_log)
    # Subtitles next to each JSON, timed by the transcript; results.json holds every file's result.
    combined = json.loads((out / "results.json").read_text())["AudioFileResults"]
    assert sorted(e["AudioFileName"] for e in combined) == sorted(files)
    for name in files:
        entry = transcript(out, name)
        assert entry in combined
        subs = list(srt.parse((out / name.replace(".wav", "_wav.srt")).read_text()))
        captions = webvtt.from_buffer(io.StringIO((out / name.replace(".wav", "_wav.vtt")).read_text())).captions
        assert " ".join(s.content.replace("\n", " ") for s in subs) == entry["CombinedResults"][0]["Display"]
        assert [c.text.replace("\n", " ") for c in captions] == [s.content.replace("\n", " ") for s in subs]
        first_word = entry["SegmentResults"][0]["NBest"][0]["Words"][0]
        assert subs[0].start.total_seconds() == first_word["OffsetInSeconds"]
