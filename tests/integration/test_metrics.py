"""The metrics' reads and what they are served as: queue depths over kombu's priority lists, the
oldest queued age, the real-time factor, a scrape while Redis is away, and the deploy/ files
(Grafana dashboard, Prometheus rules) against the sample names and labels /metrics really serves."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from batchscribe.common.celery_app import make_app
from batchscribe.common.keys import kombu_queue_lists
from batchscribe.common.metrics import ClusterCollector, MetricsServer, registry_for
from batchscribe.common.publish import Publisher, TaskSpec
from batchscribe.common.queues import TRANSCRIBE_TASK
from batchscribe.common.settings import Settings
from batchscribe.common.state import ConsumerSlot, StateStore, VMBeat
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import ROOT
from tests.support.clock import ManualClock
from tests.support.jobs import submitted
from tests.support.metrics import scrape

QUEUE = "pool.xx-XX"
DASHBOARD = ROOT / "deploy" / "grafana" / "batchscribe-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "batchscribe-rules.yml"
METRIC = re.compile(r"\bbatchscribe_[a-z_]+")  # recording rules (batchscribe:…) have a colon


@pytest.fixture
def server(store: StateStore) -> Iterator[MetricsServer]:
    metrics = MetricsServer(registry_for(store), "127.0.0.1", 0)
    try:
        yield metrics
    finally:
        metrics.close()


# What a query may name: each family's sample name by its type (prometheus_client's exposition).
SUFFIX = {"counter": "_total", "info": "_info", "gauge": ""}
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
SELECTOR = re.compile(r"\b(batchscribe_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
Served = dict[str, frozenset[str]]  # sample name -> its label names


@pytest.fixture
def busy_store(store: StateStore) -> StateStore:
    """A store with something for every family to report: an endpoint set, an endpoint that
    transcribed a file and failed an attempt, its owner and health, a live batch, a worker VM
    whose supervisor beats (with a consumer restarted once)."""
    store.publish_endpoint_set("".join(f"{name}:\n  host: 127.0.0.1\n  port: {port}\n  concurrency: 2\n"
                                       for name, port in (("alpha", 5000), ("beta", 5001))), "test")
    store.record_attempt("alpha", audio_seconds=6.0, busy_seconds=2.0)
    store.record_attempt("alpha", "transient")
    store.hold_endpoint("alpha", "vm1", ttl=30, take_free=True)
    store.publish_health("alpha", {"up": True, "usable": True}, ttl=30)
    submitted(store)
    store.vm_heartbeat("vm1", ttl=30)
    store.beat_vm(VMBeat("vm1", 1, store.clock(), {"alpha": ConsumerSlot(2, "running")}, {"alpha": 1}), ttl=30)
    return store


def served_samples(store: StateStore) -> Served:
    """Every sample name the cluster collector serves, with its label names, from its families
    (collect() as prometheus_client's registry calls it); each family must have samples."""
    served: dict[str, set[str]] = {}
    for family in ClusterCollector(store).collect():
        assert family.samples, f"{family.name}: no samples (the store has no data for it)"
        for sample in family.samples:
            assert sample.name == family.name + SUFFIX[family.type], (family.type, sample.name)
            served.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in served.items()}


