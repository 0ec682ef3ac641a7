"""How the package installs and how operators start it: one top-level name in site-packages, and
the plain Celery and Flower commands of the README working with the namespaced app."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import venv
import zipfile
from pathlib import Path

from batchscribe.private_redis import PrivateRedis, free_port
from tests.support.cli import ROOT, cli_env
from tests.support.poll import wait_for


def _wheel(tmp_path: Path) -> Path:
    """`pip wheel .` with this venv's setuptools (no network, no build isolation)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=180)
    return next(tmp_path.glob("batchscribe-*.whl"))


def test_install_adds_exactly_one_top_level_package(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/", 1)[0] for name in archive.namelist() if not name.split("/", 1)[0].endswith(
            (".dist-info", ".data"))}
        names = archive.namelist()
    assert top == {"batchscribe"}, top
    for module in ("common/state/store.py", "producer/submit.py", "worker/tasks.py", "emulator/server.py",
                   "cli/__init__.py"):
        assert f"batchscribe/{module}" in names, f"{module} missing from the wheel"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    site = next(env_dir.glob("lib/python*/site-packages"))
    before = set(os.listdir(site))
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(wheel)], check=True, capture_output=True, timeout=180)
    added = {n for n in set(os.listdir(site)) - before if not n.endswith(".dist-info")}
    assert added == {"batchscribe"}, f"site-packages gained {sorted(added)}"


def test_plain_celery_worker_and_flower_start_with_the_namespaced_app(tmp_path: Path) -> None:
    """`celery -A batchscribe.worker.app worker …` (README, one endpoint) and Flower, as documented."""
    with PrivateRedis(data_dir=tmp_path / "redis") as redis_server:
        env = cli_env(redis_server.url)
        celery = [sys.executable, "-m", "celery", "-A", "batchscribe.worker.app"]
        worker = subprocess.Popen([*celery, "worker", "-Q", "ep.local,pool.en-US", "-c", "1", "-P", "threads",
                                   "-n", "local@%h", "--without-gossip", "--without-mingle", "-l", "INFO"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        port = free_port()
        flower = subprocess.Popen([*celery, "flower", f"--broker={redis_server.url}", "--address=127.0.0.1",
                                   f"--port={port}", "--basic-auth=user:secret-pass"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        try:
            lines: list[str] = []
            assert worker.stdout is not None
            wait_for(lambda: bool(lines.append(worker.stdout.readline()) or re.search(r"\bready\b", lines[-1])),
                     60, "the plain Celery worker to be ready", interval=0)
            assert any("batchscribe.transcribe" in line for line in lines), "the task is registered"
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers")
            wait_for(lambda: _status(request) == 401, 30, "Flower to answer (and ask for a password)")
        finally:
            for proc in (worker, flower):
                proc.terminate()
                proc.wait(timeout=30)


def _status(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0
