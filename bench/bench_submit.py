"""Throughput of `submit` (dedupe included) against a plain Celery send_task loop.

    .venv/bin/python bench/bench_submit.py [--files 20000] [--profile] [--no-aof] [--no-variants]

Generates N tiny distinct WAV files (0.1 s of 16 kHz 16-bit mono each; generation is not timed),
then, with no workers running (tasks only land in the queue), times:

  plain loop     one `app.send_task("batchscribe.transcribe", args=..., queue=...)` per file, the
                 same message content as the producer sends, no dedupe, no hashing (fresh Redis)
  publish only   `producer.publish.Publisher.publish` of the same N tasks (fresh Redis): the
                 producer's pipelined publishing alone (task-sent events on, as shipped), without
                 hashing or dedupe; its first message and event are checked against Celery's own
  cold submit    `Submitter.submit` with nothing cached (fresh Redis): stat + sha256 + WAV header
                 + batch records + claim (Lua) + publish + mark published
  warm re-submit the same files again as a new batch (same Redis): the fingerprint cache replaces
                 hashing, every job is still queued so every file is "attached", nothing published

and prints files/s, the ratio to the plain loop, client round trips per file and Redis commands per
file (INFO stats / commandstats deltas; commands run inside Lua scripts are listed separately).
The project's promise: cold submit >= 5x the plain loop. Ratios are the point, not absolute times.
It checks correctness on the way: LLEN of the pool queue == N after each publish / cold submit and
unchanged after the warm one; the Publisher's message and task-sent event equal Celery's (apart
from ids, delivery tags, clock and timestamp). Rows marked "no task-sent events" run the same
shipped code with `Publisher(app, sent_events=False)` (--no-variants skips them). --profile adds
a profile of one more cold submit (pyinstrument if installed, else cProfile), run after the timed
phases so the profiler's overhead stays out of the table.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import hashlib
import io
import json
import pstats
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import machine, print_table, private_redis, traffic

import batchscribe.producer.submit as submit_mod
from batchscribe.common.celery_app import make_app
from batchscribe.common.models import TranscriptionOptions, job_key
from batchscribe.common.publish import Publisher, TaskSpec
from batchscribe.common.queues import TRANSCRIBE_TASK, pool_queue
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from batchscribe.producer.submit import SubmitReport, Submitter

RATE = 16000


@dataclass
class Corpus:
    root: Path
    paths: list[str]
    shas: list[str]
    seconds: float


@dataclass
class Phase:
    name: str
    files: int
    seconds: float
    round_trips: int
    commands: int
    per_command: dict[str, int]
    note: str = ""
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.files / self.seconds if self.seconds else float("inf")


def wav_bytes(index: int, samples: int, noise: bytes) -> bytes:
    """A canonical 16-bit mono PCM WAV whose first samples encode `index` (distinct content)."""
    data = bytearray(noise[: samples * 2])
    data[:8] = struct.pack("<Q", index)
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 1,
                         RATE, RATE * 2, 2, 16, b"data", len(data))
    return header + bytes(data)


def make_corpus(root: Path, count: int, seconds: float, per_dir: int = 1000) -> Corpus:
    samples = int(RATE * seconds)
    noise = random.Random(7).randbytes(samples * 2)
    paths, shas = [], []
    for i in range(count):
        folder = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{i:06d}.wav"
        blob = wav_bytes(i, samples, noise)
        path.write_bytes(blob)
        paths.append(str(path))
        shas.append(hashlib.sha256(blob).hexdigest())
    return Corpus(root, paths, shas, seconds)


def settings_for(server: PrivateRedis) -> Settings:
    return Settings.from_env({}, redis_url=server.url)


def llen(server: PrivateRedis, queue: str) -> int:
    import redis

    return int(redis.Redis.from_url(server.url).llen(queue))


def measure(name: str, server: PrivateRedis, files: int, action: Callable[[], Any]) -> tuple[Phase, Any]:
    import redis

    client = redis.Redis.from_url(server.url)
    with traffic(client) as stats:
        started = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - started
    return Phase(name, files, seconds, stats["round_trips"], stats["commands"], stats["per_command"]), result


def phase_plain(corpus: Corpus, options: TranscriptionOptions) -> Phase:
    queue = pool_queue(options.language, options.engine)
    opts = options.to_dict()
    with private_redis(ARGS.aof) as server:
        app = make_app(settings_for(server), "bench-plain")

        def loop() -> None:
            for path, sha in zip(corpus.paths, corpus.shas):
                app.send_task(TRANSCRIBE_TASK, args=[job_key(sha, options), opts],
                              kwargs={"path": path, "duration": corpus.seconds}, queue=queue)

        phase, _ = measure("plain send_task loop", server, len(corpus.paths), loop)
        queued = llen(server, queue)
        app.close()
    check(queued == len(corpus.paths), f"plain loop: LLEN {queue} = {queued}, expected {len(corpus.paths)}")
    phase.note = f"LLEN={queued}"
    return phase


def shape(value: Any) -> Any:
    """Keys (recursively) of a message, values dropped: what must match between two messages."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return type(value).__name__


