"""Commands on batches: `submit`, `status`, `log`, `retry-failed`, `cancel`, `results`."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from batchscribe.cli.base import (
    EXIT_FAILED_FILES,
    broker_option,
    build_options,
    build_outputs,
    guarded,
    keep_typed_sas,
    output_options,
    settings_for,
    transcription_options,
)
from batchscribe.common.celery_app import make_app
from batchscribe.common.locations import shown
from batchscribe.common.models import JobOptions
from batchscribe.common.names import printable
from batchscribe.common.output import Outputs
from batchscribe.common.publish import Publisher
from batchscribe.common.settings import Settings
from batchscribe.common.state import EVENTS_KEPT, EVENTS_PER_READ, EventCursor, StateStore
from batchscribe.producer.cancel import cancel as cancel_batch
from batchscribe.producer.display import SubmitLines, console_for
from batchscribe.producer.progress import wait_for_batch
from batchscribe.producer.results import FORMATS, iter_results, write_results
from batchscribe.producer.runlog import RunLog
from batchscribe.producer.status import (
    BatchView,
    batch_document,
    links_note,
    load_view,
    render_endpoints,
    render_failures,
    render_recent,
    render_status,
    unserved,
)
from batchscribe.producer.submit import SubmitReport, Submitter

FOLLOW_WAIT_MS = 2000  # `log -f`: an idle follower's wait for the next attempt (it returns as one is logged)


def submitter_for(settings: Settings, store: StateStore) -> Submitter:
    return Submitter(store, Publisher(make_app(settings, "batchscribe-producer")), settings.claim_ttl)


def submit_batch(settings: Settings, inputs: tuple[str, ...], out: str, opts: JobOptions,
                 outputs: Outputs, batch_id: str | None, wait: bool, check_workers: bool = True) -> int:
    """Submit, then (with `wait`) follow the batch to its end; returns the exit code.

    `check_workers`: warn at once when no live worker serves the batch (`run` starts its own).
    """
    store = StateStore.connect(settings)
    cursor = store.event_cursor() if wait and outputs.log_folder else None  # before its first attempt
    report = submitter_for(settings, store).submit(
        inputs, out, opts, formats=outputs.formats, batch_id=batch_id, log_folder=outputs.log_folder or "",
        progress=SubmitLines(sys.stderr))
    line = submit_line(report)
    click.echo(line, err=True)
    if check_workers and (report.published or report.attached):
        waiting = unserved(store, opts)
        if waiting:
            click.secho(f"warning: {waiting}", fg="yellow", err=True)
    if not wait:
        click.echo(report.batch_id)
        return 0
    with run_log_for(outputs.log_folder, report.batch_id, cursor) as run_log:
        if run_log is not None:
            run_log.note(line)
        code = follow(store, report.batch_id, settings.wait_redis_timeout, run_log)
    click.echo(f"outputs in {printable(shown(store.batch(report.batch_id).get('out') or out))} "
               "(summary: run_summary.json)", err=True)
    return code


@contextmanager
def run_log_for(folder: str | None, batch_id: str, cursor: EventCursor | None) -> Iterator[RunLog | None]:
    """`folder/run.log` while the batch is followed (None without a log folder)."""
    if not folder:
        yield None
        return
    run_log = RunLog(folder, batch_id, cursor)
    try:
        yield run_log
    finally:
        run_log.close()


def submit_line(report: SubmitReport) -> str:
    """What a submitted batch holds, in one line (`submit`, `run`, each batch of `watch`)."""
    links = f", {links_note(report.links, len(report.links))}" if report.links else ""
    return (f"batch {report.batch_id}: {report.files} file(s) — {report.published} queued, "
            f"{report.duplicates} duplicate(s), {report.attached} already in progress elsewhere, "
            f"{report.cached} from cache, {report.failed_now} unusable; "
            f"{report.skipped_count or len(report.skipped)} skipped "
            f"(not audio/video){links} [{report.seconds:.1f}s]")


def follow(store: StateStore, batch_id: str, redis_patience: float = 300.0,
           run_log: RunLog | None = None) -> int:
    """Show progress until the batch is finished; print its failures; return the exit code.

    Raises StoppedWaiting (exit 3) after `redis_patience` seconds without Redis."""
    title = "converting" if load_view(store, batch_id, with_failures=False).converting else "transcribing"
    view = wait_for_batch(store, batch_id, redis_patience=redis_patience, run_log=run_log, title=title)
    said = render_failures(view)
    if view.status == "cancelled":
        cancelled = view.counts.get("cancelled", 0)
        said.append(f"batch {batch_id} was cancelled: {cancelled} file(s) not "
                    f"{'converted' if view.converting else 'transcribed'}")
    for line in said:
        click.echo(line, err=True)
        if run_log is not None and line:
            run_log.note(line, logging.ERROR if view.counts.get("failed") else logging.WARNING)
    return exit_code(view)


def exit_code(view: BatchView) -> int:
    """0 when every file succeeded; 1 when some failed or were cancelled."""
    return EXIT_FAILED_FILES if view.counts.get("failed") or view.counts.get("cancelled") else 0


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (shared storage).")
@click.option("--wait", is_flag=True, help="Show progress until the batch is finished.")
@click.option("--batch-id", default=None, help="Name the batch (default: time-based id).")
@broker_option
@transcription_options
@output_options()
@guarded
def submit(inputs: tuple[str, ...], out: str, wait: bool, batch_id: str | None, broker: str | None,
           txt: bool, **kw: Any) -> None:
    """Queue every audio/video file under INPUTS for transcription (one task per unique file)."""
    outputs = build_outputs(txt, kw)
    keep_typed_sas([*inputs, out], cluster=True)
    sys.exit(submit_batch(settings_for(broker), inputs, out, build_options(kw), outputs, batch_id, wait))


@click.command()
@click.argument("batch_id", required=False)
@click.option("--json", "as_json", is_flag=True,
              help="Print the batch (or the recent batches) as JSON, as the HTTP API shows it.")
@click.option("--last", default=10, show_default=True, help="How many recent batches to list.")
@broker_option
@guarded
def status(batch_id: str | None, as_json: bool, last: int, broker: str | None) -> None:
    """Show a batch (or the recent batches); exits 1 if any of its files failed or was cancelled."""
    store = StateStore.connect(settings_for(broker))
    if as_json:
        ids = [batch_id] if batch_id else store.batch_ids(last)
        views = [load_view(store, b) for b in ids]
        documents = [batch_document(v) for v in views]
        document = documents[0] if batch_id else {"batches": documents}
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        sys.exit(exit_code(views[0]) if batch_id else 0)
    console = console_for(sys.stdout)
    if batch_id is None:
        console.print(render_recent(store, last))
        console.print()
        console.print(render_endpoints(store))
        return
    view = load_view(store, batch_id, check_workers=True)
    console.print(render_status(view))
    sys.exit(exit_code(view))


@click.command("log")
@click.option("--follow", "-f", "follow_log", is_flag=True, help="Keep printing new attempts as they happen.")
@click.option("--last", default=50, show_default=True, help="How many past attempts to show first.")
@broker_option
@guarded
def log_cmd(follow_log: bool, last: int, broker: str | None) -> None:
    """The real-time log of every attempt: time, file, endpoint, outcome, error class, reason."""
    store = StateStore.connect(settings_for(broker))
    cursor = store.event_cursor()  # taken first: what is logged after it is followed, not shown twice
    for _eid, entry in store.recent_events(last, newest=cursor.last_id):
        _print_event(entry)
    while follow_log:
        page = store.follow_events(cursor)
        cursor = page.cursor
        if page.missed:
            click.echo(f"... {page.missed} attempt(s) were trimmed from the log before they could be shown "
                       f"(Redis keeps the last {EVENTS_KEPT:,}); `batchscribe status BATCH` and "
                       "run_summary.json have every file's outcome", err=True)
        for _eid, entry in page.events:
            _print_event(entry)
        if page.read < EVENTS_PER_READ:
            store.wait_for_events(cursor, FOLLOW_WAIT_MS)


def _print_event(e: dict[str, str]) -> None:
    ts = time.strftime("%H:%M:%S", time.localtime(float(e.get("ts", 0))))
    extra = f" [{e['error_class']}] {e.get('reason', '')}" if e.get("error_class") else ""
    line = f"{ts} {e.get('outcome', ''):<7} {e.get('endpoint', ''):<12} {e.get('file', '')}{extra}"
    click.echo(printable(line))


@click.command("retry-failed")
@click.argument("batch_id")
@click.option("--class", "error_class", type=click.Choice(["transient", "endpoint", "permanent", "crash"]),
              default=None, help="Only files that failed with this error class.")
@click.option("--wait", is_flag=True, help="Show progress until the batch is finished again.")
@broker_option
@guarded
def retry_failed(batch_id: str, error_class: str | None, wait: bool, broker: str | None) -> None:
    """Queue a batch's failed files again (all, or one error class)."""
    settings = settings_for(broker)
    store = StateStore.connect(settings)
    folder = store.batch(batch_id).get("log_folder") if wait else None  # run.log where the batch has it
    cursor = store.event_cursor() if folder else None
    report = submitter_for(settings, store).retry_failed(batch_id, error_class)
    line = (f"batch {batch_id}: {report.files} failed file(s) queued again — {report.published} "
            f"for the workers, {report.cached} from cache, {report.failed_now} still unusable")
    click.echo(line, err=True)
    if wait:
        with run_log_for(folder, batch_id, cursor) as run_log:
            if run_log is not None:
                run_log.note(line)
            sys.exit(follow(store, batch_id, settings.wait_redis_timeout, run_log))


