"""`worker --metrics-port` scraped over HTTP while a batch runs through faults, as Prometheus would.

Both emulator endpoints start unready (their owner's probe says down: no consumer runs), so the
whole batch waits in its pool queue; then the first comes up refusing every session with HTTP
429 (transient errors: retries, perhaps an open circuit) until its files are seen retried, then
both serve; and one input is a cut FLAC (failed by the worker,
permanent). Every scrape must hold in-flight ≤ slots per endpoint and counters that never go back;
the queue shows the batch and falls to 0; failures and retries are counted by class; the batch's
gauge is there while it runs and gone once it finished. `serve`'s /metrics serves the same numbers
behind its token.

Restarts: an endpoint's circuit breaker opened by HTTP 429s shows in `…_circuit_open` and closes
again; a consumer SIGKILLed and restarted by its supervisor counts in
`…_vm_consumer_restarts_total`; and every counter read before a consumer restart, and before the
whole worker is stopped and started again, is at least as high after it (they are read from Redis),
the restarts counter of a new supervisor excepted (it counts since its supervisor started).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchscribe.private_redis import PrivateRedis, free_port
from tests.support.api import TOKEN, ApiServer
from tests.support.cluster import VM, Cluster, EndpointSpec, cut_flac, make_audio, write_endpoints
from tests.support.metrics import Scraper, scrape, total
from tests.support.poll import wait_for

FILES = [0.6 + 0.1 * i for i in range(12)]
COUNTERS = ("batchscribe_endpoint_files_done_total", "batchscribe_endpoint_attempts_failed_total",
            "batchscribe_endpoint_retries_total", "batchscribe_endpoint_files_failed_total",
            "batchscribe_endpoint_audio_seconds_total", "batchscribe_endpoint_busy_seconds_total")


@pytest.fixture
def cluster(redis_server: PrivateRedis, tmp_path: Path, store: Any) -> Iterator[Cluster]:
    with Cluster(tmp_path, redis_server, store) as c:
        yield c


def test_metrics_scraped_during_a_batch_with_faults(cluster: Cluster, tmp_path: Path) -> None:
    emulator = cluster.start_emulator(ports=2, rtf=10.0)
    alpha, beta = emulator.ports
    for port in (alpha, beta):
        emulator.set_fault(port, "unready")
    config = write_endpoints(tmp_path / "endpoints.yaml", [EndpointSpec("alpha", alpha, concurrency=2),
                                                          EndpointSpec("beta", beta, concurrency=3)])
    port = free_port()
    cluster.start_vm(config, "vm1", "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: _answers(url) and total(scrape(url), "batchscribe_endpoint_health", state="down") == 2,
             60, "both endpoints to be seen down in the metrics")

    audio = make_audio(tmp_path / "in", FILES)
    cut_flac(audio.folder / "broken.flac")
    batch = cluster.submit(audio.folder)
    waiting = scrape(url)  # no consumer runs: the whole batch waits in its pool queue
    assert waiting['batchscribe_queue_messages{queue="pool.en-US"}'] == len(FILES) + 1, waiting
    assert waiting['batchscribe_queue_oldest_age_seconds{queue="pool.en-US"}'] >= 0
    assert waiting[f'batchscribe_batch_files{{batch="{batch}",state="queued"}}'] == len(FILES) + 1
    assert waiting["batchscribe_batches_live"] == 1 and total(waiting, "batchscribe_endpoint_slots") == 0

    with Scraper(url) as scraper:
        emulator.set_fault(beta, "http429")  # up again (its probe answers), but it refuses every session
        wait_for(lambda: total(scrape(url), "batchscribe_endpoint_retries_total", endpoint="beta") > 0, 60,
                 "beta's first refused files to be retried")
        for port in (beta, alpha):
            emulator.set_fault(port, "none")
        cluster.wait_finished(batch, timeout=90)
        wait_for(lambda: (lambda now: total(now, "batchscribe_endpoint_in_flight") == 0
                          and total(now, "batchscribe_delayed_jobs") == 0
                          and total(now, "batchscribe_endpoint_health", state="up") == 2)(scrape(url)),
                 60, "nothing in flight or delayed, both endpoints up (a circuit it opened has closed)")
    final = scrape(url)

    assert not scraper.errors, scraper.errors[:3]
    assert len(scraper.seen) >= 3, "scraped while the batch ran"
    for sample in scraper.seen:
        for endpoint in ("alpha", "beta"):
            in_flight = sample.get(f'batchscribe_endpoint_in_flight{{endpoint="{endpoint}"}}', 0)
            slots = sample.get(f'batchscribe_endpoint_slots{{endpoint="{endpoint}"}}', 0)
            assert in_flight <= slots, f"{endpoint}: {in_flight} in flight, {slots} slots"
    for before, after in zip([waiting, *scraper.seen], [*scraper.seen, final]):
        for key, value in before.items():
            if key.split("{")[0] in COUNTERS:
                assert after.get(key, value) >= value, f"{key} went back from {value} to {after.get(key)}"
    assert max(total(s, "batchscribe_endpoint_in_flight") for s in scraper.seen) > 0, "files were seen in flight"

    assert total(final, "batchscribe_queue_messages") == 0 and final["batchscribe_unacked_messages"] == 0
    assert final["batchscribe_batches_live"] == 0
    assert not any(k.startswith("batchscribe_batch_files{") for k in final)
    assert total(final, "batchscribe_endpoint_files_done_total") == len(FILES)
    assert total(final, "batchscribe_endpoint_audio_seconds_total") == pytest.approx(sum(FILES), abs=0.05)
    assert total(final, "batchscribe_endpoint_files_failed_total", error_class="permanent") == 1
    assert total(final, "batchscribe_endpoint_files_failed_total") == 1
    assert total(final, "batchscribe_endpoint_attempts_failed_total", endpoint="beta", error_class="transient") >= 1
    assert total(final, "batchscribe_endpoint_retries_total", endpoint="beta", error_class="transient") >= 1
    assert total(final, "batchscribe_endpoint_busy_seconds_total") > 0
    assert final['batchscribe_vm_up{vm="vm1"}'] == 1 and final['batchscribe_vm_consumers_alive{vm="vm1"}'] == 2
    assert total(final, "batchscribe_endpoint_owner_info", vm="vm1") == 2
    assert final["batchscribe_redis_up"] == 1

    with ApiServer(cluster.redis.url, "--allow-root", str(tmp_path), log_path=tmp_path / "api.log") as api:
        assert api("GET", "/metrics", token=None).status == 401  # behind the token, like every route
        served = scrape(f"{api.url}/metrics", {"Authorization": f"Bearer {TOKEN}"})
    same = [k for k in final if k.startswith("batchscribe_endpoint_files")]
    assert same and all(served[k] == final[k] for k in same), "serve reports the same cluster numbers"


RESTARTS = "batchscribe_vm_consumer_restarts_total"
CIRCUIT = 'batchscribe_endpoint_circuit_open{endpoint="alpha"}'


def test_circuit_restarts_and_counters_that_survive_consumer_and_worker_restarts(
        cluster: Cluster, tmp_path: Path) -> None:
    emulator = cluster.start_emulator(ports=1, rtf=5.0)
    [port] = emulator.ports
    config = write_endpoints(tmp_path / "endpoints.yaml", [EndpointSpec("alpha", port, concurrency=2)])
    vm, url = _metrics_vm(cluster, config)
    assert scrape(url)[CIRCUIT] == 0

    cluster.wait_finished(cluster.submit(make_audio(tmp_path / "ok", [1.0, 1.2, 1.4], prefix="ok").folder))
    emulator.set_fault(port, "http429")  # every session refused: 5 failed attempts in a row open it
    faulty = cluster.submit(make_audio(tmp_path / "faulty", [0.6 + 0.1 * i for i in range(6)], prefix="x").folder)
    wait_for(lambda: scrape(url)[CIRCUIT] == 1, 60, "alpha's circuit to open")
    emulator.set_fault(port, "none")
    wait_for(lambda: scrape(url)[CIRCUIT] == 0, 60, "alpha's circuit to close after its cooldown")
    cluster.wait_finished(faulty, timeout=90)
    settled = _settled(url)
    assert settled["batchscribe_endpoint_files_done_total{endpoint=\"alpha\"}"] >= 3
    assert settled['batchscribe_endpoint_attempts_failed_total{endpoint="alpha",error_class="transient"}'] >= 5
    assert settled['batchscribe_endpoint_retries_total{endpoint="alpha",error_class="transient"}'] >= 1
    audio, busy = (settled[f'batchscribe_endpoint_{n}_seconds_total{{endpoint="alpha"}}'] for n in ("audio", "busy"))
    assert settled['batchscribe_endpoint_real_time_factor{endpoint="alpha"}'] == pytest.approx(audio / busy)

    restarts = f'{RESTARTS}{{endpoint="alpha",vm="vm1"}}'
    victim = vm.consumers()["alpha"]
    os.kill(victim, signal.SIGKILL)  # the consumer only: its supervisor restarts it
    wait_for(lambda: scrape(url).get(restarts, 0) == settled.get(restarts, 0) + 1, 60,
             "the restart to be counted")
    wait_for(lambda: vm.consumers().get("alpha") not in (None, victim), 60, "the consumer to run again")
    consumer_restarted = _settled(url)
    _assert_not_reset(settled, consumer_restarted)

    vm.process.stop()  # the whole worker: a new supervisor, a new metrics server
    vm, url = _metrics_vm(cluster, config)
    worker_restarted = _settled(url)
    _assert_not_reset(consumer_restarted, worker_restarted, RESTARTS)
    assert worker_restarted.get(restarts, 0) == 0, "counted since its supervisor started (docs/monitoring.md)"


def _metrics_vm(cluster: Cluster, config: Path) -> tuple[VM, str]:
    port = free_port()
    vm = cluster.start_vm(config, "vm1", "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: _answers(url) and scrape(url).get('batchscribe_vm_consumers_alive{vm="vm1"}') == 1, 60,
             "the worker's metrics with its consumer alive")
    return vm, url


def _settled(url: str) -> dict[str, float]:
    """A scrape once nothing is in flight, delayed or queued (the counters hold still)."""
    wait_for(lambda: (lambda now: total(now, "batchscribe_endpoint_in_flight") == 0
                      and total(now, "batchscribe_delayed_jobs") == 0
                      and total(now, "batchscribe_queue_messages") == 0)(scrape(url)), 60, "a quiet cluster")
    return scrape(url)


def _assert_not_reset(before: dict[str, float], after: dict[str, float], *excepted: str) -> None:
    counters = [k for k in before if k.startswith("batchscribe_") and k.split("{")[0].endswith("_total")
                and k.split("{")[0] not in excepted]
    assert len(counters) > 10
    went_back = {k: (before[k], after.get(k)) for k in counters if after.get(k, -1.0) < before[k]}
    assert not went_back, f"counters reset or lost across the restart: {went_back}"


def _answers(url: str) -> bool:
    try:
        scrape(url)
    except OSError:
        return False
    return True
