"""Consumer processes without processes: what `worker.pool.Pool` is given in tests instead of a
real spawn."""

from __future__ import annotations

import signal

from batchscribe.common.config import Endpoint


class FakeProcess:
    """Exits when told to (`exit`), on SIGKILL, and on SIGTERM unless `stubborn`."""

    def __init__(self, pid: int, stubborn: bool = False) -> None:
        self.pid = pid
        self.stubborn = stubborn
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGKILL or not self.stubborn:
            self.exit(-sig)

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code


class Spawner:
    def __init__(self, stubborn: bool = False) -> None:
        self.started: list[tuple[str, FakeProcess]] = []
        self.stubborn = stubborn

    def __call__(self, endpoint: Endpoint) -> FakeProcess:
        proc = FakeProcess(1000 + len(self.started), self.stubborn)
        self.started.append((endpoint.name, proc))
        return proc

    def last(self, name: str) -> FakeProcess:
        return [p for n, p in self.started if n == name][-1]
