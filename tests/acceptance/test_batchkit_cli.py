"""`run-batch-client` as a batch-processing-kit user types it: ONESHOT on the shipped samples with
their endpoint YAML (pointing at the emulator, for speed), batch-kit's outputs; -input_list; DAEMON
as `watch`; ignored and unknown flags reported. Real parts: the console script, a private Redis
and local workers (`run`'s), the Speech SDK against the emulator."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from batchscribe.private_redis import free_port
from tests.support.api import request as http
from tests.support.cli import BIN, ROOT, cli_env
from tests.support.cluster import processes_in, processes_with_env, write_tone
from tests.support.emulator import running_emulator
from tests.support.poll import wait_for
from tests.support.service import ServiceProcess

CLIENT = BIN.parent / "run-batch-client"
SAMPLES = ROOT / "samples"
MEDIA = sorted(p.name for p in SAMPLES.iterdir() if p.suffix != ".json")
MARKER = "BATCHKIT_TEST_MARKER"  # not a setting: tells this test's processes apart


def batchkit_yaml(path: Path, port: int) -> Path:
    """An endpoint file in batch-kit's own format (keys as its users write them)."""
    path.write_text(f"emu:\n  host: 127.0.0.1\n  port: {port}\n  concurrency: 4\n  rtf: 1000\n"
                    "  isSecure: false\n  isCloudService: false\n  language: en-US\n")
    return path


def client(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLIENT), *args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env(**env), cwd=ROOT)


def output_name(name: str) -> str:
    stem, _, ext = name.rpartition(".")
    return f"{stem}_{ext}.json"


