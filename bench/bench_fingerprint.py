"""Fingerprinting short MP4s: durations from their box headers (now) against ffprobe (before).

    .venv/bin/python bench/bench_fingerprint.py [--files 200] [--runs 3] [--threads 8]

Makes --files short MP4s (mpeg4 video + AAC, 1-4 s, ~90 KiB: more than the 64 KiB head; half with
`moov` at the end as ffmpeg writes it, half +faststart; 8 variants copied), then times
`fingerprint_files(paths, None)` (no cache: every file is hashed and probed) --runs times each way,
alternating: as shipped, and with the box walker switched off (`iso_bmff_duration` -> None), which
is the code before it: ffprobe per file. Reports median wall seconds and CPU seconds of the process
and its children (ffprobe), and checks that both ways give the same durations (within 1 ms).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

from _common import machine, print_table

from batchscribe.common import media
from batchscribe.producer.fingerprint import Fingerprint, fingerprint_files


def make_files(folder: Path, count: int) -> list[str]:
    variants = []
    for seconds in (1, 2, 3, 4):
        for flags in ([], ["-movflags", "+faststart"]):
            path = folder / f"v{seconds}{'f' if flags else ''}.mp4"
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y",
                            "-f", "lavfi", "-i", f"testsrc=size=160x120:rate=25:duration={seconds}",
                            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
                            "-c:v", "mpeg4", "-c:a", "aac", *flags, str(path)], check=True)
            variants.append(path)
    paths = []
    for i in range(count):
        path = folder / f"clip{i:04d}.mp4"
        shutil.copy(variants[i % len(variants)], path)
        paths.append(str(path))
    return paths


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(paths: list[str], threads: int, ffprobe: bool) -> tuple[float, float, list[Fingerprint]]:
    before = mock.patch.object(media, "iso_bmff_duration", lambda *_: None) if ffprobe else nullcontext()
    with before:
        cpu, wall = cpu_seconds(), time.perf_counter()
        prints = fingerprint_files(paths, None, threads)
        return time.perf_counter() - wall, cpu_seconds() - cpu, prints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_files(Path(tmp), args.files)
        size = sum(Path(p).stat().st_size for p in paths) / len(paths)
        timings: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        results: dict[bool, list[Fingerprint]] = {}
        run(paths, args.threads, ffprobe=False)  # warm the page cache
        for _ in range(args.runs):
            for ffprobe in (True, False):
                wall, cpu, results[ffprobe] = run(paths, args.threads, ffprobe)
                timings[ffprobe].append((wall, cpu))
    for a, b in zip(results[True], results[False]):
        assert not a.error and not b.error and a.sha256 == b.sha256, (a, b)
        assert abs(a.duration - b.duration) <= 0.001, (a.duration, b.duration)
    rows = []
    for ffprobe, label in ((True, "ffprobe per file (before)"), (False, "box headers (now)")):
        wall = statistics.median(t[0] for t in timings[ffprobe])
        cpu = statistics.median(t[1] for t in timings[ffprobe])
        rows.append((label, f"{wall:.3f}", f"{cpu:.3f}", f"{cpu / args.files * 1e3:.2f}",
                     f"{args.files / wall:.0f}"))
    print_table(["duration from", "wall s", "CPU s", "CPU ms/file", "files/s"], rows,
                f"{args.files} MP4s of {size / 1024:.0f} KiB on average, {args.threads} threads, "
                f"median of {args.runs}")


if __name__ == "__main__":
    main()
