"""Schedule efficiency of a whole batch over several emulator endpoints (issues 4 and 12).

    efficiency = ideal makespan / actual makespan
    ideal      = max(total audio s / Σ(concurrency_e × rtf_e), longest file s / fastest rtf)

Two kinds of run, both on one emulator process per endpoint (its --rtf is per process; it
acknowledges audio while receiving it, so long files stream like on a real container), endpoint
YAML `rtf` = the emulator's:

* **cold** (issue 12, the default): `batchscribe run DIR --out OUT --config endpoints.yaml` timed as
  a whole command, as a user runs it — private Redis, supervisor and consumers started by the
  command, the batch submitted, followed and everything stopped again. The emulators are the
  "containers" and run before and after. Reported: efficiency of the whole command (ideal / its wall
  clock) and of the span first session opened → last session closed (the emulators' own clocks);
  start-up (command start → first session), shutdown (last output written → command exit); the
  per-file overhead (a session's time beyond audio / rtf, median and p95) and where it goes, from
  timestamps the emulator keeps per session (upgrade, speech.config, first and last audio frame,
  turn.end sent, connection closed); the gap a slot stays idle between two sessions (the worker's
  own per-file work: Celery, Redis, output), and where each file started against where an
  ideal longest-first schedule would have put it.
  Workload (default): 300 WAVs, log-normal durations (median 7 s, σ 0.8) clipped to [1 s, 60 s],
  the first exactly 60 s (~0.8 h of audio); endpoints (rtf 3, c 8), (rtf 5, c 8), (rtf 7, c 8):
  Σ c×rtf = 120. `--files 1000` is the same distribution ×3.3.
* **nofault / fault** (issue 4): one `batchscribe worker` VM whose consumers are up before the
  batch is submitted (`batchscribe submit`); makespan = the batch's `created_at` → `finished_at`
  (Redis). With one endpoint killed at a third of the run (t_k = ideal/3 after the batch was
  created) the ideal is recomputed for the capacity left from that point: t_k + (audio − C·t_k) / C',
  where C is the full capacity Σ(c×rtf) and C' the capacity without the dead endpoint.
  Workload (`--workload issue4`): 1,000 WAVs, log-normal (median 5 s, σ 1.1), 1 s to 3 min, the
  first exactly 3 min (2.54 h); endpoints (rtf 3, c 4), (rtf 5, c 2), (rtf 2, c 6): Σ c×rtf = 34.

WAVs are cached under .bench/schedule/.

    .venv/bin/python bench/bench_schedule.py                    # cold run, 300 files, 3 times (~2 min)
    .venv/bin/python bench/bench_schedule.py --files 1000       # cold, 1,000 files (~4 min)
    .venv/bin/python bench/bench_schedule.py --workload issue4  # issue 4's worker-VM runs (~12 min)
    .venv/bin/python bench/bench_schedule.py --workload issue4 --runs cold --repeat 1
    .venv/bin/python bench/bench_schedule.py --endpoints 20:4,40:2,10:6 --runs fault --kill process

Nothing here asserts: it prints tables, and where the time went.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ROOT, machine, print_table, private_redis

from batchscribe.common.models import FileRecord
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import BIN, WorkerProcess, cli_env
from tests.support.cluster import (
    VM,
    EndpointSpec,
    duration_emulator,
    kill_pids,
    processes_with_env,
    write_endpoints,
    write_tone,
)
from tests.support.emulator import EmulatorProcess
from tests.support.poll import wait_for

CACHE = ROOT / ".bench" / "schedule"


# ---- workload ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """A duration mix, its endpoints and the runs it is measured with by default."""

    files: int
    median: float
    sigma: float
    longest: float
    endpoints: str
    runs: str


WORKLOADS = {
    "issue12": Workload(files=300, median=7.0, sigma=0.8, longest=60.0, endpoints="3:8,5:8,7:8", runs="cold"),
    "issue4": Workload(files=1000, median=5.0, sigma=1.1, longest=180.0, endpoints="3:4,5:2,2:6",
                       runs="nofault,fault"),
}


def durations(count: int, seed: int, longest: float, median: float = 5.0, sigma: float = 1.1) -> list[float]:
    """Long-tailed: log-normal clipped to [1 s, longest]; the first is `longest`."""
    rng = random.Random(seed)
    values = [min(longest, max(1.0, round(rng.lognormvariate(math.log(median), sigma), 2)))
              for _ in range(count)]
    values[0] = longest
    return values


def workload(count: int, seed: int, longest: float, median: float = 5.0, sigma: float = 1.1
             ) -> dict[Path, float]:
    """The WAVs, generated once and cached (a file is rewritten only if its size is wrong)."""
    shape = "" if (median, sigma) == (5.0, 1.1) else f"-m{median:g}-g{sigma:g}"
    folder = CACHE / f"n{count}-s{seed}-l{longest:g}{shape}"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[Path, float] = {}
    for i, seconds in enumerate(durations(count, seed, longest, median, sigma)):
        path = folder / f"w{i:05d}.wav"
        if not path.exists() or path.stat().st_size != 44 + 2 * int(round(seconds * 16000)):
            write_tone(path, seconds, freq=120.0 + 0.75 * i)
        files[path] = seconds
    return files


# ---- endpoints -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EndpointPlan:
    name: str
    rtf: float
    concurrency: int

    @property
    def capacity(self) -> float:
        return self.rtf * self.concurrency


def parse_endpoints(text: str) -> list[EndpointPlan]:
    plans = []
    for i, item in enumerate(text.split(",")):
        rtf, conc = item.split(":")
        plans.append(EndpointPlan(f"e{i}_rtf{rtf}_c{conc}", float(rtf), int(conc)))
    return plans


def ideal(audio: float, longest: float, plans: list[EndpointPlan]) -> float:
    return max(audio / sum(p.capacity for p in plans), longest / max(p.rtf for p in plans))


def ideal_with_loss(audio: float, longest: float, plans: list[EndpointPlan], dead: EndpointPlan,
                    t_kill: float) -> float:
    full = sum(p.capacity for p in plans)
    left = [p for p in plans if p is not dead]
    if audio <= full * t_kill:
        return ideal(audio, longest, plans)
    return max(t_kill + (audio - full * t_kill) / sum(p.capacity for p in left),
               longest / max(p.rtf for p in left))


# ---- one run -------------------------------------------------------------------------------------

@dataclass
class RunResult:
    name: str
    files: int
    audio: float
    ideal: float
    actual: float = 0.0
    per_endpoint: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def efficiency(self) -> float:
        return self.ideal / self.actual if self.actual else 0.0


class Bench:
    """Redis, one emulator process per endpoint, one worker VM; stopped on exit."""

    def __init__(self, server: PrivateRedis, plans: list[EndpointPlan], work: Path) -> None:
        self.server = server
        self.plans = plans
        self.work = work
        self.store = StateStore.connect(Settings.from_env({}, redis_url=server.url))
        self.emulators = {p.name: duration_emulator(1, p.rtf, work / f"emulator-{p.name}.log") for p in plans}
        specs = [EndpointSpec(p.name, self.emulators[p.name].ports[0], p.concurrency, p.rtf, 30.0)
                 for p in plans]
        config = write_endpoints(work / "endpoints.yaml", specs)
        self.vm = VM("bench", WorkerProcess(server.url, config, "bench", work / "worker.log"))

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Every consumer has logged Celery's `ready.` (so the batch does not wait for start-up)."""
        wait_for(lambda: self.vm.process.log().count(" ready.") >= len(self.plans), timeout,
                 "every consumer ready", interval=0.25)
        time.sleep(1.0)

    def submit(self, folder: Path, out: Path) -> str:
        result = subprocess.run([str(BIN), "submit", str(folder), "--out", str(out)], capture_output=True,
                                text=True, timeout=300, cwd=ROOT, env=cli_env(self.server.url))
        if result.returncode != 0:
            raise RuntimeError(f"submit failed: {result.stderr}")
        return result.stdout.strip().splitlines()[-1]

    def wait_finished(self, batch: str, timeout: float) -> dict[str, str]:
        def done() -> bool:
            return bool(self.store.batch(batch).get("finished_at"))
        wait_for(done, timeout, f"batch {batch}", interval=0.5,
                 on_timeout=lambda: str(self.store.batch(batch)))
        return self.store.batch(batch)

    def kill_endpoint(self, plan: EndpointPlan, mode: str) -> None:
        emulator = self.emulators[plan.name]
        if mode == "process":
            emulator.kill()
        else:
            emulator.set_fault(emulator.ports[0], "refuse")

    def close(self) -> None:
        self.vm.process.stop(timeout=15)
        kill_pids(processes_with_env(f"BATCHSCRIBE_REDIS_URL={self.server.url}"))
        for emulator in self.emulators.values():
            emulator.stop()


