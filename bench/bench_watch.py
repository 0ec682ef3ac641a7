"""Latency of `batchscribe watch`: from a file landing in a watched folder to its task being queued.

    .venv/bin/python bench/bench_watch.py                       # 20 files per mode, quiet period 2 s (~2 min)
    .venv/bin/python bench/bench_watch.py --files 40 --quiet 5

A private redis-server (AOF, as deployed) and `batchscribe watch IN --out OUT --broker URL` as a
user runs it, once with file-system events (inotify) and once with `--poll` (default interval 1 s).
No workers: a task stays in its queue, where it is seen. Files land one at a time — a 3 s 16 kHz
WAV written in a staging folder, then renamed into IN (as `rsync` and careful copiers land files)
— each at a random moment (0-1 s) after the previous one was queued, so that landings fall
anywhere in a poll cycle. Landing = right after the rename; queued = the first poll (every 2 ms)
of the pool queue's length that counts the task. The latency is the quiet period (the file must
hold still that long; a poll that sees a file late counts its mtime age, up to one interval) +
the tick that checks settled files (every 0.25 s) + fingerprinting and publishing.

Target: median and p95 ≤ quiet period + 1 s. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from _common import ROOT, machine, print_table, private_redis

from batchscribe.common.queues import pool_queue
from tests.support.cli import BIN, cli_env, end_process
from tests.support.cluster import write_tone
from tests.support.poll import wait_for

FILE_SECONDS = 3.0


def measure(broker: str, tmp: Path, files: int, quiet: float, poll: bool) -> list[float]:
    """Seconds from landing to queued, per file, for one `watch` process."""
    mode = "poll" if poll else "events"
    watched, staging, log_path = tmp / f"in-{mode}", tmp / f"staging-{mode}", tmp / f"watch-{mode}.log"
    watched.mkdir()
    staging.mkdir()
    args = [str(BIN), "watch", str(watched), "--out", str(tmp / f"out-{mode}"),
            "--quiet-period", f"{quiet:g}", *(["--poll"] if poll else [])]
    client = redis.Redis.from_url(broker)
    queue = pool_queue("en-US")
    latencies: list[float] = []
    pause = random.Random(7)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=cli_env(broker), cwd=ROOT,
                                start_new_session=True)
        try:
            wait_for(lambda: "watching" in log_path.read_text(), timeout=30, what="watch to start",
                     on_timeout=log_path.read_text)
            time.sleep(1.0)  # the watch (or first poll) is set up a moment after the line
            already = int(client.llen(queue))  # the tasks of the other mode's run
            for i in range(files):
                time.sleep(pause.uniform(0, 1.0))  # landings come at any moment of a poll cycle
                staged = staging / f"call{i:03d}.wav"
                write_tone(staged, FILE_SECONDS, 200 + 10 * i + (5 if poll else 0))  # unique: no dedupe
                os.rename(staged, watched / staged.name)
                landed = time.monotonic()
                wait_for(lambda n=already + i + 1: int(client.llen(queue)) >= n, timeout=quiet + 30,  # type: ignore[misc]
                         what=f"file {i} to be queued", interval=0.002, on_timeout=log_path.read_text)
                latencies.append(time.monotonic() - landed)
        finally:
            end_process(proc, proc.terminate, 30)
            client.close()
    return latencies


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=20, help="files landed per mode (default 20)")
    parser.add_argument("--quiet", type=float, default=2.0, help="watch --quiet-period (default 2 s)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.files} files per mode, one at a time, quiet period {args.quiet:g} s, "
          f"target: median and p95 <= {args.quiet + 1:g} s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp_name, private_redis() as server:
        for poll in (False, True):
            seconds = measure(server.url, Path(tmp_name), args.files, args.quiet, poll)
            median, high = statistics.median(seconds), p95(seconds)
            rows.append(["--poll (every 1 s)" if poll else "events (inotify)", len(seconds), f"{median:.2f}",
                         f"{high:.2f}", f"{max(seconds):.2f}", f"{median - args.quiet:.2f}",
                         "yes" if high <= args.quiet + 1 else "NO"])
    print_table(["mode", "files", "median s", "p95 s", "max s", "median - quiet", "p95 <= quiet + 1 s"], rows,
                title="landing -> task queued")


if __name__ == "__main__":
    main()
