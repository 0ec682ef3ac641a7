"""The `batchscribe` command: one module per command group, wired into one click group here.

It sits on top of the layers (common ← producer, worker); the emulator is wired here too, so that
its `local` transcriber can come from the worker's engine without the emulator importing it.
"""

from __future__ import annotations

import logging
import sys

if sys.argv[1:2] in (["run"], ["watch"]):  # they start local consumers: have their zygote import now
    from batchscribe.worker.launch import start_early

    start_early()

import click  # noqa: E402 - after the zygote's start, on purpose

from batchscribe.cli.batches import cancel, log_cmd, results, retry_failed, status, submit
from batchscribe.cli.convert import convert
from batchscribe.cli.emulator import emulator_command
from batchscribe.cli.endpoints import endpoints
from batchscribe.cli.flower import flower
from batchscribe.cli.health import health
from batchscribe.cli.run import run
from batchscribe.cli.serve import serve
from batchscribe.cli.watch import watch
from batchscribe.cli.worker import worker


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def root(verbose: bool) -> None:
    """batchscribe: transcribe (and convert) very many recordings with Celery workers."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for command in (submit, status, log_cmd, retry_failed, cancel, results, worker, health, endpoints, run, watch,
                serve, emulator_command, flower, convert):
    root.add_command(command)


def main() -> None:
    root(prog_name="batchscribe")
