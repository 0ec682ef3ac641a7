"""`StateStore`: typed access to everything batchscribe keeps in Redis, one part per aggregate."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from batchscribe.common.keys import Keys
from batchscribe.common.settings import Settings, redact
from batchscribe.common.state.aliases import Aliases
from batchscribe.common.state.batches import Batches
from batchscribe.common.state.delays import Delays
from batchscribe.common.state.endpoints import Endpoints
from batchscribe.common.state.events import Events
from batchscribe.common.state.jobs import Jobs
from batchscribe.common.state.liveness import Liveness
from batchscribe.common.state.monitoring import Monitoring
from batchscribe.common.state.ownership import Ownership


class StateStore(Events, Batches, Jobs, Delays, Endpoints, Ownership, Aliases, Liveness, Monitoring):
    """The only code that talks to Redis (besides the task publisher, `common.publish`).

    One instance per process is enough. Every method raises `StateError` subclasses, never
    redis-py's errors.
    """

    @classmethod
    def connect(cls, settings: Settings, check: bool = True,
                clock: Callable[[], float] = time.time) -> StateStore:
        """Connect and (by default) prove Redis answers, with a message a user understands."""
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30,
                                      health_check_interval=15, retry_on_timeout=True,
                                      encoding_errors="surrogateescape")  # file names: `as_text`
        store = cls(client, Keys(settings.key_prefix), clock, redact(settings.redis_url))
        if check:
            store.ping()
        return store
