"""`batchscribe run`: the whole pipeline on one machine (private Redis, local consumers, cleanup).

Everything `run` starts lives in one private folder (`mkdtemp`: a fresh name, mode 0700, under
$TMPDIR): the private Redis (unix socket only, no TCP port: nobody else can reach it), its data,
the result cache its pointers point into, and the worker log. On every way out — success, an
error, Ctrl-C (SIGINT), SIGTERM, SIGHUP — it is stopped in reverse order: supervisor and
consumers first (they release their endpoints while Redis still answers), then Redis, then the
folder. Redis runs in its own session, so a Ctrl-C in the terminal reaches `run` only. The worker
log is removed after a successful run (and after a usage, config or input error: nothing ran)
unless --keep-log; when files failed, the run was interrupted or Redis failed, it is kept (only
it) and its path printed. `--flower [PORT]` adds Flower on 127.0.0.1 for the length of the run (a
password made for the run, printed once); it is stopped first.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NoReturn

import click

from batchscribe.cli.base import (
    EXIT_OK,
    EXIT_REDIS,
    EXIT_USAGE,
    build_options,
    build_outputs,
    guarded,
    keep_typed_sas,
    output_options,
    settings_for,
    transcription_options,
)
from batchscribe.common.config import EndpointSet, default_local_endpoints, load_endpoints
from batchscribe.common.errors import ConfigError, InputError, StateError
from batchscribe.common.locations import is_blob
from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.processes import exit_now
from batchscribe.common.queues import serves
from batchscribe.common.settings import Settings
from batchscribe.private_redis import SOCKET_NAME, SOCKET_PATH_MAX

LOG_NAME = "worker.log"
RESULTS_NAME = "results"  # the result cache of a private Redis's workers, beside it (`common.cache`)
ONE_SHOT_BROKER_POLL = 0.1  # s: `run`'s and `convert`'s consumers stop within this of the batch's end
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Endpoint YAML (default: one local endpoint sized to this machine).")
@click.option("--broker", default=None, metavar="URL",
              help="Use this Redis instead of starting a private one.")
@click.option("--keep-log", is_flag=True,
              help="Keep the worker log after a successful run too (it is kept anyway when files failed, "
              "the run was interrupted or Redis failed).")
@click.option("--flower", "flower_port", type=click.IntRange(1, 65535), is_flag=False, flag_value=5555,
              default=None, metavar="[PORT]",
              help="Watch the run in Flower on http://127.0.0.1:PORT (default 5555) while it runs; "
              "its password is printed once.")
@transcription_options
@output_options()
@guarded
def run(inputs: tuple[str, ...], out: str, config_path: str | None, broker: str | None, keep_log: bool,
        flower_port: int | None, txt: bool, **kw: Any) -> None:
    """Transcribe INPUTS on this machine: private Redis, local workers, progress, then clean up."""
    outputs = build_outputs(txt, kw)
    opts = build_options(kw)
    endpoints = load_endpoints(config_path) if config_path else default_local_endpoints()
    check_served(endpoints, opts)  # before anything starts: such a run would wait for ever
    keep_typed_sas([*inputs, out], cluster=False)
    on_this_machine(endpoints, config_path, broker, keep_log, flower_port,
                    lambda settings: _submit(settings, inputs, out, opts, outputs, None, wait=True,
                                                  check_workers=False))


def _submit(*args: Any, **kwargs: Any) -> int:
    """`submit_batch`, imported once the workers are starting: the submit side of the CLI is ~0.3 CPU-s
    of imports that need not delay them."""
    from batchscribe.cli.batches import submit_batch

    return submit_batch(*args, **kwargs)


def on_this_machine(endpoints: EndpointSet, config_path: str | None, broker: str | None, keep_log: bool,
                    flower_port: int | None, work: Callable[[Settings], int], kept: Path | None = None
                    ) -> NoReturn:
    """Start Redis (unless `broker`) and local workers for `endpoints`, run `work` (it submits and
    follows a batch, returning the exit code), stop everything, exit (`run`, `convert`).

    `kept`: a state folder (`state_folder`) whose Redis and log outlive the command, so that running
    the same command again finds what was done; else a private temp folder, removed afterwards."""
    if flower_port is not None:
        from batchscribe.cli.flower import check_free

        check_free(flower_port)  # likewise: a taken port is said before anything starts
    folder = kept or Path(tempfile.mkdtemp(prefix="batchscribe-run-"))
    code = EXIT_USAGE  # until the work returns: a usage, config or input error (guarded prints it)
    sweep: threading.Thread | None = None
    with StopSignals() as stop:
        try:
            with local_workers(folder, stop, endpoints, config_path, broker, append_log=kept is not None,
                               broker_poll=ONE_SHOT_BROKER_POLL) as settings, \
                    run_flower(folder, settings, flower_port):
                code = work(settings)
                if kept is None:
                    sweep = _sweep_results(folder)
        except Interrupted as exc:
            code = 128 + exc.signum
            click.echo(f"\ninterrupted by {signal.Signals(exc.signum).name}: workers stopped"
                       f"{'' if broker else ', private Redis stopped'}", err=True)
        except StateError:
            code = EXIT_REDIS
            raise
        finally:  # the log may explain failed files, an interruption or a Redis failure
            if sweep is not None:
                sweep.join()
            if kept is None:
                _clean(folder, keep_log=keep_log or code not in (EXIT_OK, EXIT_USAGE))
    exit_now(code)


@contextmanager
def run_flower(folder: Path, settings: Settings, port: int | None) -> Iterator[None]:
    """Flower on 127.0.0.1:`port` while the block runs (nothing when `port` is None); stopped
    before the workers and Redis it watches."""
    if port is None:
        yield
        return
    from batchscribe.cli.flower import FLOWER_USER, RunFlower

    log_path = folder / "flower.log"
    with open(log_path, "ab") as log:
        flower = RunFlower(settings, port, log)
        try:
            if flower.wait_ready():
                click.echo(f"Flower: {flower.url} (user {FLOWER_USER}, password {flower.password})", err=True)
            else:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                click.echo(f"Flower did not start ({tail[0]}); the run goes on without it", err=True)
            yield
        finally:
            flower.close()


@contextmanager
def local_workers(folder: Path, stop: StopSignals, endpoints: EndpointSet, config_path: str | None,
                  broker: str | None, append_log: bool = False, broker_poll: float | None = None
                  ) -> Iterator[Settings]:
    """Start Redis in `folder` (unless `broker`), the supervisor and its consumers (log:
    `folder/worker.log`); yield the settings; stop them in reverse order (`run`, `watch`).
    Workers of a private Redis keep their result cache in `folder/results` (its pointers are in that
    Redis alone); with a `broker`, where the cluster's do (BATCHSCRIBE_RESULT_STORE).

    With its own Redis the consumers are started at once, while Redis starts (`Supervisor.run_prestarted`),
    and the batch is published while they boot. Each part registers its stop before it starts, so
    whatever happens next unwinds it. `append_log`: `watch` keeps one log across restarts in its own
    0700 folder. `broker_poll`: the consumers' BRPOP timeout unless BATCHSCRIBE_BROKER_POLL says
    otherwise (a command that ends wants its consumers to stop at once).
    """
    from batchscribe.common.state import StateStore
    from batchscribe.private_redis import PrivateRedis
    from batchscribe.worker.scratch import SCRATCH_ENV
    from batchscribe.worker.supervisor import Supervisor

    private = None if broker else PrivateRedis(data_dir=folder / "redis", unix_socket=True)
    settings = settings_for(broker or private.url)  # type: ignore[union-attr]  # bad settings: nothing started
    if private is not None:  # the result cache lives and goes with the Redis that points into it
        settings = replace(settings, result_store=str((folder / RESULTS_NAME).resolve()))
    if broker_poll is not None and not os.environ.get("BATCHSCRIBE_BROKER_POLL"):
        settings = replace(settings, broker_poll=broker_poll)
    os.environ.setdefault(SCRATCH_ENV, str(folder / "scratch"))  # the local workers' scratch goes with it
    log_path = folder / LOG_NAME
    with ExitStack() as stack:
        try:
            if private is not None:
                stack.callback(private.close)
                private.launch()
            log_file = stack.enter_context(open(log_path, "ab" if append_log else "xb"))  # noqa: SIM115
            supervisor = Supervisor(settings, endpoints, config_path=config_path, log_file=log_file,
                                    grace=10, follow_registry=False,
                                    store=StateStore.connect(settings, check=False))
            redis_up = threading.Event()  # one VM on its own Redis owns every endpoint: consumers start now
            thread = threading.Thread(target=supervisor.run_prestarted if private else supervisor.run,
                                      args=(redis_up,) if private else (), name="supervisor", daemon=True)
            stack.callback(_stop_supervisor, supervisor, thread)
            thread.start()
            if private is not None:
                private.wait_ready()
                redis_up.set()
            click.echo(f"{len(endpoints)} endpoint(s): "
                       f"{', '.join(f'{e.name} ({e.engine}, {e.concurrency} at once)' for e in endpoints)}; "
                       f"worker log: {log_path}", err=True)
            yield settings
        finally:
            stop.disarm()  # whatever ends the run, a signal can no longer cut the cleanup short


def state_folder(kind: str, key: str) -> Path:
    """The kept folder of a one-machine `watch` (`kind` "watch", one per output folder `key`),
    `convert` ("convert", likewise) or `serve --local` ("serve", one per --batchkit-out): its Redis,
    result cache, worker log and lock, kept across restarts so that a restart finds what was done
    and what is still queued. Mode 0700: its Redis
    socket is guarded by it, as `run`'s is."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    real = key if is_blob(key) else os.path.realpath(os.path.expanduser(key))
    folder = base / "batchscribe" / kind / hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    if len(os.fsencode(folder / "redis" / SOCKET_NAME)) > SOCKET_PATH_MAX:
        raise InputError(f"the private Redis socket path under {folder} would be too long for a unix "
                         "socket; set XDG_STATE_HOME to a shorter folder (e.g. ~/.state)")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    (folder / "out").write_text(real + "\n", errors="surrogateescape")  # for a person looking inside
    return folder