def records(store: StateStore, batch: str, total: int) -> list[FileRecord]:
    return store.files(batch, range(total))


def where_time_went(result: RunResult, recs: list[FileRecord], head: dict[str, str],
                    plans: list[EndpointPlan]) -> None:
    """Per-file overhead beyond audio/rtf, slot use, start lag, tail after the last start."""
    rtf = {p.name: p.rtf for p in plans}
    done = [r for r in recs if r.state.value == "done" and r.endpoint in rtf]
    created, finished = float(head["created_at"]), float(head["finished_at"])
    overheads = [(r.finished_at - r.started_at) - r.duration / rtf[r.endpoint] for r in done]
    busy = sum(r.finished_at - r.started_at for r in done)
    slots = sum(p.concurrency for p in plans)
    first_start = min(r.started_at for r in done)
    last_start = max(r.started_at for r in done)
    longest = max(done, key=lambda r: r.duration)
    result.notes = {
        "overhead/file median s": f"{statistics.median(overheads):.3f}",
        "overhead/file p90 s": f"{sorted(overheads)[int(0.9 * len(overheads))]:.3f}",
        "overhead total slot-s": f"{sum(overheads):.1f}",
        "slot use (busy/slots×makespan)": f"{busy / (slots * (finished - created)):.2f}",
        "start lag s (created→first start)": f"{first_start - created:.2f}",
        "tail s (last start→finish)": f"{finished - last_start:.2f}",
        "longest file started at s": f"{longest.started_at - created:.2f} ({longest.duration:.0f} s on "
                                     f"{longest.endpoint})",
        "retries (attempts>1)": str(sum(1 for r in recs if r.attempts > 1)),
    }


