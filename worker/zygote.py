"""The consumers' zygote: one process that imports what a consumer needs once, then forks every
consumer of its VM from that warm interpreter (`worker.launch` is the supervisor's side).

Why: a consumer used to spend ~0.5 CPU-s importing Celery's CLI and its plugins, kombu, redis-py,
the Speech SDK and our worker before it took a file. Three endpoints starting together on 2 cores
cost a cold `run` about a second of CPU, and every restart paid it again. A fork of a preloaded
interpreter starts Celery's worker at once (docs/benchmarks.md §10). Nothing preloaded reads the
environment or opens a connection at import, so each child still builds its Celery app from its
own environment, exactly as `celery -A batchscribe.worker.app worker …` does.

Why our own and not `multiprocessing`'s forkserver: that one re-runs the parent's `__main__` script
in every child (the `batchscribe` console script imports the whole CLI) and dies on SIGTERM, which
would SIGKILL its children in the middle of their planned stop when a service manager signals the
whole group.

Protocol, one SOCK_SEQPACKET message each way (JSON):
  supervisor → zygote  {"argv": [...], "env": {...}} with the log file's descriptor attached (or none)
  zygote → supervisor  {"pid": N} | {"error": "..."}, and {"exited": N, "code": C} whenever a
                       consumer ends (C as subprocess's returncode: -SIG when a signal ended it).

The zygote ignores SIGTERM, SIGINT and SIGHUP (a signal to the whole group reaches the consumers'
own handlers and the supervisor instead), and exits when its socket closes: the supervisor is gone.
It also dies with the thread that started it (PDEATHSIG), and its children die with it (SIGKILL),
so a killed supervisor still leaves no consumer behind.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

from batchscribe.common.processes import die_with_parent, exit_now

PRELOAD = ("celery.bin.worker", "celery.app.utils", "celery.apps.worker", "celery.worker.consumer",
           "celery.concurrency.thread", "kombu.transport.redis", "redis", "azure.cognitiveservices.speech",
           "batchscribe.worker.tasks", "batchscribe.worker.engines.azure", "batchscribe.worker.audio")
MESSAGE_MAX = 1 << 20  # bytes: a request carries a consumer's whole environment
IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def preload() -> None:
    """Import what every consumer needs; a module that is not installed (e.g. the Speech SDK on a
    local-only VM) is imported, or reported, by the consumer that needs it."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    socket.send_fds(sock, [json.dumps(message).encode()], fds or [])


def serve(sock: socket.socket) -> None:
    """Fork a consumer per request until the supervisor closes its end."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD writes the wakeup fd
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is sock and not _answer(sock, (wake_r, wake_w)):
                    return
                if key.fileobj == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
            _reap(sock)


def _answer(sock: socket.socket, own_fds: tuple[int, int]) -> bool:
    """One request; False once the supervisor has closed its end."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MESSAGE_MAX, 1)
    if not data:
        return False
    log_fd = fds[0] if fds else None
    try:
        request = json.loads(data)
        zygote = os.getpid()
        pid = os.fork()
    except (ValueError, OSError) as exc:
        send(sock, {"error": f"{type(exc).__name__}: {exc}"})
    else:
        if pid == 0:
            sock.close()
            for fd in own_fds:
                os.close(fd)
            become_consumer(request["argv"], request["env"], log_fd, zygote)
        send(sock, {"pid": pid})
    finally:
        if log_fd is not None:
            os.close(log_fd)
    return True


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        send(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def become_consumer(argv: list[str], env: dict[str, str], log_fd: int | None, zygote: int) -> NoReturn:
    """In the forked child: become `celery <argv>` as a freshly started process would be — its own
    session, default signals, stdin from /dev/null, output to the log — and never return."""
    code: Any = 1
    try:
        os.setsid()
        die_with_parent()
        if os.getppid() != zygote:  # the zygote died before PDEATHSIG was armed: go with it
            os._exit(1)
        signal.set_wakeup_fd(-1)
        for sig in (*IGNORED, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _redirect(log_fd)
        sys.argv = ["celery", *argv]
        _retitle(sys.argv)
        os.environ.clear()
        os.environ.update(env)
        code = run_celery(argv)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def run_celery(argv: list[str]) -> Any:
    """`celery <argv>`. A consumer's command line (`-A APP worker …`: all a supervisor starts) goes
    straight to Celery's worker command with what the umbrella command gives it — the app loaded,
    its CLIContext, the app's worker options — without importing the umbrella's other commands and
    plugins (Flower's, the REPL's: ~0.2 CPU-s of the zygote's preload, on a cold `run`'s start-up
    path). Anything else goes through the umbrella."""
    if len(argv) >= 3 and argv[0] == "-A" and argv[2] == "worker":
        from celery.app.utils import find_app
        from celery.bin.base import CLIContext
        from celery.bin.worker import worker

        app = find_app(argv[1])
        worker.params.extend(app.user_options.get("worker", []))
        context = CLIContext(app=app, no_color=False, workdir=None, quiet=False)
        return worker.main(args=argv[3:], prog_name="celery worker", obj=context,
                           auto_envvar_prefix="CELERY_WORKER")
    from celery.bin.celery import main

    return main()


def _redirect(log_fd: int | None) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = log_fd if log_fd is not None else 2  # no log: the zygote's stderr, the supervisor's
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin, open until it exits
    sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), write_through=True)  # noqa: SIM115
    sys.stderr = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False), write_through=True)  # noqa: SIM115


def _retitle(argv: list[str]) -> None:
    """`ps` shows the command the consumer would have been started with (Celery retitles it later).

    SPT_NOENV: the title stays within the zygote's own arguments (padded by `worker.launch` for
    this) instead of overwriting the environment's strings, so /proc/PID/environ still shows the
    consumer's environment to whoever looks (operators, the tests' leftover checks)."""
    os.environ["SPT_NOENV"] = "1"
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(" ".join([sys.executable, "-m", *argv]))


def main() -> None:
    die_with_parent()
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    preload()
    send(sock, {"ready": os.getpid()})
    serve(sock)
    exit_now(0)  # without tearing down all it preloaded (0.1 s and more of CPU, for nothing)


if __name__ == "__main__":
    main()
