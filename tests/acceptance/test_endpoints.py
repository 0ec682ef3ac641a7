"""Endpoint health, the circuit breaker, hot-swap and several worker VMs, as an operator sees them."""

from __future__ import annotations

import gzip
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from batchscribe.common.state import StateStore
from tests.support.cli import run_cli
from tests.support.cluster import consumer_node, proc_args
from tests.support.emulator import running_emulator, tone_wav
from tests.support.poll import wait_for
from tests.support.threads import Repeater


def consumers(broker: str) -> dict[str, list[str]]:
    """This test's running consumer processes (those on `broker`) by Celery node name, from /proc."""
    found: dict[str, list[str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = proc_args(int(pid))
            node = consumer_node(args)
            if node is None:
                continue
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"BATCHSCRIBE_REDIS_URL={broker}".encode() in env:
            found[node] = args
    return found


def concurrency_of(args: list[str] | None) -> str | None:
    return args[args.index("-c") + 1] if args and "-c" in args else None


def yaml_for(ports: dict[str, int], concurrency: int = 1) -> str:
    return "".join(f"{name}:\n  host: 127.0.0.1\n  port: {port}\n  concurrency: {concurrency}\n  rtf: 1000\n"
                   f"  stallTimeout: 3\n" for name, port in ports.items())


def health(store: StateStore, name: str) -> dict:
    return store.health([name]).get(name, {})


def test_a_failing_endpoint_stops_taking_work_and_comes_back(tmp_path: Path, redis_server,
                                                             store: StateStore, start_worker) -> None:
    with running_emulator(ports=2, rtf=0) as emu:
        a, b = emu.ports
        config = tmp_path / "eps.yaml"
        config.write_text(yaml_for({"a": a, "b": b}))
        start_worker(config, hostname="vm1")
        wait_for(lambda: {"a@vm1", "b@vm1"} <= set(consumers(redis_server.url)), 30, what="both consumers")
        emu.set_fault(a, "unready")
        failed_at = time.monotonic()
        wait_for(lambda: "a@vm1" not in consumers(redis_server.url), 10, interval=0.1, what="a's consumer to stop")
        assert time.monotonic() - failed_at <= 5.0
        assert health(store, "a")["up"] is False and "503" in health(store, "a")["reason"]
        assert "b@vm1" in consumers(redis_server.url)
        emu.reset(a)
        back_at = time.monotonic()
        wait_for(lambda: "a@vm1" in consumers(redis_server.url), 10, interval=0.1, what="a's consumer to return")
        assert time.monotonic() - back_at <= 5.0
        status = run_cli("endpoints", "show", broker=redis_server.url)
        assert status.returncode == 0 and "vm1" in status.stdout


def test_circuit_opens_on_consecutive_failures_while_probe_says_ready(tmp_path: Path, redis_server,
                                                                       store: StateStore, start_worker) -> None:
    (tmp_path / "in").mkdir()
    for i in range(8):
        tone_wav(tmp_path / "in" / f"f{i}.wav", 0.5 + 0.1 * i, freq=400 + 10 * i)
    with running_emulator(ports=2, rtf=0) as emu:
        bad, good = emu.ports
        emu.set_fault(bad, "http401")  # /ready is fine, every recognition is refused: bad key
        config = tmp_path / "eps.yaml"
        config.write_text(yaml_for({"bad": bad, "good": good}))
        start_worker(config, hostname="vm1", BATCHSCRIBE_BACKOFF_BASE="0.2")
        result = run_cli("submit", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--wait",
                         broker=redis_server.url)
        assert result.returncode == 0, result.stderr
        errors = [e for _, e in store.events() if e.get("outcome") == "error"]
        assert errors and all(e["endpoint"] == "bad" and e["error_class"] == "endpoint" for e in errors)
        assert len(errors) <= 6  # the breaker stopped the bad endpoint after 5 failures in a row
        assert all(r.attempts <= 1 for r in store.files(store.batch_ids(1)[0], range(8)))


def test_hot_swap_apply_file_edit_and_invalid_sets(tmp_path: Path, redis_server, store: StateStore,
                                                   start_worker) -> None:
    with running_emulator(ports=3, rtf=0) as emu:
        a, b, c = emu.ports
        config = tmp_path / "eps.yaml"
        config.write_text(yaml_for({"a": a}))
        start_worker(config, hostname="vm1")
        wait_for(lambda: "a@vm1" in consumers(redis_server.url), 30, what="a's consumer")

        new = tmp_path / "new.yaml"
        new.write_text(yaml_for({"a": a, "b": b}, concurrency=3))
        applied = run_cli("endpoints", "apply", str(new), broker=redis_server.url)
        assert applied.returncode == 0 and "endpoint set v2" in applied.stdout, applied.stderr
        t0 = time.monotonic()
        wait_for(lambda: "b@vm1" in consumers(redis_server.url), 15, interval=0.2, what="b added")
        assert time.monotonic() - t0 <= 5.0  # every VM reconciles within 5 s

        def resized() -> bool:
            return concurrency_of(consumers(redis_server.url).get("a@vm1")) == "3"

        wait_for(resized, 15, interval=0.2, what="a resized")
        assert time.monotonic() - t0 <= 8.0  # a's old consumer finishes first, then the resized one starts

        bad = tmp_path / "bad.yaml"
        bad.write_text("a:\n  concurrency: lots\n")
        rejected = run_cli("endpoints", "apply", str(bad), broker=redis_server.url)
        assert rejected.returncode == 2 and "bad.yaml: endpoint 'a': concurrency must be an integer" in \
            rejected.stderr
        config.write_text("a:\n  port: [\n")  # an invalid edit of the worker's own file is refused too
        time.sleep(2.5)
        assert {"a@vm1", "b@vm1"} <= set(consumers(redis_server.url))

        config.write_text(yaml_for({"c": c}))  # a valid edit of the file: published and applied
        wait_for(lambda: set(consumers(redis_server.url)) & {"a@vm1", "b@vm1", "c@vm1"} == {"c@vm1"}, 15, interval=0.2,
                   what="the file's set to replace the applied one")


def test_two_vms_share_endpoints_and_take_over_when_one_dies(tmp_path: Path, redis_server,
                                                            store: StateStore, start_worker) -> None:
    with running_emulator(ports=2, rtf=0) as emu, ConsumerSampler(redis_server.url) as sampler:
        config = tmp_path / "eps.yaml"
        config.write_text(yaml_for(dict(zip(("a", "b"), emu.ports))))
        vm1 = start_worker(config, hostname="vm1")
        start_worker(config, hostname="vm2")

        def owners() -> dict[str, str]:
            nodes = sampler.observe(consumers(redis_server.url))  # what this thread sees counts too
            return {name: node.split("@")[1] for node in nodes for name in ("a", "b")
                    if node.startswith(name + "@")}

        wait_for(lambda: len(owners()) == 2 and len(consumers(redis_server.url)) == 2, 40, what="one consumer per endpoint")
        os.killpg(vm1.proc.pid, signal.SIGKILL)  # the whole VM dies
        died = time.monotonic()
        wait_for(lambda: owners() == {"a": "vm2", "b": "vm2"}, 40, interval=0.5, what="vm2 to take over")
        assert time.monotonic() - died <= 30
    # never two consumers of one endpoint, cluster-wide: every sample, start-up and takeover included
    assert sampler.samples >= 5 and not sampler.errors, f"the sampler ran throughout: {sampler.errors[:1]}"
    assert sampler.most == {"a": 1, "b": 1}, sampler.most


class ConsumerSampler(Repeater):
    """Counts this test's consumers per endpoint every 0.1 s in a thread; `most` is the largest count
    seen for each endpoint, `changes` how often the set of running consumers changed."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self.most: dict[str, int] = {}
        self.samples = 0
        self.changes = 0
        self._last: set[str] = set()
        self._lock = threading.Lock()
        super().__init__(0.1, self._sample)

    def _sample(self, _tick: int) -> None:
        nodes = set(consumers(self.broker))
        with self._lock:
            self.changes += nodes != self._last
            self._last = nodes
        self.observe(nodes)

    @property
    def last(self) -> set[str]:
        """The consumers of the sampler's latest sample."""
        with self._lock:
            return set(self._last)

    def observe(self, nodes: Iterable[str]) -> set[str]:
        """Count one sight of the running consumers (the sampler's own, or a test thread's: on a
        loaded machine the sampler thread may get few turns)."""
        seen = set(nodes)
        with self._lock:
            for name, count in Counter(node.split("@", 1)[0] for node in seen).items():
                self.most[name] = max(self.most.get(name, 0), count)
            self.samples += 1
        return seen


def test_a_vm_that_joins_later_gets_its_fair_share(tmp_path: Path, redis_server, store: StateStore,
                                                  start_worker) -> None:
    with running_emulator(ports=2, rtf=0) as emu, ConsumerSampler(redis_server.url) as sampler:
        config = tmp_path / "eps.yaml"
        config.write_text(yaml_for(dict(zip(("a", "b"), emu.ports))))
        start_worker(config, hostname="vm1")
        wait_for(lambda: {"a@vm1", "b@vm1"} <= set(consumers(redis_server.url)), 30, what="vm1 owns both")
        start_worker(config, hostname="vm2")

        def hosts() -> list[str]:
            return sorted(node.split("@")[1] for node in consumers(redis_server.url))

        wait_for(lambda: hosts() == ["vm1", "vm2"], 40, interval=0.5, what="one endpoint to move to vm2")
        wait_for(lambda: sorted(node.split("@")[1] for node in sampler.last) == ["vm1", "vm2"], 10,
                 what="the sampler to see the move too")  # else its late sight would count as a move
        moves = sampler.changes
        time.sleep(3)
        assert hosts() == ["vm1", "vm2"] and sampler.changes == moves  # stable: no ping-pong
    assert not sampler.errors and sampler.most == {"a": 1, "b": 1}, "the hand-over never ran an endpoint on two VMs at once"


SECRET_KEY = "f00dfeedSECRETkey0123"


def redis_holds(store: StateStore, text: str) -> list[str]:
    """The keys of every Redis value (strings, hashes, lists, sets, streams) that contain `text`."""
    needle = text.encode()
    return [key.decode() for key in store.redis.scan_iter(count=1000)
            if needle in key or any(needle in value for value in _values(store, key))]


def _values(store: StateStore, key: bytes) -> list[bytes]:
    r, kind = store.redis, store.redis.type(key).decode()
    if kind == "string":
        return [r.get(key) or b""]
    if kind == "hash":
        return [item for pair in r.hgetall(key).items() for item in pair]
    if kind == "list":
        return list(r.lrange(key, 0, -1))
    if kind in ("set", "zset"):
        return list(r.smembers(key) if kind == "set" else r.zrange(key, 0, -1))
    if kind == "stream":
        return [v for _, entry in r.xrange(key) for v in entry.values()]
    return []


def test_a_literal_key_is_never_published(tmp_path: Path, redis_server, store: StateStore, start_worker) -> None:
    """`endpoints apply` refuses a key written out in the file; a worker whose --config holds one runs
    that set itself without publishing it, until a newer `endpoints apply` replaces it. The key is
    never in Redis, the task messages (Flower shows their arguments), outputs or logs."""
    (tmp_path / "in").mkdir()
    tone_wav(tmp_path / "in" / "a.wav", 0.6)
    store.redis.hset("probe", "yaml", f"key: {SECRET_KEY}")  # the search finds a key where there is one
    assert redis_holds(store, SECRET_KEY) == ["probe"]
    store.redis.delete("probe")
    with running_emulator(ports=2, rtf=0) as emu:
        a, b = emu.ports
        literal = tmp_path / "literal.yaml"
        literal.write_text(yaml_for({"a": a}) + f"  subscriptionKey: {SECRET_KEY}\n")
        refused = run_cli("endpoints", "apply", str(literal), broker=redis_server.url)
        assert refused.returncode == 2, refused.stdout
        assert "literal.yaml: endpoint 'a': a subscriptionKey written out in the file is never published " \
               "to Redis; write `subscriptionKey: $SPEECH_KEY`" in refused.stderr
        assert SECRET_KEY not in refused.stdout + refused.stderr
        assert not store.redis.exists(store.keys.endpoint_set())

        worker = start_worker(literal, hostname="vm1", SPEECH_KEY="from-this-vm")
        wait_for(lambda: "a@vm1" in consumers(redis_server.url), 30, what="the file's endpoint to run here")
        done = run_cli("submit", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--wait",
                       broker=redis_server.url)
        assert done.returncode == 0, done.stderr
        assert "never published to Redis" in worker.log() and "runs the file's set without publishing" in worker.log()
        assert not store.redis.exists(store.keys.endpoint_set())
        assert redis_holds(store, SECRET_KEY) == []
        outputs = [(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()).decode()
                   for p in (tmp_path / "out").rglob("*") if p.is_file()]  # outputs and the result cache
        assert outputs and not [text for text in outputs if SECRET_KEY in text]

        shared = tmp_path / "shared.yaml"  # a newer applied set (keys as $VAR) replaces the file's
        shared.write_text(yaml_for({"b": b}) + "  subscriptionKey: $SPEECH_KEY\n")
        applied = run_cli("endpoints", "apply", str(shared), broker=redis_server.url)
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: set(consumers(redis_server.url)) == {"b@vm1"}, 30, what="the applied set to win")
        assert redis_holds(store, SECRET_KEY) == []
        assert SECRET_KEY not in worker.log()
