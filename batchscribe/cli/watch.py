"""`batchscribe watch`: batch-processing-kit's DAEMON mode — transcribe what lands in folders, until
stopped (`producer.watch` does the watching; this module wires it to Redis and workers).

Two ways to run, by whether a broker is given:

* `--broker URL` (or BATCHSCRIBE_REDIS_URL): a producer of that cluster, like `submit`; the
  cluster's workers transcribe. Stopping `watch` leaves every queued file queued for them.
* none: this machine alone, like `run` and with `run`'s code (`cli.run.local_workers`): a private
  Redis on a unix socket and local workers (`--config`, default one local endpoint). Unlike
  `run`'s, its folder outlives the process — one per output folder, under
  `$XDG_STATE_HOME/batchscribe/watch/` (0700) — because a restart must find the dedupe state and
  cached transcripts (no engine call for what was done) and the files still queued. A lock keeps
  one `watch` per output folder. Stopping stops the workers as `run` does (a file being
  transcribed finishes or is handed back), then Redis; queued files stay queued in its folder and
  the next `watch … --out` the same folder continues them.

SIGINT, SIGTERM and SIGHUP stop watching: the batch being submitted is finished, files not yet
settled or batched are left for the next start's scan, and `watch` exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from batchscribe.cli.base import (
    EXIT_OK,
    broker_option,
    build_options,
    build_outputs,
    guarded,
    output_options,
    settings_for,
    transcription_options,
)
from batchscribe.cli.batches import submit_line, submitter_for
from batchscribe.cli.run import StopSignals, held_alone, local_workers, state_folder
from batchscribe.common.config import default_local_endpoints, load_endpoints
from batchscribe.common.errors import InputError
from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.names import printable
from batchscribe.common.output import Outputs
from batchscribe.common.settings import Settings
from batchscribe.common.state import StateStore
from batchscribe.producer.discover import Discovered
from batchscribe.producer.watch import (
    Watcher,
    WatchPolicy,
    file_events,
    network_mounts,
    read_mounts,
    watched_folders,
)


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder; its tree mirrors the watched folders, as with `submit`.")
@click.option("--quiet-period", type=click.FloatRange(min=0), default=WatchPolicy.quiet_period,
              show_default=True, metavar="SECONDS",
              help="Submit a file once its size and mtime have not changed for this long.")
@click.option("--poll/--no-poll", default=None,
              help="Re-list the folders instead of inotify-style events (default: poll on NFS, SMB "
              "and other network file systems, where events from other machines never arrive).")
@click.option("--poll-interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="SECONDS", help="How often --poll re-lists the folders.")
@click.option("--batch-window", type=click.FloatRange(min=0), default=WatchPolicy.batch_window,
              show_default=True, metavar="SECONDS", help="At most one batch per this many seconds ...")
@click.option("--batch-files", type=click.IntRange(min=1), default=WatchPolicy.batch_files,
              show_default=True, metavar="N", help="... or one at once when N files are ready.")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Endpoint YAML for the workers on this machine (without --broker only; "
              "default: one local endpoint sized to this machine).")
@broker_option
@transcription_options
@output_options(combined=False)
@guarded
def watch(folders: tuple[str, ...], out: str, quiet_period: float, poll: bool | None, poll_interval: float,
          batch_window: float, batch_files: int, config_path: str | None, broker: str | None, txt: bool,
          **kw: Any) -> None:
    """Transcribe every media file under FOLDERS, then each new or changed one once it has landed,
    until stopped (Ctrl-C, SIGTERM)."""
    outputs = build_outputs(txt, kw)
    opts = build_options(kw)
    roots = watched_folders(folders)
    if broker and config_path:
        raise InputError("--config starts workers on this machine, which `watch --broker` does not: "
                         "the cluster's workers transcribe (give them --config)")
    polling = _polling(roots, poll)
    policy = WatchPolicy(quiet_period, batch_window, batch_files, seen_late=poll_interval if polling else 0.0)
    follow = _Follow(roots, out, opts, outputs, policy, polling, poll_interval)
    if broker:
        with StopSignals(follow.stop_on, waiting="finishing the batch being submitted"):
            follow(settings_for(broker))
        click.echo("stopped watching; queued files stay queued for the workers", err=True)
    else:
        endpoints = load_endpoints(config_path) if config_path else default_local_endpoints()
        folder = state_folder("watch", out)
        refusal = f"another `batchscribe watch` on this machine writes to {out}; stop it first"
        with held_alone(folder, refusal), StopSignals(follow.stop_on) as stop:
            with local_workers(folder, stop, endpoints, config_path, None, append_log=True) as settings:
                follow(settings)
        click.echo(f"stopped: workers, then Redis; queued files stay queued in {printable(str(folder))} "
                   f"for the next `watch` to {printable(out)}", err=True)
    sys.exit(EXIT_OK)


class _Follow:
    """The watch loop on one Redis: each batch through the producer's Submitter, one line each."""

    def __init__(self, roots: list[Path], out: str, options: TranscriptionOptions, outputs: Outputs,
                 policy: WatchPolicy, poll: bool, poll_interval: float) -> None:
        self.roots, self.out, self.options, self.outputs = roots, out, options, outputs
        self.policy, self.poll, self.poll_interval = policy, poll, poll_interval
        self.stop = threading.Event()

    def stop_on(self, signum: int) -> None:
        click.echo(f"\n{signal.Signals(signum).name}: stopping watch", err=True)
        self.stop.set()

    def __call__(self, settings: Settings) -> None:
        store = StateStore.connect(settings)
        submitter = submitter_for(settings, store)

        def submit(files: list[tuple[str, str]]) -> None:
            try:
                report = submitter.submit_found(Discovered(files=files), self.roots, self.out, self.options,
                                                self.outputs.formats,
                                                log_folder=self.outputs.log_folder or "")
            except InputError as exc:  # this batch is refused (an output clash); watching goes on
                click.secho(f"error: {printable(str(exc))}", fg="red", err=True)
                return
            click.echo(submit_line(report), err=True)

        how = f"polling every {self.poll_interval:g}s" if self.poll else "file-system events"
        click.echo(f"watching {', '.join(printable(str(r)) for r in self.roots)} ({how}; quiet period "
                   f"{self.policy.quiet_period:g}s) into {printable(self.out)}; stop with Ctrl-C or SIGTERM",
                   err=True)
        watcher = Watcher(self.roots, self.out, submit, self.policy, time.monotonic)
        events = file_events(self.roots, self.poll, self.stop, poll_interval=self.poll_interval)
        watcher.run(events, self.stop)


def _polling(roots: list[Path], poll: bool | None) -> bool:
    """--poll / --no-poll as given; otherwise poll when a folder is on a network file system."""
    if poll is not None:
        return poll
    network = network_mounts(roots, read_mounts())
    for folder, kind in network:
        click.echo(f"{printable(str(folder))} is on {kind}: polling (--no-poll uses file-system events, "
                   "which miss files written by other machines)", err=True)
    return bool(network)
