"""`retry-failed`: a batch's failed files go again (optionally one error class), once fixed."""

from __future__ import annotations

import json
from pathlib import Path

from batchscribe.common.state import StateStore
from tests.support.cli import run_cli
from tests.support.emulator import running_emulator, tone_wav


def test_retry_failed_after_the_input_was_fixed(tmp_path: Path, redis_server, store: StateStore,
                                                start_worker) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    tone_wav(inputs / "good.wav", 1.5)
    (inputs / "broken.wav").write_text("not audio yet")
    with running_emulator(ports=1, rtf=0, transcribe="duration") as emu:
        config = tmp_path / "eps.yaml"
        config.write_text(f"emu:\n  host: 127.0.0.1\n  port: {emu.ports[0]}\n  concurrency: 2\n  rtf: 1000\n")
        start_worker(config)
        first = run_cli("submit", str(inputs), "--out", str(out), "--wait", broker=redis_server.url)
        assert first.returncode == 1 and "broken.wav: not a WAV file" in first.stderr
        batch_id = store.batch_ids(1)[0]

        only_transient = run_cli("retry-failed", batch_id, "--class", "transient", broker=redis_server.url)
        assert only_transient.returncode == 0 and "0 failed file(s) queued again" in only_transient.stderr

        tone_wav(inputs / "broken.wav", 2.25)  # the user fixes the file
        again = run_cli("retry-failed", batch_id, "--wait", broker=redis_server.url)
        assert again.returncode == 0, again.stderr
        assert "1 failed file(s) queued again — 1 for the workers" in again.stderr
    fixed = json.loads((out / "broken_wav.json").read_text())["AudioFileResults"][0]
    assert fixed["TranscriptionStatus"] == "Succeeded"
    assert fixed["CombinedResults"][0]["Display"] == "duration 2.25 seconds"
    status = run_cli("status", batch_id, broker=redis_server.url)
    assert status.returncode == 0 and "failed files" not in status.stdout
    summary = json.loads((out / "run_summary.json").read_text())["overall_summary"]
    assert (summary["succeeded"], summary["failed"]) == (2, 0)
