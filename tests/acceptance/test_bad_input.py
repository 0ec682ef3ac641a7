"""Bad input gets a clear message and loses nothing: the rest of the batch goes on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from batchscribe.common.state import StateStore
from batchscribe.private_redis import free_port
from tests.support.cli import run_cli
from tests.support.poll import wait_for
from tests.support.speech import synthesize

GOOD = "Please call the support line on weekdays."


def make_bad_tree(root: Path) -> None:
    root.mkdir()
    synthesize(GOOD, root / "good.wav")
    (root / "empty.wav").write_bytes(b"")
    whole = synthesize(GOOD, root / "truncated.wav").read_bytes()
    (root / "truncated.wav").write_bytes(whole[: len(whole) // 3])
    (root / "text.wav").write_text("this is a text file with a .wav name\n")
    (root / "corrupt.mp3").write_bytes(os.urandom(4000))
    os.mkfifo(root / "pipe.wav")
    synthesize("The weather today will be sunny.", root / "gone.wav")  # other bytes: no dedupe with good


def test_every_bad_input_fails_with_a_reason_and_the_rest_completes(tmp_path: Path, redis_server,
                                                                    store: StateStore, start_worker) -> None:
    make_bad_tree(tmp_path / "in")
    out = tmp_path / "out"
    submitted = run_cli("submit", str(tmp_path / "in"), "--out", str(out), broker=redis_server.url)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    (tmp_path / "in" / "gone.wav").unlink()  # deleted after submit, before any worker ran
    start_worker()  # the built-in local endpoint
    wait_for(lambda: store.batch(batch_id).get("finished_at"), timeout=120, what="batch to finish")

    def result(name: str) -> dict:
        stem, ext = name.rsplit(".", 1)
        return json.loads((out / f"{stem}_{ext}.json").read_text())["AudioFileResults"][0]

    assert result("good.wav")["TranscriptionStatus"] == "Succeeded"
    expected = {
        "empty.wav": "empty file (0 bytes)",
        "truncated.wav": "truncated WAV: header says",
        "text.wav": "not a WAV file (no RIFF header): looks like text",
        "pipe.wav": "not a regular file",
        "corrupt.mp3": "",
        "gone.wav": "file not found",
    }
    for name, reason in expected.items():
        entry = result(name)
        assert entry["TranscriptionStatus"] == "Failed", name
        assert entry["ErrorClass"] == "permanent", (name, entry)
        assert reason in entry["FailureReason"] and entry["FailureReason"], (name, entry["FailureReason"])

    status = run_cli("status", batch_id, broker=redis_server.url)
    assert status.returncode == 1
    assert "failed files (6), by error class:" in status.stdout and "permanent (6)" in status.stdout
    assert "empty file (0 bytes)" in status.stdout
    summary = json.loads((out / "run_summary.json").read_text())["overall_summary"]
    assert (summary["succeeded"], summary["failed"]) == (1, 6)
    assert summary["failed_by_class"] == {"permanent": 6}


def test_nonexistent_input_path(redis_server, tmp_path: Path) -> None:
    result = run_cli("submit", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), broker=redis_server.url)
    assert result.returncode == 2
    assert "input path not found" in result.stderr and "Traceback" not in result.stderr


def test_yaml_with_errors_names_file_endpoint_and_key(redis_server, tmp_path: Path) -> None:
    config = tmp_path / "endpoints.yaml"
    config.write_text("gpu2:\n  host: 10.0.0.2\n  concurrency: ten\n")
    result = run_cli("worker", "--config", str(config), broker=redis_server.url, timeout=30)
    assert result.returncode == 2
    assert "endpoints.yaml: endpoint 'gpu2': concurrency must be an integer" in result.stderr


def test_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["submit", "samples", "--out", str(tmp_path / "o")], ["status"], ["worker"]):
        result = run_cli(*args, broker=url, timeout=60)
        assert result.returncode == 3, (args, result.stderr)
        assert f"cannot reach Redis at {url}" in result.stderr and "Traceback" not in result.stderr
