"""`batchscribe flower`: Flower on the cluster's broker with batchscribe's task display
(`batchscribe/flowerconfig.py`: the file name as the task's name, what became of each delivery as
its result), and the Flower that `run --flower` starts for the length of a run.

It is `celery -A batchscribe.worker.app flower --conf=…/flowerconfig.py`, so every Flower option
works as documented by Flower; credentials are required (FLOWER_BASIC_AUTH keeps them out of `ps`).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import click

from batchscribe import flowerconfig
from batchscribe.cli.base import EXIT_USAGE, broker_option, fail, guarded, settings_for
from batchscribe.common.errors import ConfigError
from batchscribe.common.processes import die_with_parent
from batchscribe.common.settings import Settings

FLOWER_USER = "batchscribe"  # `run --flower`'s user name (its password is generated per run)
_AUTH_OPTIONS = ("--basic-auth", "--basic_auth", "--auth")


def flower_argv(*options: str) -> list[str]:
    """The Flower command line: the workers' Celery app, batchscribe's display, then `options`."""
    return [sys.executable, "-m", "celery", "-A", "batchscribe.worker.app", "flower",
            f"--conf={Path(flowerconfig.__file__).resolve()}", *options]


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("flower_options", nargs=-1, type=click.UNPROCESSED)
@broker_option
@guarded
def flower(flower_options: tuple[str, ...], broker: str | None) -> None:
    """Run Flower for this cluster. FLOWER_OPTIONS go to Flower as given (--address=127.0.0.1
    --port=5555, --url_prefix=…, --persistent=True …); credentials in FLOWER_BASIC_AUTH=user:password
    (or --basic-auth=…, or --auth with OAuth)."""
    settings = settings_for(broker)
    given = any(o.split("=", 1)[0] in _AUTH_OPTIONS for o in flower_options)
    if not (given or os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH")):
        fail("Flower needs credentials: set FLOWER_BASIC_AUTH=user:password (kept out of `ps`), or pass "
             "--basic-auth=user:password or --auth for OAuth", EXIT_USAGE)
    argv = flower_argv(*flower_options)
    os.execve(argv[0], argv, {**os.environ, **settings.to_env()})


class RunFlower:
    """Flower for the length of `batchscribe run`: on 127.0.0.1:`port` only, with a password made
    for this run (printed once), its output in `log`. `close()` stops it (before the workers and
    Redis it watches)."""

    def __init__(self, settings: Settings, port: int, log: IO[bytes]) -> None:
        check_free(port)
        self.port = port
        self.password = secrets.token_urlsafe(12)
        env = {**os.environ, **settings.to_env(), "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{self.password}"}
        self.proc = subprocess.Popen(flower_argv("--address=127.0.0.1", f"--port={port}"), env=env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True once Flower answers (401 without the password); False if it exited or stayed silent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                urllib.request.urlopen(self.url, timeout=2).close()
                return True
            except urllib.error.HTTPError:
                return True  # it answers: 401 asks for the password
            except OSError:
                time.sleep(0.2)
        return False

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def check_free(port: int) -> None:
    """A port taken by something else is a usage error said now, not a Flower traceback in a log
    (ConfigError: exit 2)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(f"--flower {port}: port {port} on 127.0.0.1 is taken ({exc.strerror}); "
                              "choose another one") from exc
