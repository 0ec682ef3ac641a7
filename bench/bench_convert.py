"""`batchscribe convert` MP4 → MP3 vs a plain `xargs -P <cores> ffmpeg` over the same files, in one run.

The Azure Batch tutorial's job: MP4s (video + audio) converted to MP3, one task per file on a pool.
Rows, each over the same inputs (made once with ffmpeg's test sources, 10–60 s, kept in --tmp):

* `xargs -P N ffmpeg`: the baseline, the same encoder arguments our targets map to;
* `convert` cold, one machine: the whole command (private Redis, local converters, submit, the
  conversions, shutdown), a fresh state each run, so nothing comes from the cache;
* `convert --broker --wait` to a running worker VM (`batchscribe worker`, N conversions at once):
  the queue's own overhead, without start-up and shutdown;
* the same cold one-machine `convert` from an Azurite input container to an output container
  (the producer hashes each blob as it downloads it, each worker downloads its input and uploads
  its output), as a ratio to the local cold run.

Throughput = files / wall seconds; the ratio is to xargs (target ≥ 0.9, i.e. ≤ 10 % queue overhead)
and, for Azurite, to the local cold run. Runs alternate between methods so drift hits all alike.

    .venv/bin/python bench/bench_convert.py [--files 100] [--runs 2] [--tmp DIR] [--no-azurite]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, print_table  # noqa: E402

from batchscribe.private_redis import PrivateRedis  # noqa: E402
from tests.support.cli import BIN, WorkerProcess, cli_env  # noqa: E402
from tests.support.media import make_mp4  # noqa: E402
from tests.support.poll import wait_for  # noqa: E402

BITRATE = "192k"
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]


def make_inputs(folder: Path, count: int, seed: int = 7) -> float:
    """`count` MP4s of 10–60 s in `folder` (kept between runs); returns the seconds of audio."""
    rng = random.Random(seed)
    durations = [round(rng.uniform(10, 60), 1) for _ in range(count)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, seconds in enumerate(durations):
        path = folder / f"clip{i:04d}.mp4"
        if not path.exists():
            make_mp4(path, seconds, 200 + 7 * i)
    return sum(durations)


def xargs(inputs: Path, out: Path, cores: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    script = (f'ffmpeg -nostdin -hide_banner -loglevel error -y -i "$0" -map 0:a:0 -vn -c:a libmp3lame '
              f'-b:a {BITRATE} "{out}/$(basename "$0" .mp4).mp3"')
    listing = subprocess.run(["find", str(inputs), "-name", "*.mp4"], check=True, capture_output=True,
                             text=True).stdout
    subprocess.run(["xargs", "-P", str(cores), "-n", "1", "sh", "-c", script], input=listing, text=True,
                   check=True)


def convert_cold(inputs: str, out: str, cores: int, env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="bsc-") as state:  # short: the Redis socket lives here
        done = subprocess.run([str(BIN), "convert", inputs, "--to", "mp3", "--bitrate", BITRATE, "--out", out,
                               "--concurrency", str(cores)], env={**env, "XDG_STATE_HOME": state},
                              capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"convert failed ({done.returncode}): {done.stderr[-2000:]}")


def convert_warm(inputs: Path, out: Path, cores: int) -> float:
    """Seconds of `convert --broker --wait` to a worker VM already running on a fresh Redis (so
    nothing comes from the cache); starting and stopping them is not timed."""
    from batchscribe.common.settings import Settings
    from batchscribe.common.state import StateStore

    with tempfile.TemporaryDirectory(prefix="bsc-") as folder, \
            PrivateRedis(data_dir=Path(folder) / "redis") as redis_server:
        config = Path(folder) / "converter.yaml"
        config.write_text(f"convert:\n  engine: ffmpeg\n  concurrency: {cores}\n")
        vm = WorkerProcess(redis_server.url, config, "bench-vm", Path(folder) / "worker.log")
        try:
            store = StateStore.connect(Settings.from_env({}, redis_url=redis_server.url))
            wait_for(lambda: any(n.startswith("convert@") for n in store.consumer_beats()), 60,
                     "the worker VM's converter to start")
            started = time.perf_counter()
            done = subprocess.run([str(BIN), "convert", str(inputs), "--to", "mp3", "--bitrate", BITRATE,
                                   "--out", str(out), "--wait"], env=cli_env(redis_server.url),
                                  capture_output=True, text=True, cwd=ROOT)
            elapsed = time.perf_counter() - started
        finally:
            vm.stop()
    if done.returncode != 0:
        raise SystemExit(f"convert --broker failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()) / "batchscribe-bench-convert")
    parser.add_argument("--no-azurite", action="store_true", help="skip the blob storage rows")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    inputs = args.tmp / f"in-{args.files}"
    print(f"making {args.files} MP4s in {inputs} (kept for the next run)…", file=sys.stderr)
    audio = make_inputs(inputs, args.files)
    print(machine())
    times: dict[str, list[float]] = {}
    scratch = args.tmp / "out"

    def fresh(name: str) -> Path:
        shutil.rmtree(scratch / name, ignore_errors=True)
        return scratch / name

    methods: dict[str, Callable[[], float]] = {
        f"xargs -P {cores} ffmpeg": lambda: timed(lambda: xargs(inputs, fresh("xargs"), cores)),
        "convert, one machine (cold)": lambda: timed(
            lambda: convert_cold(str(inputs), str(fresh("cold")), cores, cli_env())),
        "convert --broker --wait (running VM)": lambda: convert_warm(inputs, fresh("warm"), cores),
    }
    azurite = None if args.no_azurite else _azurite_rows(methods, inputs, cores)
    try:
        for _ in range(args.runs):
            for name, action in methods.items():
                times.setdefault(name, []).append(action())
    finally:
        if azurite is not None:
            azurite.stop()
    base = statistics.median(times[f"xargs -P {cores} ffmpeg"])
    cold = statistics.median(times["convert, one machine (cold)"])
    rows = []
    for name, runs in times.items():
        wall = statistics.median(runs)
        versus = f"{cold / wall:.2f}x of local cold" if name.startswith("convert az://") else ""
        rows.append((name, f"{wall:.2f}", f"{args.files / wall:.2f}", f"{base / wall:.2f}", versus,
                     " ".join(f"{t:.1f}" for t in runs)))
    print_table(["method", "wall s (median)", "files/s", "vs xargs", "other", "runs"], rows,
                f"{args.files} MP4s, {audio / 60:.1f} min of audio, to MP3 {BITRATE}, {cores} at once")


def _azurite_rows(methods: dict[str, Callable[[], float]], inputs: Path, cores: int) -> Any:
    """Upload the inputs to an Azurite container; add the blob → blob row. Returns Azurite (to stop)."""
    from tests.support.azurite import Azurite

    location = Path(tempfile.mkdtemp(prefix="bsc-azurite-"))
    azurite = Azurite(location)
    azurite.create_container("inputs")
    for path in sorted(inputs.glob("*.mp4")):
        azurite.upload("inputs", f"videos/{path.name}", path)
    env = cli_env(AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string)
    runs = {"n": 0}

    def blob_run() -> float:
        runs["n"] += 1
        return timed(lambda: convert_cold("az://inputs/videos", f"az://outputs/run{runs['n']}", cores, env))

    methods["convert az://inputs → az://outputs (cold)"] = blob_run
    return azurite


if __name__ == "__main__":
    main()
