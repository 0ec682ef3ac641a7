"""Schedule efficiency of a whole batch over several emulator endpoints (issue 4 §Speed).

    efficiency = ideal makespan / actual makespan
    ideal      = max(total audio s / Σ(concurrency_e × rtf_e), longest file s / fastest rtf)

With one endpoint killed at a third of the run (at t_k = ideal/3 after the batch was created) the
ideal is recomputed for the capacity left from that point: t_k + (audio − C·t_k) / C', where C is the
full capacity Σ(c×rtf) and C' the capacity without the dead endpoint.

Workload (default): 1,000 WAVs with a long-tailed duration mix, 1 s to 3 min (log-normal, median
5 s, clipped; the first file is exactly 3 min; 2.54 h of audio), cached under .bench/schedule/.
Endpoints: one emulator process per endpoint (its --rtf is per process; it acknowledges audio
while receiving it, so long files stream like on a real container), default (rtf 3, c 4),
(rtf 5, c 2), (rtf 2, c 6): Σ c×rtf = 34× real time, what speech containers sustain (1–5× each;
batch-processing-kit's default rtf is 3). One `batchscribe worker` VM, a private Redis with AOF,
`batchscribe submit` as a user runs it. The makespan is from the batch's `created_at` to its
`finished_at` (both written in Redis); consumers are up before the batch is submitted.

    .venv/bin/python bench/bench_schedule.py              # both runs, 1,000 files (~12 min)
    .venv/bin/python bench/bench_schedule.py --quick      # 200 files (~3 min)
    .venv/bin/python bench/bench_schedule.py --endpoints 20:4,40:2,10:6 --runs fault --kill process

Nothing here asserts: it prints a table, and where the time went (per-file overhead, slot use,
start lag, tail).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

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
from tests.support.poll import wait_for

CACHE = ROOT / ".bench" / "schedule"


# ---- workload ------------------------------------------------------------------------------------

def durations(count: int, seed: int, longest: float) -> list[float]:
    """Long-tailed: log-normal (median 5 s, σ 1.1) clipped to [1 s, longest]; the first is `longest`."""
    rng = random.Random(seed)
    values = [min(longest, max(1.0, round(rng.lognormvariate(math.log(5.0), 1.1), 2))) for _ in range(count)]
    values[0] = longest
    return values


def workload(count: int, seed: int, longest: float) -> dict[Path, float]:
    """The WAVs, generated once and cached (a file is rewritten only if its size is wrong)."""
    folder = CACHE / f"n{count}-s{seed}-l{longest:g}"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[Path, float] = {}
    for i, seconds in enumerate(durations(count, seed, longest)):
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
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 files")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--longest", type=float, default=180.0, help="longest file, s")
    parser.add_argument("--endpoints", default="3:4,5:2,2:6",
                        help="rtf:concurrency,… one emulator each (default Σ c×rtf = 34)")
    parser.add_argument("--runs", default="nofault,fault", help="nofault, fault or both (comma-separated)")
    parser.add_argument("--kill", choices=["process", "refuse"], default="process",
                        help="how the endpoint dies: emulator process SIGKILLed, or connections refused")
    parser.add_argument("--kill-endpoint", type=int, default=0,
                        help="index in --endpoints of the one that dies")
    args = parser.parse_args()
    count = 200 if args.quick else args.files
    plans = parse_endpoints(args.endpoints)
    started = time.monotonic()
    files = workload(count, args.seed, args.longest)
    print(f"{machine()}\nworkload: {count} files, {sum(files.values()) / 3600:.2f} h audio, longest "
          f"{max(files.values()):.0f} s (ready in {time.monotonic() - started:.1f} s); endpoints: "
          + ", ".join(f"{p.name} (rtf {p.rtf:g} × c {p.concurrency})" for p in plans)
          + f"; Σ c×rtf = {sum(p.capacity for p in plans):g}")
    results = []
    for run in args.runs.split(","):
        kill = plans[args.kill_endpoint] if run == "fault" else None
        label = run + (f" ({kill.name} dies by {args.kill} at ideal/3)" if kill else "")
        with private_redis() as server, tempfile.TemporaryDirectory(prefix="bench-schedule-") as work:
            results.append(run_once(label, server, plans, files, kill, args.kill, Path(work)))
        print(f"{label}: efficiency {results[-1].efficiency:.2f}", flush=True)
    report(results, plans)


if __name__ == "__main__":
    main()
