"""Another local user (`nobody`) trying to reach a Redis, as `redis-cli` would: the threat `run`'s
private Redis must withstand (docs/design.md §The private Redis of `run`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.poll import wait_for

NOBODY = 65534


def redis_address(pid: int, timeout: float = 15.0) -> str:
    """Where a running redis-server listens, from the title it gives itself (`/proc/PID/cmdline`):
    `unixsocket:/path/redis.sock` or `127.0.0.1:6379`. Until it has started it still shows the
    arguments it was given (`run` goes on meanwhile): wait for the title."""
    def title() -> str:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").strip()

    wait_for(lambda: " --" not in title(), timeout, "redis-server to set its title")
    return title().split()[-1]


def can_act_as_another_user() -> bool:
    """Switching to user nobody needs root."""
    return os.geteuid() == 0


def ping_as_another_user(address: str) -> subprocess.CompletedProcess[str]:
    """`redis-cli PING` as user nobody against `unixsocket:PATH` or `HOST:PORT`; skips the test
    unless `can_act_as_another_user()`."""
    if not can_act_as_another_user():
        pytest.skip("switching to another user needs root")
    if address.startswith("unixsocket:"):
        target = ["-s", address.removeprefix("unixsocket:")]
    else:
        host, _, port = address.rpartition(":")
        target = ["-h", host, "-p", port]
    return subprocess.run(["redis-cli", *target, "PING"], capture_output=True, text=True, timeout=10,
                          user=NOBODY, group=NOBODY, cwd="/")
