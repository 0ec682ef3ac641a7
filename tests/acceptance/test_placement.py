"""Longest files to the fastest endpoint (`worker.placement`), through the whole pipeline: a slow
endpoint handed a long file it would finish well after the batch could end leaves it to the fast
endpoint, exactly once.

Real parts: one `batchscribe worker` VM with two endpoints on two emulators (rtf 3 and 8), the real
Speech SDK, `batchscribe submit`. Which consumer pulls the first (longest) file is a race; either
way both long files must end on the fast endpoint — the one the slow endpoint pulled by a yield —
with one engine session per file.
"""

from __future__ import annotations

from pathlib import Path

from batchscribe.common.state import StateStore
from tests.support.cli import run_cli
from tests.support.cluster import check_exactly_once, make_audio
from tests.support.emulator import running_emulator
from tests.support.poll import wait_for

LONG = (15.0, 14.9)  # 5 s on the slow endpoint, 1.9 s on the fast one


def test_a_slow_endpoint_leaves_a_long_file_to_a_fast_one_exactly_once(
        tmp_path: Path, redis_server, store: StateStore, start_worker) -> None:
    audio = make_audio(tmp_path / "in", [*LONG] + [1.0] * 6)
    longs = {name for name, seconds in audio.durations.items() if seconds > 10}
    with running_emulator(rtf=3.0, transcribe="duration") as slow, \
            running_emulator(rtf=8.0, transcribe="duration") as fast:
        config = tmp_path / "eps.yaml"
        config.write_text(f"slow:\n  host: 127.0.0.1\n  port: {slow.ports[0]}\n  concurrency: 2\n  rtf: 3\n"
                          f"fast:\n  host: 127.0.0.1\n  port: {fast.ports[0]}\n  concurrency: 1\n  rtf: 8\n")
        start_worker(config, hostname="vm1")
        wait_for(lambda: {b.endpoint for b in store.consumer_beats().values()} >= {"slow", "fast"}, 60,
                 "both consumers announced")
        submitted = run_cli("submit", str(audio.folder), "--out", str(tmp_path / "out"), broker=redis_server.url)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip()
        wait_for(lambda: store.batch(batch_id).get("finished_at"), 90, "the batch to finish")
        sessions = slow.stats(slow.ports[0])["sessions_total"] + fast.stats(fast.ports[0])["sessions_total"]
    verdict = check_exactly_once(store, batch_id, audio, tmp_path / "out", sessions)
    assert not verdict.problems, f"{verdict.summary()}\n" + "\n".join(verdict.problems)
    assert sessions == len(audio.durations)  # a yield costs no engine session
    records = store.files(batch_id, range(len(audio.durations)))
    assert {Path(r.path).name: r.endpoint for r in records if Path(r.path).name in longs} == \
        dict.fromkeys(longs, "fast")
    yielded = [e for _, e in store.events() if e.get("outcome") == "yielded"]
    assert 1 <= len(yielded) <= len(longs)
    assert all(Path(e["file"]).name in longs and e["endpoint"] == "slow" for e in yielded)
    assert all(r.attempts == 1 for r in records)  # the yield undid its attempt
