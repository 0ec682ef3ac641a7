"""`run_summary.json` is rewritten while the batch runs (batch-kit users watch it), not only at the end:
real `batchscribe worker` processes, the emulator answering in real time so the batch lasts seconds."""

from __future__ import annotations

import json
from pathlib import Path

from batchscribe.common.state import StateStore
from tests.support.cli import run_cli
from tests.support.emulator import endpoints_yaml, running_emulator, tones
from tests.support.poll import wait_for

FILES = [1.5] * 6  # one endpoint, one at a time, in real time: about 9 s


def test_run_summary_is_seen_changing_while_the_batch_runs(tmp_path: Path, redis_server, store: StateStore,
                                                           start_worker) -> None:
    tones(tmp_path / "in", FILES)
    out = tmp_path / "out"
    seen: list[dict] = []

    def read() -> dict | None:
        try:
            summary = json.loads((out / "run_summary.json").read_text())
        except (OSError, ValueError):  # not written yet (a rename is atomic: never half a file)
            return None
        if not seen or summary["overall_summary"] != seen[-1]["overall_summary"]:
            seen.append(summary)
        return summary

    with running_emulator(ports=1, rtf=1.0, transcribe="duration") as emu:
        start_worker(endpoints_yaml(tmp_path / "eps.yaml", {"slow": emu.ports[0]}, concurrency=1))
        submitted = run_cli("submit", str(tmp_path / "in"), "--out", str(out), broker=redis_server.url)
        assert submitted.returncode == 0, submitted.stderr  # nobody waits: the workers keep it fresh
        wait_for(lambda: (read() or {}).get("overall_summary", {}).get("complete"), 90,
                 what="the final run summary", interval=0.1)
    during = [s for s in seen if not s["overall_summary"]["complete"]]
    passed = [s["overall_summary"]["file_stats"]["passed"] for s in during]
    assert any(0 < n < len(FILES) for n in passed), passed  # files finished while it was being rewritten
    assert passed == sorted(passed) and len(set(passed)) >= 2, passed
    middle = next(s for s in during if 0 < s["overall_summary"]["file_stats"]["passed"] < len(FILES))
    stats = middle["overall_summary"]["file_stats"]
    assert stats["total"] == len(FILES) and stats["passed"] + stats["queued"] + stats["running"] == len(FILES)
    assert len(middle["processed_files"]) == stats["passed"]
    assert all(p["passed"] and p["endpoint"] == "slow" for p in middle["processed_files"])
    final = seen[-1]["overall_summary"]
    assert final["file_stats"]["passed"] == len(FILES) and final["finished_at"] is not None
    assert final["audio_stats"]["total_decoded_seconds"] == sum(FILES)
