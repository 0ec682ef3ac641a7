"""Our routes, shaped like the Azure Speech batch-transcription API (transcriptions → batches):
submit a batch, read it (with long polling), page through batches and files, fetch a file's
output JSON and the run summary, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPBearer

from batchscribe.api.models import ERRORS, Batch, BatchPage, BatchRequest, FilePage
from batchscribe.api.service import BatchService
from batchscribe.common.models import FileState
from batchscribe.producer.results import file_entry
from batchscribe.producer.status import BatchView, batch_document
from batchscribe.producer.submit import SubmitReport

MAX_WAIT = 3600.0  # seconds a GET may long-poll
FINISHED = ("succeeded", "failed", "cancelled")
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT, description="long poll: answer as soon as the batch has "
                              "finished, or after this many seconds")]

# Documents the bearer scheme in /openapi.json; the check itself is `auth.BearerAuth`, which runs
# before anything else (a request without a token gets 401 before its body is even read).
bearer = HTTPBearer(auto_error=False, description="a token from BATCHSCRIBE_API_TOKENS or --token-file")
router = APIRouter(tags=["batches"], dependencies=[Depends(bearer)], responses=ERRORS)


def service(request: Request) -> BatchService:
    svc: BatchService = request.app.state.service
    return svc


Svc = Annotated[BatchService, Depends(service)]
Skip = Annotated[int, Query(ge=0, description="index of the first item")]
Top = Annotated[int, Query(ge=1, le=1000, description="at most this many items")]


def batch_json(request: Request, view: BatchView, report: SubmitReport | None = None) -> dict[str, Any]:
    """The batch document with its links (and, right after a submit, what the submit did)."""
    document = batch_document(view)
    document["self"] = str(request.url_for("get_batch", batch_id=view.batch_id))
    document["links"] = {"files": str(request.url_for("list_files", batch_id=view.batch_id)),
                         "report": str(request.url_for("get_report", batch_id=view.batch_id))}
    if report is not None:
        document["submitted"] = {"files": report.files, "queued": report.published,
                                 "duplicates": report.duplicates, "attached": report.attached,
                                 "cached": report.cached, "unusable": report.failed_now}
    return document


def next_link(request: Request, skip: int | None, top: int) -> str | None:
    return None if skip is None else str(request.url.include_query_params(skip=skip, top=top))


@router.post("/batches", status_code=201, response_model=Batch, response_model_by_alias=True)
def create_batch(body: BatchRequest, request: Request, response: Response, svc: Svc) -> dict[str, Any]:
    """Submit a batch: every audio/video file under `inputs`, outputs under `out` (as `submit`)."""
    report, view = svc.submit(body.inputs, body.out, body.options.transcription(), body.options.outputs(),
                              body.displayName or "")
    document = batch_json(request, view, report)
    response.headers["Location"] = document["self"]
    return document


@router.get("/batches", response_model=BatchPage, response_model_by_alias=True)
def list_batches(request: Request, svc: Svc, skip: Skip = 0, top: Top = 100) -> dict[str, Any]:
    """Batches, newest first, a page at a time (follow `@nextLink`)."""
    views, more = svc.batches(skip, top)
    return {"values": [batch_json(request, v) for v in views],
            "@nextLink": next_link(request, skip + top if more else None, top)}


@router.get("/batches/{batch_id}", response_model=Batch, response_model_by_alias=True)
async def get_batch(batch_id: str, request: Request, svc: Svc, wait: Wait = 0) -> dict[str, Any]:
    """A batch: status, counts by file state, failures by class, ETA."""
    view = await svc.wait(request, batch_id, wait, lambda v: v.status in FINISHED)
    return batch_json(request, view)


@router.delete("/batches/{batch_id}", response_model=Batch, response_model_by_alias=True)
def delete_batch(batch_id: str, request: Request, svc: Svc) -> dict[str, Any]:
    """Cancel the batch: queued files never start, running ones finish without writing an output
    for it, files shared with another running batch go on for that one. 409 if it had finished."""
    return batch_json(request, svc.cancel(batch_id).view)


@router.get("/batches/{batch_id}/files", response_model=FilePage, response_model_by_alias=True)
def list_files(batch_id: str, request: Request, svc: Svc, skip: Skip = 0, top: Top = 100,
               state: FileState | None = None) -> dict[str, Any]:
    """The batch's files in order, a page at a time, optionally only those in one state."""
    records, resume = svc.files(batch_id, skip, top, state)
    values = [{**file_entry(r), "self": str(request.url_for("get_file", batch_id=batch_id, index=r.index))}
              for r in records]
    return {"values": values, "@nextLink": next_link(request, resume, top)}


@router.get("/batches/{batch_id}/files/{index}", name="get_file")
def get_file(batch_id: str, index: int, svc: Svc) -> dict[str, object]:
    """The file's output JSON (batch-processing-kit's schema); 409 while it has none."""
    return svc.document(batch_id, index)


@router.get("/batches/{batch_id}/report", name="get_report")
def get_report(batch_id: str, svc: Svc) -> dict[str, object]:
    """The run summary (run_summary.json's content, current while the batch runs)."""
    return svc.report(batch_id)
