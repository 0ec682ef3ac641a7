"""The metrics' reads and what they are served as: queue depths over kombu's priority lists, the
oldest queued age, a scrape while Redis is away, and the deploy/ files (Grafana dashboard,
Prometheus rules) against the names /metrics really serves."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from batchscribe.common.celery_app import make_app
from batchscribe.common.keys import kombu_queue_lists
from batchscribe.common.metrics import MetricsServer, registry_for
from batchscribe.common.publish import Publisher, TaskSpec
from batchscribe.common.queues import TRANSCRIBE_TASK
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import ROOT
from tests.support.clock import ManualClock
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


def served_names(samples: dict[str, float]) -> set[str]:
    """Names a PromQL query may use: families' sample names (counter: `_total`, info: `_info`)."""
    names = {key.split("{")[0] for key in samples if not key.startswith("#")}
    for key in samples:
        if key.startswith("#"):  # a family without samples now still has its sample name
            family = key[1:]
            names |= {family, f"{family}_total", f"{family}_info"}
    return names


def queries() -> list[tuple[str, str]]:
    """(where, PromQL expression) of every dashboard panel target and every rule."""
    found = [(f"dashboard panel {p['title']!r}", t["expr"])
             for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        found += [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in group["rules"]]
    return found


def unknown_metrics(expressions: list[tuple[str, str]], served: set[str]) -> list[str]:
    return [f"{where}: {name}" for where, expr in expressions for name in METRIC.findall(expr)
            if name not in served]


def test_dashboard_and_rules_use_only_metrics_that_are_served(server: MetricsServer) -> None:
    served = served_names(scrape(server.url))
    assert "batchscribe_endpoint_files_failed_total" in served and "batchscribe_redis_up" in served
    found = queries()
    assert len(found) > 20 and all(METRIC.search(expr) for _, expr in found if "batchscribe:" not in expr)
    assert not unknown_metrics(found, served), "\n".join(unknown_metrics(found, served))
    assert unknown_metrics([("a typo", "rate(batchscribe_endpoint_file_done_total[5m])")], served)  # it can fail


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
