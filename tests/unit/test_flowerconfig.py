"""Flower's display of batchscribe's tasks (batchscribe/flowerconfig.py), on Celery's own event-state
tasks as Flower keeps them."""

from __future__ import annotations

from celery.events.state import Task

from batchscribe import flowerconfig
from batchscribe.common.queues import TRANSCRIBE_TASK
from batchscribe.worker.tasks import FileFailed


def task(**fields: object) -> Task:
    base = {"uuid": "t1", "name": TRANSCRIBE_TASK, "kwargs": "{'path': '/in/a b/talk.wav', 'duration': 3.0, "
            "'batch': 'b1'}", "state": "SUCCESS", "result": "'done: 3.0 s of audio in 0.4 s'"}
    return Task(**{**base, **fields})


def test_the_file_name_is_the_task_name_and_the_result_reads_plainly() -> None:
    shown = flowerconfig.format_task(task())
    assert (shown.name, shown.result) == ("talk.wav", "done: 3.0 s of audio in 0.4 s")


def test_a_failed_file_shows_its_class_and_reason_and_a_runtime() -> None:
    exception = repr(FileFailed("permanent: truncated FLAC: header says 4.0 s"))
    shown = flowerconfig.format_task(task(state="FAILURE", result=None, exception=exception,
                                          started=100.0, failed=100.25))
    assert shown.result == "failed: permanent: truncated FLAC: header says 4.0 s"
    assert shown.runtime == 0.25


def test_other_tasks_and_odd_values_are_left_alone() -> None:
    other = flowerconfig.format_task(task(name="something.else"))
    assert other.name == "something.else"
    odd = flowerconfig.format_task(task(kwargs="not a dict", result="None"))
    assert (odd.name, odd.result) == (TRANSCRIBE_TASK, "None")


def test_only_flower_options_are_public_names() -> None:
    """Flower takes every name of the file that is one of its options: nothing else may look like one."""
    import flower.options  # noqa: F401  (defines Flower's options)
    from tornado.options import options

    public = {name for name in vars(flowerconfig) if not name.startswith("_") and name != "annotations"}
    assert public == {"tasks_columns", "format_task"}
    assert all(name in options._options for name in {n.replace("_", "-") for n in public})
    assert flowerconfig._TASK == TRANSCRIBE_TASK
