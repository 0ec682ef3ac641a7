"""The `batchscribe` command: one module per command group, wired into one click group here.

It sits on top of the layers (common ← producer, worker); the emulator is wired here too, so that
its `local` transcriber can come from the worker's engine without the emulator importing it.
"""

from __future__ import annotations

import importlib
import logging
import sys

if sys.argv[1:2] in (["run"], ["watch"]):  # they start local consumers: have their zygote import now
    from batchscribe.worker.launch import start_early

    start_early()

import click  # noqa: E402 - after the zygote's start, on purpose

# name -> module:attribute. Each command's module is imported when that command runs (or for
# --help), so that `run` reaches its workers' start without importing every other command (the
# submit, status and emulator modules: ~0.3 CPU-s, on a cold `run`'s critical path).
COMMANDS = {
    "submit": "batches:submit", "status": "batches:status", "log": "batches:log_cmd",
    "retry-failed": "batches:retry_failed", "cancel": "batches:cancel", "results": "batches:results",
    "worker": "worker:worker", "health": "health:health", "endpoints": "endpoints:endpoints",
    "run": "run:run", "watch": "watch:watch", "serve": "serve:serve", "emulator": "emulator:emulator_command",
    "flower": "flower:flower", "convert": "convert:convert",
}


class LazyGroup(click.Group):
    """click's documented pattern for subcommands loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(f"batchscribe.cli.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def root(verbose: bool) -> None:
    """batchscribe: transcribe (and convert) very many recordings with Celery workers."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    root(prog_name="batchscribe")
