"""The `batchscribe` command: wires producer, worker and emulator commands into one CLI.

Exit codes: 0 every file succeeded · 1 some files failed · 2 bad usage, input or config ·
3 Redis unreachable.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from common.celery_app import make_app
from common.config import EndpointSet, default_local_endpoints, load_endpoints
from common.errors import BatchscribeError, ConfigError, InputError, StateError
from common.models import PROFANITY_MODES, TranscriptionOptions
from common.settings import Settings, redact
from common.state import StateStore

EXIT_FAILED_FILES, EXIT_USAGE, EXIT_REDIS = 1, 2, 3


def _fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors into one clear line and an exit code instead of a traceback."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StateError as exc:
            _fail(str(exc), EXIT_REDIS)
        except (ConfigError, InputError) as exc:
            _fail(str(exc), EXIT_USAGE)
        except BatchscribeError as exc:
            _fail(str(exc), EXIT_USAGE)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def broker_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--broker", envvar="BATCHSCRIBE_REDIS_URL", metavar="URL",
                        help="Redis URL, e.g. redis://HOST:6379/0 (env BATCHSCRIBE_REDIS_URL).")(fn)


def transcription_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--language", default="en-US", show_default=True, help="Recognition language."),
        click.option("--engine", type=click.Choice(["azure", "local"]), default=None,
                     help="Only use endpoints of this engine (default: any endpoint of the language)."),
        click.option("--nbest", type=click.IntRange(1, 10), default=1, show_default=True,
                     help="Alternatives kept per segment."),
        click.option("--word-timestamps", is_flag=True, help="Word offsets and durations in outputs."),
        click.option("--profanity", type=click.Choice(PROFANITY_MODES), default="masked", show_default=True),
        click.option("--diarization", is_flag=True, help="Speaker ids where the engine offers them."),
        click.option("--candidate-languages", default="", metavar="a,b,c",
                     help="Language identification among these languages."),
        click.option("--txt", is_flag=True, help="Also write a plain-text transcript per file."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_options(kw: dict[str, Any]) -> TranscriptionOptions:
    langs = tuple(x.strip() for x in kw.pop("candidate_languages", "").split(",") if x.strip())
    return TranscriptionOptions(language=kw.pop("language"), engine=kw.pop("engine"), nbest=kw.pop("nbest"),
                                word_timestamps=kw.pop("word_timestamps"), profanity=kw.pop("profanity"),
                                diarization=kw.pop("diarization"), candidate_languages=langs)


def _settings(broker: str | None) -> Settings:
    return Settings.from_env(redis_url=broker)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def root(verbose: bool) -> None:
    """batchscribe: transcribe very many recordings on speech endpoints with Celery workers."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---- submit / status / log ---------------------------------------------------------------------

def _submit(settings: Settings, inputs: tuple[str, ...], out: str, opts: TranscriptionOptions,
            txt: bool, batch_id: str | None, wait: bool) -> int:
    from producer.progress import wait_for_batch
    from producer.publish import Publisher
    from producer.status import render_failures
    from producer.submit import Submitter

    store = StateStore.connect(settings)
    submitter = Submitter(store, Publisher(make_app(settings, "batchscribe-producer")), settings.claim_ttl)
    report = submitter.submit(inputs, out, opts, formats=["json", "txt"] if txt else ["json"],
                              batch_id=batch_id)
    click.echo(f"batch {report.batch_id}: {report.files} file(s) — {report.published} queued, "
               f"{report.attached} already in progress elsewhere, {report.cached} from cache, "
               f"{report.failed_now} unusable; {len(report.skipped)} skipped (not audio/video) "
               f"[{report.seconds:.1f}s]", err=True)
    if not wait:
        click.echo(report.batch_id)
        return 0
    view = wait_for_batch(store, report.batch_id)
    for line in render_failures(view):
        click.echo(line, err=True)
    click.echo(f"outputs in {Path(out).resolve()} (summary: run_summary.json)", err=True)
    return EXIT_FAILED_FILES if view.counts.get("failed") else 0


@root.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (shared storage).")
@click.option("--wait", is_flag=True, help="Show progress until the batch is finished.")
@click.option("--batch-id", default=None, help="Name the batch (default: time-based id).")
@broker_option
@transcription_options
@guarded
def submit(inputs: tuple[str, ...], out: str, wait: bool, batch_id: str | None, broker: str | None,
           txt: bool, **kw: Any) -> None:
    """Queue every audio/video file under INPUTS for transcription (one task per unique file)."""
    sys.exit(_submit(_settings(broker), inputs, out, build_options(kw), txt, batch_id, wait))


@root.command()
@click.argument("batch_id", required=False)
@broker_option
@guarded
def status(batch_id: str | None, broker: str | None) -> None:
    """Show a batch (or the recent batches); exits 1 if any of its files failed."""
    from producer.status import load_view, render_endpoints, render_recent, render_status

    store = StateStore.connect(_settings(broker))
    if batch_id is None:
        click.echo(render_recent(store))
        click.echo("")
        click.echo(render_endpoints(store))
        return
    view = load_view(store, batch_id)
    click.echo(render_status(view))
    sys.exit(EXIT_FAILED_FILES if view.counts.get("failed") else 0)


