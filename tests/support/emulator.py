"""Start the speech-container emulator for tests, make audio for it, read process resources.

In-process (`running_emulator`) is fastest and gives the Python control API; `EmulatorProcess`
runs `batchscribe emulator` as a user would, for tests of the CLI, clusters whose parts are killed
independently, and clean memory numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import struct
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchscribe.common.config import Endpoint
from batchscribe.emulator import Emulator, EmulatorConfig
from batchscribe.worker.engines.base import PreparedAudio
from tests.support.cli import BIN, cli_env
from tests.support.service import ServiceProcess
from tests.support.speech import synthesize

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


class EmulatorProcess(ServiceProcess):
    """`batchscribe emulator` on `ports` free ports, as its own process (it outlives workers and
    Redis restarts); faults and counters through its HTTP control API. A context manager.

    A port under `refuse` closes its listener, so control requests go through another port of the
    same process (`port=P` addresses the target)."""

    def __init__(self, *args: str, ports: int = 1, log_path: Path | None = None, timeout: float = 15.0) -> None:
        super().__init__([str(BIN), "emulator", *args, *["--port", "0"] * ports],
                         r"listening on ws://[\d.]+:(\d+)", cli_env(), count=ports, log_path=log_path,
                         timeout=timeout)
        self.ports = [int(match.group(1)) for match in self.announced]
        self._refused: set[int] = set()

    def _control(self, path: str, port: int) -> Any:
        via = next((p for p in self.ports if p not in self._refused), None)
        if via is None:
            raise RuntimeError("every port refuses: no way to reach the control API")
        status, body = http_get(via, f"{path}{'&' if '?' in path else '?'}port={port}")
        if status != 200:
            raise RuntimeError(f"emulator control {path} on port {port}: HTTP {status} {body}")
        return body

    def set_fault(self, port: int, mode: str, rate: float = 1.0, count: int | None = None) -> None:
        """`count`: the fault hits that many sessions, then the port is healthy again."""
        self._control(f"/control/fault?mode={mode}&rate={rate}{'' if count is None else f'&count={count}'}", port)
        if mode == "refuse" and rate >= 1.0:
            self._refused.add(port)
        else:
            self._refused.discard(port)

    def stats(self, port: int) -> dict[str, Any]:
        body: dict[str, Any] = self._control("/control/stats", port)
        return body

    def sessions_total(self) -> int:
        return sum(int(self.stats(p)["sessions_total"]) for p in self.ports)

    def active(self) -> int:
        return sum(int(self.stats(p)["active"]) for p in self.ports)

    def alive(self) -> bool:
        return self.proc.poll() is None


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


def endpoints_yaml(path: Path, ports: dict[str, int], concurrency: int = 2, stall: float = 30) -> Path:
    """An endpoint YAML of azure endpoints on emulator ports (high rtf: the SDK does not throttle)."""
    path.write_text("".join(
        f"{name}:\n  host: 127.0.0.1\n  port: {port}\n  concurrency: {concurrency}\n  rtf: 1000\n"
        f"  stallTimeout: {stall}\n" for name, port in ports.items()))
    return path


def tones(folder: Path, durations: list[float]) -> dict[str, float]:
    """`folder`/tNN.wav, one tone per duration (each its own pitch: no dedupe); name -> duration."""
    folder.mkdir()
    return {f"t{i:02d}.wav": tone_wav(folder / f"t{i:02d}.wav", d, freq=300 + 20 * i).duration
            for i, d in enumerate(durations)}


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
