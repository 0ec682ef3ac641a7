"""Engines by kind; each is imported only when an endpoint uses it (the SDK and Whisper are heavy)."""

from __future__ import annotations

from batchscribe.common.config import Endpoint
from batchscribe.common.errors import ConfigError
from batchscribe.worker.engines.base import Engine


def build_engine(endpoint: Endpoint) -> Engine:
    if endpoint.engine == "local":
        from batchscribe.worker.engines.local import LocalEngine

        return LocalEngine(endpoint)
    if endpoint.engine == "azure":
        from batchscribe.worker.engines.azure import AzureEngine

        return AzureEngine(endpoint, stall_floor=endpoint.stall_timeout)
    raise ConfigError(f"endpoint '{endpoint.name}': unknown engine {endpoint.engine!r}")
