"""The Celery app factory: one place for every broker setting correctness depends on."""

from __future__ import annotations

from celery import Celery

from batchscribe.common.keys import KOMBU_UNACKED_INDEX, KOMBU_UNACKED_MUTEX_EXPIRE
from batchscribe.common.settings import Settings


def make_app(settings: Settings, name: str = "batchscribe") -> Celery:
    """A Celery app wired to the settings' Redis. Never registered as the global current app.

    Hard-coded on purpose (style.md: hard-code what correctness depends on):
    JSON only; ack after the task ends; requeue when a worker process dies; prefetch 1;
    one visibility timeout for producer and worker; task events on for Flower.
    """
    app = Celery(name, broker=settings.redis_url, set_as_current=False)
    transport = {
        # Recovery of a dead consumer's deliveries (docs/design.md §Deliveries, leases and retries):
        # live consumers refresh their deliveries' scores in the unacked index (worker.leases), so
        # the timeout can be short; kombu sweeps every restore_interval seconds (throttle 1: the
        # default throttle of 10 would make that 100 s); a consumer killed while holding the sweep
        # mutex blocks sweeps only for unacked_mutex_expire seconds.
        "visibility_timeout": settings.visibility_timeout,
        "unacked_index_key": KOMBU_UNACKED_INDEX,
        "unacked_restore_interval": settings.restore_interval,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": KOMBU_UNACKED_MUTEX_EXPIRE,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "retry_on_timeout": True,
    }
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
