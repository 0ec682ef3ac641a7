"""`batchscribe watch` as a user runs it: files land in a watched folder — copied slowly, renamed in,
into a sub-folder — and each is transcribed once, none half-way; a restarted `watch` makes no engine
call for what was done; SIGTERM ends it cleanly. Real parts: redis-server, `batchscribe worker`
processes with the Speech SDK against the emulator (duration transcripts), the `watch` process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
import wave
from pathlib import Path

from batchscribe.common.models import FileState
from batchscribe.common.publish import message_task
from batchscribe.common.queues import pool_queue
from batchscribe.common.state import StateStore
from batchscribe.emulator import Emulator
from tests.support.cluster import EndpointSpec, processes_in, write_endpoints, write_tone
from tests.support.emulator import running_emulator
from tests.support.poll import wait_for
from tests.support.watch import WatchProcess

QUIET = "1.5"  # seconds: every pause of the slow copy below is far shorter
FAST = ("--quiet-period", QUIET, "--batch-window", "0.5")


def transcript(out: Path, rel: str) -> dict:
    stem, ext = os.path.splitext(rel)
    return json.loads((out / f"{stem}_{ext[1:]}.json").read_text())["AudioFileResults"][0]


def spoken_seconds(entry: dict) -> float:
    """The emulator's duration transcript says how much audio the engine received."""
    display = entry["CombinedResults"][0]["Display"] if entry["CombinedResults"] else ""
    match = re.fullmatch(r"duration (\d+\.\d\d) seconds", display)
    assert match, entry
    return float(match.group(1))


