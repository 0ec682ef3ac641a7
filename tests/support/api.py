"""`batchscribe serve` as a user runs it (a subprocess on a free port) and a small HTTP client
(stdlib urllib) that returns every answer, errors included, as (status, headers, body)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.cli import BIN, ROOT, cli_env
from tests.support.service import ServiceProcess

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


class ApiServer(ServiceProcess):
    """`batchscribe serve --port 0 …` with BATCHSCRIBE_API_TOKENS=TOKEN (unless `tokens` says
    otherwise); `url` once it listens. Its output goes to `log_path`. A context manager."""

    def __init__(self, broker: str, *args: str, log_path: Path, tokens: str | None = TOKEN,
                 timeout: float = 30) -> None:
        env = cli_env(broker)
        if tokens is not None:
            env["BATCHSCRIBE_API_TOKENS"] = tokens
        super().__init__([str(BIN), "serve", "--port", "0", *args], r"batchscribe serve: (http://\S+)", env,
                         log_path=log_path, timeout=timeout, cwd=ROOT)
        self.banner = self.announced[0].string  # the line serve prints when it listens
        self.url = self.announced[0].group(1)

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        return request(method, self.url + path, body, **kw)
