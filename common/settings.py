"""Process-wide settings, read once from the environment and frozen.

Only what operators really change is exposed; what correctness depends on (late ack, prefetch 1,
requeue on worker loss, JSON only) is hard-coded in `common.celery_app`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from batchscribe.common.errors import ConfigError, InputError
from batchscribe.common.locations import is_blob, parse_blob, shown

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a file is tried again, per error class.

    Delays live in Redis (the delayed set), not in a worker's memory, so they may be as long as
    needed: nothing ties them to the broker's visibility timeout any more.
    """

    transient_attempts: int = 4  # total attempts a file may spend on transient errors
    backoff_base: float = 2.0  # seconds; doubled per attempt
    backoff_cap: float = 300.0  # never longer than this
    jitter: float = 0.25  # ± fraction of the delay
    endpoint_reroutes: int = 50  # endpoint errors do not spend attempts, but loops are capped…
    endpoint_max_wait: float = 3600.0  # …and so is the time since the job's first start
    max_crashes: int = 3  # a file that kills its worker this often is poison


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = "bs"
    # Redis transport: an unacked delivery comes back after this many seconds of silence. The
    # lease keeper refreshes running deliveries every `heartbeat`, so a file may run for hours;
    # a SIGKILLed consumer's deliveries come back within visibility + restore interval (≈45 s).
    # See docs/design.md §Deliveries, leases and retries.
    visibility_timeout: int = 40
    lease_ttl: int = 30  # a running job whose lease is older than this lost its worker (crash)
    heartbeat: float = 5.0  # how often leases and kombu's unacked index are refreshed
    result_ttl: int = 30 * 24 * 3600  # cached transcripts for dedupe hits; 0 keeps them forever
    # Where workers store transcripts for dedupe hits (a folder every producer and worker reaches
    # at this path, or a blob prefix); "" = each batch's own OUT/.batchscribe/results (`common.cache`).
    result_store: str = ""
    claim_ttl: int = 30  # a producer that dies between claim and publish blocks a job this long
    # `submit --wait` and `run` stop waiting (exit 3) once Redis has not answered for this long;
    # the batch itself goes on.
    wait_redis_timeout: float = 300.0
    # How long an idle consumer's BRPOP blocks before it asks again (kombu's `polling_interval`;
    # its default is 1 s). A planned stop waits for the BRPOP under way (kombu reads its reply, which
    # may hold a message), so this bounds how long a stopping consumer takes; `run` uses 0.1 s.
    broker_poll: float = 1.0
    retry: RetryPolicy = RetryPolicy()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("BATCHSCRIBE_REDIS_URL"):
            values["redis_url"] = env["BATCHSCRIBE_REDIS_URL"]
        for name, var in _INT_VARS:
            if env.get(var):
                values[name] = _int(var, env[var])
        for name, var in _FLOAT_VARS:
            if env.get(var):
                values[name] = _float(var, env[var])
        if env.get("BATCHSCRIBE_KEY_PREFIX"):
            values["key_prefix"] = env["BATCHSCRIBE_KEY_PREFIX"]
        if env.get(RESULT_STORE_VAR):
            store = env[RESULT_STORE_VAR]
            values["result_store"] = store if is_blob(store) else os.path.expanduser(store)
        values["retry"] = _retry_policy(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        _check_redis_url(self.redis_url)
        # A live worker must refresh its deliveries and leases well before anyone gives up on them.
        if self.heartbeat <= 0 or self.heartbeat * 2 > self.visibility_timeout:
            raise ConfigError(f"BATCHSCRIBE_HEARTBEAT ({self.heartbeat}) must be positive and at most half "
                              f"of BATCHSCRIBE_VISIBILITY_TIMEOUT ({self.visibility_timeout})")
        if self.wait_redis_timeout <= 0:
            raise ConfigError(f"BATCHSCRIBE_WAIT_REDIS_TIMEOUT must be a positive number of seconds, "
                              f"got {self.wait_redis_timeout}")
        _check_result_store(self.result_store)
        if not 0 < self.broker_poll <= 10:
            raise ConfigError(f"BATCHSCRIBE_BROKER_POLL must be more than 0 and at most 10 seconds, "
                              f"got {self.broker_poll}")
        if self.lease_ttl < self.heartbeat * 2:
            raise ConfigError(f"BATCHSCRIBE_LEASE_TTL ({self.lease_ttl}) must be at least twice "
                              f"BATCHSCRIBE_HEARTBEAT ({self.heartbeat})")

    @property
    def restore_interval(self) -> int:
        """Seconds between kombu's sweeps for deliveries older than the visibility timeout.

        Worst case from a consumer's SIGKILL to its files being back on their queues is
        visibility_timeout + restore_interval (≈45 s by default).
        """
        return max(1, min(5, self.visibility_timeout // 8))

    def to_env(self) -> dict[str, str]:
        """The environment that gives a child process (a consumer) the same settings."""
        env = {"BATCHSCRIBE_REDIS_URL": self.redis_url, "BATCHSCRIBE_KEY_PREFIX": self.key_prefix,
               RESULT_STORE_VAR: self.result_store}
        env.update({var: str(getattr(self, name)) for name, var in (*_INT_VARS, *_FLOAT_VARS)})
        env.update({var: str(getattr(self.retry, name)) for name, var, _ in _RETRY_VARS})
        return env


def _check_redis_url(url: str) -> None:
    """A malformed broker URL is a configuration error found now, not a traceback at first use."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"broker URL must start with redis://, rediss:// or unix:// (got {redact(url)!r})")
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ConfigError(f"broker URL {redact(url)!r}: the port must be a number from 1 to 65535") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"broker URL {redact(url)!r}: the database after the last / must be a number, "
                          f"got {db!r}")


RESULT_STORE_VAR = "BATCHSCRIBE_RESULT_STORE"


def _check_result_store(store: str) -> None:
    """The result store is one location for the whole cluster: absolute, and never with a secret
    in it (it is written into Redis, logs and every consumer's environment)."""
    if not store:
        return
    if is_blob(store):
        try:
            location = parse_blob(store)
        except InputError as exc:
            raise ConfigError(f"{RESULT_STORE_VAR}: {exc}") from None
        if location.sas:
            raise ConfigError(f"{RESULT_STORE_VAR}={shown(store)} holds a SAS token: give the location "
                              "alone and its credentials as for any blob (BATCHSCRIBE_BLOB_SAS, a "
                              "connection string, an identity)")
    elif not os.path.isabs(store):
        raise ConfigError(f"{RESULT_STORE_VAR} must be an absolute path (every producer and worker "
                          f"reads it at the same path) or a blob location, got {store!r}")


def _int(var: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{var} must be an integer, got {raw!r}") from exc


def _float(var: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{var} must be a number, got {raw!r}") from exc


# (field, environment variable) of the integer settings, shared by from_env and to_env.
_INT_VARS = (("visibility_timeout", "BATCHSCRIBE_VISIBILITY_TIMEOUT"),
             ("result_ttl", "BATCHSCRIBE_RESULT_TTL"),
             ("claim_ttl", "BATCHSCRIBE_CLAIM_TTL"),
             ("lease_ttl", "BATCHSCRIBE_LEASE_TTL"))

# (field, environment variable) of the settings that are numbers with a fraction.
_FLOAT_VARS = (("heartbeat", "BATCHSCRIBE_HEARTBEAT"),
               ("wait_redis_timeout", "BATCHSCRIBE_WAIT_REDIS_TIMEOUT"),
               ("broker_poll", "BATCHSCRIBE_BROKER_POLL"))

# (RetryPolicy field, environment variable, parser), shared by from_env and to_env.
_RETRY_VARS: tuple[tuple[str, str, Callable[[str, str], Any]], ...] = (
    ("transient_attempts", "BATCHSCRIBE_TRANSIENT_ATTEMPTS", _int),
    ("backoff_base", "BATCHSCRIBE_BACKOFF_BASE", _float),
    ("backoff_cap", "BATCHSCRIBE_BACKOFF_CAP", _float),
    ("jitter", "BATCHSCRIBE_JITTER", _float),
    ("endpoint_reroutes", "BATCHSCRIBE_ENDPOINT_REROUTES", _int),
    ("endpoint_max_wait", "BATCHSCRIBE_ENDPOINT_MAX_WAIT", _float),
    ("max_crashes", "BATCHSCRIBE_MAX_CRASHES", _int),
)


def _retry_policy(env: Mapping[str, str]) -> RetryPolicy:
    values = {name: parse(var, env[var]) for name, var, parse in _RETRY_VARS if env.get(var)}
    policy = RetryPolicy(**values)
    if not 0 <= policy.jitter < 1:
        raise ConfigError(f"BATCHSCRIBE_JITTER must be in [0, 1), got {policy.jitter}")
    return policy


# Query parameters that carry a secret in a broker URL (redis-py's `?password=`, tokens, keys …).
_SECRET_PARAM = re.compile(r"(^|&)([^=&]*(?:pass|secret|token|key|auth|credential)[^=&]*)=([^&]*)", re.I)


# The fields of an Azure shared access signature: a query holding one is a SAS token, a secret whole.
_SAS_PARAM = re.compile(r"(^|&)(sig|sv|se|sp|sr|st|spr|ss|srt|skoid|sktid)=", re.I)


def redact(url: str) -> str:
    """The URL with every secret replaced (the password of its userinfo and of its query), for
    messages and logs. A blob location's query (its SAS token) goes whole, as in `locations.shown`."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:  # the first match is the netloc: the scheme before it has no '@'
        url = url.replace(parts.netloc, f"{userinfo.split(':', 1)[0]}:***@{hostport}", 1)
    if parts.query and (is_blob(url) or _SAS_PARAM.search(parts.query)):
        url = url.replace(f"?{parts.query}", "?…", 1)
    elif parts.query:  # edited in place: urlunsplit would turn unix:///path into unix:/path
        url = url.replace(f"?{parts.query}", "?" + _SECRET_PARAM.sub(r"\1\2=***", parts.query), 1)
    return url
