"""Process-wide settings, read once from the environment and frozen.

Only what operators really change is exposed; what correctness depends on (late ack, prefetch 1,
requeue on worker loss, JSON only) is hard-coded in `common.celery_app`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a file is tried again, per error class."""

    transient_attempts: int = 4  # total attempts a file may spend on transient errors
    backoff_base: float = 2.0  # seconds; doubled per attempt
    backoff_cap: float = 300.0  # never longer than this (and never near the visibility timeout)
    jitter: float = 0.25  # ± fraction of the delay
    endpoint_reroutes: int = 50  # endpoint errors do not spend attempts, but loops are capped
    max_crashes: int = 3  # a file that kills its worker this often is poison


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = "bs"
    # Redis transport: an unacked delivery comes back after this many seconds. Files can take
    # longer than this; see docs/design.md (issue 4 makes recovery independent of it).
    visibility_timeout: int = 3600
    result_ttl: int = 30 * 24 * 3600  # cached transcripts for dedupe hits; 0 keeps them forever
    claim_ttl: int = 30  # a producer that dies between claim and publish blocks a job this long
    retry: RetryPolicy = RetryPolicy()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("BATCHSCRIBE_REDIS_URL"):
            values["redis_url"] = env["BATCHSCRIBE_REDIS_URL"]
        for name, var in (("visibility_timeout", "BATCHSCRIBE_VISIBILITY_TIMEOUT"),
                          ("result_ttl", "BATCHSCRIBE_RESULT_TTL"),
                          ("claim_ttl", "BATCHSCRIBE_CLAIM_TTL")):
            if env.get(var):
                values[name] = _int(var, env[var])
        if env.get("BATCHSCRIBE_KEY_PREFIX"):
            values["key_prefix"] = env["BATCHSCRIBE_KEY_PREFIX"]
        retry = RetryPolicy()
        if env.get("BATCHSCRIBE_TRANSIENT_ATTEMPTS"):
            retry = replace(retry, transient_attempts=_int("BATCHSCRIBE_TRANSIENT_ATTEMPTS",
                                                           env["BATCHSCRIBE_TRANSIENT_ATTEMPTS"]))
        if env.get("BATCHSCRIBE_BACKOFF_BASE"):
            retry = replace(retry, backoff_base=float(env["BATCHSCRIBE_BACKOFF_BASE"]))
        values["retry"] = retry
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        scheme = urlsplit(self.redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"broker URL must start with redis://, rediss:// or unix:// (got {redact(self.redis_url)!r})"
            )

    def to_env(self) -> dict[str, str]:
        """The environment that gives a child process (a consumer) the same settings."""
        return {
            "BATCHSCRIBE_REDIS_URL": self.redis_url,
            "BATCHSCRIBE_KEY_PREFIX": self.key_prefix,
            "BATCHSCRIBE_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            "BATCHSCRIBE_RESULT_TTL": str(self.result_ttl),
            "BATCHSCRIBE_CLAIM_TTL": str(self.claim_ttl),
            "BATCHSCRIBE_TRANSIENT_ATTEMPTS": str(self.retry.transient_attempts),
            "BATCHSCRIBE_BACKOFF_BASE": str(self.retry.backoff_base),
        }


def _int(var: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{var} must be an integer, got {raw!r}") from exc


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
