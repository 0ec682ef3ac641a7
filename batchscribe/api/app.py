"""The API's app factory: everything it uses is passed in (configuration, state store, submitter),
so the app holds no globals and tests can build one against any Redis."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from batchscribe.api import batchkit, errors, routes
from batchscribe.api.auth import BearerAuth
from batchscribe.api.config import ApiConfig
from batchscribe.api.service import BatchService
from batchscribe.common.metrics import registry_for
from batchscribe.common.state import StateStore
from batchscribe.producer.submit import Submitter

DESCRIPTION = """Submit batches of recordings on the shared storage, follow them, fetch their
transcripts, cancel them; read the cluster's Prometheus metrics (/metrics). Every route but /healthz,
/ready and these docs needs `Authorization: Bearer TOKEN`. batch-processing-kit's own routes
(/submit, /status, /watch, /delete, /list, /ready) are served too, with its request and response
fields."""


def create_app(config: ApiConfig, store: StateStore, submitter: Submitter) -> FastAPI:
    app = FastAPI(title="batchscribe", version="1", description=DESCRIPTION)
    app.state.service = BatchService(config, store, submitter)
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(batchkit.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Open (no token): 200 when Redis answers, else 503."""
        await run_in_threadpool(store.ping)
        return {"status": "ok"}

    @app.get("/ready", tags=["batch-processing-kit"])
    async def ready(request: Request) -> bool:
        """batch-kit's readiness probe: `true` when Redis answers (open, like /healthz)."""
        await run_in_threadpool(store.ping)
        return True

    registry = registry_for(store)

    @app.get("/metrics", tags=["monitoring"], response_class=Response)
    async def metrics() -> Response:
        """The cluster's Prometheus metrics, read from Redis now (docs/monitoring.md); the same as
        `worker --metrics-port` serves. Needs the bearer token (Prometheus: `authorization` in the
        scrape config)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BearerAuth, tokens=config.tokens,
                       loopback_paths=batchkit.PATHS if config.batchkit_localhost else ())
    return app
