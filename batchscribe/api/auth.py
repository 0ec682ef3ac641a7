"""Bearer-token authentication for every route but the open ones, as ASGI middleware: it runs
before routing and before the body is read, so a request without a valid token gets 401 and
nothing else happens (no route, no validation, no Redis)."""

from __future__ import annotations

import json
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from batchscribe.api.config import TokenSet, is_loopback

OPEN_PATHS = frozenset({"/healthz", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
UNAUTHORIZED = json.dumps({"code": "Unauthorized", "message": "a valid bearer token is required: "
                           "Authorization: Bearer TOKEN"}).encode()


class BearerAuth:
    """`tokens` None: no authentication (`serve --no-auth`, which binds localhost only).
    `loopback_paths`: paths loopback clients may use without a token (batch-kit's routes, when
    `serve --batchkit-open-localhost` opens them)."""

    def __init__(self, app: ASGIApp, tokens: TokenSet | None, loopback_paths: Collection[str] = ()) -> None:
        self.app = app
        self.tokens = tokens
        self.loopback_paths = frozenset(loopback_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._admitted(scope):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(UNAUTHORIZED)).encode()),
                                (b"www-authenticate", b'Bearer realm="batchscribe"')]})
        await send({"type": "http.response.body", "body": UNAUTHORIZED})

    def _admitted(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if self.tokens is None or path in OPEN_PATHS:
            return True
        client = scope.get("client")
        if path in self.loopback_paths and client and is_loopback(client[0]):
            return True
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip()) and self.tokens.accepts(token.strip())
