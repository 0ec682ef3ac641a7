"""Every error the API answers with is JSON, ``{"code": ..., "message": ...}`` (the Azure APIs'
shape), with a status that says whose fault it is; never a traceback.

    400 InvalidInput       an input that cannot be used (missing, nothing to transcribe, …)
    401 Unauthorized       no valid bearer token (`auth`)
    403 PathNotAllowed     a path outside --allow-root (after resolving symlinks and '..')
    404 NotFound           no such batch, file or route
    409 Conflict           cancel a finished batch; outputs another running batch writes
    422 InvalidPayload     the request does not match the schema (the message says where)
    503 StateUnavailable   Redis is unreachable or refuses (the state store's words)
    500 InternalError      anything else: a generic message and a reference; the details in the log
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from batchscribe.common.errors import (
    InputError,
    OutputConflictError,
    PathNotAllowedError,
    StateError,
)
from batchscribe.producer.cancel import AlreadyFinished
from batchscribe.producer.status import NoSuchBatch

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success, raised by a route."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, **extra}, status_code=status)


# Our exceptions, most specific first: (class, status, code).
_OURS: tuple[tuple[type[Exception], int, str], ...] = (
    (NoSuchBatch, 404, "NotFound"),
    (AlreadyFinished, 409, "Conflict"),
    (OutputConflictError, 409, "Conflict"),
    (PathNotAllowedError, 403, "PathNotAllowed"),
    (InputError, 400, "InvalidInput"),
    (StateError, 503, "StateUnavailable"),
)
_HTTP_CODES = {404: "NotFound", 405: "MethodNotAllowed", 400: "InvalidInput"}


def where(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "request"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into a JSON answer."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return error_response(422, "InvalidPayload", "; ".join(problems) or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "Error"), str(exc.detail))

    for cls, status, code in _OURS:
        app.add_exception_handler(cls, _ours(status, code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        log.error("unexpected error %s on %s %s", reference, request.method, request.url.path, exc_info=exc)
        return error_response(500, "InternalError",
                              f"unexpected error (reference {reference}); the server log has the details")


def _ours(status: int, code: str) -> Any:
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        if status == 503:
            log.warning("state store failed: %s", exc)
        return error_response(status, code, str(exc))

    return handler
