"""The key patterns of common/keys.py: every key the code spells belongs to exactly the family it
should, so the key scan (tests/acceptance/test_keyspace.py) can judge every key it finds."""

from __future__ import annotations

from batchscribe.common.config import Endpoint
from batchscribe.common.keys import KOMBU_KEYS, KOMBU_UNACKED_INDEX, Keys, pattern_of
from batchscribe.common.queues import consumer_queues


def test_every_key_name_falls_in_its_own_family() -> None:
    keys = Keys("bs")
    patterns = keys.patterns(result_ttl=3600, owner_ttl=15)
    spelled = {
        keys.batch("20240101-000000-abc"): "bs:batch:*", keys.batches(): "bs:batches",
        keys.file("b", 3): "bs:files:*", keys.failed("b", "transient"): "bs:batch:*:failed:*", keys.job("h.o"): "bs:job:*",
        keys.waiting_jobs("h.o"): "bs:jobs:*", keys.output_reservations(b"\x01" * 16): "bs:outputs:*",
        keys.targets("h.o"): "bs:job:*:targets", keys.result("h.o"): "bs:cached:*", keys.fingerprints(b"\x00" * 16): "bs:fp:*",
        keys.events(): "bs:events", keys.inflight("a"): "bs:inflight:*", keys.endpoint_stats("a"): "bs:epstats:*",
        keys.endpoint_set(): "bs:endpoints", keys.owner("a"): "bs:owner:*", keys.vms(): "bs:vms",
        keys.health("a"): "bs:health:*", keys.vm("vm1"): "bs:vm:*", keys.consumer("a@vm1"): "bs:consumer:*",
        keys.consumers(): "bs:consumers", keys.delayed(): "bs:delayed", keys.delayed_promoting(): "bs:delayed:promoting",
        keys.delayed_specs(): "bs:delayed:specs", keys.batchkit_ids(): "bs:batchkit:ids",
        keys.batchkit_next(): "bs:batchkit:next", keys.live_batches(): "bs:batches:live",
        keys.summary_clock("b"): "bs:summary:*", keys.summary_lock("b"): "bs:summary-lock:*",
    }
    assert {key: getattr(pattern_of(key, patterns), "glob", None) for key in spelled} == spelled
    assert pattern_of("bs:something-new", patterns) is None
    assert pattern_of("bs:result:h.o", patterns).ttl == 3600  # type: ignore[union-attr]  # older versions' cache
    assert pattern_of(keys.result("x"), patterns).ttl == 3600  # type: ignore[union-attr]
    assert pattern_of(keys.result("x"), keys.patterns(0, 15)).ttl is None  # type: ignore[union-attr]


def test_kombu_s_keys_and_our_queue_names_are_declared() -> None:
    queues = consumer_queues(Endpoint(name="gpu1", engine="azure", languages=("en-US", "de-DE")))
    for key in [*queues, KOMBU_UNACKED_INDEX, "unacked", "unacked_mutex", "_kombu.binding.pool.en-US",
                "_kombu.binding_permanent.ep.gpu1", "_kombu.binding_deadlines"]:
        assert pattern_of(key, KOMBU_KEYS) is not None, key
