"""Publish many transcribe tasks in pipelined Redis round trips (kombu's producer batch)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery

from common.queues import TRANSCRIBE_TASK


@dataclass(frozen=True)
class TaskSpec:
    """One Celery task = one unique file (job)."""

    job_key: str
    options: dict[str, Any]
    path: str
    duration: float
    queue: str


class Publisher:
    """Sends ordinary Celery task messages; only the round trips are batched."""

    def __init__(self, app: Celery, batch_size: int = 1000) -> None:
        self.app = app
        self.batch_size = batch_size

    def publish(self, specs: Sequence[TaskSpec]) -> list[str]:
        """Publish in the given order (consumers take the first published first); returns task ids."""
        ids: list[str] = []
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=self.batch_size):
            for spec in specs:
                task_id = uuid.uuid4().hex
                self.app.send_task(
                    TRANSCRIBE_TASK, task_id=task_id, queue=spec.queue, producer=producer,
                    args=[spec.job_key, spec.options],
                    kwargs={"path": spec.path, "duration": round(spec.duration, 3)},
                )
                ids.append(task_id)
        return ids