@click.command()
@click.argument("batch_id")
@broker_option
@guarded
def cancel(batch_id: str, broker: str | None) -> None:
    """Cancel a batch: queued files never start, running ones finish without writing an output for
    it (their transcript stays cached), files shared with another running batch go on for it."""
    store = StateStore.connect(settings_for(broker))
    report = cancel_batch(store, batch_id)
    if report.files == 0:
        click.echo(f"batch {batch_id} was already cancelled", err=True)
        return
    c = report.view.counts
    click.echo(f"batch {batch_id} cancelled: {report.files} file(s) had not finished ({report.jobs} queued "
               f"task(s) will be dropped unstarted); {c.get('done', 0)} done and {c.get('failed', 0)} failed "
               "before", err=True)


@click.command()
@click.argument("batch_id")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="json", show_default=True,
              help="json: one array; jsonl: one object per line; csv: for spreadsheets; txt: for reading.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to FILE instead of standard output.")
@broker_option
@guarded
def results(batch_id: str, fmt: str, out_path: str | None, broker: str | None) -> None:
    """Every file of a batch: its status and transcript text, or why it failed (streamed, page by page)."""
    store = StateStore.connect(settings_for(broker))
    view = load_view(store, batch_id, with_failures=False)
    rows = iter_results(store, batch_id, view.total)
    if out_path is None:
        write_results(rows, fmt, sys.stdout.buffer, terminal=sys.stdout.isatty())
        return
    with open(out_path, "wb") as stream:
        count = write_results(rows, fmt, stream)
    click.echo(f"{count} file(s) of batch {batch_id} written to {printable(out_path)}", err=True)
