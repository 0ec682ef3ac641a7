"""`batchscribe worker`: the per-VM process that runs one Celery consumer per endpoint."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import click

from batchscribe.cli.base import broker_option, fail, guarded, settings_for
from batchscribe.common.config import default_local_endpoints, load_endpoints
from batchscribe.common.settings import redact
from batchscribe.common.state import StateStore


@click.command()
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Endpoint YAML (default: one local endpoint sized to this machine).")
@click.option("--hostname", default=None, help="Name of this worker VM (default: the host name).")
@broker_option
@guarded
def worker(config_path: str | None, hostname: str | None, broker: str | None) -> None:
    """Run one Celery consumer per endpoint on this VM; follows edits of the endpoint file."""
    from batchscribe.worker.supervisor import Supervisor

    settings = settings_for(broker)
    StateStore.connect(settings)  # fail fast with a clear message if Redis is unreachable
    endpoints = load_endpoints(config_path) if config_path else default_local_endpoints()
    logging.getLogger().setLevel(logging.INFO)
    supervisor = Supervisor(settings, endpoints, config_path=config_path, hostname=hostname)
    _stop_on_signals(supervisor)
    source = config_path or "the cluster's published endpoint set (or the built-in local endpoint)"
    click.echo(f"worker {supervisor.hostname}: endpoints from {source}; broker {redact(settings.redis_url)}",
               err=True)
    supervisor.run()
    if supervisor.stopped_by_failure:
        fail("a background loop of this worker died (see the log above)", 1)


def _stop_on_signals(supervisor: Any) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: exit now (consumers are killed by their group)."""
    hits = {"n": 0}

    def handler(signum: int, _frame: Any) -> None:
        hits["n"] += 1
        if hits["n"] > 1:
            os._exit(130)
        supervisor.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
