"""A whole batchscribe cluster on one machine, for chaos scenarios and the scheduling benchmark.

Parts, all real processes so they can be killed independently:

* the speech-container emulator in its own process (`EmulatorProcess`), duration-mode transcripts
  (``duration 1.23 seconds``) so every output can be matched to its input, faults set over its
  HTTP control API (it survives Redis restarts and worker kills);
* `batchscribe worker` VMs (`tests.support.cli.WorkerProcess`), each with its consumer children;
* the producer CLI (`batchscribe submit`), as a subprocess that can be SIGKILLed;
* Redis: the test's `PrivateRedis` (AOF; stop()/start() restarts it on the same port and data).

`check_exactly_once` is the one verdict every scenario ends with (see its docstring).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import wave
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from batchscribe.common.cache import STORE_FOLDER
from batchscribe.common.output import output_path
from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import BIN, ROOT, WorkerProcess, cli_env
from tests.support.emulator import LOOPBACK, SAMPLE_RATE, EmulatorProcess
from tests.support.poll import wait_for

HARD_TIMEOUT = 120.0  # no scenario waits longer than this for anything
FAST_RETRIES = {"BATCHSCRIBE_BACKOFF_BASE": "0.2", "BATCHSCRIBE_CLAIM_TTL": "5"}
# Short delivery leases: a SIGKILLed consumer's files come back in ~10 s instead of ~45 s. Scenarios
# use them unless they ask for the defaults (one does, so the shipped numbers stay exercised).
SHORT_LEASES = {"BATCHSCRIBE_VISIBILITY_TIMEOUT": "8", "BATCHSCRIBE_HEARTBEAT": "1",
                "BATCHSCRIBE_LEASE_TTL": "4"}
_DISPLAY = re.compile(r"duration (\d+\.\d\d) seconds")


# ---- audio ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AudioSet:
    """A folder of WAVs and the exact duration of each (by file name)."""

    folder: Path
    durations: dict[str, float]

    @property
    def total_seconds(self) -> float:
        return sum(self.durations.values())


def write_tone(path: Path, seconds: float, freq: float) -> float:
    """A 16 kHz mono s16 sine of an exact length (numpy: ~1 ms per second of audio)."""
    frames = int(round(seconds * SAMPLE_RATE))
    t = np.arange(frames, dtype=np.float32) / SAMPLE_RATE
    samples = (6000 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.tobytes())
    return frames / SAMPLE_RATE


def cut_flac(path: Path) -> Path:
    """A FLAC whose header says 4 s but that holds a third of it: submitted (the producer reads the
    header), failed by the worker when the decode comes up short (permanent, one attempt)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=300:duration=4",
                    "-ar", "16000", "-ac", "1", str(path)], check=True, timeout=30)
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 3])
    return path


def spread_durations(count: int, low: float = 0.5, high: float = 2.0) -> list[float]:
    """`count` durations on a 10 ms grid between low and high, evenly mixed (not sorted)."""
    steps = int(round((high - low) * 100)) + 1
    return [round(low + ((i * 37) % steps) / 100, 2) for i in range(count)]


def make_audio(folder: Path, durations: Sequence[float], prefix: str = "f") -> AudioSet:
    """One WAV per duration; each gets its own frequency, so every file has distinct content."""
    folder.mkdir(parents=True, exist_ok=True)
    found: dict[str, float] = {}
    for i, seconds in enumerate(durations):
        name = f"{prefix}{i:05d}.wav"
        found[name] = write_tone(folder / name, seconds, freq=150.0 + 1.5 * i)
    return AudioSet(folder, found)


def duration_emulator(ports: int, rtf: float, log_path: Path, capacity: int = 0) -> EmulatorProcess:
    """The emulator of every scenario: duration-mode transcripts, so outputs match their inputs."""
    return EmulatorProcess("--rtf", str(rtf), "--capacity", str(capacity), "--transcribe", "duration",
                           ports=ports, log_path=log_path)


