"""Is skipping ffmpeg for ready 16 kHz mono WAV, and reading WAV headers in Python, worth it?

    .venv/bin/python bench/bench_audio.py [--minutes 1 10 60] [--runs 5]

Times, per input length: prepare() on a canonical WAV (hard link), the same file through ffmpeg,
probe_duration() from the RIFF header, and ffprobe on the same file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batchscribe.common.media import ffprobe_duration, probe_duration  # noqa: E402
from batchscribe.worker.audio import ffmpeg_timeout, normalise_args, prepare, run_ffmpeg  # noqa: E402


def median_seconds(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def canonical_wav(path: Path, minutes: float) -> Path:
    run_ffmpeg(["-f", "lavfi", "-i", f"anoisesrc=d={minutes * 60}:c=pink:r=16000:a=0.1",
                "-ac", "1", "-c:a", "pcm_s16le", "-map_metadata", "-1", "-fflags", "+bitexact",
                "-flags:a", "+bitexact", str(path)], timeout=600)
    return path


def measure(source: Path, work: Path, runs: int) -> tuple[float, float, float, float]:
    args = normalise_args(source, work / "decoded.wav")
    timeout = ffmpeg_timeout(source.stat().st_size)
    return (median_seconds(lambda: prepare(source, work / "linked"), runs),
            median_seconds(lambda: run_ffmpeg(args, timeout, source), runs),
            median_seconds(lambda: probe_duration(source), runs),
            median_seconds(lambda: ffprobe_duration(source), runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'input':>10}{'size MB':>9}{'link':>10}{'ffmpeg':>10}{'header':>10}{'ffprobe':>10}   (median s)")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            source = canonical_wav(Path(tmp) / f"{minutes:g}min.wav", minutes)
            link, full, header, probe = measure(source, Path(tmp), args.runs)
            size = source.stat().st_size / 1e6
            print(f"{minutes:>8g} m{size:>9.1f}{link:>10.4f}{full:>10.3f}{header:>10.5f}{probe:>10.3f}")
            source.unlink()


if __name__ == "__main__":
    main()
