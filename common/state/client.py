"""The state boundary itself: the Redis client, the clock, the scripts, and the one place where
redis-py's exceptions become ours (`translate`).

Every public method of the store's parts is wrapped by `boundary`, so nothing above
`common.state` sees a redis-py exception: it sees a `StateError` subclass that says what is wrong
in words a user can act on, and decides by kind (wait for `RedisUnavailableError`, report the rest).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

import redis
from redis import exceptions as rex

from batchscribe.common.errors import (
    RedisCredentialsError,
    RedisOutOfMemoryError,
    RedisReadOnlyError,
    RedisUnavailableError,
    StateError,
)
from batchscribe.common.keys import Keys
from batchscribe.common.lua import SCRIPTS

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT, StreamRangeResponse

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)

_CREDENTIALS = (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError,
                rex.AuthenticationWrongNumberOfArgsError)


def translate(exc: redis.RedisError, where: str) -> StateError:
    """Our error for a redis-py one, worded for the user; `where` is the (redacted) Redis URL."""
    # A failed command in a pipeline is annotated with the command and its arguments: keep the
    # server's words only (arguments can be long, and are nobody's business in a message).
    said = str(exc).rsplit(" of pipeline caused error: ", 1)[-1].rstrip(".") or type(exc).__name__
    if isinstance(exc, _CREDENTIALS):  # before ConnectionError: redis-py derives them from it
        return RedisCredentialsError(
            f"Redis refused the credentials for {where} ({said}). Put the password in the URL: "
            "redis://:PASSWORD@HOST:6379/0 (or redis://USER:PASSWORD@…)")
    if isinstance(exc, rex.OutOfMemoryError):
        return RedisOutOfMemoryError(
            f"Redis is out of memory (maxmemory, noeviction): {where} refuses writes ({said}). Raise its "
            "maxmemory or free memory there; a lower BATCHSCRIBE_RESULT_TTL keeps fewer cached transcripts")
    if isinstance(exc, rex.ReadOnlyError):
        return RedisReadOnlyError(
            f"Redis at {where} is a read-only replica ({said}): point --broker / BATCHSCRIBE_REDIS_URL "
            "at the primary")
    if isinstance(exc, (rex.ConnectionError, rex.TimeoutError)):
        return RedisUnavailableError(
            f"cannot reach Redis at {where}: {said}. Start redis-server or pass --broker / "
            "BATCHSCRIBE_REDIS_URL pointing at a running Redis")
    return StateError(f"Redis at {where} answered unexpectedly: {type(exc).__name__}: {said}")


def describe(exc: BaseException | None, where: str) -> str | None:
    """`translate`'s words for a redis-py error, or for an error raised from one (kombu wraps
    them); None for anything else. For code that sees Redis errors it did not cause itself (the
    task publisher, kombu's timers in a consumer)."""
    if exc is not None and not isinstance(exc, redis.RedisError):
        exc = exc.__cause__
    return str(translate(exc, where)) if isinstance(exc, redis.RedisError) else None


def _translated(method: Callable[Concatenate[StoreBase, P], R]) -> Callable[Concatenate[StoreBase, P], R]:
    @functools.wraps(method)
    def wrapper(self: StoreBase, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise translate(exc, self.url) from exc

    wrapper.__state_boundary__ = True  # type: ignore[attr-defined]
    return cast("Callable[Concatenate[StoreBase, P], R]", wrapper)


def boundary(cls: C) -> C:
    """Class decorator: every public method of `cls` raises `StateError`s, never redis-py's errors."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and callable(member) and not isinstance(member, (type, staticmethod)):
            setattr(cls, name, _translated(member))
    return cls


def as_text(value: bytes | str | None) -> str:
    """One Redis reply value as text. Our client returns bytes (no decode_responses); None → "".

    Bytes that are not UTF-8 (a file name's, see `common.names`) come back as the lone surrogates
    they were stored from (the client encodes with ``surrogateescape``), so a name survives the
    round trip exactly.
    """
    if value is None:
        return ""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def text_dict(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A Redis hash (or stream entry) reply with keys and values as text."""
    return {as_text(k): as_text(v) for k, v in raw.items()}


def stream_entries(entries: StreamRangeResponse) -> list[tuple[str, dict[str, str]]]:
    """Stream entries as (id, fields) text. Only XCLAIM replies hold None fields (deleted entries)."""
    return [(as_text(eid), text_dict(data or {})) for eid, data in entries]


def fields(values: Mapping[str, str]) -> dict[FieldT, EncodableT]:
    """`values` as redis-py's hash/stream field type. That type, dict[FieldT, EncodableT], is
    invariant in its key, so a dict[str, str] does not match it although every str is a FieldT."""
    return cast("dict[FieldT, EncodableT]", dict(values))


def stamp(t: float) -> str:
    """A time as Redis keeps it: seconds with millisecond precision."""
    return f"{t:.3f}"


@boundary
class StoreBase:
    """What every part of the store shares. `clock` gives every `now` written to Redis or passed
    to a script (default time.time), so tests can move time instead of sleeping."""

    def __init__(self, client: redis.Redis, keys: Keys, clock: Callable[[], float] = time.time,
                 url: str = "Redis") -> None:
        self.redis = client  # raw access for tests and benchmarks; product code calls the methods
        self.keys = keys
        self.clock = clock
        self.url = url  # redacted: for messages
        self._scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}
        self._contexts: dict[str, Any] = {}  # batch id -> records.BatchContext (never changes)

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    def _run(self, script: str, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
        """Run one of `common.lua`'s scripts; the prefix goes first in KEYS (the convention there)."""
        return self._scripts[script](keys=[self.prefix, *keys], args=list(args))

    def ping(self) -> None:
        """Prove Redis answers (and accepts our credentials)."""
        self.redis.ping()
