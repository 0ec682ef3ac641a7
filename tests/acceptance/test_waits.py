"""Waits that end: `run` refuses options no endpoint serves, `submit` and `status` say when no live
worker serves a batch, and `submit --wait` stops waiting after a bounded Redis outage (exit 3)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import BIN, ROOT, cli_env, run_cli
from tests.support.emulator import running_emulator, tone_wav
from tests.support.poll import wait_for


def inputs(folder: Path, count: int = 2) -> Path:
    folder.mkdir()
    for i in range(count):
        tone_wav(folder / f"t{i}.wav", 0.5 + 0.1 * i, freq=300 + 40 * i)
    return folder


def test_run_refuses_options_that_no_endpoint_of_its_set_serves(tmp_path: Path) -> None:
    folder = inputs(tmp_path / "in", 1)
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = run_cli("run", str(folder), "--out", str(tmp_path / "out"), "--language", "de-DE",
                     timeout=60, TMPDIR=str(temp))
    assert result.returncode == 2
    assert result.stderr == ("error: no endpoint of <built-in local endpoint> serves --language de-DE: it has "
                             "local (local: en-US). Add the language to an endpoint's `languages` in an endpoint "
                             "file (--config FILE), or choose a language and engine it serves\n")
    assert list(temp.iterdir()) == []  # refused before its private Redis (or anything) started
    config = tmp_path / "eps.yaml"
    config.write_text("gpu:\n  host: 127.0.0.1\n  port: 5000\n  languages: [en-US, de-DE]\n")
    result = run_cli("run", str(folder), "--out", str(tmp_path / "out"), "--config", str(config),
                     "--language", "de-DE", "--engine", "local", timeout=60, TMPDIR=str(temp))
    assert result.returncode == 2
    assert "no endpoint of eps.yaml serves --language de-DE with --engine local: it has gpu (azure: en-US, " \
           "de-DE)." in result.stderr
    assert not (tmp_path / "out").exists()


def test_submit_and_status_say_when_no_live_worker_serves_the_batch(tmp_path: Path, redis_server: PrivateRedis,
                                                                   store: StateStore, start_worker) -> None:
    folder = inputs(tmp_path / "in")
    with running_emulator(ports=1) as emu:
        config = tmp_path / "eps.yaml"
        config.write_text(f"a:\n  host: 127.0.0.1\n  port: {emu.ports[0]}\n  concurrency: 1\n")
        start_worker(config, hostname="vm1")
        wait_for(lambda: store.consumer_beats(), 30, "a consumer to be alive")
        german = run_cli("submit", str(folder), "--out", str(tmp_path / "de"), "--language", "de-DE",
                         broker=redis_server.url)
        assert german.returncode == 0, german.stderr
        assert ("warning: no live worker serves language de-DE (queue pool.de-DE): its files wait until a "
                "worker whose endpoints serve it starts (endpoint `languages`, `engine`)") in german.stderr
        status = run_cli("status", german.stdout.strip(), broker=redis_server.url)
        assert "waiting  no live worker serves language de-DE (queue pool.de-DE)" in status.stdout
        english = run_cli("submit", str(folder), "--out", str(tmp_path / "en"), "--wait", broker=redis_server.url)
        assert english.returncode == 0, english.stderr
        assert "warning" not in english.stderr
        local_only = run_cli("submit", str(folder), "--out", str(tmp_path / "azure"), "--engine", "local",
                             broker=redis_server.url)
        assert "warning: no live worker serves language en-US with engine local (queue pool.local.en-US)" \
            in local_only.stderr


def test_submit_wait_stops_waiting_after_a_bounded_redis_outage(tmp_path: Path, redis_server: PrivateRedis) -> None:
    folder = inputs(tmp_path / "in")
    err_path = tmp_path / "submit.err"
    with open(err_path, "w") as err:
        waiting = subprocess.Popen([str(BIN), "submit", str(folder), "--out", str(tmp_path / "out"), "--wait"],
                                   stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=ROOT,
                                   env=cli_env(redis_server.url, BATCHSCRIBE_WAIT_REDIS_TIMEOUT="3"))
        try:
            wait_for(lambda: re.search(r"batch (\S+): 2 file", err_path.read_text()), 60, "the batch to be submitted")
            redis_server.stop()  # no worker, no Redis: the batch cannot finish while it waits
            code = waiting.wait(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
    text = err_path.read_text()
    batch_id = re.search(r"batch (\S+): 2 file", text).group(1)  # type: ignore[union-attr]
    assert code == 3, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: Redis has not answered for ") and "cannot reach Redis at redis://127.0.0.1:" in last
    assert (f"stopped waiting for batch {batch_id}. The batch goes on without this command wherever workers "
            f"still run it: follow it with `batchscribe status {batch_id}`, or run the same command again") in last
