"""`batchscribe serve` as a user runs it (a subprocess on a free port) and a small HTTP client
(stdlib urllib) that returns every answer, errors included, as (status, headers, body)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.cli import BIN, ROOT, cli_env

TOKEN = "test-token-0123456789abcdef"


class Answer:
    def __init__(self, status: int, headers: dict[str, str], raw: bytes) -> None:
        self.status, self.headers, self.raw = status, headers, raw

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    def __repr__(self) -> str:
        return f"HTTP {self.status} {self.raw[:500]!r}"


def request(method: str, url: str, body: Any = None, token: str | None = TOKEN, timeout: float = 60,
            headers: dict[str, str] | None = None) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers), exc.read())


class ApiServer:
    """`batchscribe serve --port 0 …` with BATCHSCRIBE_API_TOKENS=TOKEN (unless `tokens` says
    otherwise); `url` once it listens. Its output goes to `log_path`. A context manager."""

    def __init__(self, broker: str, *args: str, log_path: Path, tokens: str | None = TOKEN,
                 timeout: float = 30) -> None:
        env = cli_env(broker)
        if tokens is not None:
            env["BATCHSCRIBE_API_TOKENS"] = tokens
        self.log_path = log_path
        self.banner = ""  # the line serve prints when it listens
        self.proc = subprocess.Popen([str(BIN), "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.url = self._read_url(timeout)
        self._drain = threading.Thread(target=self._copy_output, daemon=True)
        self._drain.start()

    def _read_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            if match := re.search(r"batchscribe serve: (http://\S+)", line):
                self.banner = line
                return match.group(1)
        self.stop()
        raise RuntimeError(f"serve did not start (exit {self.proc.poll()}):\n{''.join(seen)}")

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "ab") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        return request(method, self.url + path, body, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
