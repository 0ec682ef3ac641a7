"""What keeping `run_summary.json` fresh costs: one rewrite of a batch of N records, and its memory.

    .venv/bin/python bench/bench_summary.py [--files 20000] [--runs 3] [--tmp DIR]

Creates a batch of N records in a private Redis (a third done, some failed, some retrying, the rest
queued; realistic paths and reasons), then times `common.summary.write_summary` (the mid-batch
rewrite: records read page by page, both per-file arrays spooled to temp files, one atomic
rename) and `results.json` (`write_combined`, reading each file's output back), and measures the
peak Python memory of one rewrite (tracemalloc) at N and at N/10: a bounded rewrite keeps the peak
flat as N grows, where a list of every record would grow with it. Prints seconds, records/s, the
summary's size, and what the summary clock then allows: a rewrite costs at most 1/factor of one
process's time (`common.summary.CLOCK`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

from _common import machine, median_time, print_table, private_redis

from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.outcomes import deliver_failure, deliver_success
from batchscribe.common.output import COMBINED_JSON, output_path
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore, target_id
from batchscribe.common.summary import CLOCK, SUMMARY_NAME, write_combined, write_summary

RESULT = {"phrases": [{"RecognitionStatus": "Success", "Offset": 0, "Duration": 30_000_000,
                       "DisplayText": "Thank you for calling, how can I help you today?",
                       "NBest": [{"Display": "Thank you for calling, how can I help you today?"}]}],
          "duration": 180.0, "engine": "azure", "endpoint": "gpu-east-1", "options": {"language": "en-US"}}


def make_batch(store: StateStore, out: Path, n: int) -> None:
    rels = [f"{i % 365:03d}/call-{i:07d}.wav" for i in range(n)]
    records = [FileRecord(batch_id="b", index=i, path=f"/mnt/share/calls/2024/{rel}", rel=rel,
                          output=str(output_path(out, rel)), duration=180.0, job=f"j{i}")
               for i, rel in enumerate(rels)]
    header = {"out": str(out), "formats": f"json,{COMBINED_JSON}", "input": "/mnt/share/calls"}
    store.create_batch("b", header, records)
    for i in range(0, n, 3):  # a third done: outputs on disk, for results.json
        deliver_success(store, "", [records[i]], RESULT)
    for i in range(1, n, 50):
        store.settle_file(target_id("b", i), FileState.RUNNING, "", attempts=4)
        deliver_failure(store, "", [records[i]], "transient",
                        "HTTP 429 Too Many Requests from endpoint gpu-east-1 (after 4 attempts)")
    for i in range(2, n, 40):
        store.settle_file(target_id("b", i), FileState.RETRYING, "", error_class="endpoint", attempts=2,
                          reason="connection refused by gpu-east-2")


def peak_mib(action: object) -> float:
    tracemalloc.start()
    action()  # type: ignore[operator]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def measure(n: int, runs: int, tmp: Path) -> list[object]:
    with private_redis(appendonly=False) as server:
        store = StateStore.connect(Settings.from_env({}, redis_url=server.url))
        out = tmp / f"out{n}"
        make_batch(store, out, n)
        header = store.batch("b")
        summary, _ = median_time(lambda: write_summary(store, "b", header, final=False), runs)
        combined, _ = median_time(lambda: write_combined(store, "b", header), runs)
        peak = peak_mib(lambda: write_summary(store, "b", header, final=False))
        size = (out / SUMMARY_NAME).stat().st_size / 2**20
        gap = max(CLOCK.period, CLOCK.factor * summary)
        shutil.rmtree(out)
    return [n, f"{summary:.2f}", f"{n / summary:,.0f}", f"{size:.1f}", f"{peak:.1f}", f"{combined:.2f}",
            f"{gap:.0f}", f"{100 * summary / gap:.1f}%"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-summary-", dir=args.tmp))
    try:
        started = time.monotonic()
        rows = [measure(n, args.runs, tmp) for n in (args.files // 10, args.files)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(machine())
    took = time.monotonic() - started
    print_table(["records", "rewrite s", "records/s", "summary MiB", "peak MiB (Python)", "results.json s",
                 "next rewrite after s", "share of one process"], rows,
                title=f"run_summary.json rewrite (median of {args.runs}; {took:.0f} s in all)")


if __name__ == "__main__":
    main()