def _body(message: dict[str, Any]) -> bytes:
    """A message's body as kombu decodes it (base64 or JSON text, as its envelope says)."""
    if message["properties"].get("body_encoding") == "base64":
        return base64.b64decode(message["body"])
    return str(message["body"]).encode()


def compare_with_celery(app: Any, server: PrivateRedis, spec: TaskSpec, publisher: Publisher) -> str:
    """Publish one task through Celery and one through the Publisher; '' if message and event agree."""
    import redis

    client = redis.Redis.from_url(server.url)
    sub = client.pubsub()
    sub.psubscribe("*")
    sub.get_message(timeout=2)

    def next_event() -> dict[str, Any] | None:
        while True:
            got = sub.get_message(timeout=2)
            if got is None:
                return None
            if got["type"] == "pmessage":
                return json.loads(got["data"])

    app.send_task(TRANSCRIBE_TASK, args=[spec.job_key, spec.options], task_id="celery-id",
                  kwargs={"path": spec.path, "duration": round(spec.duration, 3), "batch": spec.batch},
                  queue=spec.queue)
    real, real_event = json.loads(client.rpop(spec.queue)), next_event()
    [task_id] = publisher.publish([spec])
    mine, my_event = json.loads(client.rpop(spec.queue)), next_event()
    sub.close()
    problems = []
    if shape(real) != shape(mine):
        problems.append("keys differ")
    if _body(real) != _body(mine):
        problems.append("body differs")
    for part, ignore in (("headers", {"id", "root_id"}), ("properties", {"correlation_id", "delivery_tag"})):
        a = {k: v for k, v in real[part].items() if k not in ignore}
        b = {k: v for k, v in mine[part].items() if k not in ignore}
        if a != b:
            problems.append(f"{part} differ: {a} != {b}")
    if publisher.sent_events:
        if real_event is None or my_event is None:
            problems.append(f"task-sent event missing: celery {real_event is not None}, "
                            f"ours {my_event is not None}")
        else:
            bodies = []
            for event, tid in ((real_event, "celery-id"), (my_event, task_id)):
                body = json.loads(_body(event))
                event.pop("body")
                for volatile in ("clock", "timestamp"):
                    body.pop(volatile)
                event["properties"].pop("delivery_tag")
                bodies.append(json.loads(json.dumps(body).replace(tid, "ID")))
            if bodies[0] != bodies[1] or real_event != my_event:
                problems.append(f"task-sent event differs: {bodies[0]} != {bodies[1]}")
    elif my_event is not None:
        problems.append("an event was published with sent_events=False")
    return "; ".join(problems)


def phase_publisher(name: str, corpus: Corpus, options: TranscriptionOptions,
                    sent_events: bool | None) -> Phase:
    """Publish the N tasks with the shipped Publisher (fresh Redis)."""
    queue = pool_queue(options.language, options.engine)
    opts = options.to_dict()
    specs = [TaskSpec(job_key(sha, options), opts, path, corpus.seconds, queue)
             for path, sha in zip(corpus.paths, corpus.shas)]
    with private_redis(ARGS.aof) as server:
        app = make_app(settings_for(server), "bench-publish")
        publisher = Publisher(app, sent_events=sent_events)
        mismatch = compare_with_celery(app, server, specs[0], publisher)
        check(not mismatch, f"{name}: message differs from Celery's: {mismatch}")
        phase, _ = measure(name, server, len(specs), lambda: publisher.publish(specs))
        queued = llen(server, queue)
        publisher.close()
        app.close()
    check(queued == len(specs), f"{name}: LLEN {queue} = {queued}, expected {len(specs)}")
    phase.note = f"msg==celery; LLEN={queued}"
    return phase