# ---- endpoint files --------------------------------------------------------------------------------

@dataclass(frozen=True)
class EndpointSpec:
    name: str
    port: int
    concurrency: int = 3
    rtf: float = 1000.0  # high: the SDK uploads unthrottled, the emulator's --rtf sets the pace
    stall_timeout: float = 3.0

    def yaml(self) -> str:
        return (f"{self.name}:\n  engine: azure\n  host: {LOOPBACK}\n  port: {self.port}\n"
                f"  concurrency: {self.concurrency}\n  rtf: {self.rtf:g}\n"
                f"  stallTimeout: {self.stall_timeout:g}\n")


def write_endpoints(path: Path, endpoints: Iterable[EndpointSpec]) -> Path:
    """Replace the file atomically (temp + rename), as an operator's editor or config tool would."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(e.yaml() for e in endpoints))
    os.replace(tmp, path)
    return path


# ---- processes -------------------------------------------------------------------------------------

def _proc_ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def proc_args(pid: int) -> list[str]:
    """A process's command line as words: its arguments, or the title a consumer forked by the
    zygote (and Celery, with setproctitle) gives itself, which /proc shows as one string."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split()


def consumer_node(args: list[str]) -> str | None:
    """The Celery node name (ENDPOINT@HOST) of a consumer's command line or title; None for others."""
    return args[args.index("-n") + 1] if "batchscribe.worker.app" in args and "-n" in args else None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children(pid: int) -> list[int]:
    found = []
    for candidate in _pids():
        try:
            if _proc_ppid(candidate) == pid:
                found.append(candidate)
        except (OSError, ValueError, IndexError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Children, their children and so on (a VM's consumers are its zygote's children)."""
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children(parent)]
        found.extend(frontier)
    return found


def processes_with_env(marker: str) -> list[int]:
    """Our own processes whose environment holds `marker` (e.g. the test Redis URL), this one excluded."""
    found = []
    needle = marker.encode()
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def processes_in(folder: Path) -> list[int]:
    """Processes working inside `folder` (e.g. a redis-server started with --dir there: it blanks
    its environment when it retitles itself, so `processes_with_env` cannot see it)."""
    found = []
    for pid in _pids():
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            found.append(pid)
    return found


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class VM:
    """One `batchscribe worker` and what it serves."""

    hostname: str
    process: WorkerProcess

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def consumers(self) -> dict[str, int]:
        """Endpoint name -> pid of its live `celery … batchscribe.worker.app worker` process."""
        found: dict[str, int] = {}
        for pid in descendants(self.pid):
            try:
                node = consumer_node(proc_args(pid))
            except OSError:
                continue
            if node is not None:
                found[node.split("@", 1)[0]] = pid
        return found

    def kill(self) -> list[int]:
        """SIGKILL the supervisor and every consumer at once (the VM loses power)."""
        victims = [self.pid, *self.consumers().values()]
        kill_pids(victims)
        self.process.proc.wait(timeout=10)
        return victims


# ---- the cluster -----------------------------------------------------------------------------------

@dataclass
class Cluster:
    """One scenario's processes and bookkeeping. Use as a context manager: everything is stopped."""

    tmp: Path
    redis: PrivateRedis
    store: StateStore
    worker_env: dict[str, str] = field(default_factory=lambda: {**FAST_RETRIES, **SHORT_LEASES})
    emulator: EmulatorProcess | None = None
    vms: list[VM] = field(default_factory=list)
    crashes: int = 0  # files that may have been in flight in killed processes (each may rerun once)
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = self.tmp / "out"

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parts

    def start_emulator(self, ports: int, rtf: float = 1.0) -> EmulatorProcess:
        self.emulator = duration_emulator(ports, rtf, self.tmp / "emulator.log")
        return self.emulator

    def start_vm(self, config: Path, hostname: str, *options: str) -> VM:
        """A `batchscribe worker` VM; one started again under a hostname gets a log of its own."""
        started = sum(vm.hostname == hostname for vm in self.vms)
        log = self.tmp / (f"worker-{hostname}.log" if not started else f"worker-{hostname}-{started + 1}.log")
        process = WorkerProcess(self.redis.url, config, hostname, log, options, **self.worker_env)
        vm = VM(hostname, process)
        self.vms.append(vm)
        return vm

    def wait_consumers(self, vm: VM, names: Iterable[str], timeout: float = 30.0) -> None:
        wanted = set(names)
        wait_for(lambda: wanted <= set(vm.consumers()), min(timeout, HARD_TIMEOUT),
                 f"consumers {sorted(wanted)} on {vm.hostname}")

    # -- producer

    def submit(self, folder: Path, *extra: str, timeout: float = 60.0) -> str:
        """`batchscribe submit` without --wait; returns the batch id it printed."""
        result = subprocess.run([str(BIN), "submit", str(folder), "--out", str(self.out), *extra],
                                capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                                env=cli_env(self.redis.url, **self.worker_env))
        assert result.returncode == 0, f"submit failed ({result.returncode}): {result.stderr}"
        return result.stdout.strip().splitlines()[-1]

    def submit_process(self, folder: Path, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(BIN), "submit", str(folder), "--out", str(self.out), *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=cli_env(self.redis.url, **self.worker_env))

    # -- progress

    def counters(self, batch_id: str) -> dict[str, int]:
        try:
            raw = self.store.batch(batch_id)
        except Exception:  # Redis restarting: no numbers right now
            return {}
        return {k: int(float(v)) for k, v in raw.items() if k.startswith("n_") or k == "total"}

    def settled(self, batch_id: str) -> int:
        c = self.counters(batch_id)
        return c.get("n_done", 0) + c.get("n_failed", 0)

    def wait_progress(self, batch_id: str, fraction: float, timeout: float = 60.0) -> None:
        """Until `fraction` of the batch's files are done or failed (a point "mid-batch")."""
        def reached() -> bool:
            c = self.counters(batch_id)
            return bool(c) and self.settled(batch_id) >= fraction * c.get("total", 1)
        wait_for(reached, min(timeout, HARD_TIMEOUT), f"{fraction:.0%} of batch {batch_id} settled",
                 on_timeout=lambda: self.describe(batch_id))

    def wait_finished(self, batch_id: str, timeout: float = 60.0) -> float:
        """Until every file is done or failed and nothing runs any more; returns the seconds waited."""
        began = time.monotonic()

        def finished() -> bool:
            c = self.counters(batch_id)
            return bool(c) and self.settled(batch_id) == c["total"] and not c.get("n_running")

        wait_for(finished, min(timeout, HARD_TIMEOUT), f"batch {batch_id} to finish",
                 on_timeout=lambda: self.describe(batch_id))
        return time.monotonic() - began

    def describe(self, batch_id: str) -> str:
        """Counters and the unfinished files: the symptom, for a timeout message."""
        counters = self.counters(batch_id)
        lines = [f"counters: {counters}"]
        try:
            records = self.store.files(batch_id, range(counters.get("total", 0)))
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"{lines[0]}; file records unreadable: {exc}"
        stuck = [r for r in records if r.state.value not in ("done", "failed")]
        by_state = Counter(r.state.value for r in stuck)
        lines.append(f"unfinished by state: {dict(by_state)}")
        for r in stuck[:8]:
            lines.append(f"  {Path(r.path).name}: {r.state.value} on {r.endpoint or '-'} "
                         f"attempts={r.attempts} {r.error_class} {r.reason[:120]}")
        if self.emulator is not None and self.emulator.alive():
            lines.append(f"emulator sessions_total={self.emulator.sessions_total()} "
                         f"active={self.emulator.active()}")
        return "\n".join(lines)

    # -- teardown

    def close(self) -> None:
        """Stop VMs (short grace), the emulator, and SIGKILL anything of ours still alive."""
        for vm in self.vms:
            if vm.process.proc.poll() is None:
                try:
                    vm.process.stop(timeout=8)
                except Exception:  # noqa: BLE001 - keep cleaning up
                    pass
            elif not vm.process._log.closed:
                vm.process._log.close()
        kill_pids(processes_with_env(f"BATCHSCRIBE_REDIS_URL={self.redis.url}"))
        if self.emulator is not None:
            self.emulator.stop()


# ---- the verdict -----------------------------------------------------------------------------------

@dataclass
class Verdict:
    """What `check_exactly_once` measured, and every rule broken (empty: all good)."""

    files: int = 0
    jobs: int = 0
    sessions: int = 0
    done_events: int = 0
    error_events: int = 0
    handback_events: int = 0  # files a planned stop (hot-swap, resize) interrupted and handed back
    crash_allowance: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.files} files, {self.jobs} jobs, {self.sessions} engine sessions, "
                f"{self.done_events} done + {self.error_events} error + {self.handback_events} handback "
                f"events, crash allowance {self.crash_allowance}")


