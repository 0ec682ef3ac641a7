"""The `batchscribe` command as a user runs it: one-shot commands and `worker` VMs as subprocesses.

Subprocesses get PYTHONPATH=ROOT, so they run this checkout's code whatever the venv points at.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent / "batchscribe"


def cli_env(broker: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without BATCHSCRIBE_* settings, plus `broker` and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCRIBE_")}
    env["PYTHONPATH"] = str(ROOT)
    if broker:
        env["BATCHSCRIBE_REDIS_URL"] = broker
    # A worker VM runs a media converter by default; the tests' VMs run none unless a test asks
    # (BATCHSCRIBE_CONVERT_CONCURRENCY=N), so that they start one consumer per endpoint, as before.
    env["BATCHSCRIBE_CONVERT_CONCURRENCY"] = "0"
    env.update(extra)
    return env


def run_cli(*args: str, broker: str | None = None, timeout: float = 240, **env: str
            ) -> subprocess.CompletedProcess[str]:
    """Run the batchscribe command as a user would, capturing its output."""
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env(broker, **env), cwd=ROOT)


class WorkerProcess:
    """A `batchscribe worker` VM as a subprocess in its own session; stop() is a graceful SIGTERM."""

    def __init__(self, broker: str, config: Path | None, hostname: str, log_path: Path,
                 options: Sequence[str] = (), **env: str) -> None:
        args = [str(BIN), "worker", "--hostname", hostname, *options]
        if config is not None:
            args += ["--config", str(config)]
        self.hostname = hostname
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=cli_env(broker, **env), cwd=ROOT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        """Signal the supervisor alone (as systemd or `docker stop` would with KillMode=process)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> None:
        end_process(self.proc, lambda: os.killpg(self.proc.pid, signal.SIGTERM), timeout)
        if not self._log.closed:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def end_process(proc: subprocess.Popen[bytes], ask: Callable[[], None], timeout: float) -> None:
    """`ask` a process (in its own session) to stop and wait; SIGKILL its group after `timeout` s."""
    if proc.poll() is None:
        ask()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