def copy_slowly(source: Path, target: Path, chunks: int = 6, pause: float = 0.4) -> None:
    """Write `target` in chunks with pauses, as a slow network copy does (header first)."""
    data = source.read_bytes()
    step = -(-len(data) // chunks)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start:start + step])
            fh.flush()
            time.sleep(pause)


def sessions(emu: Emulator) -> int:
    return sum(int(emu.stats(p)["sessions_total"]) for p in emu.ports)


def wait_transcribed(out: Path, rels: dict[str, float], watcher: WatchProcess, timeout: float = 90) -> None:
    outputs = {rel: out / f"{os.path.splitext(rel)[0]}_{os.path.splitext(rel)[1][1:]}.json" for rel in rels}

    def done() -> bool:
        assert watcher.running(), f"watch ended:\n{watcher.log()}"
        return all(p.is_file() for p in outputs.values())

    wait_for(done, timeout=timeout, what="every output",
             on_timeout=lambda: f"missing: {[r for r, p in outputs.items() if not p.is_file()]}\n{watcher.log()}")


def test_files_landing_in_a_watched_folder_are_each_transcribed_once_and_a_restart_redoes_nothing(
        tmp_path: Path, redis_server, start_worker) -> None:
    src, watched, out = tmp_path / "src", tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (watched / "old").mkdir(parents=True)
    seconds = {"old/before.wav": write_tone(watched / "old" / "before.wav", 1.0, 300)}
    seconds["slow.wav"] = write_tone(src / "slow.wav", 4.0, 400)
    seconds["renamed.wav"] = write_tone(src / "renamed.wav", 1.5, 500)
    seconds["day2/sub/deep.wav"] = write_tone(src / "deep.wav", 2.0, 600)
    with running_emulator(ports=1, transcribe="duration") as emu:
        start_worker(write_endpoints(tmp_path / "eps.yaml", [EndpointSpec("emu", emu.ports[0])]))
        with WatchProcess(str(watched), "--out", str(out), *FAST, log_path=tmp_path / "watch1.log",
                          broker=redis_server.url) as watcher:
            wait_transcribed(out, {"old/before.wav": 1.0}, watcher)  # what was there at the start
            copy_slowly(src / "slow.wav", watched / "slow.wav")  # ~2.4 s, never quiet for 1.5 s
            os.rename(src / "renamed.wav", watched / "renamed.wav")
            (watched / "day2" / "sub").mkdir(parents=True)
            (src / "deep.wav").rename(watched / "day2" / "sub" / "deep.wav")
            wait_transcribed(out, seconds, watcher)
            wait_for(lambda: sessions(emu) >= len(seconds), what="the last engine session to be counted")
            assert watcher.stop(signal.SIGTERM) == 0, watcher.log()
            first = watcher.log()
        assert "SIGTERM: stopping watch" in first and "stopped watching" in first, first
        assert "Traceback" not in first, first
        batches = [line for line in first.splitlines() if line.startswith("batch ")]
        assert batches and all(" 0 unusable" in line for line in batches), first  # no half copy submitted
        for rel, length in seconds.items():
            entry = transcript(out, rel)
            assert entry["TranscriptionStatus"] == "Succeeded", (rel, entry)
            assert abs(spoken_seconds(entry) - length) < 0.011, (rel, entry)  # the whole file, not part
        assert sessions(emu) == len(seconds), first  # each file once: no half-copy transcribed early

        with WatchProcess(str(watched), "--out", str(out), *FAST, log_path=tmp_path / "watch2.log",
                          broker=redis_server.url) as again:
            wait_for(lambda: f"{len(seconds)} from cache" in again.log(), timeout=60,
                     what="the restarted watch to re-submit what is there", on_timeout=again.log)
            assert again.stop(signal.SIGINT) == 0, again.log()
        assert sessions(emu) == len(seconds), again.log()  # a restart makes no engine call


def test_watch_on_one_machine_keeps_its_state_across_a_restart(tmp_path: Path, request) -> None:
    """No broker: a private Redis and local workers like `run`, in a folder per output folder that
    outlives the process, so the restart finds what was done; nothing is left running after a stop."""
    watched, out = tmp_path / "in", tmp_path / "out"
    state = Path(tempfile.mkdtemp(prefix="bsw-"))  # short: the Redis socket path lives under it
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    watched.mkdir()
    write_tone(watched / "a.wav", 1.0, 300)
    with running_emulator(ports=1, transcribe="duration") as emu:
        config = write_endpoints(tmp_path / "eps.yaml", [EndpointSpec("emu", emu.ports[0], concurrency=2)])
        args = (str(watched), "--out", str(out), "--config", str(config), *FAST)
        with WatchProcess(*args, log_path=tmp_path / "w1.log", XDG_STATE_HOME=str(state)) as watcher:
            wait_transcribed(out, {"a.wav": 1.0}, watcher)
            with WatchProcess(*args, log_path=tmp_path / "twice.log", XDG_STATE_HOME=str(state)) as twice:
                wait_for(lambda: not twice.running(), what="a second watch of the same --out to give up")
                assert twice.proc.returncode == 2 and "another `batchscribe watch`" in twice.log(), twice.log()
            assert watcher.stop(signal.SIGTERM) == 0, watcher.log()
        folders = list((state / "batchscribe" / "watch").iterdir())
        assert len(folders) == 1 and (folders[0] / "redis").is_dir()
        assert len(list((folders[0] / "results").rglob("*.json.gz"))) == 1, "its result cache is kept there"
        assert not (out / ".batchscribe").exists(), "not in the output folder"
        assert processes_in(folders[0]) == [], "its redis-server outlived watch"
        assert "stopped: workers, then Redis" in watcher.log(), watcher.log()

        write_tone(watched / "b.wav", 2.0, 400)  # lands while nobody watches
        with WatchProcess(*args, log_path=tmp_path / "w2.log", XDG_STATE_HOME=str(state)) as again:
            wait_transcribed(out, {"b.wav": 2.0}, again)
            wait_for(lambda: sessions(emu) >= 2, what="b's engine session to be counted")
            assert "1 queued" in again.log() and "1 from cache" in again.log(), again.log()
            assert again.stop(signal.SIGTERM) == 0, again.log()
        assert sessions(emu) == 2  # a once, b once


def test_a_file_still_being_copied_is_not_submitted(tmp_path: Path, redis_server) -> None:
    """No workers: what `watch` queued is all there is to see. A WAV whose copy stalls (shorter than
    the quiet period) is not queued until the copy ends, and then queued whole."""
    watched, src = tmp_path / "in", tmp_path / "src"
    watched.mkdir()
    src.mkdir()
    length = write_tone(src / "call.wav", 3.0, 300)
    data = (src / "call.wav").read_bytes()
    with WatchProcess(str(watched), "--out", str(tmp_path / "out"), "--quiet-period", "3",
                      log_path=tmp_path / "watch.log", broker=redis_server.url) as watcher:
        wait_for(lambda: "watching" in watcher.log(), what="watch to start", on_timeout=watcher.log)
        with open(watched / "call.wav", "wb") as fh:
            for start in range(0, len(data) // 2, 4096):  # the first half, over ~2 s
                fh.write(data[start:start + 4096])
                fh.flush()
                time.sleep(2 / (len(data) // 2 // 4096))
            half = watcher.log()
            fh.write(data[len(data) // 2:])
        wait_for(lambda: "1 queued" in watcher.log(), what="the finished copy to be queued",
                 on_timeout=watcher.log)
        assert watcher.stop() == 0
    assert "batch " not in half, half  # nothing submitted while the copy was under way
    with wave.open(str(watched / "call.wav")) as wav:
        assert abs(wav.getnframes() / wav.getframerate() - length) < 0.001


def test_a_file_landing_under_poll_is_transcribed(tmp_path: Path, redis_server, start_worker) -> None:
    """--poll: no file-system events, the folders re-listed every --poll-interval (what NFS and SMB
    need); a file written into a sub-folder made after the start is found and transcribed whole."""
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    with running_emulator(ports=1, transcribe="duration") as emu:
        start_worker(write_endpoints(tmp_path / "eps.yaml", [EndpointSpec("emu", emu.ports[0])]))
        with WatchProcess(str(watched), "--out", str(out), "--poll", "--poll-interval", "0.5", *FAST,
                          log_path=tmp_path / "watch.log", broker=redis_server.url) as watcher:
            wait_for(lambda: "watching" in watcher.log(), what="watch to start", on_timeout=watcher.log)
            assert "(polling every 0.5s;" in watcher.log(), watcher.log()
            assert inotify_instances(watcher.proc.pid) == 0  # events off (without --poll it holds one)
            (watched / "day1").mkdir()
            length = write_tone(watched / "day1" / "late.wav", 2.0, 300)
            wait_transcribed(out, {"day1/late.wav": length}, watcher)
            wait_for(lambda: sessions(emu) >= 1, what="the engine session to be counted")
            assert watcher.stop(signal.SIGTERM) == 0, watcher.log()
        assert abs(spoken_seconds(transcript(out, "day1/late.wav")) - length) < 0.011
        assert sessions(emu) == 1, watcher.log()


def inotify_instances(pid: int) -> int:
    """How many inotify instances the process holds open (a listing's folder may close meanwhile)."""
    found = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found += os.readlink(fd) == "anon_inode:inotify"
        except FileNotFoundError:
            continue
    return found


def test_stopping_watch_leaves_its_submitted_work_queued_for_the_workers(tmp_path: Path, redis_server,
                                                                          store: StateStore, start_worker) -> None:
    """With --broker and no worker running, SIGTERM ends `watch` (exit 0) and what it submitted stays
    in Redis: the batch, its files queued, one task message per file on the broker; a worker that
    starts later transcribes them."""
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    seconds = {name: write_tone(watched / name, 1.0 + i / 2, 300 + 100 * i)
               for i, name in enumerate(("a.wav", "b.wav"))}
    with WatchProcess(str(watched), "--out", str(out), *FAST, log_path=tmp_path / "watch.log",
                      broker=redis_server.url) as watcher:
        wait_for(lambda: "2 queued" in watcher.log(), what="both files to be queued", on_timeout=watcher.log)
        assert watcher.stop(signal.SIGTERM) == 0, watcher.log()
    assert "stopped watching; queued files stay queued for the workers" in watcher.log(), watcher.log()

    [batch] = store.batch_ids()
    records = store.files(batch, range(2))
    assert sorted(Path(r.path).name for r in records) == ["a.wav", "b.wav"]
    assert [r.state for r in records] == [FileState.QUEUED] * 2
    assert [store.job(r.job)["state"] for r in records] == ["queued"] * 2
    tasks = [message_task(m) for m in store.redis.lrange(pool_queue("en-US"), 0, -1)]
    # each message names the input that published it (its index, its relative path) for the job
    assert sorted((store.job_key_of(kwargs["batch"], int(args[0][1:])), kwargs["path"], kwargs["batch"])
                  for args, kwargs in tasks) == \
        sorted((r.job, r.rel, batch) for r in records)  # one task per file, nothing consumed

    with running_emulator(ports=1, transcribe="duration") as emu:
        worker = start_worker(write_endpoints(tmp_path / "eps.yaml", [EndpointSpec("emu", emu.ports[0])]))
        wait_for(lambda: all((out / name.replace(".wav", "_wav.json")).is_file() for name in seconds),
                 timeout=90, what="the workers to transcribe what watch left queued", on_timeout=worker.log)
    for name, length in seconds.items():
        assert abs(spoken_seconds(transcript(out, name)) - length) < 0.011
