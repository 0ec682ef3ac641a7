"""The cluster's endpoint set, published through Redis and versioned (hot-swap).

`batchscribe endpoints apply FILE` (or a worker whose `--config` file changed) validates the YAML
and publishes its *text*; every worker VM polls the version and parses the text itself, so `$VAR`
secrets are read from each VM's own environment and never stored in Redis.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from batchscribe.common.config import EndpointSet, parse_endpoints
from batchscribe.common.state import PublishedSet, StateStore


class _LenientEnv(Mapping[str, str]):
    """For validation where the secrets are not set: a missing $VAR reads as a placeholder."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self.base = base
        self.missing: set[str] = set()

    def __getitem__(self, key: str) -> str:
        if key not in self.base:
            self.missing.add(key)
            return "unset-here"
        return self.base[key]

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


def validate(text: str, source: str) -> tuple[EndpointSet, set[str]]:
    """Parse as the workers will; returns the set and the $VARs this machine does not have."""
    env = _LenientEnv(os.environ)
    return parse_endpoints(text, source, env), env.missing


class EndpointRegistry:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    def publish(self, text: str, source: str) -> int:
        """Validate and publish; the same text again keeps its version. Raises ConfigError."""
        validate(text, source)
        return self.store.publish_endpoint_set(text, source)

    def version(self) -> int:
        return self.store.endpoint_set_version()

    def current(self) -> PublishedSet | None:
        return self.store.endpoint_set()