def batch_events(store: StateStore, jobs: set[str]) -> list[dict[str, str]]:
    """Every attempt outcome in the event stream that belongs to one of `jobs`."""
    found: list[dict[str, str]] = []
    last = "0-0"
    while True:
        chunk = store.events(last, count=5000)
        if not chunk:
            return found
        last = chunk[-1][0]
        found += [e for _, e in chunk if e.get("job") in jobs]


def _check_output(path: Path, expected: float) -> str | None:
    try:
        entry = json.loads(path.read_text())["AudioFileResults"][0]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return f"{path.name}: no readable output ({exc})"
    if entry.get("TranscriptionStatus") != "Succeeded":
        return (f"{path.name}: {entry.get('TranscriptionStatus')} {entry.get('ErrorClass')} "
                f"{entry.get('FailureReason')}")
    display = (entry.get("CombinedResults") or [{}])[0].get("Display", "")
    spoken = _DISPLAY.fullmatch(display)
    if not spoken or abs(float(spoken.group(1)) - expected) > 0.011:
        return f"{path.name}: transcript {display!r} does not match its {expected:.2f} s of audio"
    return None


def _check_outputs(verdict: Verdict, audio: AudioSet, out: Path) -> None:
    expected = {output_path(out, name): seconds for name, seconds in audio.durations.items()}
    for path, seconds in expected.items():
        if (problem := _check_output(path, seconds)) is not None:
            verdict.problems.append(problem)
    # A writer SIGKILLed between creating its temp file and renaming it leaves a hidden `.bs-*.tmp`:
    # never an output (outputs appear only by rename), so it is not counted as one; nor is the result
    # cache kept in the output folder (`common.cache`).
    store = out / STORE_FOLDER
    extra = [p for p in out.rglob("*") if p.is_file() and p not in expected and p.name != "run_summary.json"
             and not (p.name.startswith(".") and p.name.endswith(".tmp")) and store not in p.parents]
    if extra:
        names = [p.name for p in extra[:5]]
        verdict.problems.append(f"{len(extra)} unexpected file(s) in the output folder: {names}")