def run_once(name: str, server: PrivateRedis, plans: list[EndpointPlan], files: dict[Path, float],
             kill: EndpointPlan | None, kill_mode: str, work: Path) -> RunResult:
    folder = next(iter(files)).parent
    audio, longest = sum(files.values()), max(files.values())
    base_ideal = ideal(audio, longest, plans)
    t_kill = base_ideal / 3
    target = ideal_with_loss(audio, longest, plans, kill, t_kill) if kill else base_ideal
    result = RunResult(name, len(files), audio, target)
    bench = Bench(server, plans, work)
    try:
        bench.wait_ready()
        batch = bench.submit(folder, work / "out")
        killer = None
        if kill is not None:
            created = float(bench.store.batch(batch)["created_at"])
            killer = threading.Timer(max(0.0, created + t_kill - time.time()), bench.kill_endpoint,
                                     args=(kill, kill_mode))
            killer.start()
        head = bench.wait_finished(batch, timeout=max(600.0, 20 * target))
        if killer is not None:
            killer.join()
        result.actual = float(head["finished_at"]) - float(head["created_at"])
        recs = records(bench.store, batch, len(files))
        result.per_endpoint = Counter(r.endpoint for r in recs if r.state.value == "done")
        result.failed = sum(1 for r in recs if r.state.value == "failed")
        where_time_went(result, recs, head, plans)
    finally:
        bench.close()
    return result


# ---- the cold `run` as a whole command (issue 12) ------------------------------------------------

CELERY_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): \w+/[\w-]+\] (.*)$")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def children_seconds() -> float:
    """CPU seconds of this process's waited-for descendants (`run` and, through it, its consumers
    and Redis)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_seconds(pid: int) -> float:
    """CPU seconds of a live process (and its waited-for children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def log_times(text: str, pattern: str) -> list[float]:
    """Wall-clock times of the Celery log lines (local time, ms) whose message matches `pattern`."""
    wanted = re.compile(pattern)
    found = []
    for raw in text.splitlines():
        match = CELERY_STAMP.match(raw)
        if match and wanted.search(match.group(3)):
            found.append(time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) +
                         int(match.group(2)) / 1000)
    return found


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def slot_gaps(sessions: list[dict[str, Any]]) -> list[float]:
    """Idle time of a slot between the close of one session and the opening of the next on one
    endpoint: each session is given the slot that freed last before it opened (the tightest
    matching, so the gaps are not overstated)."""
    free: list[float] = []  # times at which each busy-then-free slot freed, sorted
    gaps = []
    for s in sorted(sessions, key=lambda s: s["started"]):
        i = bisect.bisect_right(free, s["started"]) - 1
        if i >= 0:
            gaps.append(s["started"] - free.pop(i))
        bisect.insort(free, s["ended"])
    return gaps


