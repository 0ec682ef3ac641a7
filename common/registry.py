"""The cluster's endpoint set, published through Redis and versioned (hot-swap).

`batchscribe endpoints apply FILE` (or a worker whose `--config` file changed) validates the YAML
and publishes its *text*; every worker VM polls the version and parses the text itself, so `$VAR`
secrets are read from each VM's own environment and never stored in Redis. A set that writes a key
out is refused (`check_publishable`).
"""

from __future__ import annotations

from batchscribe.common.config import EndpointSet, parse_without_secrets
from batchscribe.common.errors import ConfigError
from batchscribe.common.state import PublishedSet, StateStore


class LiteralSecretError(ConfigError):
    """The set writes a subscription key out: it may run where the file is, never go to Redis."""


def check_publishable(endpoints: EndpointSet) -> None:
    """Refuse a set that would put a secret into Redis (every VM, `endpoints show` and anyone who
    can read Redis would see it); `$VAR` keeps each key in the workers' own environment."""
    if endpoints.literal_secrets:
        names = ", ".join(repr(name) for name in endpoints.literal_secrets)
        raise LiteralSecretError(
            f"{endpoints.source}: endpoint {names}: a subscriptionKey written out in the file is never "
            "published to Redis; write `subscriptionKey: $SPEECH_KEY` and set SPEECH_KEY in the "
            "environment of each worker VM")


def validate(text: str, source: str) -> tuple[EndpointSet, set[str]]:
    """Parse as the workers will and check that the set may be published; returns the set and the
    $VARs this machine does not have. Raises ConfigError (LiteralSecretError for a written-out key)."""
    endpoints, missing = parse_without_secrets(text, source)
    check_publishable(endpoints)
    return endpoints, missing


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
