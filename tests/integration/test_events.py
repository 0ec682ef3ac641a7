"""The attempt log against a real Redis: compact entries that readers still show in full, its cap,
and run.log's line when the log was trimmed past the point it had copied."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from batchscribe.common.models import FileRecord
from batchscribe.common.state import StateStore
from batchscribe.common.state import events as events_module
from batchscribe.producer.runlog import RunLog
from tests.support.cli import BIN, cli_env, end_process, run_cli
from tests.support.poll import wait_for

LONG = "/mnt/batch/recordings/2026/12/customer-calls/region-north/" + "x" * 60 + ".wav"
JOB = "ab" * 32 + "." + "cd" * 8


def a_batch(store: StateStore, files: int, path: str = LONG) -> None:
    store.create_batch("b1", {"out": "/out", "options": {}},
                       [FileRecord(batch_id="b1", index=i, path=f"{path}.{i}", rel=f"{i}.wav",
                                   output=f"/out/{i}.json", duration=1.0, job=JOB) for i in range(files)])


def test_an_entry_stores_neither_time_nor_path_nor_job_and_reads_back_whole(store: StateStore) -> None:
    a_batch(store, 2)
    before = time.time()
    store.log_event(batch="b1", index=1, endpoint="gpu1", outcome="error", attempt=2, seconds=0.25,
                    error_class="transient", reason="HTTP 429 " + "y" * 500)
    [(raw_id, raw)] = store.redis.xrange(store.keys.events())
    assert {k.decode(): v.decode() for k, v in raw.items()} == {
        "o": "error", "e": "gpu1", "b": "b1", "i": "1", "a": "2", "s": "0.250", "c": "transient",
        "r": ("HTTP 429 " + "y" * 500)[:events_module.EVENT_REASON_KEPT]}
    [(event_id, event)] = store.recent_events(5)
    assert event_id == raw_id.decode()
    assert event["file"] == f"{LONG}.1" and event["job"] == JOB
    assert (event["outcome"], event["endpoint"], event["attempt"], event["seconds"]) == ("error", "gpu1", "2", "0.250")
    assert (event["error_class"], event["reason"][:8]) == ("transient", "HTTP 429")
    assert before - 1 <= float(event["ts"]) <= time.time() + 1  # Redis's clock: the same machine here
    assert store.events() == [(event_id, event)]


def test_an_entry_without_a_record_names_its_file_and_job_or_says_which_input(store: StateStore) -> None:
    store.log_event(file="/in/a.wav", job="j", endpoint="e", outcome="handback")
    store.log_event(batch="gone", index=7, endpoint="e", outcome="done")
    named = [(e["file"], e["job"]) for _, e in store.events()]
    assert named == [("/in/a.wav", "j"), ("gone:7", "")]


def test_batchscribe_log_shows_time_outcome_endpoint_file_class_and_reason(redis_server, store: StateStore) -> None:
    a_batch(store, 1)
    store.log_event(batch="b1", index=0, endpoint="gpu1", outcome="failed", attempt=3,
                    error_class="permanent", reason="not a WAV file")
    [(event_id, _)] = store.recent_events(1)
    shown = run_cli("log", "--last", "5", broker=redis_server.url)
    assert shown.returncode == 0, shown.stderr
    at = time.strftime("%H:%M:%S", time.localtime(int(event_id.partition("-")[0]) // 1000))
    assert shown.stdout.split() == [at, "failed", "gpu1", f"{LONG}.0", "[permanent]", "not", "a", "WAV", "file"]


def test_an_entry_costs_a_bounded_few_dozen_bytes_whatever_its_path(store: StateStore) -> None:
    a_batch(store, 1000)
    for i in range(1000):
        store.log_event(batch="b1", index=i, endpoint="gpu1", outcome="done", attempt=1, seconds=1.234)
    per_entry = store.redis.memory_usage(store.keys.events(), samples=0) / 1000
    assert per_entry < 80  # the path (~125 characters) and the job key (81) are not in it


def test_the_log_keeps_its_last_events_kept_entries(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "EVENTS_KEPT", 300)
    for i in range(1000):
        store.log_event(batch="b1", index=i, endpoint="e", outcome="done")
    kept = store.redis.xlen(store.keys.events())
    assert 300 <= kept < 300 + 200  # trimmed a node at a time
    assert store.recent_events(1)[0][1]["index"] == "999"


def test_run_log_says_how_many_attempts_were_trimmed_before_it_copied_them(
        tmp_path: Path, store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "EVENTS_KEPT", 300)
    a_batch(store, 1000, path="/in/f")
    run_log = RunLog(tmp_path, "b1", store.event_cursor())
    try:
        store.log_event(batch="b1", index=0, endpoint="e", outcome="done")
        assert run_log.follow(store) == 1  # read in time: nothing missed
        for i in range(1, 1000):  # the follower is away meanwhile
            store.log_event(batch="b1", index=i, endpoint="e", outcome="done")
        kept = store.redis.xlen(store.keys.events())
        assert run_log.follow(store) == kept
        for i in range(3):  # back in time again: nothing more is missed
            store.log_event(batch="b1", index=i, endpoint="e", outcome="done")
        assert run_log.follow(store) == 3
    finally:
        run_log.close()
    lines = (tmp_path / "run.log").read_text().splitlines()
    missed = 999 - kept
    assert len(lines) == 1 + 1 + kept + 3
    assert "done /in/f.0 on e" in lines[0]
    assert lines[1].endswith(f":WARNING:batchscribe:{missed} attempt(s) of the cluster's log (this batch's and "
                             "others') were trimmed from Redis before they could be copied here: the log keeps "
                             "its last 20,000; run_summary.json has every file's outcome")
    assert f"done /in/f.{1000 - kept} on e" in lines[2]


def test_log_follow_says_how_many_attempts_were_trimmed_before_it_showed_them(
        redis_server, store: StateStore, tmp_path: Path) -> None:
    """`batchscribe log -f` stopped (SIGSTOP) while more than the log keeps is logged: once it runs
    again it says, on stderr, how many it never saw, then shows what the log still holds."""
    a_batch(store, 1, path="/in/f")
    store.log_event(batch="b1", index=0, endpoint="e", outcome="done")
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        follower = subprocess.Popen([str(BIN), "log", "-f", "--last", "1"], stdout=stdout, stderr=stderr,
                                    env=cli_env(redis_server.url), start_new_session=True)
    try:
        wait_for(lambda: "/in/f.0" in out.read_text(), 30, "the first attempt shown")
        os.kill(follower.pid, signal.SIGSTOP)
        pipe = store.redis.pipeline(transaction=False)
        for _ in range(events_module.EVENTS_KEPT + 5000):  # logged as `log_event` does, in one go
            pipe.xadd(store.keys.events(), {"o": "done", "e": "e", "b": "b1", "i": "0"},
                      maxlen=events_module.EVENTS_KEPT, approximate=True)
        pipe.execute()
        kept = store.redis.xlen(store.keys.events())
        os.kill(follower.pid, signal.SIGCONT)
        wait_for(lambda: out.read_text().count("/in/f.0") == 1 + kept, 60, "what the log holds shown")
    finally:
        end_process(follower, lambda: os.killpg(follower.pid, signal.SIGTERM), 10)
    missed = events_module.EVENTS_KEPT + 5000 - kept
    assert err.read_text().strip() == (
        f"... {missed} attempt(s) were trimmed from the log before they could be shown (Redis keeps the "
        "last 20,000); `batchscribe status BATCH` and run_summary.json have every file's outcome")
