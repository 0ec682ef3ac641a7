"""Engines by kind; each is imported only when an endpoint uses it (the SDK and Whisper are heavy)."""

from __future__ import annotations

from common.config import Endpoint
from common.errors import ConfigError
from worker.engines.base import Engine


def build_engine(endpoint: Endpoint) -> Engine:
    if endpoint.engine == "local":
        from worker.engines.local import LocalEngine

        return LocalEngine(endpoint)
    if endpoint.engine == "azure":
        from worker.engines.azure import AzureEngine

        return AzureEngine(endpoint, stall_floor=endpoint.stall_timeout)
    raise ConfigError(f"endpoint '{endpoint.name}': unknown engine {endpoint.engine!r}")
