"""`batchscribe endpoints apply|show`: the endpoint set every worker VM follows (hot-swap)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchscribe.cli.base import broker_option, guarded, settings_for
from batchscribe.common.errors import ConfigError
from batchscribe.common.registry import EndpointRegistry, validate
from batchscribe.common.state import StateStore
from batchscribe.producer.display import console_for
from batchscribe.producer.status import render_endpoints


@click.group()
def endpoints() -> None:
    """Show or change the endpoint set every worker VM follows (hot-swap)."""


@endpoints.command("apply")
@click.argument("path", type=click.Path(dir_okay=False))
@broker_option
@guarded
def endpoints_apply(path: str, broker: str | None) -> None:
    """Validate PATH and publish it; every worker VM reconciles within seconds."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read endpoint file: {exc}") from exc
    parsed, missing = validate(text, Path(path).name)
    registry = EndpointRegistry(StateStore.connect(settings_for(broker)))
    version = registry.publish(text, Path(path).name)
    click.echo(f"published {Path(path).name} as endpoint set v{version}: "
               + ", ".join(f"{e.name} ({e.engine}, {e.concurrency} at once)" for e in parsed))
    if missing:
        click.echo(f"note: ${', $'.join(sorted(missing))} not set here; each worker VM reads it from its "
                   "own environment", err=True)


@endpoints.command("show")
@broker_option
@guarded
def endpoints_show(broker: str | None) -> None:
    """The published endpoint set, each endpoint's owner VM and health."""
    console_for(sys.stdout).print(render_endpoints(StateStore.connect(settings_for(broker))))
