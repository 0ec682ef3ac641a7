"""Redis state scripts against a real redis-server: dedupe claims, counters, takeover of dead claims,
in-flight bookkeeping, the scripts' key names, and Redis errors translated at the boundary."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import redis

from batchscribe.common.errors import (
    RedisCredentialsError,
    RedisOutOfMemoryError,
    RedisReadOnlyError,
    RedisUnavailableError,
)
from batchscribe.common.keys import Keys, job_field
from batchscribe.common.lua import KEYSPACE
from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore, target_id
from batchscribe.private_redis import PrivateRedis
from tests.support.clock import ManualClock
from tests.support.netfault import RedisCut
from tests.support.poll import wait_for
from tests.support.threads import run_concurrently


def make_batch(store: StateStore, batch_id: str, n: int, jobs: list[str]) -> list[FileRecord]:
    records = [FileRecord(batch_id=batch_id, index=i, path=f"/in/{i}.wav", rel=f"{i}.wav",
                          output=f"/out/{i}_wav.json", duration=1.5, job=jobs[i]) for i in range(n)]
    store.create_batch(batch_id, {"out": "/out"}, records)
    return records


def reservations(store: StateStore) -> int:
    """Output reservations held (every hash they are spread over)."""
    return sum(int(store.redis.hlen(k)) for k in store.redis.scan_iter(f"{store.prefix}:outputs:*"))


def test_claim_attach_and_cached_verdicts(store: StateStore) -> None:
    make_batch(store, "b1", 3, ["j1", "j1", "j2"])
    verdicts = store.claim([("j1", "b1:0", 1.5), ("j1", "b1:1", 1.5), ("j2", "b1:2", 1.5)], "p1", ttl=30)
    assert verdicts == ["claimed", "attached", "claimed"]
    assert store.targets_of("j1") == ["b1:0", "b1:1"]
    store.finish_job("j2", {"phrases": []}, ttl=60)
    make_batch(store, "b2", 1, ["j2"])
    assert store.claim([("j2", "b2:0", 1.5)], "p2", ttl=30) == ["done"]


def test_two_producers_racing_claim_each_job_exactly_once(store: StateStore) -> None:
    jobs = [f"job{i}" for i in range(400)]
    make_batch(store, "a", 400, jobs)
    make_batch(store, "b", 400, jobs)
    results: dict[str, list[str]] = {}

    def producer(batch_id: str) -> None:
        items = [(jk, target_id(batch_id, i), 1.0) for i, jk in enumerate(jobs)]
        results[batch_id] = store.claim(items, batch_id, ttl=30, chunk=7)

    run_concurrently(producer, [("a",), ("b",)])
    for i in range(400):
        assert sorted([results["a"][i], results["b"][i]]) == ["attached", "claimed"]
        assert len(store.targets_of(jobs[i])) == 2


def test_expired_claim_is_taken_over_and_keeps_its_targets(settings: Settings) -> None:
    clock = ManualClock()
    store = StateStore.connect(settings, clock=clock)
    make_batch(store, "b1", 1, ["j"])
    make_batch(store, "b2", 1, ["j"])
    assert store.claim([("j", "b1:0", 1.0)], "dead-producer", ttl=1) == ["claimed"]
    assert store.claim([("j", "b2:0", 1.0)], "p2", ttl=1) == ["attached"]
    clock.advance(1.1)
    assert store.claim([("j", "b2:0", 1.0)], "p2", ttl=30) == ["claimed"]
    assert store.targets_of("j") == ["b1:0", "b2:0"]


def test_file_counters_follow_job_transitions_and_completion_fires_once(store: StateStore) -> None:
    make_batch(store, "b", 2, ["j", "k"])
    store.claim([("j", "b:0", 1.5), ("k", "b:1", 1.5)], "p", ttl=30)
    start = store.start_job("j", "ep1", "d1")
    assert (start.previous, start.attempts, start.targets) == ("claimed", 1, ["b:0"])
    assert store.batch("b")["n_running"] == "1"
    store.requeue_job("j", "d1", "transient", "429", True, time.time() + 5, "{}")
    assert store.batch("b")["n_retrying"] == "1"
    assert store.start_job("j", "ep1", "d2").attempts == 2
    store.finish_job("j", {"phrases": []}, ttl=60)
    assert store.settle_file("b:0", FileState.DONE, "j") is False
    assert store.settle_file("b:0", FileState.DONE, "j") is False  # idempotent
    assert store.settle_file("b:1", FileState.FAILED, "", error_class="permanent", reason="x") is True
    head = store.batch("b")
    assert (head["n_done"], head["n_failed"], head["n_queued"], head["n_running"]) == ("1", "1", "0", "0")
    assert float(head["audio_done"]) == 1.5
    assert store.failed_indexes("b") == [1]
    assert store.targets_of("j") == []


def test_endpoint_errors_do_not_spend_attempts(store: StateStore) -> None:
    make_batch(store, "b", 1, ["j"])
    store.claim([("j", "b:0", 1.0)], "p", ttl=30)
    for n in range(3):
        store.start_job("j", "ep", f"d{n}")
        store.requeue_job("j", f"d{n}", "endpoint", "refused", False, time.time(), "{}")
    job = store.job("j")
    assert job["attempts"] == "0" and job["reroutes"] == "3"


def test_a_running_batch_holds_its_outputs_until_it_completes(store: StateStore) -> None:
    make_batch(store, "a", 2, ["j", "k"])
    make_batch(store, "b", 2, ["j", "k"])
    mine = [("/out/0_wav.json", "/a/0.wav"), ("/out/1_wav.json", "/a/1.wav")]
    theirs = [("/out/0_wav.json", "/b/0.wav"), ("/out/1_wav.json", "/b/1.wav")]
    assert store.reserve_outputs("a", mine) == []
    assert store.reserve_outputs("a", mine) == []  # again (retry-failed): its own
    assert store.reserve_outputs("b", [("/out/new_wav.json", "/b/new.wav"), theirs[1]]) == [("/out/1_wav.json", "a")]
    assert store.reserve_outputs("c", [("/out/new_wav.json", "/c/new.wav")]) == []  # b's refusal kept nothing
    for i in range(2):
        store.settle_file(target_id("a", i), FileState.DONE)
    assert store.reserve_outputs("b", theirs) == []  # a completed: its reservations are stale
    store.release_outputs("a", [o for o, _ in mine])  # a's late release leaves b's reservations alone
    assert store.reserve_outputs("c", mine[:1]) == [("/out/0_wav.json", "b")]


def test_the_same_input_submitted_again_takes_its_output_over(store: StateStore) -> None:
    make_batch(store, "killed", 1, ["j"])  # a producer killed mid-submit: never completes
    make_batch(store, "rerun", 1, ["j"])
    assert store.reserve_outputs("killed", [("/out/0_wav.json", "/in/0.wav")]) == []
    assert store.reserve_outputs("rerun", [("/out/0_wav.json", "/in/0.wav")]) == []
    assert store.reserve_outputs("other", [("/out/0_wav.json", "/elsewhere/0.wav")]) == [("/out/0_wav.json", "rerun")]


def test_a_clash_in_a_later_chunk_releases_the_earlier_chunks(store: StateStore) -> None:
    make_batch(store, "a", 1, ["j"])
    store.reserve_outputs("a", [("/out/9_wav.json", "/a/9.wav")])
    outputs = [(f"/out/{i}_wav.json", f"/b/{i}.wav") for i in range(10)]
    assert store.reserve_outputs("b", outputs, chunk=3) == [("/out/9_wav.json", "a")]
    assert reservations(store) == 1


def test_names_that_are_not_utf8_survive_redis(store: StateStore) -> None:
    name = os.fsdecode(b"/in/caf\xe9.wav")
    store.create_batch("b", {"out": "/out"}, [FileRecord(batch_id="b", index=0, path=name, rel=name[4:],
                                                         output="/out/x.json")])
    assert store.files("b", [0])[0].path == name
    assert b"caf\xe9.wav" in store.redis.hget(store.keys.file("b", 0), "0")  # the bytes themselves

# ---- the clock, the scripts' key names ------------------------------------------------------------

def test_every_time_written_comes_from_the_store_s_clock(settings: Settings) -> None:
    clock = ManualClock(start=1_000_000.0)
    store = StateStore.connect(settings, clock=clock)
    make_batch(store, "b", 1, ["j"])
    store.claim([("j", "b:0", 1.0)], "p", ttl=30)
    clock.advance(5)
    start = store.start_job("j", "ep1", "d1", lease_ttl=30)
    assert float(store.batch("b")["created_at"]) == 1_000_000.0
    assert float(store.job("j")["claim_deadline"]) == 1_000_030.0
    assert start.lease_until == 1_000_035.0 and float(store.job("j")["started_at"]) == 1_000_005.0


def test_a_finished_record_keeps_its_end_as_seconds_after_its_start(settings: Settings) -> None:
    clock = ManualClock(start=1_765_000_000.125)
    store = StateStore.connect(settings, clock=clock)
    make_batch(store, "b", 3, ["j", "k", "l"])
    store.claim([("j", "b:0", 1.0), ("k", "b:1", 1.0)], "p", ttl=30)
    store.start_job("j", "ep1", "d1")
    clock.advance(2.5)
    store.settle_file("b:0", FileState.DONE, "j")
    store.start_job("k", "ep1", "d2")
    clock.advance(-1)  # settled by a VM whose clock is behind: the end stays a time of its own
    store.settle_file("b:1", FileState.DONE, "k")
    store.settle_file("b:2", FileState.FAILED, "", error_class="permanent", reason="x")  # never started
    raw = [store.redis.hget(store.keys.file("b", 0), f"{i}s").decode() for i in range(3)]
    assert raw[0] == "done|1|ep1|1765000000.125|+2.5|||"
    assert raw[1] == "done|1|ep1|1765000002.625|1765000001.625|||"
    assert raw[2] == "failed|0|||1765000001.625|permanent||x"
    done, behind, failed = store.files("b", range(3))
    assert (done.started_at, done.finished_at) == (1_765_000_000.125, 1_765_000_002.625)
    assert (behind.started_at, behind.finished_at) == (1_765_000_002.625, 1_765_000_001.625)
    assert (failed.started_at, failed.finished_at) == (0.0, 1_765_000_001.625)


def test_a_retired_job_leaves_out_handbacks_and_reroutes_it_never_had(store: StateStore) -> None:
    make_batch(store, "b", 2, ["j", "k"])
    store.claim([("j", "b:0", 1.0), ("k", "b:1", 1.0)], "p", ttl=30)
    store.start_job("j", "ep1", "d1")
    store.start_job("k", "ep1", "d2")
    assert store.hand_back_job("k", "d2", "{}")
    store.start_job("k", "ep2", "d3")
    for job, target in (("j", "b:0"), ("k", "b:1")):
        store.finish_job(job, {"phrases": []}, ttl=60)
        store.settle_file(target, FileState.DONE, job)
    assert store.redis.hget(store.keys.waiting_jobs("j"), job_field("j")) == b"d|1|0|ep1"
    assert store.redis.hget(store.keys.waiting_jobs("k"), job_field("k")) == b"d|1|0|ep2|1|0"
    assert store.job("j") == {"state": "done", "attempts": "1", "crashes": "0", "endpoint": "ep1",
                              "handbacks": "0", "reroutes": "0"}
    store.forget_result("j")  # its result is gone: a delivery makes it a job hash again, history kept
    store.start_job("j", "ep3", "d9")
    job = store.job("j")
    assert (job["endpoint"], job["handbacks"], job["reroutes"]) == ("ep1", "0", "0")


def test_the_scripts_spell_key_names_as_the_keys_module_does(store: StateStore) -> None:
    keys = Keys("t1")
    jk = "ab" * 32 + ".0123456789abcdef"
    digest = bytes(range(200, 216))
    spelled = store.redis.eval(KEYSPACE + """
