"""`engine: azure` through the whole pipeline: the real Speech SDK in worker processes against the
emulator, which tells us what reached the wire and how many sessions ran at once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from batchscribe.common.state import StateStore
from tests.support.cli import run_cli
from tests.support.emulator import running_emulator, tone_wav

DURATIONS = [1.0 + 0.25 * i for i in range(12)]


def endpoints_yaml(path: Path, ports: dict[str, int], concurrency: int = 2, stall: float = 30) -> Path:
    path.write_text("".join(
        f"{name}:\n  host: 127.0.0.1\n  port: {port}\n  concurrency: {concurrency}\n  rtf: 1000\n"
        f"  stallTimeout: {stall}\n" for name, port in ports.items()))
    return path


def tones(folder: Path, durations: list[float]) -> dict[str, float]:
    folder.mkdir()
    return {f"t{i:02d}.wav": tone_wav(folder / f"t{i:02d}.wav", d, freq=300 + 20 * i).duration
            for i, d in enumerate(durations)}


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
