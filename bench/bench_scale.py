"""A million files on one Redis: memory per file, producer memory, submit speed, status, summary.

`.venv/bin/python bench/bench_scale.py` (default sizes 10,000 / 100,000 / 1,000,000; `--sizes`)
runs, for each size N, on a fresh private Redis (the settings `batchscribe run` starts it with):

1. N real WAV files on disk (8 kHz, 8-bit mono, 0.01 s: 124 bytes each, distinct content, folders
   of 1,000), not timed;
2. `batchscribe submit DIR --out OUT --broker URL` as a subprocess, no workers running: its wall
   time (files/s) and its peak RSS (the child's own rusage); its progress lines are counted;
3. Redis `INFO memory` used_memory after the submit (every file queued: the peak) over the empty
   server's, per file; and where it goes (MEMORY USAGE of every key, by family);
4. `batchscribe status BATCH` as a subprocess (wall, including Python's start) and the same view
   in-process (`load_view` + render);
5. the drain: every queued task taken from the queue and run through the worker's own state
   transitions and output writing (`StateStore.start_job`, `finish_job`, `deliver_success` with the
   last file's `complete_batch`: final run_summary.json, reservations released; an attempt event
   and endpoint counters as a worker records them) with an empty transcript in place of an engine
   call: no engine, no ffmpeg. Threads: --drain-threads;
6. one more final `run_summary.json` write of the finished batch, timed;
7. used_memory at rest (every file done): as it is; without the cached transcripts (their keys
   deleted: what wt-cas moves out of Redis); without the capped attempt log too (`events`, at most
   ~20,000 entries whatever the batch size; its MEMORY USAGE per entry is printed) — the per-file
   state.

Then the table, with the slope from the second-largest to the largest size (bytes per extra file,
µs per extra file). Files are removed at the end (also on Ctrl-C). Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _common import ROOT, machine, print_table

from batchscribe.common.keys import Keys, pattern_of
from batchscribe.common.models import options_from_dict
from batchscribe.common.outcomes import deliver_success
from batchscribe.common.publish import is_input_ref, message_task
from batchscribe.common.queues import pool_queue
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.common.summary import write_summary
from batchscribe.private_redis import PrivateRedis
from batchscribe.producer.status import load_view, render_status

RATE = 8000
SAMPLES = 80  # 0.01 s
CLI = str(ROOT / ".venv" / "bin" / "batchscribe")


def wav(index: int) -> bytes:
    """The smallest valid WAV batchscribe accepts, with `index` in its samples (distinct content)."""
    data = bytearray(b"\x80" * SAMPLES)
    data[:8] = struct.pack("<Q", index)
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + SAMPLES, b"WAVE", b"fmt ", 16, 1, 1, RATE, RATE, 1,
                       8, b"data", SAMPLES) + bytes(data)


def make_files(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:07d}.wav").write_bytes(wav(i))


@dataclass
class Row:
    files: int
    submit_seconds: float = 0.0
    producer_rss_mb: float = 0.0
    progress_lines: int = 0
    queued_bytes: float = 0.0  # per file, at the peak
    rest_bytes: float = 0.0  # per file, every file done, without transcripts and the event log
    rest_with_events: float = 0.0
    rest_with_results: float = 0.0
    event_entries: int = 0  # the attempt log's length at rest
    event_entry_bytes: float = 0.0  # its MEMORY USAGE per entry
    status_cli: float = 0.0
    status_inproc: float = 0.0
    drain_seconds: float = 0.0
    summary_seconds: float = 0.0
    queued_families: dict[str, int] = field(default_factory=dict)
    rest_families: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.files / self.submit_seconds if self.submit_seconds else 0.0


def families(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Bytes by key family (MEMORY USAGE of every key, SAMPLES 0: exact)."""
    patterns = keys.patterns(result_ttl=1, owner_ttl=15)
    names = list(client.scan_iter(count=5000))
    sizes: dict[str, int] = defaultdict(int)
    for start in range(0, len(names), 5000):
        pipe = client.pipeline(transaction=False)
        for name in names[start:start + 5000]:
            pipe.memory_usage(name, samples=0)
        for name, used in zip(names[start:start + 5000], pipe.execute()):
            text = name.decode("utf-8", "replace")
            found = pattern_of(text, patterns)
            sizes[found.glob if found else text.split(":")[0]] += int(used or 0)
    return dict(sizes)


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def unlink(client: redis.Redis, pattern: str) -> None:
    """Delete every key matching `pattern` (synchronously: used_memory is read right after)."""
    batch: list[bytes] = []
    for name in client.scan_iter(pattern, count=5000):
        batch.append(name)
        if len(batch) >= 5000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


