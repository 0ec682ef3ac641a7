"""A planned stop is not a crash: a worker VM stopped with SIGTERM (a deploy, `docker compose stop`,
a systemd restart) in the middle of a long file hands it back at once; another VM starts it within
seconds; no crash is counted and no attempt spent. (A SIGKILL still counts one:
tests/acceptance/test_recovery.py.)

Real parts: two `batchscribe worker` VMs, the real Speech SDK, the emulator at real time.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from batchscribe.common.state import StateStore
from tests.support.cli import run_cli
from tests.support.cluster import VM
from tests.support.emulator import running_emulator, tone_wav
from tests.support.poll import wait_for

SECONDS = 24.0


def yaml_for(ports: dict[str, int]) -> str:
    return "".join(f"{name}:\n  host: 127.0.0.1\n  port: {port}\n  concurrency: 1\n  rtf: 1000\n"
                   for name, port in ports.items())


def test_a_vm_stopped_mid_file_hands_it_to_another_vm_at_once_without_a_crash(
        tmp_path: Path, redis_server, store: StateStore, start_worker) -> None:
    (tmp_path / "in").mkdir()
    tone_wav(tmp_path / "in" / "long.wav", SECONDS)
    with running_emulator(ports=2, rtf=1.0, transcribe="duration") as emu:
        config = tmp_path / "eps.yaml"
        config.write_text(yaml_for(dict(zip(("a", "b"), emu.ports))))
        vms = [VM(host, start_worker(config, hostname=host)) for host in ("vm1", "vm2")]
        wait_for(lambda: all(len(vm.consumers()) == 1 for vm in vms), 60, "one endpoint per VM")
        submitted = run_cli("submit", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                            broker=redis_server.url)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip()
        [job_key] = [r.job for r in store.files(batch_id, [0])]

        def running_for(seconds: float) -> bool:
            job = store.job(job_key)
            return job.get("state") == "running" and time.time() - float(job["started_at"]) > seconds

        wait_for(lambda: running_for(3.0), 60, "the file to be well under way")
        first = store.job(job_key)
        victim = next(vm for vm in vms if first["endpoint"] in vm.consumers())
        victim.process.signal(signal.SIGTERM)  # the supervisor only, as docker or systemd would
        stopped = time.monotonic()

        def elsewhere() -> bool:
            job = store.job(job_key)
            return job.get("state") in ("running", "done") and job.get("delivery") != first["delivery"]

        wait_for(elsewhere, 30, "the file to start again on the other VM")
        restarted = time.monotonic() - stopped
        assert victim.process.proc.wait(timeout=30) == 0  # it stopped on its own, well within the grace
        wait_for(lambda: store.batch(batch_id).get("finished_at"), 90, "the batch to finish")
        sessions = sum(emu.stats(port)["sessions_total"] for port in emu.ports)
    print(f"file started again {restarted:.1f} s after SIGTERM")
    assert restarted < 10
    job = store.job(job_key)
    assert job["endpoint"] != first["endpoint"]
    assert (job["state"], job.get("crashes", "0"), job["attempts"], job["handbacks"]) == ("done", "0", "1", "1")
    outcomes = [e["outcome"] for _, e in store.events()]
    assert "crash" not in outcomes and outcomes.count("handback") == 1 and outcomes.count("done") == 1
    assert all("failed_crash" not in store.endpoint_stats(name) for name in ("a", "b"))
    assert sessions == 2  # the interrupted one and the rerun
    [output] = (tmp_path / "out").rglob("long_wav.json")
    entry = json.loads(output.read_text())["AudioFileResults"][0]
    assert entry["TranscriptionStatus"] == "Succeeded"
    assert entry["CombinedResults"][0]["Display"] == f"duration {SECONDS:.2f} seconds"
    assert "handback" in victim.process.log()
