"""Start the speech-container emulator for tests, make audio for it, read process resources.

In-process (`running_emulator`) is fastest and gives the Python control API; `emulator_process`
runs `python -m emulator` as a user would, for tests of the CLI and for clean memory numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.config import Endpoint
from emulator import Emulator, EmulatorConfig
from tests.support.speech import synthesize
from worker.engines.base import PreparedAudio

LOOPBACK = "127.0.0.1"
SAMPLE_RATE = 16000


@contextlib.contextmanager
def running_emulator(ports: int = 1, **config: Any) -> Iterator[Emulator]:
    """An in-process emulator on `ports` free loopback ports; config as in EmulatorConfig."""
    config.setdefault("rtf", 0.0)
    with Emulator(ports=[0] * ports, config=EmulatorConfig(host=LOOPBACK, **config)) as emu:
        yield emu


def endpoint_for(port: int, name: str = "emu", **fields: Any) -> Endpoint:
    """An azure Endpoint pointing at an emulator port (high rtf: the SDK does not throttle)."""
    fields.setdefault("rtf", 1000.0)
    return Endpoint(name=name, engine="azure", host=LOOPBACK, port=port, **fields)


@contextlib.contextmanager
def emulator_process(*args: str, ports: int = 1, timeout: float = 15.0) -> Iterator[list[int]]:
    """`python -m emulator` on free ports; yields the ports it printed, stops it afterwards."""
    cmd = [sys.executable, "-m", "emulator", *args, *["--port", "0"] * ports]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        found: list[int] = []
        deadline = time.monotonic() + timeout
        while len(found) < ports and time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line and proc.poll() is not None:
                break
            if match := re.search(r"listening on ws://[\d.]+:(\d+)", line):
                found.append(int(match.group(1)))
        if len(found) < ports:
            raise RuntimeError(f"emulator did not start: {cmd} (exit {proc.poll()})")
        yield found
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def http_get(port: int, path: str) -> tuple[int, Any]:
    """GET on an emulator port; returns (status, parsed JSON body)."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def tone_wav(path: Path, seconds: float, freq: float = 440.0) -> PreparedAudio:
    """A 16 kHz mono 16-bit sine of an exact length (the emulator's duration mode reports it)."""
    frames = int(round(seconds * SAMPLE_RATE))
    samples = (int(8000 * math.sin(2 * math.pi * freq * i / SAMPLE_RATE)) for i in range(frames))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(struct.pack(f"<{frames}h", *samples))
    return PreparedAudio(path=path, duration=frames / SAMPLE_RATE)


def speech_wav(path: Path, text: str) -> PreparedAudio:
    """espeak-ng speech as engines take it (16 kHz mono 16-bit WAV)."""
    synthesize(text, path)
    with wave.open(str(path), "rb") as wav:
        return PreparedAudio(path=path, duration=wav.getnframes() / wav.getframerate())


def _proc_status(field: str, pid: int | str = "self") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process in MB (Linux /proc; no psutil needed)."""
    return _proc_status("VmRSS", pid) / 1024


def native_threads(pid: int | str = "self") -> int:
    """All OS threads of a process, the SDK's native ones included."""
    return _proc_status("Threads", pid)


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout` (bounded waits only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())

