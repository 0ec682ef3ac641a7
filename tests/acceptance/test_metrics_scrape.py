"""`worker --metrics-port` scraped over HTTP while a batch runs through faults, as Prometheus would.

Both emulator endpoints start unready (their owner's probe says down: no consumer runs), so the
whole batch waits in its pool queue; then the first comes up refusing every session with HTTP
429 (transient errors: retries, perhaps an open circuit) until its files are seen retried, then
both serve; and one input is a cut FLAC (failed by the worker,
permanent). Every scrape must hold in-flight ≤ slots per endpoint and counters that never go back;
the queue shows the batch and falls to 0; failures and retries are counted by class; the batch's
gauge is there while it runs and gone once it finished. `serve`'s /metrics serves the same numbers
behind its token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchscribe.private_redis import PrivateRedis, free_port
from tests.support.api import TOKEN, ApiServer
from tests.support.cluster import Cluster, EndpointSpec, cut_flac, make_audio, write_endpoints
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


def _answers(url: str) -> bool:
    try:
        scrape(url)
    except OSError:
        return False
    return True
