"""The emulator: several independent container-like endpoints (one per port) in one asyncio loop.

Each port answers the SDK's websocket protocol on `/speech/...`, `GET /ready` and `GET /status`
like a container, and a control API under `/control/` (query-string parameters, any method; the
websockets HTTP parser takes no request bodies):

    /control/stats[?port=P]                                  counters and per-session wire facts
    /control/fault?mode=M[&rate=R][&count=N][&for=S][&port=P] inject a fault (see emulator.faults)
    /control/reset[?port=P]                                  fault off, counters cleared

`port=P` addresses another port of the same process: the only way to lift a `refuse` fault over
HTTP, since the refused port no longer listens (or use `for=S` to lift it after S seconds).
`Emulator` runs the loop in a background thread for in-process use (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import math
import random
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from batchscribe.emulator.faults import Fault, FaultMode
from batchscribe.emulator.session import Session
from batchscribe.emulator.stats import PortStats, SessionInfo
from batchscribe.emulator.transcribers import DEFAULT_TEXT, Recognize, Transcriber, make_transcriber

log = logging.getLogger(__name__)
T = TypeVar("T")
CALL_TIMEOUT = 10.0  # seconds a Python-API call waits for the loop thread


@dataclass(frozen=True)
class EmulatorConfig:
    """Options shared by every port of one emulator process."""

    host: str = "127.0.0.1"
    rtf: float = 3.0  # 0: answer as soon as the upload ends
    capacity: int = 0  # simultaneous sessions per port; 0: unlimited
    transcribe: str = "duration"
    text: str = DEFAULT_TEXT
    seed: int | None = None
    fault: FaultMode = FaultMode.NONE  # the fault every port starts with
    fault_rate: float = 1.0
    recognize: Recognize | None = field(default=None, compare=False)  # for transcribe="local"


class PortServer:
    """One emulated endpoint: its listener, fault, counters and sessions."""

    def __init__(self, emulator: EmulatorCore, port: int) -> None:
        self.emulator = emulator
        self.port = port
        self.fault = Fault(mode=emulator.config.fault, rate=emulator.config.fault_rate)
        self.stats = PortStats()
        self.server: Server | None = None
        self.rng = random.Random(emulator.config.seed)
        self._reopen: asyncio.TimerHandle | None = None

    async def listen(self) -> None:
        if self.server is not None:
            return
        self.server = await serve(self._session, self.emulator.config.host, self.port,
                                  process_request=self._process_request, subprotocols=None,
                                  compression=None, max_size=4 * 1024 * 1024, server_header=None)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        """Close the listening socket only: open sessions go on, new connections are refused."""
        if self.server is not None:
            self.server.close(close_connections=False)
            self.server = None

    async def close(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def set_fault(self, fault: Fault, lift_after: float | None = None) -> None:
        self.fault = fault
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        if fault.closes_listener:
            self.stop_listening()
            if lift_after is not None:
                loop = asyncio.get_running_loop()
                self._reopen = loop.call_later(lift_after, lambda: asyncio.ensure_future(
                    self.set_fault(Fault())))
        else:
            await self.listen()

    async def reset(self) -> None:
        await self.set_fault(Fault())
        self.stats = PortStats()

    # -- HTTP --------------------------------------------------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        if target.path.startswith("/speech/"):
            return self._admit(conn, request.path)
        if target.path.startswith("/control/"):
            return await self.emulator.control(conn, target.path, dict(parse_qsl(target.query)), self)
        if target.path == "/ready":
            if self.fault.mode is FaultMode.UNREADY:
                return _json(conn, http.HTTPStatus.SERVICE_UNAVAILABLE, {"message": "not ready"})
            return _json(conn, http.HTTPStatus.OK, {"message": "ready"})
        if target.path == "/status":
            return _json(conn, http.HTTPStatus.OK, {"apiStatus": "Valid", "serviceStatus": "Valid",
                                                    "apiStatusMessage": "batchscribe emulator"})
        return _json(conn, http.HTTPStatus.NOT_FOUND, {"error": f"no route {target.path}"})

    def _admit(self, conn: ServerConnection, target: str) -> Response | None:
        """Decide at upgrade time: injected HTTP errors, capacity, TCP abort; else reserve a slot."""
        fault = self.fault.draw(self.rng)
        capacity = self.emulator.config.capacity
        refusal = {FaultMode.HTTP401: http.HTTPStatus.UNAUTHORIZED,
                   FaultMode.HTTP429: http.HTTPStatus.TOO_MANY_REQUESTS}.get(fault)
        if refusal is None and capacity and self.stats.active >= capacity:
            fault, refusal = FaultMode.HTTP429, http.HTTPStatus.TOO_MANY_REQUESTS
            self.stats.refuse("capacity")
        elif refusal is not None:
            self.stats.refuse(fault.value)
        if refusal is not None:
            return _json(conn, refusal, {"error": f"emulator: {fault.value}"})
        if fault is FaultMode.REFUSE:
            self.stats.refuse("refuse")
            conn.transport.abort()
            return _json(conn, http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "aborted"})
        info = SessionInfo.from_target(self.stats.sessions_total + 1, target)
        info.fault = fault.value
        self.stats.open(info)  # reserved now so concurrent upgrades cannot overshoot the capacity
        self.emulator.pending[conn] = (self, info)
        return None

    async def _session(self, conn: ServerConnection) -> None:
        port, info = self.emulator.pending.pop(conn)
        stats = port.stats
        outcome = "error"
        try:
            session = Session(conn, info, self.emulator.transcriber, self.emulator.config.rtf,
                              FaultMode(info.fault))
            outcome = await session.run()
        finally:
            stats.close(info, outcome)


class EmulatorCore:
    """All ports of one process; lives on the event loop."""

    def __init__(self, config: EmulatorConfig, ports: Sequence[int]) -> None:
        self.config = config
        self.transcriber: Transcriber = make_transcriber(config.transcribe, config.text, config.recognize)
        self.servers = [PortServer(self, port) for port in ports]
        self.pending: dict[ServerConnection, tuple[PortServer, SessionInfo]] = {}

    async def start(self) -> None:
        for server in self.servers:
            await server.listen()
            if server.fault.closes_listener:
                server.stop_listening()

    async def close(self) -> None:
        for server in self.servers:
            await server.close()

    def by_port(self, port: int) -> PortServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(f"the emulator has no port {port}; ports: {[s.port for s in self.servers]}")

    async def control(self, conn: ServerConnection, path: str, params: dict[str, str],
                      here: PortServer) -> Response:
        try:
            target = self.by_port(int(params["port"])) if "port" in params else here
            if path == "/control/stats":
                return _json(conn, http.HTTPStatus.OK, target.stats.to_dict())
            if path == "/control/reset":
                await target.reset()
                return _json(conn, http.HTTPStatus.OK, {"port": target.port, "fault": target.fault.to_dict()})
            if path == "/control/fault":
                fault = parse_fault(params)
                lift = _non_negative(params, "for")
                await target.set_fault(fault, lift_after=lift)
                return _json(conn, http.HTTPStatus.OK, {"port": target.port, "fault": fault.to_dict()})
        except (KeyError, ValueError) as exc:
            return _json(conn, http.HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        return _json(conn, http.HTTPStatus.NOT_FOUND, {"error": f"no control route {path}"})


def parse_fault(params: dict[str, str]) -> Fault:
    """`mode`, `rate` and `count` from a query string (or CLI option values) into a Fault."""
    count = params.get("count")
    rate = _non_negative(params, "rate")
    return Fault(mode=FaultMode.parse(params.get("mode", "none")), rate=1.0 if rate is None else rate,
                 count=int(count) if count not in (None, "") else None)


def _non_negative(params: dict[str, str], name: str) -> float | None:
    """A finite number ≥ 0 from the query string, or None when absent; ValueError (HTTP 400) else:
    `for=nan` would never lift a fault, `for=-1` would lift it before it was set."""
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {raw!r}")
    return value


def _json(conn: ServerConnection, status: http.HTTPStatus, body: dict[str, Any]) -> Response:
    response = conn.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class Emulator:
    """In-process emulator on a background thread, for tests and benchmarks.

    Use as a context manager; `ports` are the bound port numbers (pass 0 to get free ones).
    """

    def __init__(self, ports: Sequence[int] = (0,), config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._requested = list(ports)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="emulator", daemon=True)
        self.core: EmulatorCore | None = None

    def start(self) -> Emulator:
        self._thread.start()
        self.core = self._call(self._start())
        return self

    async def _start(self) -> EmulatorCore:
        core = EmulatorCore(self.config, self._requested)
        await core.start()
        return core

    def stop(self) -> None:
        if self.core is not None:
            self._call(self.core.close())
            self.core = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=CALL_TIMEOUT)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self._core.servers]

    @property
    def _core(self) -> EmulatorCore:
        if self.core is None:
            raise RuntimeError("the emulator is not running")
        return self.core

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=CALL_TIMEOUT)

    def set_fault(self, port: int, mode: str | FaultMode, rate: float = 1.0, count: int | None = None,
                  lift_after: float | None = None) -> None:
        fault = Fault(mode=FaultMode.parse(mode) if isinstance(mode, str) else mode, rate=rate, count=count)
        self._call(self._core.by_port(port).set_fault(fault, lift_after))

    def reset(self, port: int) -> None:
        self._call(self._core.by_port(port).reset())

    def stats(self, port: int) -> dict[str, Any]:
        async def snapshot() -> dict[str, Any]:
            return self._core.by_port(port).stats.to_dict()

        return self._call(snapshot())


async def serve_forever(ports: Sequence[int], config: EmulatorConfig) -> None:
    """Run until cancelled (the CLI); prints one line per port so scripts can read the ports."""
    core = EmulatorCore(config, ports)
    await core.start()
    for server in core.servers:
        print(f"emulator listening on ws://{config.host}:{server.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await core.close()