def test_oneshot_on_the_samples_writes_batchkits_outputs(tmp_path: Path) -> None:
    out = tmp_path / "output"
    with running_emulator(ports=1, transcribe="duration") as emu:
        result = client("-config", str(batchkit_yaml(tmp_path / "config.yaml", emu.ports[0])),
                        "-input_folder", str(SAMPLES), "-output_folder", str(out), "-combined_json",
                        "-nbest", "2", "-sentiment", "-scratch_folder", str(tmp_path / "scratch"),
                        "-log_folder", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr
    assert "run-batch-client: -sentiment ignored: batchscribe does no sentiment analysis" in result.stderr
    assert "run-batch-client: -scratch_folder ignored: " in result.stderr
    assert f"run-batch-client: running: batchscribe run {SAMPLES} --out {out}" in result.stderr
    for name in MEDIA:
        entry = json.loads((out / output_name(name)).read_text())["AudioFileResults"][0]
        assert entry["AudioFileName"] == name and entry["TranscriptionStatus"] == "Succeeded", entry
        assert entry["CombinedResults"][0]["Display"].startswith("duration "), entry
        assert {"AudioFileHash", "AudioLengthInSeconds", "SegmentResults", "LastProcessedOffsetInSeconds"} <= set(entry)
    combined = json.loads((out / "results.json").read_text())["AudioFileResults"]
    assert sorted(e["AudioFileName"] for e in combined) == MEDIA
    assert (out / "run_summary.json").is_file()
    assert "--combined-json" in result.stderr and f"--log-folder {tmp_path / 'logs'}" in result.stderr
    sdk_logs = sorted(p.name.split(".", 1)[0] for p in (tmp_path / "logs").glob("*.sdk.log"))
    assert sdk_logs == sorted(output_name(name)[:-len(".json")] for name in MEDIA)  # batch-kit's log names
    assert (tmp_path / "logs" / "run.log").read_text().count(":done ") == len(MEDIA)
    assert not (tmp_path / "scratch").exists()


def test_input_list_limits_oneshot_to_the_files_it_names(tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i, name in enumerate(("a.wav", "b.wav", "c.wav")):
        write_tone(folder / name, 1.0 + i / 4, 300 + 50 * i)
    listing = tmp_path / "list.txt"
    listing.write_text(f"a.wav\n{folder / 'c.wav'}\ngone.wav\n")
    with running_emulator(ports=1, transcribe="duration") as emu:
        result = client("-config", str(batchkit_yaml(tmp_path / "config.yaml", emu.ports[0])),
                        "-input_folder", str(folder), "-output_folder", str(out), "-input_list", str(listing))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*_wav.json")) == ["a_wav.json", "c_wav.json"]
    assert "-input_list: 1 listed file(s) not found, skipped: " in result.stderr


def test_daemon_mode_runs_watch_until_stopped(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    state = Path(tempfile.mkdtemp(prefix="bsw-"))  # short: watch's Redis socket lives under it
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    log = tmp_path / "daemon.log"
    with running_emulator(ports=1, transcribe="duration") as emu, open(log, "wb") as sink:
        proc = subprocess.Popen([str(CLIENT), "-m", "DAEMON", "-config",
                                 str(batchkit_yaml(tmp_path / "config.yaml", emu.ports[0])),
                                 "-input_folder", str(folder), "-output_folder", str(out), "-resume"],
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                                env=cli_env(XDG_STATE_HOME=str(state)))
        try:
            wait_for(lambda: "watching" in log.read_text(), what="watch to start", on_timeout=log.read_text)
            write_tone(folder / "late.wav", 1.0, 300)
            wait_for(lambda: (out / "late_wav.json").is_file(), timeout=90, what="the new file's output",
                     on_timeout=log.read_text)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert "run-batch-client: running: batchscribe watch " in text
    assert "run-batch-client: -resume ignored: " in text
    assert "stopped: workers, then Redis" in text, text


def test_unknown_flags_are_an_error_and_nothing_runs(tmp_path: Path) -> None:
    result = client("-input_folder", str(tmp_path), "-output_folder", str(tmp_path / "o"), "-threads", "4")
    assert result.returncode == 2
    assert "run-batch-client: error: unrecognized arguments: -threads 4" in result.stderr
    assert "running:" not in result.stderr and not (tmp_path / "o").exists()


def test_apiserver_mode_transcribes_on_its_own_and_leaves_nothing_running(tmp_path: Path,
                                                                          request: pytest.FixtureRequest) -> None:
    """`-m APISERVER` with nothing else running but the endpoint, as batch-kit's server ran: `serve`
    on batch-kit's port flag with its own Redis and workers for -config; no token (batch-kit's
    clients send none, so it listens on 127.0.0.1 only); submissions written under
    -output_folder/batch_N/. SIGTERM stops server, workers and Redis."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_tone(folder / "a.wav", 1.5, 300)
    state = Path(tempfile.mkdtemp(prefix="bss-"))  # short: the Redis socket lives under it
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    marker = uuid.uuid4().hex  # in the environment of everything it starts
    env = cli_env(XDG_STATE_HOME=str(state), **{MARKER: marker})  # no BATCHSCRIBE_REDIS_URL: no cluster
    with running_emulator(ports=1, transcribe="duration") as emu, \
            ServiceProcess([str(CLIENT), "-m", "APISERVER", "-port", str(free_port()), "-input_folder", str(folder),
                            "-output_folder", str(out), "-config", str(batchkit_yaml(tmp_path / "c.yaml",
                                                                                      emu.ports[0]))],
                           r"batchscribe serve: (http://\S+)", env, log_path=tmp_path / "serve.log",
                           timeout=60) as server:
        url = server.announced[0].group(1)
        assert url.startswith("http://127.0.0.1:"), "no token: localhost only"
        body = {"type": "SpeechSDKBatchRequest", "files": [str(folder / "a.wav")], "language": "en-US",
                "diarization": "None", "nbest": 1, "profanity": "Masked", "allow_resume": "false",
                "sentiment": False, "combine_results": False}  # every field, as batch-kit's clients send
        submitted = http("POST", url + "/submit", body, token=None)
        assert submitted.status == 200, submitted
        number = submitted.body["batch_id"]
        done = http("GET", f"{url}/watch?batch_id={number}&target_state=done&timeout=120", token=None,
                    timeout=150)
        assert done.status == 200 and done.body["status"] == "done", (done, server.log())
        assert Path(done.body["results_dir"]) == out / f"batch_{number}"
        assert done.body["combined_results_file"] is None  # combine_results was false
        entry = json.loads((out / f"batch_{number}" / "a_wav.json").read_text())["AudioFileResults"][0]
        assert entry["CombinedResults"][0]["Display"] == "duration 1.50 seconds"
        assert processes_in(state) and len(processes_with_env(f"{MARKER}={marker}")) > 1  # redis, workers
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log()
    said = server.log()
    assert "stopped: server, workers, then Redis" in said and "Traceback" not in said, said
    assert processes_in(state) == [], "its redis-server outlived serve"
    assert processes_with_env(f"{MARKER}={marker}") == [], "a worker outlived serve"
