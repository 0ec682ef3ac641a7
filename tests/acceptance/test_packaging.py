"""How the package installs and how operators start it: one top-level name in site-packages, and
the plain Celery and Flower commands of the README working with the namespaced app."""

from __future__ import annotations

import base64
import os
import re
import shutil
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
    """`pip wheel .` of a copy of the checkout (setuptools builds in the source folder) with this
    venv's setuptools: no network, no build isolation, nothing left in the working tree."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".bench", ".tools"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=180)
    return next((tmp_path / "dist").glob("batchscribe-*.whl"))


def test_install_adds_exactly_one_top_level_package(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
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


def test_plain_celery_worker_and_flower_start_with_the_namespaced_app() -> None:
    """`celery -A batchscribe.worker.app worker …` (README, one endpoint) and Flower, as documented:
    credentials in FLOWER_BASIC_AUTH (not on the command line), broker from BATCHSCRIBE_REDIS_URL —
    here the unix socket of a Redis like `run`'s private one, which both must reach."""
    with PrivateRedis(unix_socket=True) as redis_server:
        env = cli_env(redis_server.url)
        celery = [sys.executable, "-m", "celery", "-A", "batchscribe.worker.app"]
        worker = subprocess.Popen([*celery, "worker", "-Q", "ep.local,pool.en-US", "-c", "1", "-P", "threads",
                                   "-n", "local@%h", "--without-gossip", "--without-mingle", "-l", "INFO"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        port = free_port()
        flower = subprocess.Popen([*celery, "flower", "--address=127.0.0.1", f"--port={port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**env, "FLOWER_BASIC_AUTH": "user:secret-pass"}, cwd=ROOT)
        try:
            lines: list[str] = []
            assert worker.stdout is not None
            wait_for(lambda: bool(lines.append(worker.stdout.readline()) or re.search(r"\bready\b", lines[-1])),
                     60, "the plain Celery worker to be ready", interval=0)
            assert any("batchscribe.transcribe" in line for line in lines), "the task is registered"
            url = f"http://127.0.0.1:{port}/api/workers"
            wait_for(lambda: _status(urllib.request.Request(url)) == 401, 30,
                     "Flower to answer (and ask for a password)")
            authorized = urllib.request.Request(f"{url}?refresh=1", headers={
                "Authorization": "Basic " + base64.b64encode(b"user:secret-pass").decode()})
            assert _status(authorized) == 200, "FLOWER_BASIC_AUTH sets Flower's credentials"
            wait_for(lambda: "local@" in _body(authorized), 30,  # asked over the broker, i.e. the socket
                     "Flower to see the worker through the socket")
        finally:
            for proc in (worker, flower):
                proc.terminate()
                proc.wait(timeout=30)
                if proc.stdout is not None:
                    proc.stdout.close()


def _body(request: urllib.request.Request) -> str:
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def _status(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0