def _check_state(verdict: Verdict, store: StateStore, batch_id: str, total: int) -> set[str]:
    counters = {k: int(float(v)) for k, v in store.batch(batch_id).items() if k.startswith("n_")}
    want = {"n_done": total, "n_failed": 0, "n_running": 0, "n_queued": 0, "n_retrying": 0}
    wrong = {k: counters.get(k) for k, v in want.items() if counters.get(k, 0) != v}
    if wrong:
        verdict.problems.append(f"batch counters {wrong}, expected {want}")
    records = store.files(batch_id, range(total))
    if len(records) != total:
        verdict.problems.append(f"{total - len(records)} file record(s) missing")
    not_done = Counter(r.state.value for r in records if r.state.value != "done")
    if not_done:
        verdict.problems.append(f"file states not done: {dict(not_done)}")
    jobs = {r.job for r in records}
    job_states = Counter(store.job(j).get("state", "missing") for j in jobs)
    if set(job_states) != {"done"}:
        verdict.problems.append(f"job states: {dict(job_states)}")
    return jobs


def _check_engine_calls(verdict: Verdict, events: list[dict[str, str]], sessions: int | None) -> None:
    """Each job ends in one `done`; engine sessions beyond one per job are explained by the events log
    (an `error` or a `handback` event may cost one session) or by a crash (one per file in flight in
    a killed process)."""
    done = Counter(e["job"] for e in events if e.get("outcome") == "done")
    verdict.done_events = sum(done.values())
    verdict.error_events = sum(1 for e in events if e.get("outcome") == "error")
    verdict.handback_events = sum(1 for e in events if e.get("outcome") == "handback")
    failed = [e for e in events if e.get("outcome") == "failed"]
    if failed:
        verdict.problems.append(f"{len(failed)} failed event(s), e.g. {failed[0].get('file')}: "
                                f"{failed[0].get('error_class')} {failed[0].get('reason', '')[:160]}")
    missing = verdict.jobs - len(done)
    if missing:
        verdict.problems.append(f"{missing} job(s) without a done event")
    extra_done = verdict.done_events - len(done)
    if extra_done > verdict.crash_allowance:
        twice = [j[:12] for j, n in done.items() if n > 1][:5]
        verdict.problems.append(f"{extra_done} duplicate done event(s) (jobs transcribed twice, "
                                f"e.g. {twice}); crashes explain at most {verdict.crash_allowance}")
    if sessions is None:
        return
    verdict.sessions = sessions
    budget = verdict.jobs + verdict.error_events + verdict.handback_events + verdict.crash_allowance
    if sessions > budget:
        verdict.problems.append(f"{sessions} engine sessions but only {budget} explained "
                                f"({verdict.jobs} jobs + {verdict.error_events} error events + "
                                f"{verdict.handback_events} handback events + "
                                f"{verdict.crash_allowance} crash allowance): "
                                f"{sessions - budget} unexplained duplicate(s)")


