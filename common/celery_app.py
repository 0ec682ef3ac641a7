"""The Celery app factory: one place for every broker setting correctness depends on."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from celery import Celery
from celery.app.amqp import AMQP

from batchscribe.common.keys import KOMBU_UNACKED, KOMBU_UNACKED_INDEX, KOMBU_UNACKED_MUTEX_EXPIRE
from batchscribe.common.settings import Settings

KOMBU_BRPOP_TIMEOUT = 1.0  # kombu's Redis transport `brpop_timeout`
# Headers Celery writes into every task message whose value is what a worker assumes when they are
# missing (celery.worker.request.Request, celery.app.task.Context): left out, they cost nothing.
DEFAULT_HEADERS: dict[str, Any] = {
    "lang": "py", "shadow": None, "eta": None, "expires": None, "group": None, "group_index": None,
    "retries": 0, "timelimit": [None, None], "parent_id": None, "ignore_result": None,
    "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
}
_EMPTY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class CompactAMQP(AMQP):  # type: ignore[misc]  # celery ships no types
    """Celery's task messages without what a worker would assume anyway (`DEFAULT_HEADERS`, the
    sender's `origin` and `reply_to` for a result backend there is none of, an empty embed): about
    400 bytes less per queued message in Redis. The worker sees the same task request either way,
    and so does Flower (tests/integration/test_publish_worker.py); `common.publish` writes the same."""

    def as_task_v2(self, task_id: str, name: str, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(task_id, name, *args, **kwargs)
        headers = message.headers
        for key, value in DEFAULT_HEADERS.items():
            if key in headers and headers[key] == value:
                del headers[key]
        headers.pop("origin", None)
        message.properties.pop("reply_to", None)
        body_args, body_kwargs, embed = message.body
        if embed == _EMPTY_EMBED:
            message = message._replace(body=(body_args, body_kwargs, {}))
        return message


def make_app(settings: Settings, name: str = "batchscribe") -> Celery:
    """A Celery app wired to the settings' Redis. Never registered as the global current app.

    Hard-coded on purpose (style.md: hard-code what correctness depends on):
    JSON only; ack after the task ends; requeue when a worker process dies; prefetch 1;
    one visibility timeout for producer and worker; task events on for Flower; compact messages
    (`CompactAMQP`, bodies not base64).
    """
    app = Celery(name, broker=kombu_broker_url(settings.redis_url), set_as_current=False, amqp=CompactAMQP)
    transport = {
        # Recovery of a dead consumer's deliveries (docs/design.md §Deliveries, leases and retries):
        # live consumers refresh their deliveries' scores in the unacked index (worker.leases), so
        # the timeout can be short; kombu sweeps every restore_interval seconds (throttle 1: the
        # default throttle of 10 would make that 100 s); a consumer killed while holding the sweep
        # mutex blocks sweeps only for unacked_mutex_expire seconds.
        "visibility_timeout": settings.visibility_timeout,
        "unacked_index_key": KOMBU_UNACKED_INDEX,
        "unacked_key": KOMBU_UNACKED,
        "unacked_restore_interval": settings.restore_interval,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": KOMBU_UNACKED_MUTEX_EXPIRE,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
        # Message bodies as JSON text inside kombu's JSON envelope, not base64 (a third larger);
        # any kombu consumer reads both (the envelope says which).
        "body_encoding": None,
    }
    if settings.broker_poll != KOMBU_BRPOP_TIMEOUT:
        # The BRPOP timeout (common.settings). Only when asked: for kombu's synchronous loops (Flower's
        # event receiver) `polling_interval` is also a sleep between two empty polls.
        transport["polling_interval"] = settings.broker_poll
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    return app


def kombu_broker_url(redis_url: str) -> str:
    """The settings' Redis URL (any form redis-py takes) as kombu spells it.

    redis-py's `unix:///path` (what `run`'s private Redis uses) is kombu's `redis+socket:///path`;
    query parameters kombu cannot parse move where it looks for them: `?db=N` into the path
    (`virtual_host=N` for a socket), `?username=`/`?password=` into the userinfo. Flower and
    `common.publish` read the broker from the app, so they follow.
    """
    parts = urlsplit(redis_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    moved = {name: value for name, value in query if name in ("username", "password", "db")}
    if parts.scheme != "unix" and not moved:
        return redis_url
    rest = [(name, value) for name, value in query if name not in moved]
    netloc, path, scheme = parts.netloc, parts.path, parts.scheme
    if ("username" in moved or "password" in moved) and "@" not in netloc:
        user, password = (quote(moved.get(name, ""), safe="") for name in ("username", "password"))
        netloc = f"{user}:{password}@{netloc}"
    if scheme == "unix":
        scheme = "redis+socket"
        rest += [("virtual_host", moved["db"])] if "db" in moved else []
    elif "db" in moved:
        path = f"/{moved['db']}"
    tail = f"?{urlencode(rest)}" if rest else ""
    return f"{scheme}://{netloc}{path}{tail}"  # not urlunsplit: it drops '//' before an empty host