@dataclass
class ColdResult:
    name: str
    files: int
    audio: float
    ideal: float
    wall: float = 0.0  # the command, start to exit
    span: float = 0.0  # first session opened → last closed
    code: int = 0
    per_endpoint: Counter[str] = field(default_factory=Counter)
    rows: dict[str, str] = field(default_factory=dict)  # where the time went

    @property
    def efficiency(self) -> float:
        return self.ideal / self.wall if self.wall else 0.0

    @property
    def span_efficiency(self) -> float:
        return self.ideal / self.span if self.span else 0.0


class ColdBench:
    """One emulator process per endpoint (the containers: they outlive every run) and the endpoint
    file `run --config` reads."""

    def __init__(self, plans: list[EndpointPlan], work: Path) -> None:
        self.plans = plans
        self.work = work
        self.emulators: dict[str, EmulatorProcess] = {}
        try:
            for p in plans:
                self.emulators[p.name] = duration_emulator(1, p.rtf, work / f"emulator-{p.name}.log")
        except BaseException:
            self.close()
            raise
        specs = [EndpointSpec(p.name, self.emulators[p.name].ports[0], p.concurrency, p.rtf, 30.0)
                 for p in plans]
        self.config = write_endpoints(work / "endpoints.yaml", specs)

    def close(self) -> None:
        for emulator in self.emulators.values():
            emulator.stop()

    def emulator_cpu(self) -> float:
        return sum(process_seconds(emu.proc.pid) for emu in self.emulators.values())

    def sessions(self) -> dict[str, list[dict[str, Any]]]:
        return {name: emu.stats(emu.ports[0])["sessions"] for name, emu in self.emulators.items()}

    def reset(self) -> None:
        for emu in self.emulators.values():
            emu._control("/control/reset", emu.ports[0])

    def run(self, label: str, folder: Path, files: dict[Path, float], extra: list[str]) -> ColdResult:
        audio, longest = sum(files.values()), max(files.values())
        result = ColdResult(label, len(files), audio, ideal(audio, longest, self.plans))
        self.reset()
        out = self.work / f"out-{label}"
        shutil.rmtree(out, ignore_errors=True)
        stderr_path = self.work / f"run-{label}.stderr"
        load_before = loadavg()
        emulator_cpu = self.emulator_cpu()
        children_cpu = children_seconds()
        with open(stderr_path, "wb") as stderr:
            started = time.time()
            proc = subprocess.run([str(BIN), "run", str(folder), "--out", str(out), "--config",
                                   str(self.config), "--keep-log", *extra], stdout=subprocess.DEVNULL,
                                  stderr=stderr, cwd=ROOT, env=cli_env(),
                                  timeout=max(600.0, 20 * result.ideal))
            exited = time.time()
        run_cpu = children_seconds() - children_cpu
        emulator_cpu = self.emulator_cpu() - emulator_cpu
        result.code = proc.returncode
        said = stderr_path.read_text(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"run exited {proc.returncode}:\n{said[-3000:]}")
        result.wall = exited - started
        kept = re.search(r"worker log kept: (\S+)", said)
        worker_log = Path(kept.group(1)) if kept else None
        log_text = worker_log.read_text(errors="replace") if worker_log and worker_log.is_file() else ""
        if worker_log is not None:
            shutil.rmtree(worker_log.parent, ignore_errors=True)
        summary = json.loads((out / "run_summary.json").read_text())
        outputs = [p for p in out.rglob("*.json") if p.name != "run_summary.json"]
        last_output = max(p.stat().st_mtime for p in outputs)
        summary_written = (out / "run_summary.json").stat().st_mtime
        by_endpoint = self.sessions()
        rtf = {p.name: p.rtf for p in self.plans}
        every = [(name, s) for name, sessions in by_endpoint.items() for s in sessions]
        first_open = min(s["started"] for _, s in every)
        last_close = max(s["ended"] for _, s in every)
        result.span = last_close - first_open
        result.per_endpoint = Counter({name: len(sessions) for name, sessions in by_endpoint.items()})
        overhead = [(s["ended"] - s["started"]) - s["audio_seconds"] / rtf[name] for name, s in every]
        phases: dict[str, list[float]] = {
            "upgrade → speech.config": [s["configured"] - s["started"] for _, s in every],
            "speech.config → first audio": [s["first_audio"] - s["configured"] for _, s in every],
            "audio upload beyond audio/rtf": [(s["audio_ended"] - s["first_audio"])
                                              - s["audio_seconds"] / rtf[n] for n, s in every],
            "end of upload → turn.end": [s["answered"] - s["audio_ended"] for _, s in every],
            "turn.end → closed (stop, close)": [s["ended"] - s["answered"] for _, s in every],
        }
        gaps = [g for name, sessions in by_endpoint.items()
                for g in slot_gaps(sessions)]
        created = float(summary["overall_summary"]["created_at"])
        ready = log_times(log_text, r" ready\.$")
        busy = sum(s["ended"] - s["started"] for _, s in every)
        slots = sum(p.concurrency for p in self.plans)
        longest_session = max(every, key=lambda e: e[1]["audio_seconds"])
        tail_start = max(s["started"] for _, s in every)
        turns = sum(1 for _, s in every if s["turns"] != 1)
        rows = {
            "exit code": str(result.code),
            "load average (1 min) before → after": f"{load_before:.1f} → {loadavg():.1f}",
            "CPU s: run + consumers + Redis; emulators":
                f"{run_cpu:.1f}; {emulator_cpu:.1f} ({(run_cpu + emulator_cpu) / result.wall:.2f} cores)",
            "start-up: command start → first session s": f"{first_open - started:.2f}",
            "  command start → batch created (submit) s": f"{created - started:.2f}",
            "  command start → consumers ready (first, last) s":
                f"{min(ready) - started:.2f}, {max(ready) - started:.2f}" if ready else "n/a",
            "shutdown: last output written → command exit s": f"{exited - last_output:.2f}",
            "  last session closed → last output s": f"{last_output - last_close:.2f}",
            "  last output → run_summary.json s": f"{summary_written - last_output:.2f}",
            "per-file overhead (session − audio/rtf) median s": f"{statistics.median(overhead):.3f}",
            "per-file overhead p95 s": f"{pct(overhead, 0.95):.3f}",
        }
        for label_, values in phases.items():
            rows[f"  {label_}: median, p95 s"] = f"{statistics.median(values):.3f}, {pct(values, 0.95):.3f}"
        rows.update({
            "slot gap between sessions median, p95 s": f"{statistics.median(gaps):.3f}, {pct(gaps, 0.95):.3f}"
                                                        if gaps else "n/a",
            "slot use in the span (busy / slots × span)": f"{busy / (slots * result.span):.3f}",
            "tail: last session opened → last closed s": f"{last_close - tail_start:.2f}",
            "each endpoint's last close (after first session) s": ", ".join(
                f"{max(s['ended'] for s in sessions) - first_open:.2f}" for sessions in by_endpoint.values()),
            "each endpoint's share of the audio (of its capacity share)": ", ".join(
                f"{sum(s['audio_seconds'] for s in by_endpoint[p.name]) / audio:.3f} "
                f"({p.capacity / sum(q.capacity for q in self.plans):.3f})" for p in self.plans),
            "longest file opened at (after first session) s":
                f"{longest_session[1]['started'] - first_open:.2f} "
                f"({longest_session[1]['audio_seconds']:.0f} s on {longest_session[0]})",
            "sessions with ≠ 1 turn; sessions beyond one per file":
                f"{turns}; {sum(len(s) for s in by_endpoint.values()) - len(files)}",
        })
        result.rows = rows
        return result