class PartTimer:
    """Wall time of the submit stages, by wrapping the functions Submitter calls (one call each)."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.parts[label] = self.parts.get(label, 0.0) + time.perf_counter() - started

        setattr(owner, attr, timed)
        if isinstance(owner, type) or hasattr(owner, "__file__"):
            self._undo.append(lambda: setattr(owner, attr, original))
        else:
            self._undo.append(lambda: delattr(owner, attr))

    def undo(self) -> None:
        for step in reversed(self._undo):
            step()
        self._undo.clear()


def run_submit(submitter: Submitter, corpus: Corpus, out: Path, options: TranscriptionOptions,
               profile: bool) -> tuple[SubmitReport, dict[str, float], str]:
    timer = PartTimer()
    timer.wrap(submit_mod, "fingerprint_files", "fingerprint (stat+cache+sha256+header)")
    timer.wrap(submitter.store, "add_files", "add_files (file records)")
    timer.wrap(submitter.store, "reserve_outputs", "reserve outputs (Lua)")
    timer.wrap(submitter.store, "claim", "claim (Lua)")
    timer.wrap(submitter.publisher, "publish", "publish (Celery messages)")
    timer.wrap(submitter.store, "mark_published", "mark_published (Lua)")
    report_text = ""
    try:
        if profile:
            report, report_text = profiled(lambda: submitter.submit([corpus.root], out, options))
        else:
            report = submitter.submit([corpus.root], out, options)
    finally:
        timer.undo()
    return report, timer.parts, report_text


def profiled(action: Callable[[], SubmitReport]) -> tuple[SubmitReport, str]:
    try:
        from pyinstrument import Profiler  # type: ignore[import-not-found]
    except ImportError:
        prof = cProfile.Profile()
        result = prof.runcall(action)
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(35)
        return result, buf.getvalue()
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        result = action()
    finally:
        profiler.stop()
    return result, profiler.output_text(unicode=False, color=False, show_all=False)


def phases_submit(corpus: Corpus, options: TranscriptionOptions, work: Path, label: str = "",
                  sent_events: bool | None = None, warm_too: bool = True,
                  profile: bool = False) -> list[Phase]:
    """Cold submit (then a warm re-submit) on a fresh Redis, with the shipped Submitter/Publisher."""
    queue = pool_queue(options.language, options.engine)
    out = work / "out"
    with private_redis(ARGS.aof) as server:
        settings = settings_for(server)
        store = StateStore.connect(settings)
        app = make_app(settings, "batchscribe-producer")
        publisher = Publisher(app, sent_events=sent_events)
        submitter = Submitter(store, publisher, settings.claim_ttl)
        phases = [_cold(submitter, server, corpus, out, options, queue, f"cold submit{label}", profile)]
        if warm_too:
            phases.append(_warm(submitter, server, corpus, out, options, queue, f"warm re-submit{label}"))
        publisher.close()
        app.close()
        store.redis.close()
    return phases


def _cold(submitter: Submitter, server: PrivateRedis, corpus: Corpus, out: Path,
          options: TranscriptionOptions, queue: str, name: str, profile: bool = False) -> Phase:
    n = len(corpus.paths)
    parts: dict[str, float] = {}
    text = ""

    def cold() -> SubmitReport:
        nonlocal parts, text
        report, parts, text = run_submit(submitter, corpus, out, options, profile)
        return report

    phase, report = measure(name, server, n, cold)
    phase.parts = parts
    queued = llen(server, queue)
    check(report.files == n and report.published == n,
          f"{name}: {report.files} files, {report.published} published, expected {n}")
    check(queued == n, f"{name}: LLEN {queue} = {queued}, expected {n}")
    phase.note = f"published={report.published} LLEN={queued}"
    if text:
        PROFILES.append((name, text))
    return phase


def _warm(submitter: Submitter, server: PrivateRedis, corpus: Corpus, out: Path,
          options: TranscriptionOptions, queue: str, name: str) -> Phase:
    n = len(corpus.paths)
    parts: dict[str, float] = {}

    def warm() -> SubmitReport:
        nonlocal parts
        report, parts, _ = run_submit(submitter, corpus, out, options, False)
        return report

    phase, report = measure(name, server, n, warm)
    phase.parts = parts
    queued = llen(server, queue)
    check(report.attached == n and report.published == 0,
          f"{name}: {report.attached} attached / {report.published} published, expected {n} / 0")
    check(queued == n, f"{name}: LLEN {queue} = {queued}, expected {n}")
    phase.note = f"attached={report.attached} LLEN={queued}"
    return phase


PROFILES: list[tuple[str, str]] = []


FAILURES: list[str] = []


def check(ok: bool, message: str) -> None:
    if not ok:
        FAILURES.append(message)
        print(f"CHECK FAILED: {message}")


def summarise(phases: list[Phase]) -> None:
    base = next(p for p in phases if p.name.startswith("plain")).rate
    rows = [[p.name, p.files, f"{p.seconds:.2f}", f"{p.rate:,.0f}", f"{p.rate / base:.2f}x",
             f"{p.round_trips / p.files:.3f}", f"{p.commands / p.files:.2f}", p.note] for p in phases]
    print_table(["phase", "files", "seconds", "files/s", "vs plain", "round trips/file",
                 "redis cmds/file", "check"], rows,
                title="Submit throughput (no workers; tasks land in the queue)")
    print("  round trips: client writes to Redis from this process (a pipeline or a script call is one).\n"
          "  redis cmds: commands the server executed (INFO total_commands_processed; Redis 7 counts the\n"
          "  calls Lua scripts make too). All rows run shipped code; \"no task-sent events\" rows use\n"
          "  Publisher(app, sent_events=False).")
    for p in phases:
        top = sorted(p.per_command.items(), key=lambda kv: -kv[1])[:8]
        print(f"  {p.name}: " + ", ".join(f"{k}={v}" for k, v in top))

    for p in phases:
        if not p.parts:
            continue
        accounted = sum(p.parts.values())
        rows = [[k, f"{v:.2f}", f"{1e6 * v / p.files:.0f}", f"{100 * v / p.seconds:.0f}%"]
                for k, v in p.parts.items()]
        rest = p.seconds - accounted
        rows.append(["other (FileRecords, sorting, glue)", f"{rest:.2f}", f"{1e6 * rest / p.files:.0f}",
                     f"{100 * rest / p.seconds:.0f}%"])
        print_table(["stage", "seconds", "us/file", "share"], rows, title=f"Where the {p.name} time goes")

    print()
    for p in phases:
        if p.name.startswith("cold submit"):
            verdict = "met" if p.rate >= 5 * base else "MISSED"
            print(f"Target {p.name} >= 5x plain loop: {p.rate / base:.2f}x -> {verdict}")


ARGS = argparse.Namespace(aof=True, profile=False, variants=True)


def main() -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000, help="number of WAV files (default 20000)")
    parser.add_argument("--seconds", type=float, default=0.1, help="audio length of each file")
    parser.add_argument("--profile", action="store_true", help="profile the cold submit")
    parser.add_argument("--no-aof", dest="aof", action="store_false",
                        help="run redis-server without AOF (default: AOF everysec, as deployed)")
    parser.add_argument("--no-variants", dest="variants", action="store_false",
                        help="skip the rows without task-sent events")
    parser.add_argument("--tmp", default=None, help="folder for the generated files (default: system temp)")
    ARGS = parser.parse_args()

    print(machine())
    options = TranscriptionOptions(language="en-US")
    work = Path(tempfile.mkdtemp(prefix="bench-submit-", dir=ARGS.tmp))
    try:
        started = time.perf_counter()
        corpus = make_corpus(work / "in", ARGS.files, ARGS.seconds)
        print(f"generated {ARGS.files} WAV files of {ARGS.seconds} s in {time.perf_counter() - started:.1f}s "
              f"(not timed); redis AOF {'on' if ARGS.aof else 'off'}")
        phases = [phase_plain(corpus, options),
                  phase_publisher("Publisher.publish only", corpus, options, None)]
        if ARGS.variants:
            phases.append(phase_publisher("Publisher.publish, no task-sent events", corpus, options, False))
        phases += phases_submit(corpus, options, work)
        if ARGS.variants:
            phases += phases_submit(corpus, options, work, ", no task-sent events", sent_events=False,
                                    warm_too=False)
        summarise(phases)
        if ARGS.profile:  # its own run on a fresh Redis: the profiler's overhead stays out of the table
            phases_submit(corpus, options, work, " (profiled)", warm_too=False, profile=True)
        for name, text in PROFILES:
            print(f"\nProfile of the {name}:\n{text}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if FAILURES:
        print("\nCorrectness checks failed:\n  " + "\n  ".join(FAILURES))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
