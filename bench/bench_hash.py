"""Content hashing speed: `producer.fingerprint.sha256_file` against coreutils `sha256sum`.

    .venv/bin/python bench/bench_hash.py [--size-mib 1024] [--runs 3] [--chunks 64K 256K 1M 4M 16M]

1. Large file: writes a SIZE MiB file of random-ish data (in --dir, default the system temp folder;
   deleted afterwards), reads it once to put it in the page cache, then hashes it --runs times with
   `sha256sum` and with `sha256_file(path, chunk=...)` for each chunk size, round-robin so drift hits
   every variant alike. Reports the median MB/s (1 MB = 10^6 bytes) and the ratio to sha256sum
   (target >= 0.8). All digests must agree.
2. Small files (the submit case: tens of thousands of short recordings): microseconds per file for
   --small files of 3,244 bytes (0.1 s of 16 kHz WAV) per chunk size, where the per-call buffer
   allocation, not the hashing, dominates.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import ssl
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import machine, print_table

from batchscribe.producer.fingerprint import CHUNK, sha256_file

MB = 1_000_000


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def label(size: int) -> str:
    for unit, factor in (("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}iB"
    return f"{size} B"


def write_file(path: Path, size: int) -> None:
    """Random-ish data: a 16 MiB random block, each copy stamped with its index (no repeats)."""
    block = bytearray(random.Random(1).randbytes(16 << 20))
    with path.open("wb") as fh:
        written = 0
        index = 0
        while written < size:
            block[:8] = index.to_bytes(8, "little")
            part = block[: min(len(block), size - written)]
            fh.write(part)
            written += len(part)
            index += 1


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def timed(action):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def large_file(folder: Path, size: int, runs: int, chunks: list[int]) -> tuple[list[list[str]], int]:
    path = folder / "bench-hash.bin"
    started = time.perf_counter()
    write_file(path, size)
    print(f"wrote {size / MB:,.0f} MB in {time.perf_counter() - started:.1f}s (not timed)")
    try:
        _, expected = timed(lambda: sha256sum(path))  # warm-up: the file is in the page cache now
        variants: list[tuple[str, int]] = [("sha256sum", 0)] + [("sha256_file", c) for c in chunks]
        times: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
        for _ in range(runs):
            for tool, chunk in variants:
                if tool == "sha256sum":
                    seconds, digest = timed(lambda: sha256sum(path))
                else:
                    seconds, digest = timed(lambda c=chunk: sha256_file(str(path), chunk=c))  # type: ignore[misc]
                if digest != expected:
                    raise SystemExit(f"digest mismatch: {tool} chunk={chunk}: {digest} != {expected}")
                times[(tool, chunk)].append(seconds)
    finally:
        path.unlink(missing_ok=True)

    base = size / statistics.median(times[("sha256sum", 0)]) / MB
    rows = []
    best_chunk, best_rate = 0, 0.0
    for tool, chunk in variants:
        median = statistics.median(times[(tool, chunk)])
        rate = size / median / MB
        if tool != "sha256sum" and rate > best_rate:
            best_chunk, best_rate = chunk, rate
        name = tool if tool == "sha256sum" else f"sha256_file chunk={label(chunk)}"
        if chunk == CHUNK:
            name += " (default)"
        rows.append([name, f"{median:.3f}", f"{rate:,.0f}", f"{rate / base:.2f}",
                     " ".join(f"{t:.3f}" for t in times[(tool, chunk)])])
    print_table(["variant", "median s", "MB/s", "vs sha256sum", "runs (s)"], rows,
                title=f"Hashing one {size / MB:,.0f} MB file from the page cache (median of {runs})")
    print(f"best chunk: {label(best_chunk)} at {best_rate:,.0f} MB/s = {best_rate / base:.2f}x sha256sum "
          f"(target >= 0.8: {'met' if best_rate / base >= 0.8 else 'MISSED'})")
    return rows, best_chunk


def small_files(folder: Path, count: int, chunks: list[int], runs: int) -> None:
    small = folder / "small"
    small.mkdir()
    rng = random.Random(2)
    paths = []
    for i in range(count):
        path = small / f"{i:06d}.wav"
        path.write_bytes(rng.randbytes(3244))
        paths.append(str(path))
    try:
        variants: list[tuple[str, object]] = [(f"sha256_file chunk={label(c)}" + (" (default)" if c == CHUNK
                                                                             else ""), c) for c in chunks]
        variants.append(("read() + hashlib.sha256", "read"))
        variants.append(("hashlib.file_digest", "file_digest"))
        rows = []
        for name, how in variants:
            def run(how: object = how) -> None:
                for p in paths:
                    if how == "read":
                        with open(p, "rb") as fh:
                            hashlib.sha256(fh.read()).hexdigest()
                    elif how == "file_digest":
                        with open(p, "rb") as fh:
                            hashlib.file_digest(fh, "sha256").hexdigest()
                    else:
                        sha256_file(p, chunk=how)  # type: ignore[arg-type]
            samples = [timed(run)[0] for _ in range(runs)]
            per_file = statistics.median(samples) / count * 1e6
            rows.append([name, f"{per_file:.1f}", f"{1e6 / per_file:,.0f}"])
        print_table(["variant", "us/file", "files/s"], rows,
                    title=f"Hashing {count:,} files of 3,244 bytes (median of {runs}, one thread)")
    finally:
        shutil.rmtree(small, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the large file (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant (median reported)")
    parser.add_argument("--chunks", nargs="+", default=["64K", "256K", "1M", "4M", "16M"],
                        help="chunk sizes for sha256_file (default 64K 256K 1M 4M 16M)")
    parser.add_argument("--small", type=int, default=5000, help="number of small files (0 skips them)")
    parser.add_argument("--dir", default=None, help="where the temporary files go (default: system temp)")
    args = parser.parse_args()
    if shutil.which("sha256sum") is None:
        raise SystemExit("sha256sum (coreutils) is not installed")
    chunks = [parse_size(c) for c in args.chunks]

    print(machine())
    work = Path(tempfile.mkdtemp(prefix="bench-hash-", dir=args.dir))
    try:
        large_file(work, args.size_mib << 20, args.runs, chunks)
        if args.small:
            small_files(work, args.small, chunks, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    version = subprocess.run(["sha256sum", "--version"], capture_output=True, text=True).stdout
    print(f"({version.splitlines()[0]}; Python hashlib on {ssl.OPENSSL_VERSION})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
