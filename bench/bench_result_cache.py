"""Redis bytes per finished file at rest, with the dedupe result cache in Redis or on storage.

    .venv/bin/python bench/bench_result_cache.py                        # 3,000 files, both kinds
    .venv/bin/python bench/bench_result_cache.py --files 500 --kinds short

For each transcript kind, a fresh private redis-server (AOF, as deployed), the emulator in its own
process (`--rtf 1000`), one `batchscribe worker` (one azure endpoint, concurrency 8) and
`batchscribe submit DIR --out OUT --wait` of N distinct 0.2 s tone WAVs; once the batch is done and
nothing is queued or running, Redis is measured:

* `used_memory` (INFO memory) after minus before the batch, per file: what a finished file costs
  at rest, everything included (file record, job, cache entry or pointer, fingerprint, events);
* `MEMORY USAGE` of every key by family (the cache: `cached:*` pointers now, `result:*` transcripts
  before; `job:*`, `file:*`, the rest), per file.

Kinds: `short` — duration-mode transcripts ("duration 0.20 seconds": the smallest a transcript
gets); `long` — a fixed 120-word text per file with `--word-timestamps --nbest 3` (about what a
40 s call gives: three alternatives with a timed word list each).

It measures the checkout it sits in (every process it starts runs that checkout's code: the tests'
helpers give them PYTHONPATH and the working folder of the checkout). To measure the code before
the result cache moved out of Redis with the same harness, copy this script into that checkout:
`git archive 5412e22 | tar -x -C /tmp/before && cp bench/bench_result_cache.py /tmp/before/bench/ &&
(cd /tmp/before && /path/to/.venv/bin/python bench/bench_result_cache.py)`. Nothing here asserts
anything; it prints a table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from _common import ROOT, machine, print_table

from batchscribe.common.keys import KOMBU_KEYS, Keys, pattern_of
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import BIN, WorkerProcess, cli_env
from tests.support.cluster import write_tone
from tests.support.emulator import EmulatorProcess, endpoints_yaml
from tests.support.poll import wait_for

LONG_TEXT = " ".join(["the customer asked about the delivery date of order number forty two and the agent "
                      "confirmed that it ships on monday with tracking sent by email"] * 5)  # 120 words
KINDS: dict[str, tuple[list[str], list[str]]] = {  # emulator args, submit args
    "short": (["--transcribe", "duration"], []),
    "long": (["--transcribe", "fixed", "--text", LONG_TEXT], ["--word-timestamps", "--nbest", "3"]),
}
FAMILIES = ("cache", "job", "file")
CACHE_KEYS = ("cached", "result")  # the pointers (common/cache.py); the transcripts before them


def family(key: str) -> str:
    parts = key.split(":")
    if len(parts) < 2 or parts[0] != "bs":
        return "other"
    return "cache" if parts[1] in CACHE_KEYS else parts[1] if parts[1] in FAMILIES else "other"


def transient_left(r: Any) -> int:
    """Keys that exist only while work is queued or running (common/keys.py), still there."""
    patterns = [*Keys().patterns(result_ttl=0, owner_ttl=15), *KOMBU_KEYS]
    return sum(1 for k in r.scan_iter(count=1000)
               if getattr(pattern_of(k.decode(errors="replace"), patterns), "transient", False))


def measure(kind: str, files: int, tmp: Path) -> dict[str, Any]:
    folder = tmp / f"in-{kind}"
    folder.mkdir()
    for i in range(files):
        write_tone(folder / f"t{i:05d}.wav", 0.2, 200.0 + 0.37 * i)
    emulator_args, submit_args = KINDS[kind]
    server = PrivateRedis(data_dir=tmp / f"redis-{kind}").start()
    try:
        r = redis.Redis.from_url(server.url)
        with EmulatorProcess("--rtf", "1000", *emulator_args, log_path=tmp / f"emulator-{kind}.log") as emu:
            config = endpoints_yaml(tmp / f"eps-{kind}.yaml", {"emu": emu.ports[0]}, concurrency=8)
            worker = WorkerProcess(server.url, config, "bench", tmp / f"worker-{kind}.log")
            try:
                wait_for(lambda: r.exists("bs:consumer:emu@bench"), 60, "the consumer to start")
                time.sleep(1)
                before = int(r.info("memory")["used_memory"])
                began = time.monotonic()
                done = subprocess.run([str(BIN), "submit", str(folder), "--out", str(tmp / f"out-{kind}"),
                                       "--wait", *submit_args], capture_output=True, text=True,
                                      env=cli_env(server.url), cwd=ROOT, timeout=3600)
                seconds = time.monotonic() - began
                if done.returncode != 0:
                    sys.exit(f"submit failed ({done.returncode}): {done.stderr[-2000:]}")
                wait_for(lambda: transient_left(r) == 0, 60, "queued-or-running keys to go")
                time.sleep(1)
                after = int(r.info("memory")["used_memory"])
                usage: dict[str, int] = dict.fromkeys((*FAMILIES, "other"), 0)
                counts: dict[str, int] = dict.fromkeys(usage, 0)
                for key in r.scan_iter(count=1000):
                    name = key.decode(errors="replace")
                    usage[family(name)] += int(r.memory_usage(key, samples=0) or 0)
                    counts[family(name)] += 1
            finally:
                worker.stop()
    finally:
        server.close()
    store = tmp / f"out-{kind}" / ".batchscribe" / "results"
    on_disk = sum(p.stat().st_size for p in store.rglob("*.json.gz")) if store.is_dir() else 0
    return {"kind": kind, "files": files, "seconds": seconds, "per_file": (after - before) / files,
            "usage": {k: v / files for k, v in usage.items()}, "cache_keys": counts["cache"],
            "store_per_file": on_disk / files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--kinds", default="short,long", help="comma-separated: short, long")
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args()
    print(machine())
    print(f"code: {ROOT}")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for kind in args.kinds.split(","):
            m = measure(kind, args.files, Path(tmp))
            u = m["usage"]
            rows.append([kind, m["files"], f"{m['seconds']:.0f}", f"{m['per_file']:.0f}",
                         *(f"{u[f]:.0f}" for f in (*FAMILIES, "other")), m["cache_keys"],
                         f"{m['store_per_file']:.0f}"])
    print_table(["transcripts", "files", "s", "used_memory B/file", "cache B/file", "job:* B/file",
                 "file:* B/file", "other B/file", "cache keys", "store on disk B/file"], rows,
                title="Redis at rest after one batch (MEMORY USAGE by key family, per finished file)")


if __name__ == "__main__":
    main()