@contextmanager
def held_alone(folder: Path, refusal: str) -> Iterator[None]:
    """One process per state folder (two would start two Redis servers on it); `refusal` is the
    InputError's message when another holds it."""
    with open(folder / "lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(refusal) from None
        yield


def check_served(endpoints: EndpointSet, opts: TranscriptionOptions) -> None:
    """Refuse options that no endpoint of the set serves (ConfigError: exit 2)."""
    if any(serves(e, opts.language, opts.engine) for e in endpoints):
        return
    engine = f" with --engine {opts.engine}" if opts.engine else ""
    have = "; ".join(f"{e.name} ({e.engine}: {', '.join(e.languages)})" for e in endpoints)
    raise ConfigError(f"no endpoint of {endpoints.source} serves --language {opts.language}{engine}: it has "
                      f"{have}. Add the language to an endpoint's `languages` in an endpoint file "
                      "(--config FILE), or choose a language and engine it serves")


def _stop_supervisor(supervisor: Any, thread: threading.Thread) -> None:
    """Consumers finish or hand back their files, endpoints are released; Redis must still answer."""
    supervisor.request_stop()
    if thread.ident is not None:  # (on a private Redis that never answered, it stops what it prestarted)
        thread.join(timeout=supervisor.grace + 20)


def _sweep_results(folder: Path) -> threading.Thread:
    """Start removing the private result cache while the workers and Redis stop: nothing reads it once
    the batch is over, and its ~2 entries per job took ~50 ms of a `run`'s shutdown to remove.
    Whatever a late write leaves there, `_clean` removes with the folder."""
    thread = threading.Thread(target=shutil.rmtree, args=(folder / RESULTS_NAME,),
                              kwargs={"ignore_errors": True}, name="sweep", daemon=True)
    thread.start()
    return thread


def _clean(folder: Path, keep_log: bool) -> None:
    """Remove the private folder; with `keep_log`, keep the worker log (and say where)."""
    log = folder / LOG_NAME
    if not (keep_log and log.is_file()):
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in folder.iterdir():
        if entry != log:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    click.echo(f"worker log kept: {log}", err=True)


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP while `run` runs; BaseException so that no `except Exception` eats it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """The first stop signal unwinds `run` (Interrupted) or, given `on_stop`, calls it (`watch` ends
    its loop); after that, signals are acknowledged (`waiting` says what the stop waits for) but not
    obeyed, so workers still stop before Redis."""

    def __init__(self, on_stop: Callable[[int], None] | None = None,
                 waiting: str = "workers first, then Redis") -> None:
        self.armed = True
        self.on_stop = on_stop
        self.waiting = waiting
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in _STOP_SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def disarm(self) -> None:
        self.armed = False

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.armed:
            self.armed = False
            if self.on_stop is None:
                raise Interrupted(signum)
            self.on_stop(signum)
            return
        click.echo(f"\nstopping: {self.waiting}; please wait", err=True)
