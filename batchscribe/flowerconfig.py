"""Flower's configuration file for batchscribe (`batchscribe flower` and `run --flower` pass it as
`--conf`): Flower executes this file and takes every name that is one of its options.

Only the display changes: the task list shows the file's name as the task's name, what became of
it as its result (`done: …`, `requeued: transient, retry in 4 s (attempt 2 of 4): …`, `failed:
permanent: …` with its runtime as for a success) and its keyword arguments (path, duration, batch:
search `kwargs:batch=ID` to see one batch). Flower's own metrics and search keep the real task name,
so their label stays one value (a file name there would be one Prometheus series per file). Names
that are not Flower options start with `_`, so Flower cannot mistake them for one.
"""

from __future__ import annotations

import ast as _ast
import posixpath as _posixpath
from typing import Any as _Any

_TASK = "batchscribe.transcribe"  # common.queues.TRANSCRIBE_TASK (this file is read without imports)

tasks_columns = "name,state,result,received,runtime,worker,kwargs,uuid"


def _literal(text: _Any) -> _Any:
    try:
        return _ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError):
        return None


def format_task(task: _Any) -> _Any:
    """A copy of Flower's task, as the task list and the task page show it."""
    if getattr(task, "name", None) != _TASK:
        return task
    kwargs = _literal(getattr(task, "kwargs", None))
    path = kwargs.get("path") if isinstance(kwargs, dict) else None
    if isinstance(path, str) and path:
        task.name = _posixpath.basename(path) or path
    result = _literal(getattr(task, "result", None))
    if isinstance(result, str):  # the task returned a string: show it without repr's quotes
        task.result = result
    exception = getattr(task, "exception", None)
    if getattr(task, "state", None) == "FAILURE" and isinstance(exception, str):
        failure = exception.removeprefix("FileFailed(").removesuffix(")")
        said = _literal(failure)
        task.result = f"failed: {said if isinstance(said, str) else exception}"
        started, failed = getattr(task, "started", None), getattr(task, "failed", None)
        if getattr(task, "runtime", None) is None and started and failed:
            task.runtime = max(0.0, failed - started)  # Celery's task-failed event carries no runtime
    return task