local f = {K.file(ARGV[2])}
local w = {K.waiting(ARGV[3])}
local o = {K.waiting(ARGV[5])}
return {K.batch(ARGV[1]), K.failed(ARGV[1], "crash"), f[1], f[2], K.job(ARGV[3]), K.targets(ARGV[3]),
        K.result(ARGV[3]), K.inflight(ARGV[4]), K.endpoint_stats(ARGV[4]), w[1], w[2], o[1], o[2],
        K.outputs(ARGV[6])}""", 1, "t1", "b:x", "b:x:70", jk, "ep", "jk", digest)
    assert spelled == [k.encode() for k in (
        keys.batch("b:x"), keys.failed("b:x", "crash"), keys.file("b:x", 70), "6", keys.job(jk), keys.targets(jk),
        keys.result(jk), keys.inflight("ep"), keys.endpoint_stats("ep"), keys.waiting_jobs(jk))] + [
        job_field(jk), keys.waiting_jobs("jk").encode(), job_field("jk"), keys.output_reservations(digest).encode()]


# ---- in flight: what runs on an endpoint now -------------------------------------------------------

def running(settings: Settings) -> tuple[StateStore, ManualClock]:
    """A store on a manual clock where delivery d1 runs job j on ep1 (lease 3 s), counted in flight."""
    clock = ManualClock()
    store = StateStore.connect(settings, clock=clock)
    make_batch(store, "b", 1, ["j"])
    store.claim([("j", "b:0", 1.0)], "p", ttl=30)
    store.start_job("j", "ep1", "d1", lease_ttl=3)
    store.track_inflight("ep1", "j")
    return store, clock


def test_a_dead_delivery_s_in_flight_entry_is_pruned_once_its_lease_expires(settings: Settings) -> None:
    store, clock = running(settings)  # ... and its consumer is SIGKILLed: nobody releases the entry
    store.prune_inflight(["ep1"])
    assert store.endpoint_stats("ep1")["in_flight"] == "1"  # its lease is live: it may still run
    clock.advance(4)
    store.prune_inflight(["ep1", "ep-unknown"])
    assert store.endpoint_stats("ep1")["in_flight"] == "0"


def test_taking_over_a_dead_delivery_drops_its_in_flight_entry(settings: Settings) -> None:
    store, clock = running(settings)
    clock.advance(4)
    store.start_job("j", "ep2", "d2")  # its endpoint need not be in anyone's set any more
    assert store.endpoint_stats("ep1")["in_flight"] == "0"


def test_in_flight_counts_only_live_deliveries(settings: Settings) -> None:
    store, clock = running(settings)
    clock.advance(4)
    make_batch(store, "c", 1, ["k"])
    store.claim([("k", "c:0", 1.0)], "p", ttl=30)
    store.start_job("k", "ep1", "d2")
    assert store.track_inflight("ep1", "k") == 1  # not 2: j's delivery died
    assert store.endpoint_stats("ep1")["max_inflight"] == "1"


# ---- Redis errors, translated at the boundary ------------------------------------------------------

def test_out_of_memory_is_named_and_reads_still_work(store: StateStore, redis_server: PrivateRedis) -> None:
    make_batch(store, "b", 1, ["j"])
    redis.Redis(port=redis_server.port).config_set("maxmemory", "1")
    with pytest.raises(RedisOutOfMemoryError, match=r"^Redis is out of memory \(maxmemory, noeviction\): "):
        make_batch(store, "c", 1, ["k"])  # a pipeline
    with pytest.raises(RedisOutOfMemoryError):
        store.claim([("j", "b:0", 1.0)], "p", ttl=30)  # a script
    assert store.batch("b")["total"] == "1"


def test_a_read_only_replica_is_named(store: StateStore, redis_server: PrivateRedis, tmp_path: Path) -> None:
    with PrivateRedis(data_dir=tmp_path / "replica") as replica:
        redis.Redis(port=replica.port).replicaof("127.0.0.1", redis_server.port)
        on_replica = StateStore.connect(Settings.from_env({}, redis_url=replica.url))
        with pytest.raises(RedisReadOnlyError, match="is a read-only replica"):
            make_batch(on_replica, "b", 1, ["j"])


@pytest.mark.parametrize("password", [None, "wrong"])
def test_refused_credentials_are_named(redis_server: PrivateRedis, password: str | None) -> None:
    redis.Redis(port=redis_server.port).config_set("requirepass", "s3cret")
    url = f"redis://:{password}@127.0.0.1:{redis_server.port}/0" if password else redis_server.url
    with pytest.raises(RedisCredentialsError, match="^Redis refused the credentials for redis://") as raised:
        StateStore.connect(Settings.from_env({}, redis_url=url))
    assert "wrong" not in str(raised.value)


def test_a_connection_dropped_mid_command_is_unavailable(redis_server: PrivateRedis) -> None:
    with RedisCut(redis_server.port, command="HGETALL") as cut:
        store = StateStore.connect(Settings.from_env({}, redis_url=cut.url))
        with pytest.raises(RedisUnavailableError, match="^cannot reach Redis at "):
            store.batch("b")


def test_unblock_pops_ends_waiting_brpops_and_nothing_else(store: StateStore, settings: Settings) -> None:
    """A consumer idle in BRPOP gets an empty reply at once (as if its timeout had come); a blocked
    XREAD (the run log's follower) and clients that block nothing are left alone."""
    popper = redis.Redis.from_url(settings.redis_url)
    reader = redis.Redis.from_url(settings.redis_url)
    popped: list[object] = []
    read: list[object] = []
    pop = threading.Thread(target=lambda: popped.append(popper.brpop(["q.test"], timeout=20)), daemon=True)
    xread = threading.Thread(target=lambda: read.append(reader.xread({"s.test": "$"}, block=3000)), daemon=True)
    pop.start()
    xread.start()
    blocked = {"brpop": 0, "xread": 0}

    def both_blocked() -> bool:
        clients = store.redis.client_list(_type="normal")
        for name in blocked:
            blocked[name] = sum(1 for c in clients if c.get("cmd") == name and "b" in c.get("flags", ""))
        return all(blocked.values())

    wait_for(both_blocked, 10, "a BRPOP and an XREAD blocked")
    started = time.monotonic()
    assert store.unblock_pops() == 1
    pop.join(timeout=5)
    assert not pop.is_alive() and popped == [None] and time.monotonic() - started < 2
    assert xread.is_alive()  # still waiting for its own timeout
    xread.join(timeout=10)
    assert read == [[]]
    assert store.unblock_pops() == 0