def rss_of_child(args: list[str], env: dict[str, str]) -> tuple[int, float, float, str, str]:
    """Run a child; (returncode, wall, peak RSS MB of that child alone, stdout, stderr)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [threading.Thread(target=lambda s=s, c=c: c.append(s.read()), daemon=True)  # type: ignore[misc]
               for s, c in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for r in readers:
        r.join()
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    return code, seconds, usage.ru_maxrss / 1024, b"".join(out_chunks).decode(), b"".join(err_chunks).decode()


def drain(store: StateStore, queue: str, threads: int) -> int:
    """Every task on `queue` through the worker's state transitions (see the module docstring)."""
    done = 0
    lock = threading.Lock()
    ttl = 30 * 24 * 3600

    def work() -> None:
        client = store.redis
        while True:
            taken = client.rpop(queue, 50)
            if not taken:
                return
            for raw in taken:
                run_one(raw)

    def run_one(raw: bytes) -> None:
        nonlocal done
        if True:
            args, kwargs = message_task(raw)
            job_key, options = args[0], options_from_dict(args[1])
            if is_input_ref(job_key):
                job_key = store.job_key_of(kwargs["batch"], int(job_key[1:]))
            delivery = f"bench@scale/{uuid.uuid4().hex}"
            start = store.start_job(job_key, "bench", delivery, 30)
            if not start.runs:
                return
            records = store.records(start.targets)
            duration = records[0].duration if records else 0.0
            result = {"phrases": [], "duration": duration, "language": "en-US", "engine": "local",
                      "endpoint": "bench", "options": options.to_dict()}
            named = {"batch": records[0].batch_id, "index": records[0].index} if records else {"job": job_key}
            store.log_event(**named, endpoint="bench", outcome="done", attempt=start.attempts, seconds=0.001)
            store.record_attempt("bench", audio_seconds=duration, busy_seconds=0.001)
            targets = store.finish_job(job_key, result, ttl)
            known = records if targets == start.targets else store.records(targets)
            deliver_success(store, job_key, known, result)
            with lock:
                done += 1

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return done


def measure(size: int, work: Path, threads: int, rest: bool) -> Row:
    row = Row(size)
    inputs, out = work / "in", work / "out"
    started = time.perf_counter()
    make_files(inputs, size)
    print(f"  {size:,} files written in {time.perf_counter() - started:.0f} s (not timed)", flush=True)
    with PrivateRedis(appendonly=False) as server:
        client = redis.Redis.from_url(server.url)
        store = StateStore.connect(Settings.from_env({}, redis_url=server.url))
        empty = used(client)
        env = {**os.environ, "BATCHSCRIBE_REDIS_URL": server.url}
        code, row.submit_seconds, row.producer_rss_mb, stdout, stderr = rss_of_child(
            [CLI, "submit", str(inputs), "--out", str(out)], env)
        if code != 0:
            raise SystemExit(f"submit failed ({code}): {stderr[-2000:]}")
        batch = stdout.strip().splitlines()[-1]
        row.progress_lines = sum(1 for line in stderr.splitlines() if "fingerprinted" in line)
        print(f"  submit: {row.submit_seconds:.1f} s, {row.rate:,.0f} files/s, peak RSS "
              f"{row.producer_rss_mb:.0f} MB, {row.progress_lines} progress line(s)", flush=True)
        row.queued_bytes = (used(client) - empty) / size
        row.queued_families = families(client, store.keys)

        code, row.status_cli, _, shown, _ = rss_of_child([CLI, "status", batch], env)
        began = time.perf_counter()
        render_status(load_view(store, batch, check_workers=True))
        row.status_inproc = time.perf_counter() - began
        print(f"  queued: {row.queued_bytes:.0f} B/file ({fmt_families(row.queued_families, size)}); "
              f"status {row.status_cli:.2f} s (in-process {1000 * row.status_inproc:.1f} ms)", flush=True)

        if not rest:
            client.close()
            return row
        began = time.perf_counter()
        drained = drain(store, pool_queue("en-US"), threads)
        row.drain_seconds = time.perf_counter() - began
        header = store.batch(batch)
        print(f"  drain: {drained:,} tasks in {row.drain_seconds:.0f} s; done {header.get('n_done')}",
              flush=True)
        row.rest_families = families(client, store.keys)
        began = time.perf_counter()
        write_summary(store, batch, store.batch(batch), final=True)
        row.summary_seconds = time.perf_counter() - began
        # At rest with everything; then without the cached transcripts (their keys, values and
        # expiry entries: what wt-cas moves out of Redis), then without the capped attempt log too.
        row.rest_with_results = (used(client) - empty) / size
        unlink(client, store.keys.result("*"))
        row.rest_with_events = (used(client) - empty) / size
        row.event_entries = int(client.xlen(store.keys.events()))
        row.event_entry_bytes = row.rest_families.get(f"{store.prefix}:events", 0) / max(row.event_entries, 1)
        client.delete(store.keys.events())
        row.rest_bytes = (used(client) - empty) / size
        print(f"  at rest: {row.rest_bytes:.0f} B/file, {row.rest_with_events:.0f} with the event log "
              f"({row.event_entries:,} entries of {row.event_entry_bytes:.1f} B), "
              f"{row.rest_with_results:.0f} with the transcripts ({fmt_families(row.rest_families, size)})",
              flush=True)
        client.close()
    return row