def report_cold(results: list[ColdResult], plans: list[EndpointPlan]) -> None:
    names = [p.name for p in plans]
    rows = [[r.name, r.files, f"{r.audio / 3600:.2f}", f"{r.ideal:.1f}", f"{r.wall:.1f}",
             f"{r.efficiency:.3f}", f"{r.span:.1f}", f"{r.span_efficiency:.3f}",
             *[r.per_endpoint.get(n, 0) for n in names]]
            for r in results]
    print_table(["run", "files", "audio h", "ideal s", "command s", "efficiency", "span s", "span eff.",
                 *names], rows, title="Cold `batchscribe run` (ideal / wall clock of the whole command; "
                                      "span = first session opened → last closed)")
    keys = list(results[0].rows)
    print_table(["where the time went", *[r.name for r in results]],
                [[k, *[r.rows.get(k, "") for r in results]] for k in keys], title="")


def run_cold(plans: list[EndpointPlan], files: dict[Path, float], repeat: int, extra: list[str]
             ) -> list[ColdResult]:
    folder = next(iter(files)).parent
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as work:
        bench = ColdBench(plans, Path(work))
        try:
            for i in range(repeat):
                results.append(bench.run(f"cold-{i + 1}", folder, files, extra))
                r = results[-1]
                print(f"{r.name}: whole command {r.efficiency:.3f} ({r.wall:.1f} s), span "
                      f"{r.span_efficiency:.3f} ({r.span:.1f} s), ideal {r.ideal:.1f} s", flush=True)
        finally:
            bench.close()
    return results


