"""`batchscribe health`: is this VM's worker alive? For container healthchecks and monitoring."""

from __future__ import annotations

import socket

import click

from batchscribe.cli.base import EXIT_FAILED_FILES, broker_option, fail, settings_for
from batchscribe.common.errors import BatchscribeError
from batchscribe.common.state import StateStore
from batchscribe.worker.liveness import vm_problem

EXIT_UNHEALTHY = EXIT_FAILED_FILES  # 1: what a healthcheck takes as "unhealthy"


@click.command()
@click.option("--hostname", default=None,
              help="The worker VM to check, as given to `worker --hostname` (default: the host name).")
@broker_option
def health(hostname: str | None, broker: str | None) -> None:
    """Exit 0 when this VM's worker supervisor and each of its consumers are alive (their heartbeats
    in Redis are fresh) and Redis answers; else exit 1 with one line saying what is wrong."""
    host = hostname or socket.gethostname()
    try:
        problem, summary = vm_problem(StateStore.connect(settings_for(broker), check=False), host)
    except BatchscribeError as exc:  # Redis unreachable or refusing, a malformed URL: unhealthy too
        fail(str(exc), EXIT_UNHEALTHY)
    if problem:
        fail(problem, EXIT_UNHEALTHY)
    click.echo(summary)
