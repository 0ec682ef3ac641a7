"""`batchscribe worker`: the per-VM process that runs one Celery consumer per endpoint."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import click

from batchscribe.cli.base import broker_option, fail, guarded, settings_for
from batchscribe.common.config import converter_endpoint, default_local_endpoints, load_endpoints
from batchscribe.common.settings import redact
from batchscribe.common.state import StateStore


@click.command()
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Endpoint YAML (default: one local endpoint sized to this machine).")
@click.option("--hostname", default=None, help="Name of this worker VM (default: the host name).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve the cluster's Prometheus metrics on http://HOST:PORT/metrics (off without it; "
              "0: any free port).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="Address the metrics are served on (0.0.0.0: every interface).")
@click.option("--convert-concurrency", type=click.IntRange(0, 1000), default=None, metavar="N",
              envvar="BATCHSCRIBE_CONVERT_CONCURRENCY",
              help="Media conversions (ffmpeg) run at once on this VM, from the `convert` queue "
              "(default: its core count; 0: none). An endpoint of engine ffmpeg in the YAML sets it too.")
@broker_option
@guarded
def worker(config_path: str | None, hostname: str | None, metrics_port: int | None, metrics_host: str,
           convert_concurrency: int | None, broker: str | None) -> None:
    """Run one Celery consumer per endpoint on this VM; follows edits of the endpoint file."""
    from batchscribe.worker.supervisor import Supervisor

    settings = settings_for(broker)
    StateStore.connect(settings)  # fail fast with a clear message if Redis is unreachable
    endpoints = load_endpoints(config_path) if config_path else default_local_endpoints()
    logging.getLogger().setLevel(logging.INFO)
    converter = None if convert_concurrency == 0 else converter_endpoint(convert_concurrency)
    supervisor = Supervisor(settings, endpoints, config_path=config_path, hostname=hostname,
                            converter=converter)
    _stop_on_signals(supervisor)
    source = config_path or "the cluster's published endpoint set (or the built-in local endpoint)"
    click.echo(f"worker {supervisor.hostname}: endpoints from {source}; broker {redact(settings.redis_url)}",
               err=True)
    metrics = None if metrics_port is None else serve_metrics(supervisor, metrics_host, metrics_port)
    try:
        supervisor.run()
    finally:
        if metrics is not None:
            metrics.close()
    if supervisor.stopped_by_failure:
        fail("a background loop of this worker died (see the log above)", 1)


def serve_metrics(supervisor: Any, host: str, port: int) -> Any:
    """The cluster's metrics from this VM (its own endpoint set when none is published)."""
    from batchscribe.common.metrics import MetricsServer, registry_for

    server = MetricsServer(registry_for(supervisor.store, lambda: supervisor.source.current), host, port)
    click.echo(f"worker {supervisor.hostname}: metrics on {server.url}", err=True)
    return server


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
