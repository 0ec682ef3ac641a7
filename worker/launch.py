"""How the supervisor starts a consumer: forked by its VM's zygote (`worker.zygote`), or, when the
zygote cannot serve, as a plain `python -m celery …` process. Either way the pool gets a
`ConsumerProcess`: a pid leading its own process group, an exit code once it has ended, signals."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from batchscribe.common.processes import die_with_parent

if TYPE_CHECKING:  # the pool (and with it Redis and Celery) is imported only to start a plain process:
    from batchscribe.worker.pool import ConsumerProcess  # `start_early` runs before the CLI's imports

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 60.0  # seconds for a fork, the zygote's preload included (~0.5 s; far more on a loaded VM)
TITLE_SPACE = " " * 2048  # room in the zygote's arguments for its consumers' titles (worker.zygote._retitle)
MAX_FAILURES = 3  # zygotes that failed a VM before its consumers start the plain way for good
GONE = -9  # the exit code of a consumer whose zygote has died: PDEATHSIG killed it


class ZygoteUnavailable(Exception):
    """The zygote did not answer; the consumer is started the plain way instead."""


class Zygote:
    """The supervisor's handle on its zygote process. Started at once, so that its imports overlap
    whatever the command does meanwhile; `spawn` waits for them only if they are not done."""

    def __init__(self, env: Mapping[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "batchscribe.worker.zygote", str(theirs.fileno()), TITLE_SPACE],
                env=dict(env),
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent)
        self.sock = ours
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._exits: dict[int, int] = {}
        self.exited = threading.Event()  # set whenever one of its consumers has exited (or it has)
        self._lock = threading.Lock()
        self.alive = True
        threading.Thread(target=self._listen, name="zygote", daemon=True).start()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str],
              log_file: IO[bytes] | None) -> ZygoteConsumer:
        """Fork `celery <argv>` with `env`, its output on `log_file` (else the supervisor's stderr)."""
        fds = [log_file.fileno()] if log_file is not None else []
        with self._lock:  # one request at a time: the next answer is this one's
            if not self.alive:
                raise ZygoteUnavailable("the zygote has exited")
            try:
                socket.send_fds(self.sock, [json.dumps({"argv": list(argv), "env": dict(env)}).encode()], fds)
                answer = self._answers.get(timeout=ANSWER_TIMEOUT)
            except (OSError, queue.Empty) as exc:
                self.kill()  # a late answer must never be taken for the next request's
                raise ZygoteUnavailable(f"no answer from the zygote ({type(exc).__name__})") from exc
        if "pid" not in answer:
            raise ZygoteUnavailable(str(answer.get("error", "the zygote has exited")))
        return ZygoteConsumer(int(answer["pid"]), self)

    def exit_code(self, pid: int) -> int | None:
        code = self._exits.get(pid)
        if code is None and not self.alive:
            return GONE
        return code

    def kill(self) -> None:
        """Give up on a zygote that does not answer (its consumers die with it)."""
        self.alive = False
        with contextlib.suppress(OSError):
            self.process.kill()
        self.close()

    def close(self) -> None:
        """The zygote exits when its socket closes (its consumers must have stopped already)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def _listen(self) -> None:
        try:
            while True:
                data = self.sock.recv(4096)
                if not data:
                    break
                message = json.loads(data)
                if "exited" in message:
                    self._exits[int(message["exited"])] = int(message["code"])
                    self.exited.set()
                elif "ready" not in message:
                    self._answers.put(message)
        except (OSError, ValueError) as exc:
            log.debug("zygote channel closed: %s", exc)
        finally:
            self.alive = False
            self.exited.set()
            self._answers.put({"error": "the zygote has exited"})
            with contextlib.suppress(OSError):
                self.process.wait(timeout=5)


class ZygoteConsumer:
    """A consumer forked by the zygote: not our child, so its exit code comes from the zygote."""

    def __init__(self, pid: int, zygote: Zygote) -> None:
        self._pid = pid
        self.zygote = zygote

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self) -> int | None:
        return self.zygote.exit_code(self._pid)

    def signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, sig)


_early: Zygote | None = None


def start_early() -> None:
    """Start this process's zygote now, for the first `Launcher` to take: `run` and `watch` call it
    before importing the rest of the CLI (~0.4 CPU-s), so that the zygote's imports run on the other
    core meanwhile. Its environment is this process's (each consumer still gets its own)."""
    global _early
    if _early is None:
        try:
            _early = Zygote(os.environ)
        except OSError as exc:
            log.debug("no early zygote: %s", exc)


class Launcher:
    """Starts consumers through a zygote, started again when it has died, and falls back to a plain
    process (with a warning) when it cannot serve, so that a consumer always starts."""

    def __init__(self, env: Mapping[str, str], log_file: IO[bytes] | None) -> None:
        global _early
        self.env = dict(env)
        self.log_file = log_file
        self._zygote, _early = _early, None  # the one `start_early` started, if any: it is ours now
        self._failures = 0
        self.warm()

    def warm(self) -> None:
        """Have a zygote importing now."""
        if self._failures < MAX_FAILURES and (self._zygote is None or not self._zygote.alive):
            if self._zygote is not None:
                self._zygote.close()
            try:
                self._zygote = Zygote(self.env)
            except OSError as exc:
                self._failures += 1
                log.warning("could not start the consumers' zygote (%s); consumers start as plain processes",
                            exc)

    def start(self, command: Sequence[str], env: Mapping[str, str]) -> ConsumerProcess:
        """`command` is the plain command line (`python -m celery …`); the zygote runs its Celery part."""
        self.warm()
        if self._zygote is not None:
            try:
                return self._zygote.spawn(command[3:], env, self.log_file)
            except ZygoteUnavailable as exc:
                self._failures += 1
                log.warning("consumer started as a plain process: %s", exc)
        from batchscribe.worker.pool import PopenConsumer

        out = self.log_file
        return PopenConsumer(subprocess.Popen(
            list(command), env=dict(env), stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=True, preexec_fn=die_with_parent))

    def wait_exit(self, timeout: float) -> None:
        """Sleep up to `timeout`, less if a consumer exits meanwhile (only the zygote's say so)."""
        zygote = self._zygote
        if zygote is None:
            time.sleep(timeout)
            return
        zygote.exited.wait(timeout)
        zygote.exited.clear()

    def close(self) -> None:
        if self._zygote is not None:
            self._zygote.close()
