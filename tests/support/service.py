"""A long-running `batchscribe` command as a test starts it: wait until it announces itself, copy its
output to a log (a full pipe would block it), stop it and close everything afterwards.

The one launcher behind `EmulatorProcess` (tests.support.emulator) and `ApiServer`
(tests.support.api)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class ServiceProcess:
    """Runs `cmd` and reads its output until `banner` (a regex) has matched `count` lines; those
    matches are in `announced`. Raises RuntimeError, with what it printed, if it exits or stays
    silent for `timeout` seconds first. A context manager: stopped on exit."""

    def __init__(self, cmd: Sequence[str], banner: str, env: dict[str, str], count: int = 1,
                 log_path: Path | None = None, timeout: float = 15.0, cwd: Path | None = None) -> None:
        self.log_path = log_path
        self.proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd)
        self.announced = self._read_banner(re.compile(banner), count, timeout, cmd[:2])
        self._drain = threading.Thread(target=self._copy_output, daemon=True)
        self._drain.start()

    def _read_banner(self, banner: re.Pattern[str], count: int, timeout: float,
                     what: Sequence[str]) -> list[re.Match[str]]:
        assert self.proc.stdout is not None
        found: list[re.Match[str]] = []
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            if match := banner.search(line):
                found.append(match)
        if len(found) < count:
            self.kill()
            raise RuntimeError(f"{' '.join(map(str, what))} did not start (exit {self.proc.poll()}):\n"
                               + "".join(seen[-40:]))
        return found

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        if self.log_path is None:
            for _line in self.proc.stdout:
                pass
            return
        with open(self.log_path, "ab") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (the service dies with whatever it was doing)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_output()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_output()

    def _close_output(self) -> None:
        """The pipe ends with the process: let the copier finish, then close our end."""
        drain = getattr(self, "_drain", None)
        if drain is not None and drain.is_alive():
            drain.join(timeout=5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
