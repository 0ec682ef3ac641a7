"""Celery task events as Flower receives them: celery's `app.events.Receiver` on the cluster's
broker (the event exchange Flower binds to), on a thread, each event fed to celery's event
`State` as Flower keeps it, and each task shown through batchscribe's Flower display
(`flowerconfig.format_task`)."""

from __future__ import annotations

import copy
import threading
from typing import Any

from celery.events.state import Task

from batchscribe import flowerconfig
from batchscribe.common.celery_app import make_app
from batchscribe.common.settings import Settings


class TaskEvents:
    """A context manager: captures every event while in its `with` block. `errors`: what stopped
    the capture thread (a receiver that died silently would prove nothing)."""

    def __init__(self, redis_url: str) -> None:
        self.app = make_app(Settings.from_env({}, redis_url=redis_url), "events-test")
        self.state = self.app.events.State()
        self.errors: list[BaseException] = []
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._connection = self.app.connection_for_read()
        self._receiver = self.app.events.Receiver(self._connection, handlers={"*": self._on_event})
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)
            self.state.event(event)

    def _capture(self) -> None:
        try:  # wakeup: the workers answer with a heartbeat at once (as when Flower starts)
            self._receiver.capture(limit=None, timeout=None, wakeup=True)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._events if e.get("type") == kind]

    def shown(self) -> list[Task]:
        """Every task as Flower's task list shows it (a copy through the display hook), in the
        order the workers received them."""
        with self._lock:
            tasks = [flowerconfig.format_task(copy.copy(t)) for t in self.state.tasks.values()]
        return sorted(tasks, key=lambda t: (t.received or t.timestamp or 0.0))

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._receiver.should_stop = True  # its drain loop looks every second
        self._thread.join(timeout=10)
        self._connection.release()
        self.app.close()
