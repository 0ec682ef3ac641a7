"""Benchmark of the azure engine (real Speech SDK) against the emulator: per-file overhead and memory.

    .venv/bin/python bench/bench_azure.py            # everything, prints tables (~1 minute)
    .venv/bin/python bench/bench_azure.py --quick    # fewer files

1. Overhead: the emulator answers at the end of each upload (rtf 0), the engine does not throttle
   (rtf 1000), so what is measured is the SDK + engine cost per file: median/p90 latency of 3 s
   files one at a time, files/s with 2 threads per core, and CPU ms per file in this process
   (the emulator runs in its own process), for file input vs push stream.
2. Memory: peak RSS and native threads of a fresh process running N recognitions at once
   (N = 1, 10, 50; 10 s files, each session held ~2.5 s by the emulator), and MB per extra slot.

TODO(lead): add the comparison against a plain Celery no-op task loop (per-task broker overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support lives beside the packages, not inside them

from batchscribe.common.models import TranscriptionOptions  # noqa: E402
from batchscribe.worker.engines.azure import AzureEngine  # noqa: E402
from batchscribe.worker.engines.base import PreparedAudio  # noqa: E402
from tests.support.emulator import (  # noqa: E402
    EmulatorProcess,
    endpoint_for,
    native_threads,
    rss_mb,
    tone_wav,
)

MEMORY_LEVELS = (1, 10, 50)
MEMORY_FILE_SECONDS = 10.0
MEMORY_RTF = 4.0  # emulator and engine: each 10 s file holds its session ~2.5 s


def _run_many(engine: AzureEngine, audio: PreparedAudio, files: int, threads: int) -> list[float]:
    """Transcribe `files` times on `threads` threads; returns each file's latency in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = iter(range(files))
    options = TranscriptionOptions()

    def worker() -> None:
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            started = time.monotonic()
            engine.transcribe(audio, options)
            with lock:
                latencies.append(time.monotonic() - started)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=600)
    return latencies


def overhead(files: int, folder: Path) -> list[dict[str, object]]:
    audio = tone_wav(folder / "three.wav", 3.0)
    cores = os.cpu_count() or 1
    rows: list[dict[str, object]] = []
    with EmulatorProcess("--rtf", "0") as emu:
        ports = emu.ports
        for mode in ("file", "push"):
            engine = AzureEngine(endpoint_for(ports[0]), input_mode=mode)
            _run_many(engine, audio, 5, 1)  # warm-up
            sequential = sorted(_run_many(engine, audio, files, 1))
            cpu0, wall0 = os.times(), time.monotonic()
            parallel = _run_many(engine, audio, files * 2, 2 * cores)
            wall, cpu1 = time.monotonic() - wall0, os.times()
            engine.close()
            cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            rows.append({
                "input": mode,
                "median ms": round(1000 * statistics.median(sequential), 1),
                "p90 ms": round(1000 * sequential[int(0.9 * (len(sequential) - 1))], 1),
                "max ms": round(1000 * sequential[-1], 1),
                "files/s 1 thread": round(len(sequential) / sum(sequential), 1),
                f"files/s {2 * cores} threads": round(len(parallel) / wall, 1),
                "files/s per core": round(len(parallel) / wall / cores, 1),
                "CPU ms/file": round(1000 * cpu / len(parallel), 1),
            })
    return rows


def memory_child(concurrency: int, port: int, folder: Path) -> dict[str, object]:
    """Runs in a fresh process: peak RSS and threads while `concurrency` files are in flight."""
    audio = tone_wav(folder / "ten.wav", MEMORY_FILE_SECONDS)
    engine = AzureEngine(endpoint_for(port, rtf=MEMORY_RTF))
    _run_many(engine, audio, 2, 1)  # SDK initialised, reaper started
    base_rss, base_threads = rss_mb(), native_threads()
    peak = {"rss": base_rss, "threads": base_threads}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak["rss"] = max(peak["rss"], rss_mb())
            peak["threads"] = max(peak["threads"], native_threads())

    sampler = threading.Thread(target=sample)
    sampler.start()
    _run_many(engine, audio, concurrency, concurrency)
    stop.set()
    sampler.join(timeout=5)
    engine.close()
    return {"concurrency": concurrency, "base MB": round(base_rss, 1), "peak MB": round(peak["rss"], 1),
            "base threads": base_threads, "peak threads": peak["threads"]}


def memory(folder: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with EmulatorProcess("--rtf", str(MEMORY_RTF)) as emu:
        ports = emu.ports
        for level in MEMORY_LEVELS:
            cmd = [sys.executable, __file__, "--memory-child", str(level), "--port", str(ports[0]),
                   "--folder", str(folder)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = rows[0]
    for row in rows:
        extra = int(row["concurrency"]) - int(first["concurrency"])  # type: ignore[call-overload]
        grow = float(row["peak MB"]) - float(first["peak MB"])  # type: ignore[arg-type]
        row["MB per extra slot"] = round(grow / extra, 2) if extra else "-"
    return rows


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    print(f"\n{title}")
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer files per measurement")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.port, args.folder)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-azure-") as tmp:
        folder = Path(tmp)
        print(f"azure engine vs emulator; {os.cpu_count()} cores; SDK", _sdk_version())
        print_table("Per-file overhead, 3 s files (emulator rtf 0, engine rtf 1000)",
                    overhead(20 if args.quick else 60, folder))
        print_table(f"Memory: {MEMORY_FILE_SECONDS:.0f} s files at rtf {MEMORY_RTF:g}, fresh process per row",
                    memory(folder))


def _sdk_version() -> str:
    import azure.cognitiveservices.speech as sdk

    return str(sdk.__version__)


if __name__ == "__main__":
    main()
