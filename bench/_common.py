"""Helpers shared by the benchmarks in bench/: table printing, a private Redis, round-trip counting.

Not a test helper: nothing here asserts a timing. Benchmarks compare ratios measured in one run.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as `.venv/bin/python bench/NAME.py` from anywhere

import redis  # noqa: E402
from redis.connection import AbstractConnection  # noqa: E402

from batchscribe.private_redis import PrivateRedis  # noqa: E402


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """A plain-text table, right-aligned numbers, left-aligned text; floats as given (pre-format them)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(headers))]
    if title:
        print(f"\n{title}")

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric))

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value).rstrip("x%"))
    except ValueError:
        return False
    return True


def machine() -> str:
    """One line about where the numbers come from."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for raw in Path("/proc/cpuinfo").read_text().splitlines():
            if raw.startswith("model name"):
                cpu = raw.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, {platform.platform()}"


def median_time(action: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    """Median wall seconds of `runs` calls, and every run's time."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


@contextmanager
def private_redis(appendonly: bool = True) -> Iterator[PrivateRedis]:
    """A throwaway redis-server on a free port (AOF everysec by default, as deployed)."""
    server = PrivateRedis(appendonly=appendonly).start()
    try:
        yield server
    finally:
        server.close()


# ---- counting Redis traffic ----------------------------------------------------------------------


class RoundTrips:
    """Counts client→Redis writes (one per single command, one per pipeline / script call) in this
    process, whichever client sends them (redis-py directly or kombu through redis-py)."""

    def __init__(self) -> None:
        self.count = 0
        self._original: Any = None

    def __enter__(self) -> RoundTrips:
        self._original = original = AbstractConnection.send_packed_command
        counter = self

        def counting(conn: Any, command: Any, check_health: bool = True) -> Any:
            counter.count += 1
            return original(conn, command, check_health)

        AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]


@dataclass
class ServerStats:
    """Commands the server processed, total and per command name, from INFO (monotonic counters)."""

    total: int
    per_command: dict[str, int]

    @classmethod
    def read(cls, client: redis.Redis) -> ServerStats:
        stats = client.info("stats")
        commandstats = client.info("commandstats")
        per = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in commandstats.items()}
        return cls(int(stats["total_commands_processed"]), per)

    def minus(self, before: ServerStats) -> ServerStats:
        """Delta, without the two INFO calls `read` itself issues."""
        per = {k: v - before.per_command.get(k, 0) for k, v in self.per_command.items()}
        per["info"] = per.get("info", 0) - 2
        per = {k: v for k, v in per.items() if v > 0}
        return ServerStats(self.total - before.total - 2, per)


@contextmanager
def traffic(client: redis.Redis) -> Iterator[dict[str, Any]]:
    """Measure round trips (client side) and commands (server side) of the block.

    Yields a dict filled on exit: round_trips, commands (top level, as the server counts them),
    per_command (commandstats delta; includes the calls Lua scripts make inside Redis).
    """
    out: dict[str, Any] = {}
    before = ServerStats.read(client)
    with RoundTrips() as trips:
        yield out
    after = ServerStats.read(client)
    delta = after.minus(before)
    out.update(round_trips=trips.count, commands=delta.total, per_command=delta.per_command)