def check_exactly_once(store: StateStore, batch_id: str, audio: AudioSet, out: Path,
                       sessions: int | None, crash_allowance: int = 0) -> Verdict:
    """The one verdict of every scenario:

    * every input has exactly one output, `Succeeded`, whose duration text matches its file;
      nothing else lands in the output folder;
    * the batch counters say all done, 0 failed / running / queued / retrying; every file record
      and every job is `done`;
    * each job has a `done` event; engine sessions (the emulator's `sessions_total` over all ports)
      ≤ jobs + `error` events + `handback` events + crash allowance — no unexplained duplicate
      engine call.
    """
    verdict = Verdict(files=len(audio.durations), crash_allowance=crash_allowance)
    _check_outputs(verdict, audio, out)
    jobs = _check_state(verdict, store, batch_id, len(audio.durations))
    verdict.jobs = len(jobs)
    _check_engine_calls(verdict, batch_events(store, jobs), sessions)
    return verdict


def assert_exactly_once(cluster: Cluster, batch_id: str, audio: AudioSet, settle: float = 2.0) -> Verdict:
    """`check_exactly_once` after a short quiet period (late duplicate deliveries would show by then)."""
    time.sleep(settle)
    sessions = cluster.emulator.sessions_total() if cluster.emulator is not None else None
    verdict = check_exactly_once(cluster.store, batch_id, audio, cluster.out, sessions, cluster.crashes)
    assert not verdict.problems, f"{verdict.summary()}\n" + "\n".join(verdict.problems)
    return verdict