def fmt_families(sizes: dict[str, int], files: int) -> str:
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:7]
    return ", ".join(f"{name} {value / files:.0f}" for name, value in top)


def _stop(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # the files are removed on the way out


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated file counts")
    parser.add_argument("--tmp", default=None, help="folder for the files (default: system temp)")
    parser.add_argument("--drain-threads", type=int, default=4)
    parser.add_argument("--rest-max", type=int, default=10**9,
                        help="drain (and measure at rest, and the summary) only batches up to this size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(machine())
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    rows: list[Row] = []
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp))
        print(f"{size:,} files in {work}", flush=True)
        try:
            rows.append(measure(size, work, args.drain_threads, size <= args.rest_max))
        finally:
            began = time.perf_counter()
            shutil.rmtree(work, ignore_errors=True)
            print(f"  removed in {time.perf_counter() - began:.0f} s; load average {os.getloadavg()[0]:.1f}",
                  flush=True)
    def rest(value: float, row: Row, spec: str = ".0f") -> str:
        return format(value, spec) if row.drain_seconds else "-"

    table = [[f"{r.files:,}", f"{r.queued_bytes:.0f}", rest(r.rest_bytes, r), rest(r.rest_with_events, r),
              rest(r.rest_with_results, r), f"{r.producer_rss_mb:.0f}", f"{r.rate:,.0f}",
              f"{r.status_cli:.2f}", f"{1000 * r.status_inproc:.1f}", rest(r.summary_seconds, r, ".1f"),
              r.progress_lines] for r in rows]
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        extra = b.files - a.files
        both = bool(a.drain_seconds and b.drain_seconds)

        def slope(x: float, y: float) -> str:
            return f"{(y * b.files - x * a.files) / extra:.0f}"

        def rest_slope(x: float, y: float) -> str:
            return slope(x, y) if both else "-"

        table.append([f"slope {a.files:,}->{b.files:,}", slope(a.queued_bytes, b.queued_bytes),
                      rest_slope(a.rest_bytes, b.rest_bytes),
                      rest_slope(a.rest_with_events, b.rest_with_events),
                      rest_slope(a.rest_with_results, b.rest_with_results),
                      f"{1024 * 1024 * (b.producer_rss_mb - a.producer_rss_mb) / extra:.1f} B/file",
                      f"{1e6 * (b.submit_seconds - a.submit_seconds) / extra:.0f} us/file",
                      f"{b.status_cli - a.status_cli:+.2f}",
                      f"{1000 * (b.status_inproc - a.status_inproc):+.1f}",
                      f"{1e6 * (b.summary_seconds - a.summary_seconds) / extra:.0f} us/file" if both else "-",
                      ""])
    print_table(["files", "queued B/file", "at rest B/file", "+events", "+transcripts", "producer MB",
                 "submit files/s", "status s", "status ms (in-proc)", "summary s", "progress lines"], table,
                title="A million files on one Redis (bytes per file from INFO memory used_memory)")
    for r in rows:
        print(f"  {r.files:,} queued by family (B/file): {fmt_families(r.queued_families, r.files)}")
        print(f"  {r.files:,} at rest by family (B/file): {fmt_families(r.rest_families, r.files)}")
        rate = r.files / max(r.drain_seconds, 1e-9)
        print(f"  {r.files:,} drain {r.drain_seconds:.0f} s ({rate:,.0f} files/s)")
        print(f"  {r.files:,} attempt log at rest: {r.event_entries:,} entries, "
              f"{r.event_entry_bytes:.1f} B each")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
