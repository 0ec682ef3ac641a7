"""`batchscribe health` as a container healthcheck runs it: against a real `batchscribe worker`.

(Which consumer states are unhealthy — exited, silent — is checked in-process in
tests/integration/test_supervisor.py.)
"""

from __future__ import annotations

from pathlib import Path

from batchscribe.private_redis import PrivateRedis
from tests.support.cli import run_cli
from tests.support.emulator import running_emulator
from tests.support.poll import wait_for


def test_health_follows_the_worker_and_redis(tmp_path: Path, redis_server: PrivateRedis, start_worker) -> None:
    def health() -> tuple[int, str, str]:
        result = run_cli("health", "--hostname", "vm1", broker=redis_server.url, timeout=30)
        return result.returncode, result.stdout.strip(), result.stderr.strip()

    code, out, err = health()
    assert (code, out) == (1, "")
    assert err == ("error: no worker supervisor of VM 'vm1' is alive: no heartbeat in Redis (is "
                   "`batchscribe worker --hostname vm1` running against this Redis?)")
    with running_emulator(ports=1) as emu:
        config = tmp_path / "eps.yaml"
        config.write_text(f"a:\n  host: 127.0.0.1\n  port: {emu.ports[0]}\n  concurrency: 1\n")
        worker = start_worker(config, hostname="vm1")
        wait_for(lambda: health()[0] == 0, 30, "the worker to be healthy", on_timeout=lambda: str(health()))
        code, out, err = health()
        assert out.startswith("worker vm1: supervisor pid ") and "consumers: a (" in out and err == ""
        worker.stop()  # a planned stop withdraws the heartbeat at once
        code, _, err = health()
        assert code == 1 and "no worker supervisor of VM 'vm1' is alive" in err
    redis_server.stop()
    code, _, err = health()
    assert code == 1 and err.startswith("error: cannot reach Redis at redis://127.0.0.1:") and len(err.splitlines()) == 1
