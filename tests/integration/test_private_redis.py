"""The private Redis of `batchscribe run`: a unix socket in a 0700 folder, no TCP port, reachable by
its user only — and every part of batchscribe works through it (state, the fast publisher, kombu)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import redis

from batchscribe.common.celery_app import make_app
from batchscribe.common.publish import Publisher, TaskSpec
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.intruder import ping_as_another_user


def test_socket_redis_is_for_its_user_only() -> None:
    with PrivateRedis(unix_socket=True) as server:  # its own folder under $TMPDIR, as for `run`
        assert stat.S_IMODE(os.stat(server.data_dir).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(server.socket_path).st_mode)
        client = redis.Redis.from_url(server.url)
        assert client.ping() and client.config_get("port") == {"port": "0"}  # no TCP port at all
        assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o700
        os.chmod(server.socket_path, 0o777)  # even a socket open to all stays behind its folder
        intruder = ping_as_another_user(f"unixsocket:{server.socket_path}")
        assert intruder.returncode != 0 or "PONG" not in intruder.stdout, intruder.stdout
        assert "Permission denied" in intruder.stdout + intruder.stderr
        client.close()


def test_a_socket_redis_restarts_on_the_same_address_with_its_data(tmp_path: Path) -> None:
    server = PrivateRedis(data_dir=tmp_path / "r", unix_socket=True).start()
    try:
        redis.Redis.from_url(server.url).set("k", "v")
        server.stop()
        server.start()
        assert redis.Redis.from_url(server.url).get("k") == b"v"
    finally:
        server.close()


def test_state_the_fast_publisher_and_kombu_work_through_the_socket() -> None:
    """`run` hands consumers `unix:///…/redis.sock` URLs: redis-py, kombu's transport (as
    `redis+socket://`) and `common.publish` (kombu's connection parameters) must agree, db included."""
    with PrivateRedis(unix_socket=True) as server:
        settings = Settings.from_env({}, redis_url=f"{server.url}?db=2")
        store = StateStore.connect(settings)
        app = make_app(settings, "socket-test")
        publisher = Publisher(app)
        try:
            (task_id,) = publisher.publish([TaskSpec("job", {"language": "en-US"}, "/in/a.wav", 1.0, "pool.x")])
            assert publisher._get_route() is not None, "the fast path (not kombu's fallback) was used"
            assert store.redis.llen("pool.x") == 1  # in db 2, where redis-py looks
            assert redis.Redis.from_url(server.url).llen("pool.x") == 0  # not in db 0
            with app.connection_for_read() as conn:  # kombu reads the very message back
                message = conn.SimpleQueue("pool.x", no_ack=True).get(timeout=5)
                assert message.headers["id"] == task_id
        finally:
            publisher.close()
