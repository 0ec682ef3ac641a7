"""Real-time factor and word error rate of the local engine on the shipped samples.

    .venv/bin/python bench/bench_local_engine.py [--concurrency 2] [--cpu-threads 0] [--model PATH]

RTF = processing seconds / audio seconds (lower is faster; 0.1 is ten times real time). The
"prepare" column is ffmpeg normalisation, "decode" is Whisper; the total RTF counts both. With
--concurrency N the samples run on N threads sharing one model, as a consumer with N slots does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support (WER) is a dev-only package, not installed

from batchscribe.common.config import Endpoint  # noqa: E402
from batchscribe.common.models import TranscriptionOptions  # noqa: E402
from batchscribe.worker.audio import prepare  # noqa: E402
from batchscribe.worker.engines.local import LocalEngine  # noqa: E402
from tests.support.wer import normalise, wer  # noqa: E402


@dataclass(frozen=True)
class Row:
    name: str
    audio: float
    prepare: float
    decode: float
    wer: float
    words: int
    text: str


def run_one(engine: LocalEngine, path: Path, reference: str, workdir: Path) -> Row:
    started = time.perf_counter()
    audio = prepare(path, workdir / path.stem)
    prepared = time.perf_counter()
    result = engine.transcribe(audio, TranscriptionOptions(language="en-US"))
    decoded = time.perf_counter()
    text = " ".join(p["DisplayText"] for p in result.phrases)
    return Row(path.name, audio.duration, prepared - started, decoded - prepared, wer(reference, text),
               len(normalise(reference)), text)


def print_table(rows: list[Row], wall: float) -> None:
    print(f"{'sample':<24}{'audio s':>8}{'prepare':>9}{'decode':>8}{'RTF':>7}{'WER':>7}  transcript")
    for r in rows:
        rtf = (r.prepare + r.decode) / r.audio
        print(f"{r.name:<24}{r.audio:>8.2f}{r.prepare:>9.3f}{r.decode:>8.3f}{rtf:>7.3f}{r.wer:>7.3f}"
              f"  {r.text}")
    audio = sum(r.audio for r in rows)
    busy = sum(r.prepare + r.decode for r in rows)
    errors = sum(r.wer * r.words for r in rows) / sum(r.words for r in rows)  # word-weighted
    print(f"{'total':<24}{audio:>8.2f}{sum(r.prepare for r in rows):>9.3f}"
          f"{sum(r.decode for r in rows):>8.3f}{busy / audio:>7.3f}{errors:>7.3f}")
    print(f"wall {wall:.2f} s for {audio:.1f} s of audio: throughput RTF {wall / audio:.3f} "
          f"({audio / wall:.1f}x real time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=ROOT / "samples")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--cpu-threads", type=int, default=0)
    parser.add_argument("--model", default=None, help="model folder or name (default: bundled tiny.en)")
    parser.add_argument("--repeat", type=int, default=1, help="run the sample set this many times")
    args = parser.parse_args()
    endpoint = Endpoint(name="bench", engine="local", concurrency=args.concurrency,
                        cpu_threads=args.cpu_threads, model=args.model)
    started = time.perf_counter()
    engine = LocalEngine(endpoint)
    engine.load()
    print(f"model {engine.spec.name} loaded in {time.perf_counter() - started:.2f} s "
          f"(concurrency {args.concurrency}, cpu_threads {args.cpu_threads or 'auto'})")
    references: dict[str, str] = json.loads((args.samples / "transcripts.json").read_text())
    jobs = [args.samples / name for name in sorted(references)] * args.repeat
    engine.transcribe(prepare(jobs[0], Path(tempfile.mkdtemp())), TranscriptionOptions())  # warm-up
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(args.concurrency) as pool:
        started = time.perf_counter()
        rows = list(pool.map(lambda job: run_one(engine, job[1], references[job[1].name],
                                                 Path(work) / str(job[0])), enumerate(jobs)))
        wall = time.perf_counter() - started
    print_table(rows, wall)


if __name__ == "__main__":
    main()