@root.command("log")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new attempts as they happen.")
@click.option("--last", default=50, show_default=True, help="How many past attempts to show first.")
@broker_option
@guarded
def log_cmd(follow: bool, last: int, broker: str | None) -> None:
    """The real-time log of every attempt: time, file, endpoint, outcome, error class, reason."""
    import time as _time

    store = StateStore.connect(_settings(broker))
    last_id = "0-0"
    for eid, entry in store.recent_events(last):
        _print_event(entry)
        last_id = eid
    while follow:
        for eid, entry in store.events(last_id, block_ms=2000):
            _print_event(entry)
            last_id = eid
        _time.sleep(0)


def _print_event(e: dict[str, str]) -> None:
    import time as _time

    ts = _time.strftime("%H:%M:%S", _time.localtime(float(e.get("ts", 0))))
    extra = f" [{e['error_class']}] {e.get('reason', '')}" if e.get("error_class") else ""
    click.echo(f"{ts} {e.get('outcome', ''):<7} {e.get('endpoint', ''):<12} {e.get('file', '')}{extra}")


# ---- worker ------------------------------------------------------------------------------------

@root.command()
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Endpoint YAML (default: one local endpoint sized to this machine).")
@click.option("--hostname", default=None, help="Name of this worker VM (default: the host name).")
@broker_option
@guarded
def worker(config_path: str | None, hostname: str | None, broker: str | None) -> None:
    """Run one Celery consumer per endpoint on this VM; follows edits of the endpoint file."""
    from worker.supervisor import Supervisor

    settings = _settings(broker)
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
        _fail("a background loop of this worker died (see the log above)", 1)


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


# ---- endpoints: the cluster's endpoint set ------------------------------------------------------

@root.group()
def endpoints() -> None:
    """Show or change the endpoint set every worker VM follows (hot-swap)."""


@endpoints.command("apply")
@click.argument("path", type=click.Path(dir_okay=False))
@broker_option
@guarded
def endpoints_apply(path: str, broker: str | None) -> None:
    """Validate PATH and publish it; every worker VM reconciles within seconds."""
    from common.registry import EndpointRegistry, validate

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read endpoint file: {exc}") from exc
    parsed, missing = validate(text, Path(path).name)
    registry = EndpointRegistry(StateStore.connect(_settings(broker)))
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
    from producer.status import render_endpoints

    click.echo(render_endpoints(StateStore.connect(_settings(broker))))


@root.command("retry-failed")
@click.argument("batch_id")
@click.option("--class", "error_class", type=click.Choice(["transient", "endpoint", "permanent", "crash"]),
              default=None, help="Only files that failed with this error class.")
@click.option("--wait", is_flag=True, help="Show progress until the batch is finished again.")
@broker_option
@guarded
def retry_failed(batch_id: str, error_class: str | None, wait: bool, broker: str | None) -> None:
    """Queue a batch's failed files again (all, or one error class)."""
    from producer.progress import wait_for_batch
    from producer.publish import Publisher
    from producer.status import render_failures
    from producer.submit import Submitter

    settings = _settings(broker)
    store = StateStore.connect(settings)
    submitter = Submitter(store, Publisher(make_app(settings, "batchscribe-producer")), settings.claim_ttl)
    report = submitter.retry_failed(batch_id, error_class)
    click.echo(f"batch {batch_id}: {report.files} failed file(s) queued again — {report.published} "
               f"to transcribe, {report.cached} from cache, {report.failed_now} still unusable", err=True)
    if wait:
        view = wait_for_batch(store, batch_id)
        for line in render_failures(view):
            click.echo(line, err=True)
        sys.exit(EXIT_FAILED_FILES if view.counts.get("failed") else 0)


# ---- run: everything on one machine -------------------------------------------------------------

@root.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Endpoint YAML (default: one local endpoint sized to this machine).")
@click.option("--broker", default=None, metavar="URL",
              help="Use this Redis instead of starting a private one.")
@transcription_options
@guarded
def run(inputs: tuple[str, ...], out: str, config_path: str | None, broker: str | None, txt: bool,
        **kw: Any) -> None:
    """Transcribe INPUTS on this machine: private Redis, local workers, progress, then clean up."""
    from producer.private_redis import PrivateRedis
    from worker.supervisor import Supervisor

    opts = build_options(kw)
    endpoints: EndpointSet = load_endpoints(config_path) if config_path else default_local_endpoints()
    private = None if broker else PrivateRedis().start()
    settings = _settings(broker or private.url)  # type: ignore[union-attr]
    log_path = Path(tempfile.gettempdir()) / f"batchscribe-run-{os.getpid()}.log"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop workers, stop Redis
    with open(log_path, "wb") as log_file:
        supervisor = Supervisor(settings, endpoints, config_path=config_path, log_file=log_file, grace=10,
                                follow_registry=False)
        thread = threading.Thread(target=supervisor.run, name="supervisor", daemon=True)
        thread.start()
        try:
            click.echo(f"{len(endpoints)} endpoint(s): "
                       f"{', '.join(f'{e.name} ({e.engine}, {e.concurrency} at once)' for e in endpoints)}; "
                       f"worker log: {log_path}", err=True)
            code = _submit(settings, inputs, out, opts, txt, None, wait=True)
        finally:
            supervisor.request_stop()
            thread.join(timeout=30)
            if private is not None:
                private.close()
    sys.exit(code)


def _register_optional() -> None:
    try:
        from emulator.cli import emulator_command
    except ImportError:
        return
    root.add_command(emulator_command, "emulator")


_register_optional()


def main() -> None:
    root(prog_name="batchscribe")
