"""Flower as the user watches it, in a real browser (headless Chromium): a cluster of two worker VMs
and two emulator endpoints, `batchscribe flower` with basic auth, and a batch with a file that
fails in the worker.

On the workers page each consumer is `ENDPOINT@HOST`; on the tasks page each task is named after its
file, with its state, result and runtime; the failed file is a FAILURE with its class and reason;
the search `kwargs:batch=ID` leaves one batch; a wrong password gets 401. A screenshot of the tasks
page is saved under the test's tmp_path (its path printed) when anything fails, and at
$BATCHSCRIBE_FLOWER_SCREENSHOT when that is set (docs/monitoring.md's picture).
"""

from __future__ import annotations

import base64
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchscribe.cli.flower import FLOWER_USER
from batchscribe.private_redis import PrivateRedis, free_port
from tests.support.browser import basic_auth, chromium, fetch_status, table_rows
from tests.support.cli import BIN, ROOT, cli_env
from tests.support.cluster import Cluster, EndpointSpec, cut_flac, make_audio, write_endpoints
from tests.support.poll import wait_for
from tests.support.service import ServiceProcess

PASSWORD = "flower-test-pass"


@pytest.fixture
def cluster(redis_server: PrivateRedis, tmp_path: Path, store: Any) -> Iterator[Cluster]:
    with Cluster(tmp_path, redis_server, store) as c:
        emulator = c.start_emulator(ports=2, rtf=20.0)
        config = write_endpoints(tmp_path / "endpoints.yaml",
                                 [EndpointSpec("alpha", emulator.ports[0], concurrency=2),
                                  EndpointSpec("beta", emulator.ports[1], concurrency=2)])
        for host in ("vm1", "vm2"):
            c.start_vm(config, host)
        yield c


def start_flower(redis_url: str, tmp_path: Path) -> tuple[ServiceProcess, int]:
    port = free_port()
    flower = ServiceProcess([str(BIN), "flower", "--address=127.0.0.1", f"--port={port}"], r"Visit me at",
                            cli_env(redis_url, FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{PASSWORD}"),
                            log_path=tmp_path / "flower.log", timeout=60, cwd=ROOT)
    return flower, port


def http_status(url: str, password: str | None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{FLOWER_USER}:{password}".encode()).decode()
               } if password else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_flower_in_a_browser_shows_consumers_files_and_the_failure(cluster: Cluster, tmp_path: Path) -> None:
    live = lambda: set(cluster.store.consumer_beats())  # noqa: E731
    wait_for(lambda: sorted(n.split("@")[1] for n in live()) == ["vm1", "vm2"], 90,
             "one consumer on each VM (ownership balanced)")
    flower, port = start_flower(cluster.redis.url, tmp_path)
    base = f"http://127.0.0.1:{port}"
    with flower:
        assert http_status(f"{base}/", None) == 401 and http_status(f"{base}/", "wrong") == 401
        other = make_audio(tmp_path / "other", [1.0], prefix="other")
        other_batch = cluster.submit(other.folder)
        cluster.wait_finished(other_batch)
        audio = make_audio(tmp_path / "in", [1.1, 1.5, 2.0, 1.2], prefix="talk")  # not other's content
        cut_flac(audio.folder / "broken.flac")
        batch = cluster.submit(audio.folder)
        cluster.wait_finished(batch)
        nodes = live()
        shot = tmp_path / "flower-tasks.png"
        with chromium(tmp_path / "chrome") as browser:
            try:
                look(browser, base, nodes, batch, list(audio.durations), other_batch)
            except BaseException:
                browser.save_screenshot(str(shot))
                print(f"Flower screenshot: {shot}\nFlower log: {tmp_path / 'flower.log'}")
                raise
            if os.environ.get("BATCHSCRIBE_FLOWER_SCREENSHOT"):
                browser.save_screenshot(os.environ["BATCHSCRIBE_FLOWER_SCREENSHOT"])


def look(browser: Any, base: str, nodes: set[str], batch: str, good: list[str], other_batch: str) -> None:
    basic_auth(browser, FLOWER_USER, PASSWORD)
    browser.get(f"{base}/")
    basic_auth(browser, FLOWER_USER, None)  # the page stays; its own requests carry no password now
    wrong = "Basic " + base64.b64encode(f"{FLOWER_USER}:wrong".encode()).decode()
    assert fetch_status(browser, f"{base}/workers", {"Authorization": wrong}) == 401, "a wrong password"
    assert fetch_status(browser, f"{base}/workers", {}) == 401, "no password"
    basic_auth(browser, FLOWER_USER, PASSWORD)

    browser.get(f"{base}/workers")
    wait_for(lambda: nodes <= set(re.findall(r"\S+@vm\d", _refreshed(browser))), 60,
             f"the workers page to list {sorted(nodes)}", interval=1.0,
             on_timeout=lambda: browser.find_element("tag name", "body").text[:2000])

    browser.get(f"{base}/tasks")
    names = {*good, "broken.flac"}
    wait_for(lambda: names <= {r.get("Name") for r in table_rows(browser, "#tasks-table")}, 60,
             "the tasks page to list the batch's files by name", interval=1.0,
             on_timeout=lambda: str(table_rows(browser, "#tasks-table")[:8]))
    rows = table_rows(browser, "#tasks-table")
    ends = {r["Name"]: r for r in rows if r["State"] in ("SUCCESS", "FAILURE") and not r["Result"].startswith(
        ("handback", "requeued", "deferred", "bounced"))}  # a file's last task (a rebalance may hand back)
    assert ends["broken.flac"]["State"] == "FAILURE", rows
    assert not [r for r in rows if r["Result"].startswith("stale")], "a failed file's message was delivered again"
    assert ends["broken.flac"]["Result"].startswith("failed: permanent: truncated FLAC"), ends["broken.flac"]
    for name in good:
        assert ends[name]["State"] == "SUCCESS" and ends[name]["Result"].startswith("done: "), ends[name]
    for row in ends.values():
        assert re.fullmatch(r"\d+(\.\d+)? (ms|s)", row["Runtime"]), f"a runtime: {row}"
        assert re.fullmatch(r"(alpha|beta)@vm[12]", row["Worker"]), row
    assert "other00000.wav" in ends

    search = browser.find_element("css selector", "#tasks-table_filter input")
    search.clear()
    search.send_keys(f"kwargs:batch={batch}")
    wait_for(lambda: {r.get("Name") for r in table_rows(browser, "#tasks-table")} == names, 30,
             "the search for one batch to leave exactly its files", interval=0.5,
             on_timeout=lambda: str([r.get("Name") for r in table_rows(browser, "#tasks-table")]))
    assert other_batch != batch


def _refreshed(browser: Any) -> str:
    browser.refresh()
    return str(browser.find_element("tag name", "body").text)

