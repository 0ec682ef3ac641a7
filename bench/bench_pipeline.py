"""Per-file overhead of the whole pipeline vs a plain Celery no-op task loop.

    .venv/bin/python bench/bench_pipeline.py                 # everything below (~10 min)
    .venv/bin/python bench/bench_pipeline.py --part pipeline # 1 and 2: C = 1 and 4, 100 files (~2 min)
    .venv/bin/python bench/bench_pipeline.py --part metrics  # 3: metrics on vs off (~8 min)
    .venv/bin/python bench/bench_pipeline.py --quick         # 40 files, fewer no-op tasks, small metrics runs
    .venv/bin/python bench/bench_pipeline.py --files 200 --concurrency 1,2,4

1. Reference: a plain Celery app (JSON, late ack, prefetch 1, broker = a private redis-server with
   AOF as deployed) with a task that only `RPUSH`es "sent_at done_at" into Redis, run as a real
   `celery worker -P threads -c C --without-gossip --without-mingle` subprocess (this script in
   `--noop-worker` mode), once plain and once with `-E` (task events, as batchscribe's consumers
   run). Throughput: N tasks are sent with an `apply_async` loop while the worker is SIGSTOPped,
   then it is SIGCONTed: N / (last completion - SIGCONT). Worker CPU = utime+stime of its process
   over that drain. Idle latency: tasks sent one at a time, enqueue -> completion (BLPOP).
2. batchscribe: the emulator in its own process (`--rtf 1000 --transcribe duration`), N distinct
   3 s 16 kHz tone WAVs, one `batchscribe worker` with one azure endpoint (concurrency C, rtf 1000
   so the SDK does not throttle), warmed up with a small batch, then `batchscribe submit DIR --out
   OUT --wait`. Throughput: N / (first file's started_at -> last file's finished_at, from the
   `bs:file:BATCH:i` records); loaded latency: median started_at -> finished_at; CPU: the worker's
   process tree (supervisor + consumer, children included) over the submit. Idle latency: single
   files submitted in-process one at a time, submit call -> the batch's finished_at.

3. Metrics on vs off: batchscribe as in 2 with larger batches (`--metrics-files`, one count per C:
   800 and 2,400 files, ~100 s each), once plain and once with `worker --metrics-port` and a
   scraper reading /metrics every `--scrape-interval` seconds during the submit (default 15 s,
   Prometheus' usual): worker and Redis CPU per file off vs on, with the noise of each figure
   (worker + Redis CPU per file in 10 s windows of the run: 2 standard errors of the difference);
   the CPU of one scrape (worker tree + Redis, 40 scrapes in a row after the batch); and what the
   run's own scrapes cost (their number x that) as a share of the files' CPU.

Also per task: redis-server CPU and commands (INFO commandstats delta; the batchscribe figure
includes the producer's submit, ~10 commands per file, see bench_submit), the emulator's CPU, and
how started->finished splits into "prepare + engine" (the `seconds` of the attempt's `done` event)
and the rest (start/finish scripts, output write with fsync, settle script, event log).

Nothing here asserts a timing; ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import redis
from _common import ROOT, ServerStats, machine, print_table, private_redis

from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.settings import Settings
from batchscribe.common.state import EVENTS_PER_READ, EventCursor, StateStore
from batchscribe.private_redis import free_port
from tests.support.cli import BIN, WorkerProcess, cli_env
from tests.support.cluster import VM, EndpointSpec, children, duration_emulator, write_endpoints, write_tone
from tests.support.emulator import EmulatorProcess
from tests.support.metrics import Scraper
from tests.support.poll import wait_for
from tests.support.threads import Repeater

DONE_KEY = "bench:noop:done"
FILE_SECONDS = 3.0
WARM_FILES = 6
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- processes -----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its exited, reaped children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children(current))
    return found


def tree_cpu(pid: int) -> tuple[float, dict[int, float]]:
    per = {p: cpu_seconds(p) for p in tree(pid)}
    return sum(per.values()), per


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


# ---- 1. the plain Celery no-op loop ------------------------------------------------------------------

def make_noop_app(broker: str) -> tuple[Any, Any]:
    from celery import Celery

    app = Celery("bench-noop", broker=broker, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_acks_late=True,
                    worker_prefetch_multiplier=1, task_ignore_result=True, result_backend=None,
                    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
    client = redis.Redis.from_url(broker)

    @app.task(name="bench.noop")
    def noop(sent_at: float) -> None:
        client.rpush(DONE_KEY, f"{sent_at:.6f} {time.time():.6f}")

    return app, noop


def noop_worker_main(broker: str, concurrency: int, events: bool) -> None:
    app, _ = make_noop_app(broker)
    argv = ["worker", "-P", "threads", "-c", str(concurrency), "-l", "WARNING", "--without-gossip",
            "--without-mingle", "-n", f"noop{concurrency}@bench"]
    app.worker_main([*argv, "-E"] if events else argv)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_noop(concurrency: int, tasks: int, idle_samples: int, events: bool, tmp: Path) -> dict[str, Any]:
    with private_redis() as server:
        client = redis.Redis(port=server.port)
        _app, noop = make_noop_app(server.url)
        cmd = [sys.executable, __file__, "--noop-worker", server.url, "--concurrency", str(concurrency)]
        log = open(tmp / f"noop-c{concurrency}{'-E' if events else ''}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([*cmd, "--events"] if events else cmd, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, start_new_session=True)
        try:
            for _ in range(20):  # warm-up: worker consuming, sender connected
                noop.apply_async(args=[time.time()])
            wait_for(lambda: client.llen(DONE_KEY) >= 20, 60, "the no-op worker", 0.05)
            client.delete(DONE_KEY)
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(0.1)
            sent = time.perf_counter()
            for _ in range(tasks):
                noop.apply_async(args=[time.time()])
            send_rate = tasks / (time.perf_counter() - sent)
            stats0 = ServerStats.read(client)
            cpu0, rcpu0 = cpu_seconds(proc.pid), cpu_seconds(server.proc.pid)
            began = time.time()
            os.kill(proc.pid, signal.SIGCONT)
            wait_for(lambda: client.llen(DONE_KEY) >= tasks, 120, "the no-op drain")
            cpu1, rcpu1 = cpu_seconds(proc.pid), cpu_seconds(server.proc.pid)
            stats = ServerStats.read(client).minus(stats0)
            last = max(float(raw.split()[1]) for raw in client.lrange(DONE_KEY, 0, -1))
            client.delete(DONE_KEY)
            idle = []
            for _ in range(idle_samples):
                noop.apply_async(args=[time.time()])
                popped = client.blpop([DONE_KEY], timeout=10)
                if popped is None:
                    raise RuntimeError("a no-op task did not complete within 10 s")
                sent_at, done_at = (float(x) for x in popped[1].split())
                idle.append(done_at - sent_at)
        finally:
            _stop(proc)
            log.close()
    wall = last - began
    return {"system": "celery no-op" + (" -E" if events else ""), "C": concurrency, "tasks": tasks,
            "tasks/s": round(tasks / wall, 1), "loaded ms": "-", "idle e2e ms": _ms(statistics.median(idle)),
            "worker CPU ms/task": round(1000 * (cpu1 - cpu0) / tasks, 2),
            "tasks/worker CPU-s": round(tasks / max(cpu1 - cpu0, 1e-9), 1),
            "Redis cmds/task": round(stats.total / tasks, 1),
            "Redis CPU ms/task": round(1000 * (rcpu1 - rcpu0) / tasks, 3),
            "emulator CPU ms/task": "-", "_send_rate": round(send_rate), "_top": _top(stats, tasks)}


def _top(stats: ServerStats, tasks: int, count: int = 8) -> str:
    ranked = Counter(stats.per_command).most_common(count)
    return ", ".join(f"{name} {calls / tasks:.1f}" for name, calls in ranked)


# ---- 2. batchscribe ------------------------------------------------------------------------------

def make_tones(folder: Path, count: int, first_freq: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):  # distinct frequency per file: distinct content, no dedupe between them
        write_tone(folder / f"t{i:05d}.wav", FILE_SECONDS, first_freq + 0.37 * i)
    return folder


def _submit(broker: str, folder: Path, out: Path, batch_id: str) -> float:
    started = time.perf_counter()
    cmd = [str(BIN), "submit", str(folder), "--out", str(out), "--wait", "--batch-id", batch_id]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=cli_env(broker))
    if done.returncode != 0:
        raise RuntimeError(f"submit {batch_id} exited {done.returncode}: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def scrape_once(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()


def scrape_cost(url: str, worker_pid: int, redis_pid: int, count: int = 40) -> tuple[float, float]:
    """CPU ms of one scrape: (worker tree, redis-server), over `count` scrapes in a row."""
    cpu0, rcpu0 = tree_cpu(worker_pid)[0], cpu_seconds(redis_pid)
    for _ in range(count):
        scrape_once(url)
    return (1000 * (tree_cpu(worker_pid)[0] - cpu0) / count, 1000 * (cpu_seconds(redis_pid) - rcpu0) / count)


WINDOW = 10.0  # seconds: CPU per file is sampled in windows this long, for its noise


class CpuWindows(Repeater):
    """Every WINDOW seconds: the worker tree's and redis-server's CPU seconds and the batch's
    settled files, so CPU per file can be read window by window."""

    def __init__(self, worker_pid: int, redis_pid: int, store: StateStore, batch: str) -> None:
        self.points: list[tuple[float, int]] = []  # (worker + Redis CPU s, files done)
        key = store.keys.batch(batch)

        def sample(_tick: int) -> None:
            done = int(store.redis.hget(key, "n_done") or 0)
            self.points.append((tree_cpu(worker_pid)[0] + cpu_seconds(redis_pid), done))

        super().__init__(WINDOW, sample)

    def per_file_ms(self) -> list[float]:
        """CPU ms per file of each whole window with files in it (the first and last, cut by the
        batch's start and end, left out)."""
        pairs = list(zip(self.points, self.points[1:]))[1:-1]
        return [1000 * (c1 - c0) / (n1 - n0) for (c0, n0), (c1, n1) in pairs if n1 > n0]


def run_batchscribe(concurrency: int, files: Path, idle: list[Path], emulator: EmulatorProcess,
                    tmp: Path, scrape_interval: float | None = None) -> dict[str, Any]:
    """One batchscribe run; with `scrape_interval`, the worker serves metrics and is scraped."""
    count = len(list(files.glob("*.wav")))
    tag = f"c{concurrency}-{count}{'-metrics' if scrape_interval else ''}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with private_redis() as server:
        settings = Settings.from_env({}, redis_url=server.url)
        store = StateStore.connect(settings)
        config = write_endpoints(tmp / f"endpoints-{tag}.yaml",
                                 [EndpointSpec("emu", emulator.ports[0], concurrency=concurrency, rtf=1000.0,
                                               stall_timeout=10.0)])
        options = ("--metrics-port", str(port)) if scrape_interval else ()
        process = WorkerProcess(server.url, config, f"bench{concurrency}", tmp / f"worker-{tag}.log", options)
        vm = VM(f"bench{concurrency}", process)
        try:
            wait_for(lambda: "emu" in vm.consumers(), 60, "the consumer", 0.1)
            _submit(server.url, make_tones(tmp / "warm", WARM_FILES, 1000.0), tmp / f"out-warm-{tag}",
                    f"warm-{tag}")
            time.sleep(0.5)
            idle0, _ = tree_cpu(vm.pid)
            time.sleep(3.0)
            idle_rate = (tree_cpu(vm.pid)[0] - idle0) / 3.0

            batch = f"bench-{tag}"
            stats0 = ServerStats.read(client := store.redis)
            cpu0, per0 = tree_cpu(vm.pid)
            rcpu0, ecpu0 = cpu_seconds(server.proc.pid), cpu_seconds(emulator.proc.pid)
            windows = CpuWindows(vm.pid, server.proc.pid, store, batch)
            with windows, Scraper(url, scrape_interval) if scrape_interval else nullcontext() as scraper:
                submit_wall = _submit(server.url, files, tmp / f"out-{tag}", batch)
            cpu1, per1 = tree_cpu(vm.pid)
            rcpu1, ecpu1 = cpu_seconds(server.proc.pid), cpu_seconds(emulator.proc.pid)
            stats = ServerStats.read(client).minus(stats0)

            records = store.files(batch, range(count))
            states = Counter(r.state.value for r in records)
            if states.get("done", 0) != count:
                raise RuntimeError(f"batch {batch}: {dict(states)} (see {process.log_path})")
            starts, ends = [r.started_at for r in records], [r.finished_at for r in records]
            loaded = [r.finished_at - r.started_at for r in records]
            engine = [float(e["seconds"]) for _eid, e in _events(store, batch) if e.get("outcome") == "done"]
            idle_latency = _idle_latency(settings, store, idle, tmp / f"out-idle-{tag}")
            per_scrape = scrape_cost(url, vm.pid, server.proc.pid) if scrape_interval else None
        finally:
            process.stop()
    busy = cpu1 - cpu0
    consumer = sum(per1.get(p, 0.0) - per0.get(p, 0.0) for p in per1 if p != vm.pid)
    return {"system": "batchscribe +metrics" if scrape_interval else "batchscribe", "C": concurrency,
            "tasks": count, "_scrapes": len(scraper.seen) if scraper else 0, "_per_scrape": per_scrape,
            "_windows": windows.per_file_ms(),
            "_redis_cpu_ms": 1000 * (rcpu1 - rcpu0) / count, "_busy_ms": 1000 * busy / count,
            "tasks/s": round(count / (max(ends) - min(starts)), 1),
            "loaded ms": _ms(statistics.median(loaded)), "idle e2e ms": _ms(statistics.median(idle_latency)),
            "worker CPU ms/task": round(1000 * busy / count, 2),
            "tasks/worker CPU-s": round(count / max(busy, 1e-9), 1),
            "Redis cmds/task": round(stats.total / count, 1),
            "Redis CPU ms/task": round(1000 * (rcpu1 - rcpu0) / count, 3),
            "emulator CPU ms/task": round(1000 * (ecpu1 - ecpu0) / count, 2),
            "_consumer CPU ms/task": round(1000 * consumer / count, 2),
            "_supervisor CPU ms/task": round(1000 * (busy - consumer) / count, 2),
            "_idle CPU %": round(100 * idle_rate, 2), "_submit wall s": round(submit_wall, 2),
            "_engine ms": _ms(statistics.median(engine)) if engine else None,
            "_rest ms": _ms(statistics.median(loaded) - statistics.median(engine)) if engine else None,
            "_loaded p90 ms": _ms(sorted(loaded)[int(0.9 * (len(loaded) - 1))]),
            "_top": _top(stats, count)}


def _events(store: StateStore, batch: str) -> list[tuple[str, dict[str, str]]]:
    """Every attempt of `batch` still in the attempt log."""
    found, cursor = [], EventCursor()
    while True:
        page = store.follow_events(cursor, batch)
        found += page.events
        cursor = page.cursor
        if page.read < EVENTS_PER_READ:
            return found


def _idle_latency(settings: Settings, store: StateStore, paths: list[Path], out: Path) -> list[float]:
    """One file at a time, submitted in-process: submit call -> the batch's finished_at (worker clock)."""
    from batchscribe.common.celery_app import make_app
    from batchscribe.common.publish import Publisher
    from batchscribe.producer.submit import Submitter

    submitter = Submitter(store, Publisher(make_app(settings, "bench-producer")), settings.claim_ttl)
    found = []
    for i, path in enumerate(paths):
        batch = f"idle-{i}"
        began = time.time()
        submitter.submit([str(path)], out, TranscriptionOptions(), formats=["json"], batch_id=batch)
        key = store.keys.batch(batch)
        wait_for(lambda key=key: store.redis.hget(key, "finished_at"), 30, f"idle file {i}", 0.002)
        found.append(float(store.redis.hget(key, "finished_at")) - began)
    return found


def metrics_cost(off: dict[str, Any], on: dict[str, Any]) -> list[Any]:
    """Worker + Redis CPU per file with metrics off and on (± 2 standard errors of the difference,
    from the runs' 10 s windows), what one scrape costs, and the run's scrapes as a share of its
    files' CPU."""
    off_ms, on_ms = off["_busy_ms"] + off["_redis_cpu_ms"], on["_busy_ms"] + on["_redis_cpu_ms"]
    windows = (off["_windows"], on["_windows"])
    noise = (f"± {200 * math.sqrt(sum(statistics.variance(w) / len(w) for w in windows)) / off_ms:.1f} %"
             if all(len(w) > 1 for w in windows) else "-")  # too short a run for two whole windows
    worker_scrape, redis_scrape = on["_per_scrape"]
    scrapes_ms = on["_scrapes"] * (worker_scrape + redis_scrape)
    at_15s = (worker_scrape + redis_scrape) / (15.0 * off["tasks/s"])  # ms per file
    return [off["C"], off["tasks"], off["tasks/s"], on["tasks/s"], round(off_ms, 2), round(on_ms, 2),
            f"{100 * (on_ms / off_ms - 1):+.1f} %", noise, on["_scrapes"],
            round(worker_scrape, 2), round(redis_scrape, 2),
            f"{100 * scrapes_ms / (on_ms * on['tasks']):.3f} %", f"{100 * at_15s / off_ms:.3f} %"]


# ---- main --------------------------------------------------------------------------------------

COLUMNS = ["system", "C", "tasks", "tasks/s", "loaded ms", "idle e2e ms", "worker CPU ms/task",
           "tasks/worker CPU-s", "Redis cmds/task", "Redis CPU ms/task", "emulator CPU ms/task"]


def _counts(text: str, levels: list[int]) -> dict[int, int]:
    """One file count per C from a comma-separated list (the last one repeats)."""
    counts = [int(x) for x in text.split(",") if x.strip()]
    return {level: counts[min(i, len(counts) - 1)] for i, level in enumerate(levels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--part", choices=("all", "pipeline", "metrics"), default="all",
                        help="pipeline: 1 and 2; metrics: 3 (metrics on vs off); all: both (default)")
    parser.add_argument("--files", type=int, default=None,
                        help="files per batchscribe run of part 2 (default 100)")
    parser.add_argument("--noop-tasks", type=int, default=None, help="tasks per no-op run (default 2000)")
    parser.add_argument("--concurrency", default="1,4", help="comma-separated C values (default 1,4)")
    parser.add_argument("--idle", type=int, default=15, help="one-at-a-time latency samples per run")
    parser.add_argument("--quick", action="store_true", help="40 files, 500 no-op tasks, 120 and 360 "
                        "files per metrics run")
    parser.add_argument("--metrics-files", default=None, help="files per metrics run, one per C "
                        "(default 800,2400: ~100 s each on 2 cores)")
    parser.add_argument("--scrape-interval", type=float, default=15.0,
                        help="seconds between /metrics scrapes in the metrics-on run (default 15)")
    parser.add_argument("--noop-worker", metavar="BROKER", help=argparse.SUPPRESS)
    parser.add_argument("--events", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if args.noop_worker:
        noop_worker_main(args.noop_worker, levels[0], args.events)
        return
    files = args.files or (40 if args.quick else 100)
    tasks = args.noop_tasks or (500 if args.quick else 2000)
    metrics_files = _counts(args.metrics_files or ("120,360" if args.quick else "800,2400"), levels)
    pipeline, metrics = args.part in ("all", "pipeline"), args.part in ("all", "metrics")
    print(f"machine: {machine()}")
    if pipeline:
        print(f"pipeline: {files} files of {FILE_SECONDS:g} s per batchscribe run, {tasks} tasks per no-op "
              f"run, C = {levels}")
    if metrics:
        print(f"metrics: {', '.join(f'{n} files at C={c}' for c, n in metrics_files.items())}, off then on, "
              f"scraped every {args.scrape_interval:g} s")
    rows: list[dict[str, Any]] = []
    costs: list[list[Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp_name:
        tmp = Path(tmp_name)
        idle = sorted(make_tones(tmp / "idle", args.idle * len(levels), 3000.0).glob("*.wav"))
        emulator = duration_emulator(1, 1000.0, tmp / "emulator.log")
        try:
            for n, level in enumerate(levels):
                mine = idle[n * args.idle:(n + 1) * args.idle]
                if pipeline:
                    inputs = make_tones(tmp / f"in-{files}", files, 200.0)
                    rows.append(run_noop(level, tasks, args.idle, False, tmp))
                    rows.append(run_noop(level, tasks, args.idle, True, tmp))
                    rows.append(run_batchscribe(level, inputs, mine, emulator, tmp))
                if metrics:
                    inputs = make_tones(tmp / f"in-{metrics_files[level]}", metrics_files[level], 200.0)
                    off = run_batchscribe(level, inputs, mine, emulator, tmp)
                    off["system"] = "batchscribe -metrics"  # the pipeline part's row keeps "batchscribe"
                    on = run_batchscribe(level, inputs, mine, emulator, tmp, args.scrape_interval)
                    costs.append(metrics_cost(off, on))
                    rows += [off, on]
                print(f"  C={level} done [{time.monotonic() - started:.0f} s]", flush=True)
        finally:
            emulator.stop()
    print_table(COLUMNS, [[row[c] for c in COLUMNS] for row in rows],
                "Throughput, latency and CPU per task (loaded ms: started->finished under load; "
                "idle e2e ms: enqueue/submit -> done, one at a time)")
    if pipeline:
        _print_pipeline(rows, levels)
    if metrics:
        print_table(["C", "files", "off files/s", "on files/s", "off: worker+Redis CPU ms/file",
                     "on: worker+Redis CPU ms/file", "on vs off", "noise (2 s.e.)", "scrapes during submit",
                     "worker CPU ms/scrape", "Redis CPU ms/scrape", "the run's scrapes / its files' CPU",
                     "a scrape every 15 s / files' CPU"], costs,
                    f"Metrics cost (same run; on: worker --metrics-port, /metrics read every "
                    f"{args.scrape_interval:g} s during the submit)")
    print("\nRedis commands per task (server side, top 8):")
    for r in rows:
        print(f"  {r['system']:<16} C={r['C']}: {r['_top']}")
    if pipeline:
        print("\nno-op send rate (apply_async loop, tasks/s): "
              + ", ".join(f"{r['system']} C={r['C']}: {r['_send_rate']}" for r in rows if "_send_rate" in r))
    print(f"\ntotal {time.monotonic() - started:.0f} s")


def _print_pipeline(rows: list[dict[str, Any]], levels: list[int]) -> None:
    ratios = []
    for level in levels:
        by = {r["system"]: r for r in rows if r["C"] == level}
        bs = by["batchscribe"]
        for ref in ("celery no-op", "celery no-op -E"):
            base = by[ref]
            ratios.append([level, f"batchscribe / {ref}", f"{bs['tasks/s'] / base['tasks/s']:.3f}x",
                           f"{bs['worker CPU ms/task'] / base['worker CPU ms/task']:.1f}x",
                           f"{bs['idle e2e ms'] / base['idle e2e ms']:.1f}x"])
    print_table(["C", "ratio", "throughput", "worker CPU/task", "idle latency"], ratios, "Ratios")
    detail = [[r["C"], r["_consumer CPU ms/task"], r["_supervisor CPU ms/task"], r["_idle CPU %"],
               r["_engine ms"], r["_rest ms"], r["_loaded p90 ms"], r["_submit wall s"]]
              for r in rows if r["system"] == "batchscribe"]
    print_table(["C", "consumer CPU ms/file", "supervisor CPU ms/file", "idle tree CPU %",
                 "prepare+engine ms", "rest of started->finished ms", "loaded p90 ms", "submit --wait s"],
                detail, "batchscribe detail (medians; 'rest' = state scripts, output write, settle, log)")


if __name__ == "__main__":
    main()