# ---- main ----------------------------------------------------------------------------------------

def report(results: list[RunResult], plans: list[EndpointPlan]) -> None:
    names = [p.name for p in plans]
    rows = [[r.name, r.files, f"{r.audio / 3600:.2f}", f"{r.ideal:.1f}", f"{r.actual:.1f}",
             f"{r.efficiency:.2f}", r.failed, *[r.per_endpoint.get(n, 0) for n in names]] for r in results]
    print_table(["run", "files", "audio h", "ideal s", "actual s", "efficiency", "failed", *names], rows,
                title="Schedule efficiency (ideal / actual makespan)")
    for r in results:
        print_table(["where the time went", "value"], list(r.notes.items()), title=f"{r.name}:")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="issue12",
                        help="duration mix, endpoints and runs (default issue12: 300 files, 1–60 s, "
                        "3:8,5:8,7:8, cold run)")
    parser.add_argument("--files", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="200 files")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--longest", type=float, default=None, help="longest file, s")
    parser.add_argument("--median", type=float, default=None, help="median file, s")
    parser.add_argument("--sigma", type=float, default=None, help="σ of the log-normal durations")
    parser.add_argument("--endpoints", default=None, help="rtf:concurrency,… one emulator each")
    parser.add_argument("--runs", default=None, help="cold, nofault, fault (comma-separated)")
    parser.add_argument("--repeat", type=int, default=3, help="cold runs in a row (default 3)")
    parser.add_argument("--run-args", default="", help="more arguments for the cold `run` (e.g. --txt)")
    parser.add_argument("--kill", choices=["process", "refuse"], default="process",
                        help="how the endpoint dies: emulator process SIGKILLed, or connections refused")
    parser.add_argument("--kill-endpoint", type=int, default=0,
                        help="index in --endpoints of the one that dies")
    args = parser.parse_args()
    shape = WORKLOADS[args.workload]
    count = 200 if args.quick else args.files or shape.files
    longest = args.longest or shape.longest
    plans = parse_endpoints(args.endpoints or shape.endpoints)
    started = time.monotonic()
    files = workload(count, args.seed, longest, args.median or shape.median, args.sigma or shape.sigma)
    print(f"{machine()}\nworkload: {count} files, {sum(files.values()) / 3600:.2f} h audio, longest "
          f"{max(files.values()):.0f} s, median {statistics.median(files.values()):.1f} s (ready in "
          f"{time.monotonic() - started:.1f} s); endpoints: "
          + ", ".join(f"{p.name} (rtf {p.rtf:g} × c {p.concurrency})" for p in plans)
          + f"; Σ c×rtf = {sum(p.capacity for p in plans):g}; load average {loadavg():.1f}")
    results = []
    cold: list[ColdResult] = []
    for run in (args.runs or shape.runs).split(","):
        if run == "cold":
            cold += run_cold(plans, files, args.repeat, args.run_args.split())
            continue
        kill = plans[args.kill_endpoint] if run == "fault" else None
        label = run + (f" ({kill.name} dies by {args.kill} at ideal/3)" if kill else "")
        with private_redis() as server, tempfile.TemporaryDirectory(prefix="bench-schedule-") as work:
            results.append(run_once(label, server, plans, files, kill, args.kill, Path(work)))
        print(f"{label}: efficiency {results[-1].efficiency:.2f}", flush=True)
    if cold:
        report_cold(cold, plans)
    if results:
        report(results, plans)


if __name__ == "__main__":
    main()
