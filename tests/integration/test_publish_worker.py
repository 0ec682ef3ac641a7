"""The producer's fast publish path against real parts: redis-server and a real Celery worker.

A message from `Publisher.publish` must be stored, consumed and executed exactly like one from
`app.send_task`: same bytes in Redis (apart from ids), same task request in the worker (args,
kwargs, id, queue, priority, headers), and the task-sent event Flower reads, next to the worker's
own task events. A failed pipeline raises instead of dropping or replaying.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from batchscribe.common.celery_app import make_app
from batchscribe.common.publish import Publisher, PublishError, TaskSpec
from batchscribe.common.settings import Settings
from batchscribe.private_redis import PrivateRedis
from tests.support.cli import ROOT
from tests.support.poll import wait_for

QUEUE = "pool.en-US"
OPTIONS = {"language": "en-US", "engine": None, "nbest": 1, "word_timestamps": False, "profanity": "masked",
           "diarization": False, "candidate_languages": []}

# A worker app with the production Celery settings and a task of the production name that
# records what the worker hands it.
RECORDER = '''
import json, os
from batchscribe.common.celery_app import make_app
from batchscribe.common.queues import TRANSCRIBE_TASK
from batchscribe.common.settings import Settings

app = make_app(Settings.from_env(), "publish-test-worker")
store = app.connection_for_write().default_channel.client


@app.task(name=TRANSCRIBE_TASK, bind=True, acks_late=True, ignore_result=True)
def transcribe(self, job_key, options, path="", duration=0.0, batch=""):
    r = self.request
    seen = {"args": list(r.args), "kwargs": r.kwargs, "id": r.id, "root_id": r.root_id,
            "parent_id": r.parent_id, "retries": r.retries, "origin": r.origin,
            "argsrepr": r.argsrepr, "kwargsrepr": r.kwargsrepr, "correlation_id": r.correlation_id,
            "reply_to": r.reply_to, "eta": r.eta, "expires": r.expires, "timelimit": list(r.timelimit or []),
            "ignore_result": r.ignore_result, "group": r.group, "task": r.task,
            "delivery_info": r.delivery_info, "headers": r.headers, "is_eager": r.is_eager,
            "called_directly": r.called_directly, "job_key": job_key, "options": options, "path": path,
            "duration": duration}
    store.rpush("publish-test:seen", json.dumps(seen, default=str))
'''


@pytest.fixture
def settings(redis_server: PrivateRedis) -> Settings:
    return Settings.from_env({}, redis_url=redis_server.url)


@pytest.fixture
def client(redis_server: PrivateRedis) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    (tmp_path / "recorder_app.py").write_text(RECORDER)
    env = {**os.environ, **settings.to_env(),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "recorder_app", "worker", "-Q", QUEUE,
                             "-P", "solo", "-c", "1", "-n", "recorder@%h", "-E", "--without-gossip",
                             "--without-mingle", "-l", "info"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


class EventLog:
    """Celery's own event receiver (what Flower runs), in a thread."""

    PROBE = "test-probe"  # an event type of this test's own: sent until the receiver hears it

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self.conn = app.connection_for_read()
        self.receiver = app.events.Receiver(self.conn, handlers={"*": self.events.append})
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception:  # stopped by closing the connection
            pass

    def start(self) -> EventLog:
        """Start receiving; return once the receiver has subscribed (events are pub/sub: one sent
        before that is lost), which is when it hears a probe event."""
        self.thread.start()
        with self.app.events.default_dispatcher() as dispatcher:
            def heard() -> bool:
                dispatcher.send(self.PROBE)
                return any(e.get("type") == self.PROBE for e in list(self.events))

            wait_for(heard, 20, "the event receiver to subscribe")
        return self

    def stop(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=5)
        self.conn.release()

    def of(self, task_id: str) -> dict[str, dict[str, Any]]:
        return {e["type"]: e for e in list(self.events) if e.get("uuid") == task_id}


