"""The CANCEL script and what deliveries make of cancelled jobs, against a real redis-server."""

from __future__ import annotations

from batchscribe.common.models import FileRecord, FileState
from batchscribe.common.state import StateStore


def make_batch(store: StateStore, batch_id: str, jobs: list[str]) -> None:
    records = [FileRecord(batch_id=batch_id, index=i, path=f"/in/{batch_id}{i}.wav", rel=f"{i}.wav",
                          output=f"/out/{batch_id}/{i}_wav.json", duration=1.0, job=jk)
               for i, jk in enumerate(jobs)]
    store.create_batch(batch_id, {"out": f"/out/{batch_id}"}, records)
    store.claim([(jk, f"{batch_id}:{i}", 1.0) for i, jk in enumerate(jobs)], "p", ttl=30)
    store.mark_published(jobs, "p")


def states(store: StateStore, batch_id: str, n: int) -> list[str]:
    return [r.state.value for r in store.files(batch_id, range(n))]


def test_cancel_settles_every_unfinished_file_and_cancels_jobs_nobody_else_wants(store: StateStore) -> None:
    make_batch(store, "a", ["j0", "j1", "j2", "shared"])
    make_batch(store, "b", ["shared"])
    assert store.start_job("j0", "ep", "d0").runs  # running when the batch is cancelled
    store.requeue_job("j1", "x", "transient", "", True, 0, "{}")  # not held by "x": stays queued
    outcome = store.cancel_batch("a", 4, chunk=3)  # two script calls
    assert (outcome.verdict, outcome.completed, outcome.files, outcome.jobs) == ("cancelled", True, 4, 2)
    assert states(store, "a", 4) == ["cancelled"] * 4
    header = store.batch("a")
    assert header["n_cancelled"] == "4" and header["n_queued"] == header["n_running"] == "0"
    assert header["cancelled_at"] and header["finished_at"]
    assert [store.job(j)["state"] for j in ("j0", "j1", "j2", "shared")] == ["running", "cancelled",
                                                                             "cancelled", "queued"]
    assert store.targets_of("shared") == ["b:0"]  # b still wants it
    assert states(store, "b", 1) == ["queued"]


def test_a_cancelled_job_s_delivery_is_dropped_and_a_running_one_finishes_for_nobody(store: StateStore) -> None:
    make_batch(store, "a", ["j0", "j1"])
    store.start_job("j0", "ep", "d0")
    store.redis.zadd(store.keys.delayed(), {"j1": 0})  # as if a retry were waiting
    store.cancel_batch("a", 2)
    assert store.redis.zscore(store.keys.delayed(), "j1") is None
    late = store.start_job("j1", "ep", "d1")  # its message was still on the broker
    assert late.previous == "cancelled" and not late.runs and late.targets == []
    assert store.finish_job("j0", {"phrases": []}, ttl=60) == []  # no input to write an output for
    assert states(store, "a", 2) == ["cancelled", "cancelled"]


def test_a_job_that_fails_after_its_batch_was_cancelled_is_not_requeued(store: StateStore) -> None:
    make_batch(store, "a", ["j"])
    store.start_job("j", "ep", "d")
    store.cancel_batch("a", 1)
    assert store.requeue_job("j", "d", "transient", "timeout", True, 0, "{}") == -2
    assert store.job("j")["state"] == "cancelled"
    assert store.redis.zcard(store.keys.delayed()) == 0


def test_a_finished_batch_is_not_cancelled_and_a_cancelled_job_can_be_claimed_again(store: StateStore) -> None:
    make_batch(store, "a", ["j"])
    store.cancel_batch("a", 1)
    assert store.cancel_batch("a", 1).files == 0  # twice: nothing more to do
    make_batch(store, "b", ["j"])  # the same content submitted again
    assert store.job("j")["state"] == "queued"
    store.start_job("j", "ep", "d")
    store.finish_job("j", {"phrases": []}, ttl=60)
    store.settle_file("b:0", FileState.DONE, "j")
    assert store.cancel_batch("b", 1).verdict == "finished"
    assert "cancelled_at" not in store.batch("b")


def test_a_late_settle_does_not_revive_a_cancelled_file(store: StateStore) -> None:
    make_batch(store, "a", ["j", "k"])
    store.cancel_batch("a", 2)
    assert not store.settle_file("a:0", FileState.DONE, "j", reason="late")
    record = store.files("a", [0])[0]
    assert record.state is FileState.CANCELLED and record.reason == ""
    assert store.batch("a")["n_done"] == "0"
