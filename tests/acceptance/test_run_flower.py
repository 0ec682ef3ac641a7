"""`batchscribe run --flower PORT`: Flower for the length of a one-machine run, on 127.0.0.1 with a
password made for the run and printed once, reaching the private Redis through its unix socket;
gone with everything else when the run ends."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscribe.cli.flower import FLOWER_USER
from batchscribe.private_redis import free_port
from tests.support.cli import BIN, ROOT, cli_env, run_cli
from tests.support.cluster import EndpointSpec, duration_emulator, make_audio, write_endpoints
from tests.support.poll import wait_for


def get(url: str, password: str | None) -> tuple[int, str]:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{FLOWER_USER}:{password}".encode()).decode()
               } if password else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, ""
    except OSError:
        return 0, ""


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """`run`'s private folder goes under TMPDIR: a short one, so its Redis socket path fits."""
    folder = Path(tempfile.mkdtemp(prefix="bs-flower-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_run_with_flower_shows_the_run_and_stops_with_it(tmp_path: Path, short_tmp: Path) -> None:
    emulator = duration_emulator(1, 1.0, tmp_path / "emulator.log")  # real time: the run lasts a while
    try:
        config = write_endpoints(tmp_path / "endpoints.yaml", [EndpointSpec("emu", emulator.ports[0], concurrency=1)])
        audio = make_audio(tmp_path / "in", [2.0] * 5)
        port = free_port()
        lines: list[str] = []
        run = subprocess.Popen([str(BIN), "run", str(audio.folder), "--out", str(tmp_path / "out"), "--config",
                                str(config), "--flower", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli_env(TMPDIR=str(short_tmp)))
        assert run.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(run.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        try:
            wait_for(lambda: any(line.startswith("Flower: ") for line in lines) or run.poll() is not None, 60,
                     "run to announce Flower")
            announced = [line for line in lines if line.startswith("Flower: ")]
            assert announced, "".join(lines)
            password = announced[0].rsplit("password ", 1)[1].rstrip(")\n")
            base = f"http://127.0.0.1:{port}"
            assert announced[0].startswith(f"Flower: {base}/ (user {FLOWER_USER}, password ")
            assert get(f"{base}/api/workers", None)[0] == 401
            assert get(f"{base}/api/workers", "not-the-password")[0] == 401
            wait_for(lambda: "emu@" in get(f"{base}/api/workers?refresh=1", password)[1], 30,
                     "Flower to see the run's consumer (through the private Redis' socket)")
            wait_for(lambda: len(json.loads(get(f"{base}/api/tasks", password)[1] or "{}")) >= 1, 30,
                     "Flower to see the run's tasks")
            assert run.wait(timeout=120) == 0, "".join(lines)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            reader.join(timeout=10)
            if run.stdout is not None:
                run.stdout.close()
            if run.stderr is not None:
                run.stderr.close()
        assert get(f"{base}/", password)[0] == 0, "Flower stopped with the run"
        assert sum(password in line for line in lines) == 1, "the password is printed once"
        assert not list(short_tmp.iterdir()), "the private folder is removed"
    finally:
        emulator.stop()


def test_run_flower_on_a_taken_port_is_a_usage_error(tmp_path: Path, short_tmp: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        audio = make_audio(tmp_path / "in", [0.5])
        result = run_cli("run", str(audio.folder), "--out", str(tmp_path / "out"), "--flower", str(port),
                         TMPDIR=str(short_tmp))
    assert result.returncode == 2, result.stderr
    assert f"--flower {port}: port {port} on 127.0.0.1 is taken" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(short_tmp.iterdir()), "nothing was started"


def test_batchscribe_flower_wants_credentials() -> None:
    result = run_cli("flower", "--port=1")  # refused before Flower starts: nothing listens
    assert result.returncode == 2, result.stderr
    assert "Flower needs credentials: set FLOWER_BASIC_AUTH=user:password" in result.stderr
