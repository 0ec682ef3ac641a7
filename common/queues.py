"""Queue names: one queue per endpoint for pinned work, one pool queue per language for the rest.

Every endpoint consumes its own queue and the pools of its languages, so work is pulled by
whichever endpoint has a free slot (design.md §Queues and routing).
"""

from __future__ import annotations

from batchscribe.common.config import Endpoint
from batchscribe.common.conversion import ConversionOptions
from batchscribe.common.models import JobOptions

TRANSCRIBE_TASK = "batchscribe.transcribe"
CONVERT_TASK = "batchscribe.convert"
CONVERT_QUEUE = "convert"  # every worker VM's converter consumes it (engine `ffmpeg`)


def endpoint_queue(name: str) -> str:
    return f"ep.{name}"


def pool_queue(language: str, engine: str | None = None) -> str:
    """The shared queue for a language, optionally restricted to one engine kind."""
    return f"pool.{engine}.{language}" if engine else f"pool.{language}"


def queue_for(options: JobOptions) -> str:
    """Where a job's task waits: the converters' queue, or its language's pool."""
    if isinstance(options, ConversionOptions):
        return CONVERT_QUEUE
    return pool_queue(options.language, options.engine)


def task_for(options: JobOptions) -> str:
    return CONVERT_TASK if isinstance(options, ConversionOptions) else TRANSCRIBE_TASK


def consumer_queues(endpoint: Endpoint) -> list[str]:
    """The queues one endpoint's consumer listens on, its own first (a converter: only `convert`)."""
    if endpoint.engine == "ffmpeg":
        return [CONVERT_QUEUE]
    queues = [endpoint_queue(endpoint.name)]
    for lang in endpoint.languages:
        queues += [pool_queue(lang), pool_queue(lang, endpoint.engine)]
    return queues


def serves(endpoint: Endpoint, language: str, engine: str | None = None) -> bool:
    """Whether the endpoint's consumer takes work published for `language` (and `engine`)."""
    return pool_queue(language, engine) in consumer_queues(endpoint)


def serves_options(endpoint: Endpoint, options: JobOptions) -> bool:
    """Whether the endpoint's consumer takes the tasks of a batch with these options."""
    return queue_for(options) in consumer_queues(endpoint)


def endpoint_from_queues(queues: list[str]) -> str | None:
    """Which endpoint a plain `celery worker -Q ep.NAME,...` serves, from its queue list."""
    names = [q[3:] for q in queues if q.startswith("ep.")]
    return names[0] if len(names) == 1 else None
