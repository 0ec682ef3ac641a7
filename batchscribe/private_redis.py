"""A private redis-server: for `batchscribe run` (on a unix socket) and for the test fixtures (on TCP).

`run`'s Redis holds transcripts and the output path of every file, which its workers write to as
the user who ran `run`: nobody else may reach it. With `unix_socket=True` it listens on
`DATA_DIR/redis.sock` only (no TCP port at all), and DATA_DIR is made 0700, so only this user (and
root) can connect. The test fixtures keep a loopback TCP port (restarts on the same address); both
go through the same start/stop code.

The server runs in its own session, so a Ctrl-C in the terminal reaches `run` (which stops its
workers first, then this Redis) and not Redis itself; it also gets SIGTERM if the thread that
started it dies, so a killed `run` leaves no redis-server behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from batchscribe.common.errors import StateError
from batchscribe.common.processes import die_with_parent

SOCKET_NAME = "redis.sock"
# Hashes of up to 1,024 fields of up to 1,024 bytes stay listpacks (Redis's compact encoding): the
# 64-record hashes of a batch and the 4,096-way indexes (docs/deploy.md §Redis memory) cost a
# third of what the default limits (512 fields, 64 bytes) make of their longer paths.
MEMORY_SETTINGS = ("--hash-max-listpack-entries", "1024", "--hash-max-listpack-value", "1024",
                   "--zset-max-listpack-entries", "512")
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its NUL


def _terminate_with_parent() -> None:
    die_with_parent(signal.SIGTERM)  # SIGTERM: Redis flushes its AOF and removes its socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """redis-server with AOF in its own folder; stop() and start() again keep the data and address."""

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None,
                 appendonly: bool = True, unix_socket: bool = False) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="batchscribe-redis-"))
        self.unix_socket = unix_socket
        self.port = 0 if unix_socket else (port or free_port())
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / SOCKET_NAME

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if self.unix_socket:
            return ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return ["--port", str(self.port), "--bind", "127.0.0.1"]

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.unix_socket:
            os.chmod(self.data_dir, 0o700)  # the socket's only guard: nobody else may enter the folder
            if len(os.fsencode(self.socket_path)) > SOCKET_PATH_MAX:
                raise StateError(f"the private Redis socket path {self.socket_path} is too long for a unix "
                                 "socket; set TMPDIR to a shorter folder (e.g. /tmp)")

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        """Start the server and wait until it answers."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> PrivateRedis:
        """Start the server without waiting for it (`wait_ready` does): `run` starts its consumers
        meanwhile."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise StateError("redis-server is not installed (apt-get install redis-server), "
                             "or pass --broker redis://HOST:6379/0 to use a running Redis")
        self._prepare_dir()
        args = [binary, *self._listen_args(), "--dir", str(self.data_dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec", "--maxmemory-policy", "noeviction", *MEMORY_SETTINGS,
                "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(self.data_dir / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_terminate_with_parent)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the launched server answers a PING; StateError (and nothing left running) if it exits
        or stays silent for `timeout` seconds, or if the wait is interrupted."""
        try:
            self._wait_ready(timeout)
        except BaseException:  # not answering, or interrupted while waiting: leave nothing running
            self.stop(kill=True)
            raise

    def _wait_ready(self, timeout: float) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise StateError(f"redis-server exited at start; see {self.data_dir / 'redis.log'}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.01)
        finally:
            client.close()
        where = self.socket_path if self.unix_socket else f"port {self.port}"
        raise StateError(f"redis-server did not answer on {where} within {timeout:.0f}s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        elif not self._shutdown_command():
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _shutdown_command(self) -> bool:
        """Ask with SHUTDOWN, which Redis obeys at once (flushing its AOF as on SIGTERM); a SIGTERM it
        only notices at its next cron tick, up to 100 ms later (measured: 120 ms, 8 ms with the
        command). False when it cannot be asked (not answering): then SIGTERM."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=2)
        try:
            client.shutdown(nosave=True)  # no RDB snapshots here (--save ""); the AOF is flushed anyway
        except redis.ConnectionError:  # the server closing the connection as it exits: done
            return True
        except redis.RedisError:
            return False
        finally:
            client.close()
        return True

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
