"""`batchscribe watch` as a user runs it: a long-lived subprocess, stopped with a signal."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.support.cli import BIN, ROOT, cli_env, end_process


class WatchProcess:
    """`batchscribe watch ARGS` in its own session, its stderr (where it reports) in `log_path`."""

    def __init__(self, *args: str, log_path: Path, broker: str | None = None, **env: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(BIN), "watch", *args], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=cli_env(broker, **env), cwd=ROOT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal `watch` itself (as systemd or `docker stop` would) and wait; its exit code."""
        end_process(self.proc, lambda: os.kill(self.proc.pid, sig), timeout)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> WatchProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