def queries() -> list[tuple[str, str]]:
    """(where, PromQL expression) of every dashboard panel target and every rule."""
    found = [(f"dashboard panel {p['title']!r}", t["expr"])
             for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        found += [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in group["rules"]]
    return found


def _group_after(expr: str, at: int) -> str:
    """The parenthesised argument that starts at or after `at` (`max by (x) (ARG)`)."""
    start = expr.index("(", at)
    depth = 0
    for i in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[start:i + 1]
    raise ValueError(f"unbalanced parentheses in {expr!r}")


def query_problems(expressions: list[tuple[str, str]], served: Served) -> list[str]:
    """Every name a query uses that is not a served sample name, every label in a selector that
    its metric does not have, and every `by` label missing from a metric it aggregates."""
    problems = []
    for where, expr in expressions:
        problems += [f"{where}: {name} is not served" for name in METRIC.findall(expr) if name not in served]
        for name, matchers in SELECTOR.findall(expr):
            problems += [f"{where}: {name} has no label {label!r}" for label in MATCHER.findall(matchers)
                         if name in served and label not in served[name]]
        for grouping in GROUPING.finditer(expr):
            labels = {label.strip() for label in grouping.group(1).split(",") if label.strip()}
            for name in set(METRIC.findall(_group_after(expr, grouping.end()))) & set(served):
                problems += [f"{where}: by ({label}) over {name}, which has no such label"
                             for label in sorted(labels - served[name])]
    return problems


def test_dashboard_and_rules_use_only_metrics_that_are_served(server: MetricsServer, busy_store: StateStore
                                                              ) -> None:
    served = served_samples(busy_store)
    page = {key.split("{")[0] for key in scrape(server.url) if key.startswith("batchscribe_")}
    assert page == set(served), "the page serves exactly the collector's sample names"
    assert served["batchscribe_endpoint_files_failed_total"] == {"endpoint", "error_class"}
    assert served["batchscribe_endpoint_owner_info"] == {"endpoint", "vm"}
    found = queries()
    assert len(found) > 20 and all(METRIC.search(expr) for _, expr in found if "batchscribe:" not in expr)
    assert not query_problems(found, served), "\n".join(query_problems(found, served))
    wrong = [("a typo", "rate(batchscribe_endpoint_file_done_total[5m])"),
             ("a counter without _total", "rate(batchscribe_endpoint_files_done[5m])"),
             ("an info without _info", "max by (vm) (batchscribe_endpoint_owner)"),
             ("a gauge as a counter", "max(batchscribe_redis_up_total)"),
             ("a label it lacks", 'batchscribe_queue_messages{endpoint="alpha"}'),
             ("a grouping label it lacks", "max by (vm) (rate(batchscribe_endpoint_files_done_total[5m]))")]
    assert [where for where, expr in wrong if not query_problems([(where, expr)], served)] == [], "each can fail"


def test_the_real_time_factor_is_audio_over_busy_seconds(server: MetricsServer, busy_store: StateStore) -> None:
    assert scrape(server.url)['batchscribe_endpoint_real_time_factor{endpoint="alpha"}'] == 3.0  # 6 s in 2 s
    busy_store.record_attempt("alpha", audio_seconds=2.0, busy_seconds=2.0)
    busy_store.record_attempt("alpha", "transient")  # failed attempts count in neither counter
    busy_store.record_attempt("beta", "endpoint")
    samples = scrape(server.url)
    assert samples['batchscribe_endpoint_real_time_factor{endpoint="alpha"}'] == 2.0  # 8 s in 4 s
    assert samples['batchscribe_endpoint_attempts_failed_total{endpoint="beta",error_class="endpoint"}'] == 1
    assert 'batchscribe_endpoint_real_time_factor{endpoint="beta"}' not in samples  # nothing transcribed yet


def test_queue_depth_counts_every_priority_list_and_the_oldest_wait(redis_server: PrivateRedis) -> None:
    clock = ManualClock()
    settings = Settings.from_env({}, redis_url=redis_server.url)
    store = StateStore.connect(settings, clock=clock)
    app = make_app(settings, "metrics-test")
    with app.connection_for_write() as conn:  # kombu names the lists itself: ours must agree
        channel = conn.default_channel
        assert kombu_queue_lists(QUEUE) == [channel._q_for_pri(QUEUE, p) for p in channel.priority_steps]
    publisher = Publisher(app, sent_events=False)
    try:
        for i, job in enumerate(("j-old", "j-new")):
            store.claim([(job, f"b:{i}", 1.0)], "producer", ttl=30)
            publisher.publish([TaskSpec(job, {"language": "xx-XX"}, f"/in/{i}.wav", 1.0, QUEUE, "b")])
            store.mark_published([job], "producer")
            clock.advance(10)
        for priority in (3, 9):  # kombu's own producer puts these in the queue's priority lists
            app.send_task(TRANSCRIBE_TASK, args=["j-pri", {}], queue=QUEUE, priority=priority)
    finally:
        publisher.close()
        app.close()  # kombu's producer pool
    lengths = [store.redis.llen(name) for name in kombu_queue_lists(QUEUE)]
    assert lengths == [2, 1, 0, 1], lengths
    depth = store.queue_depths([QUEUE, "pool.empty"])
    assert depth[QUEUE].messages == 4 and depth["pool.empty"].messages == 0
    assert depth[QUEUE].oldest_queued_at == pytest.approx(clock.now - 20, abs=0.01)  # j-old: LPUSHed first
    assert depth["pool.empty"].oldest_queued_at is None
    store.redis.close()


def test_a_scrape_while_redis_is_away_says_so(server: MetricsServer, redis_server: PrivateRedis,
                                              store: StateStore) -> None:
    assert scrape(server.url)["batchscribe_redis_up"] == 1.0
    redis_server.stop()
    samples = scrape(server.url)  # answered, not a failed scrape: an alert rule can see it
    assert samples["batchscribe_redis_up"] == 0.0
    assert not any(k.startswith("batchscribe_endpoint_") for k in samples if not k.startswith("#"))
    redis_server.start()
    assert scrape(server.url)["batchscribe_redis_up"] == 1.0
    store.redis.close()  # the connections the scrapes' threads opened


def test_deploy_files_parse(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"batchscribe-worker", "batchscribe-api", "flower"}
    assert jobs["batchscribe-api"]["authorization"]["type"] == "Bearer"  # serve's /metrics needs the token
