"""`POST /batches` of `batchscribe serve` against `batchscribe submit` of the same files.

    .venv/bin/python bench/bench_api.py [--files 10000] [--runs 3] [--tmp DIR]

Generates N tiny distinct WAV files (as bench_submit.py; not timed), starts a private Redis (AOF,
as deployed) and `batchscribe serve` on it (start-up not timed; no workers: tasks only land in the
queue), then times, each run on an emptied Redis (FLUSHALL: nothing cached, every file hashed):

  submit (CLI)          `batchscribe submit FOLDER --out OUT` as a user runs it (process start
                        included: that is what a user or a script pays per batch)
  Submitter (in-proc)   `Submitter.submit` in this process: the submit code path alone
  POST /batches         one request to the running server, {"inputs": [FOLDER], "out": OUT}
                        (JSON in, the batch document out, the same Submitter behind it)

and the same three with the N file paths given one by one (command-line arguments / the JSON
list) instead of their folder. Prints the median seconds and files/s of each, and the API's rate
as a multiple of `submit`'s (target >= 0.9x) and of the in-process Submitter's (the cost of HTTP,
JSON and the server's threadpool). Checks on the way: every run queues exactly N tasks and the
API answers 201 with N files queued.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from _common import ROOT, machine, print_table, private_redis
from bench_submit import make_corpus

from batchscribe.cli.batches import submitter_for
from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.queues import pool_queue
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore

TOKEN = "bench-token-0123456789abcdef"
BIN = Path(sys.executable).parent / "batchscribe"


def start_serve(url: str, root: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHSCRIBE_")},
           "BATCHSCRIBE_REDIS_URL": url, "BATCHSCRIBE_API_TOKENS": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([str(BIN), "serve", "--port", "0", "--allow-root", str(root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        if "batchscribe serve: http://" in line:
            base = line.split("batchscribe serve: ")[1].split()[0]
            threading.Thread(target=drain, args=(proc.stdout, log), daemon=True).start()
            return proc, base
    raise SystemExit(f"serve did not start (exit {proc.poll()})")


def drain(stream: IO[bytes], log: Path) -> None:
    """Copy the server's output to its log (a full pipe would block it)."""
    with open(log, "ab") as out:
        for line in stream:
            out.write(line)


def post(base: str, inputs: list[str], out: Path) -> dict[str, Any]:
    body = json.dumps({"inputs": inputs, "out": str(out)}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    req = urllib.request.Request(f"{base}/batches", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=600) as resp:
        assert resp.status == 201, resp.status
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None, help="where the corpus goes (default: $TMPDIR)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-api-", dir=args.tmp))
    try:
        return run(work, args.files, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, files: int, runs: int) -> int:
    print(f"machine: {machine()}")
    corpus = make_corpus(work / "in", files, 0.1)
    folder = [str(corpus.root)]
    options = TranscriptionOptions()
    queue = pool_queue(options.language)
    with private_redis() as server:
        settings = Settings.from_env({}, redis_url=server.url)
        store = StateStore.connect(settings)
        submitter = submitter_for(settings, store)
        proc, base = start_serve(server.url, work, work / "serve.log")
        env = {**os.environ, "BATCHSCRIBE_REDIS_URL": server.url, "PYTHONPATH": str(ROOT)}
        times: dict[str, list[float]] = {}
        counter = iter(range(10**6))

        def timed(name: str, action: Callable[[Path], None]) -> None:
            store.redis.flushall()
            out = work / f"out{next(counter)}"
            started = time.perf_counter()
            action(out)
            times.setdefault(name, []).append(time.perf_counter() - started)
            queued = store.redis.llen(queue)
            assert queued == files, f"{name}: {queued} tasks queued, expected {files}"
            shutil.rmtree(out, ignore_errors=True)

        def cli(inputs: list[str]) -> Callable[[Path], None]:
            def action(out: Path) -> None:
                done = subprocess.run([str(BIN), "submit", *inputs, "--out", str(out)], env=env,
                                      capture_output=True, text=True)
                assert done.returncode == 0, done.stderr
            return action

        def api(inputs: list[str]) -> Callable[[Path], None]:
            def action(out: Path) -> None:
                answer = post(base, inputs, out)
                assert answer["submitted"]["queued"] == files, answer["submitted"]
            return action

        def inproc(inputs: list[str]) -> Callable[[Path], None]:
            def action(out: Path) -> None:
                submitter.submit(inputs, out, options)
            return action

        try:
            for run_number in range(runs):  # interleaved, order rotated: load drifts hit every side alike
                order = [("folder", folder), ("files", corpus.paths)]
                for label, inputs in order:
                    sides = [(f"submit (CLI), {label}", cli(inputs)),
                             (f"POST /batches, {label}", api(inputs)),
                             (f"Submitter (in-proc), {label}", inproc(inputs))]
                    shift = run_number % len(sides)
                    for name, action in sides[shift:] + sides[:shift]:
                        timed(name, action)
        finally:
            proc.terminate()
            proc.wait(30)
    rows: list[list[object]] = []
    api_vs_cli: list[float] = []
    medians = {name: statistics.median(t) for name, t in times.items()}
    for label in ("folder", "files"):
        cli_rate = files / medians[f"submit (CLI), {label}"]
        inproc_rate = files / medians[f"Submitter (in-proc), {label}"]
        for side in ("submit (CLI)", "Submitter (in-proc)", "POST /batches"):
            seconds = medians[f"{side}, {label}"]
            rate = files / seconds
            if side == "POST /batches":
                api_vs_cli.append(rate / cli_rate)
            rows.append([f"{side}", label, files, f"{seconds:.2f}", f"{rate:.0f}", f"{rate / cli_rate:.2f}x",
                         f"{rate / inproc_rate:.2f}x"])
    print_table(["mode", "inputs", "files", "median s", "files/s", "vs submit", "vs in-proc"], rows,
                title=f"POST /batches vs submit, {files} tiny WAVs, median of {runs} run(s), "
                "fresh state each")
    worst = min(api_vs_cli)
    print(f"\nAPI rate vs submit: {worst:.2f}x at worst (target >= 0.9x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
