"""Where a worker VM's endpoint set comes from: its own `--config` file and the cluster's published
set in Redis (`batchscribe endpoints apply`).

The file is polled by content (inotify misses NFS and rename-replace); a changed file is validated
and published cluster-wide, and every VM adopts the newest published version. An invalid set is
reported and the running one stays. A file that writes a key out runs on this VM only (secrets
never go to Redis); a newer `endpoints apply` still replaces it, as it replaces any published file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from batchscribe.common.config import EndpointSet, parse_endpoints
from batchscribe.common.errors import ConfigError
from batchscribe.common.registry import EndpointRegistry, LiteralSecretError, validate
from batchscribe.common.state import StateStore

log = logging.getLogger(__name__)


class EndpointSource:
    """The endpoint set this VM should run; `refresh()` looks again (once per supervisor tick)."""

    def __init__(self, store: StateStore, initial: EndpointSet, config_path: str | None = None,
                 follow_registry: bool = True) -> None:
        self.current = initial
        self.config_path = Path(config_path) if config_path is not None else None
        self.follow_registry = follow_registry
        self.registry = EndpointRegistry(store)
        self._registry_version = -1
        self._config_digest = ""

    def refresh(self) -> EndpointSet:
        """Publish our edited file (if any), then adopt the newest published set."""
        if self.config_path is not None:
            text = self._read_config(self.config_path)
            digest = hashlib.sha256(text.encode()).hexdigest() if text is not None else ""
            if text is not None and digest != self._config_digest:
                self._config_digest = digest
                self._publish_file(self.config_path, text)
        if self.follow_registry:
            self._adopt_published()
        return self.current

    def _adopt_published(self) -> None:
        if self.registry.version() == self._registry_version:
            return
        published = self.registry.current()
        if published is None:
            return
        self._registry_version = published.version
        try:
            self.current = parse_endpoints(published.yaml, published.source or "published set")
        except ConfigError as exc:
            log.error("endpoint set v%d cannot be used on this VM; keeping the running set: %s",
                      published.version, exc)
            return
        log.info("endpoint set v%d from %s: %s", published.version, published.source,
                 ", ".join(f"{e.name}×{e.concurrency}" for e in self.current))

    @staticmethod
    def _read_config(path: Path) -> str | None:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read %s (%s); keeping the running set", path, exc)
            return None

    def _publish_file(self, path: Path, text: str) -> None:
        try:
            if self.follow_registry and self._publishable(text, path.name):
                version = self.registry.publish(text, path.name)
                log.info("%s published as endpoint set v%d", path, version)
            else:
                self.current = parse_endpoints(text, path.name)
        except ConfigError as exc:
            log.error("endpoint file changed but is invalid; keeping the running set: %s", exc)

    def _publishable(self, text: str, source: str) -> bool:
        """False for a file that writes a key out: this VM runs it without publishing it."""
        try:
            validate(text, source)
        except LiteralSecretError as exc:
            log.warning("%s. This VM runs the file's set without publishing it", exc)
            self._registry_version = self.registry.version()
            return False
        return True