def spec(path: str = "/data/in/f1.wav", job_key: str = "ab" * 32 + ".0123456789abcdef",
         duration: float = 12.3456) -> TaskSpec:
    return TaskSpec(job_key, OPTIONS, path, duration, QUEUE, "b-1")


def send_task_like_before(app: Any, s: TaskSpec, task_id: str) -> None:
    app.send_task("batchscribe.transcribe", task_id=task_id, queue=s.queue, args=[s.job_key, s.options],
                  kwargs={"path": s.path, "duration": round(s.duration, 3), "batch": s.batch})


def decoded(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    body = message["body"]  # JSON text, or base64 of it: as the envelope says (the app's setting)
    if message["properties"]["body_encoding"] == "base64":
        body = base64.b64decode(body)
    message["body"] = json.loads(body)
    return message


@pytest.mark.parametrize("path", ["/data/in/f1.wav", "/data/in/it's a \\ \"quoted\" naïve\tname.wav"])
def test_stored_message_and_event_equal_send_task(settings: Settings, client: redis.Redis, path: str) -> None:
    app = make_app(settings, "publish-test")
    sub = client.pubsub()
    sub.psubscribe("*")
    assert sub.get_message(timeout=2)["type"] == "psubscribe"
    s = spec(path)

    send_task_like_before(app, s, "celery-made-id")
    celery_keys = sorted(client.keys("*"))
    celery_msg = decoded(client.rpop(QUEUE))
    celery_event = next(m for m in iter(lambda: sub.get_message(timeout=2), None) if m["type"] == "pmessage")
    client.flushdb()

    [task_id] = Publisher(app).publish([s])
    our_keys = sorted(client.keys("*"))
    our_msg = decoded(client.rpop(QUEUE))
    our_event = next(m for m in iter(lambda: sub.get_message(timeout=2), None) if m["type"] == "pmessage")
    sub.close()

    assert our_keys == celery_keys  # the queue and kombu's two binding sets
    for m in (celery_msg, our_msg):
        m["properties"].pop("delivery_tag")
    assert our_msg == json.loads(json.dumps(celery_msg).replace("celery-made-id", task_id))  # but the id
    assert our_event["channel"] == celery_event["channel"]
    ours, theirs = decoded(our_event["data"]), decoded(celery_event["data"])
    for m in (ours, theirs):
        m["properties"].pop("delivery_tag")
        m["body"].pop("timestamp")
        m["body"].pop("clock")
    assert ours == json.loads(json.dumps(theirs).replace("celery-made-id", task_id))


def test_worker_runs_fast_path_message_like_send_task(
        settings: Settings, client: redis.Redis, worker: subprocess.Popen[bytes], tmp_path: Path) -> None:
    app = make_app(settings, "publish-test")
    events = EventLog(app).start()
    try:
        s = spec()
        send_task_like_before(app, s, "celery-made-id")
        ids = Publisher(app).publish([s, spec("/data/in/f2.wav", duration=1.0)])
        wait_for(lambda: client.llen("publish-test:seen") == 3, timeout=60,
                   what=f"the worker ran 3 tasks (log: {tmp_path / 'worker.log'})")
        seen = [json.loads(raw) for raw in client.lrange("publish-test:seen", 0, -1)]
        wait_for(lambda: "task-succeeded" in events.of(ids[1]), timeout=20, what="worker events")
    finally:
        events.stop()
    by_id = {r["id"]: r for r in seen}
    celery_run, ours = by_id["celery-made-id"], by_id[ids[0]]
    assert ours["args"] == [s.job_key, OPTIONS]
    assert ours["kwargs"] == {"path": s.path, "duration": 12.346, "batch": "b-1"}
    assert ours["delivery_info"]["routing_key"] == QUEUE and ours["delivery_info"]["priority"] == 0
    assert ours["root_id"] == ids[0] and ours["correlation_id"] == ids[0]
    assert ours == json.loads(json.dumps(celery_run).replace("celery-made-id", ids[0]))
    assert by_id[ids[1]]["path"] == "/data/in/f2.wav"
    assert [r["id"] for r in seen] == ["celery-made-id", *ids]  # FIFO, in publish order
    assert client.llen(QUEUE) == 0
    for task_id in ("celery-made-id", *ids):  # what Flower shows: sent by us, then the worker's events
        kinds = events.of(task_id)
        assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= set(kinds), kinds.keys()
        assert kinds["task-sent"]["queue"] == QUEUE and kinds["task-sent"]["name"] == "batchscribe.transcribe"
    assert events.of(ids[0])["task-sent"]["args"] == events.of("celery-made-id")["task-sent"]["args"]


def test_without_sent_events_nothing_is_published_on_the_event_channel(settings: Settings,
                                                                       client: redis.Redis) -> None:
    app = make_app(settings, "publish-test")
    sub = client.pubsub()
    sub.psubscribe("*")
    sub.get_message(timeout=2)
    ids = Publisher(app, batch_size=3, sent_events=False).publish([spec(f"/in/{i}.wav") for i in range(10)])
    assert len(set(ids)) == 10 and client.llen(QUEUE) == 10
    assert sub.get_message(timeout=0.5) is None
    sub.close()
    paths = [decoded(client.rpop(QUEUE))["body"][1]["path"] for _ in range(10)]
    assert paths == [f"/in/{i}.wav" for i in range(10)]  # consumers (BRPOP) see them in publish order


def test_failed_pipeline_raises_with_what_is_known_and_is_not_replayed(
        settings: Settings, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = Publisher(make_app(settings, "publish-test"), batch_size=4)
    publisher.publish([spec("/warm.wav")])  # connect
    client.delete(QUEUE)
    route = publisher._route
    pool = route.client.connection_pool  # type: ignore[union-attr]
    conn = pool.get_connection()
    assert conn.retry.get_retries() == 0  # no automatic replay of a pipeline
    pool.release(conn)

    from redis.client import Pipeline
    real_execute = Pipeline.execute
    calls = {"n": 0}

    def flaky(self: Pipeline, raise_on_error: bool = True) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch: sent, then the connection drops
            real_execute(self, raise_on_error)
            raise redis.ConnectionError("connection lost while reading replies")
        return real_execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", flaky)
    with pytest.raises(PublishError) as failed:
        publisher.publish([spec(f"/in/{i}.wav") for i in range(10)])
    assert len(failed.value.published) == 4 and len(failed.value.uncertain) == 4
    assert calls["n"] == 2  # nothing after the failure, no retry
    assert client.llen(QUEUE) == 8  # the uncertain batch did land here: once, not twice


def test_unreachable_redis_raises(settings: Settings, redis_server: PrivateRedis) -> None:
    publisher = Publisher(make_app(settings, "publish-test"))
    publisher.publish([spec()])
    redis_server.stop()
    with pytest.raises(PublishError) as failed:
        publisher.publish([spec()])
    assert failed.value.published == [] and failed.value.uncertain == []


def test_publisher_survives_a_redis_restart(settings: Settings, redis_server: PrivateRedis) -> None:
    publisher = Publisher(make_app(settings, "publish-test"))
    publisher.publish([spec()])
    redis_server.stop()
    redis_server.start()
    publisher.publish([spec("/again.wav")])  # the stale pooled connection is replaced (PING first)
    assert redis.Redis.from_url(settings.redis_url).llen(QUEUE) == 2


def test_other_brokers_fall_back_to_kombu(settings: Settings, client: redis.Redis,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import batchscribe.common.publish as publish_mod

    monkeypatch.setattr(publish_mod, "_connect_route", lambda app: None)
    ids = Publisher(make_app(settings, "publish-test")).publish([spec(f"/in/{i}.wav") for i in range(3)])
    assert [decoded(client.rpop(QUEUE))["headers"]["id"] for _ in range(3)] == ids
