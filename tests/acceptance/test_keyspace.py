"""Nothing leaks into Redis: after a batch with retries, a crash and a hot-swap, every key matches a
family declared in common/keys.py (ours, or kombu's), with the lifetime declared for it, and the
keys that only exist while work is queued or running are gone.

Real parts: `batchscribe worker` with short lease and visibility settings, the emulator (transient
faults on one endpoint), a consumer SIGKILLed mid-file, `batchscribe endpoints apply`.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from batchscribe.common.keys import KOMBU_KEYS, KeyPattern, pattern_of
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore, unpack_result
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import run_cli
from tests.support.cluster import VM
from tests.support.emulator import running_emulator, tone_wav
from tests.support.poll import wait_for

FAST = {"BATCHSCRIBE_VISIBILITY_TIMEOUT": "8", "BATCHSCRIBE_HEARTBEAT": "1", "BATCHSCRIBE_LEASE_TTL": "3",
        "BATCHSCRIBE_BACKOFF_BASE": "0.2"}
OWNER_TTL = 15.0  # the supervisor's default


def yaml_for(ports: dict[str, int]) -> str:
    return "".join(f"{name}:\n  host: 127.0.0.1\n  port: {port}\n  concurrency: 2\n  rtf: 1000\n"
                   for name, port in ports.items())


def declared(store: StateStore, settings: Settings) -> list[KeyPattern]:
    return [*store.keys.patterns(settings.result_ttl, OWNER_TTL), *KOMBU_KEYS]


def leftovers(store: StateStore, patterns: list[KeyPattern]) -> list[str]:
    """Keys that exist only while work is queued or running, and still exist."""
    keys = (raw.decode() for raw in store.redis.scan_iter(count=1000))
    return sorted(key for key in keys if getattr(pattern_of(key, patterns), "transient", False))


def key_problems(store: StateStore, patterns: list[KeyPattern]) -> list[str]:
    """Every key in Redis that no pattern declares, or whose TTL is not the declared one."""
    problems = []
    for raw in store.redis.scan_iter(count=1000):
        key = raw.decode()
        pattern = pattern_of(key, patterns)
        ttl_ms = store.redis.pttl(key)
        if pattern is None:
            problems.append(f"{key}: matches no pattern of common/keys.py")
        elif pattern.transient:
            problems.append(f"{key}: {pattern.holds}, left over with nothing queued or running")
        elif pattern.ttl is None and ttl_ms != -1:
            problems.append(f"{key}: {pattern.holds}, expires in {ttl_ms} ms but must be kept")
        elif pattern.ttl is not None and not 0 < ttl_ms <= pattern.ttl * 1000:
            problems.append(f"{key}: {pattern.holds}, TTL {ttl_ms} ms, should be at most {pattern.ttl} s")
    return problems


def test_after_retries_a_crash_and_a_hot_swap_every_key_is_declared_and_nothing_leaks(
        tmp_path: Path, redis_server: PrivateRedis, settings: Settings, store: StateStore, start_worker) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    tone_wav(folder / "long.wav", 8)  # at real time: long enough to be killed mid-file
    for i in range(5):
        tone_wav(folder / f"short{i}.wav", 0.5 + 0.1 * i, freq=300 + 20 * i)
    with running_emulator(ports=3, rtf=1.0, transcribe="duration") as emu:
        ports = dict(zip(("a", "b", "c"), emu.ports))
        emu.set_fault(ports["b"], "http429")  # transient errors: retries via the delayed set
        config = tmp_path / "eps.yaml"
        config.write_text(yaml_for({"a": ports["a"], "b": ports["b"]}))
        vm = VM("vm1", start_worker(config, **FAST))
        wait_for(lambda: {"a", "b"} <= set(vm.consumers()), 30, what="consumers of a and b")

        submitted = run_cli("submit", str(folder), "--out", str(tmp_path / "out"), broker=redis_server.url)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip()
        wait_for(lambda: any(e.get("error_class") == "transient" for _, e in store.events()), 60,
                 what="a transient error on b")
        emu.reset(ports["b"])
        [long_job] = [r.job for r in store.files(batch_id, range(6)) if r.path.endswith("long.wav")]

        def long_file_running() -> bool:  # for a while: not an attempt that a fault ends at once
            job = store.job(long_job)
            return job.get("state") == "running" and time.time() - float(job["started_at"]) > 1.5

        wait_for(long_file_running, 60, what="the long file to run")
        victim = store.job(long_job)["endpoint"]
        os.kill(vm.consumers()[victim], signal.SIGKILL)  # its in-flight entry is never released
        survivor = "b" if victim == "a" else "a"
        swapped = tmp_path / "swapped.yaml"  # hot-swap: the victim's endpoint leaves, c joins
        swapped.write_text(yaml_for({survivor: ports[survivor], "c": ports["c"]}))
        applied = run_cli("endpoints", "apply", str(swapped), broker=redis_server.url)
        assert applied.returncode == 0, applied.stderr

        wait_for(lambda: store.batch(batch_id).get("finished_at"), 120, what="the batch to finish")
        patterns = declared(store, settings)
        wait_for(lambda: not leftovers(store, patterns), 30, what="queued-or-running keys to go",
                 on_timeout=lambda: "\n".join(leftovers(store, patterns)))
        status = run_cli("status", broker=redis_server.url)
    assert store.batch(batch_id)["n_done"] == "6"
    assert store.job(long_job)["crashes"] == "1"
    rows = [line.split() for line in status.stdout.splitlines()]
    in_flight = {row[0]: row[3] for row in rows if len(row) >= 5 and row[0] in (survivor, "c")}
    assert in_flight == {survivor: "0", "c": "0"}, status.stdout
    problems = key_problems(store, patterns)
    assert not problems, "\n".join(problems)
    pointers = [unpack_result(store.redis.get(raw)) for raw in store.redis.scan_iter(store.keys.result("*"))]
    assert len(pointers) == 6 and all(set(p) == {"artifact", "size", "sha256"} for p in pointers), \
        "Redis holds where each transcript is stored, not the transcript (common/cache.py)"
