"""batch-processing-kit's APISERVER routes, with its request and response fields, so that a
client written for it works unchanged (batchkit/apiserver.py, batchkit_examples/speech_sdk/
batch_request.py at batch-kit 0.10.4):

    POST /submit        {"type": "SpeechSDKBatchRequest", "files": [...], "language", "diarization",
                         "nbest", "profanity", "allow_resume", "sentiment", "combine_results"}
    GET  /status?batch_id=N
    GET  /watch?batch_id=N&target_state=waiting|running|done|deleted[&timeout=SECONDS]
    PUT  /delete?batch_id=N
    GET  /list          [1, 2, ...]
    GET  /ready         true

Each answers 200 with batch-kit's BatchStatus JSON (jsonpickle's encoding: `py/object`, `batch_id`,
`run_summary_path`, `results_dir`, `combined_results_file`, `status`); 400 for a bad request (its
own words), 404 for an unknown batch. Its integer batch ids come from a cluster-wide counter in
Redis (`StateStore.new_batchkit_id`) mapped to our batch ids; each batch writes its outputs to
`--batchkit-out`/batch_N/, as batch-kit writes to its scratch folder's batch_N/.

Mapped: `diarization` other than None → on; `profanity` Masked|Raw|Removed; `combine_results` →
batch_N/results.json (`--combined-json`), named in `combined_results_file` once the batch is done.
Accepted and ignored: `sentiment` (no sentiment analysis), `allow_resume` (dedupe always resumes).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from starlette.concurrency import run_in_threadpool

from batchscribe.api.errors import ApiError
from batchscribe.api.models import ERRORS, Options
from batchscribe.api.routes import bearer, service
from batchscribe.api.service import BatchService
from batchscribe.common.errors import InputError
from batchscribe.common.models import TranscriptionOptions
from batchscribe.common.output import Outputs
from batchscribe.common.summary import COMBINED_NAME, SUMMARY_NAME
from batchscribe.producer.cancel import AlreadyFinished
from batchscribe.producer.status import BatchView, iter_records, load_view

STATES = ("waiting", "running", "done", "deleted")  # batch-kit's BatchStatusEnum, in order
REQUEST_TYPE = "SpeechSDKBatchRequest"
ARGS = ("files", "language", "diarization", "nbest", "profanity", "allow_resume", "sentiment",
        "combine_results")
DIARIZATION = ("None", "Identity", "Anonymous")
PROFANITY = ("Masked", "Raw", "Removed")
PATHS = ("/submit", "/status", "/watch", "/delete", "/list")  # behind the token (or loopback, if opened)

router = APIRouter(tags=["batch-processing-kit"], dependencies=[Depends(bearer)], responses=ERRORS)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def state_of(view: BatchView) -> str:
    if view.header.get("deleted_at") or view.status == "cancelled":
        return "deleted"
    if view.complete:
        return "done"
    return "running" if view.status == "running" else "waiting"


def status_json(number: int, view: BatchView, results_dir: Path) -> dict[str, Any]:
    """batch-kit's BatchStatus; `combined_results_file` once the batch is done, if it asked for one
    (batch-kit names the path of a done batch even when it wrote none)."""
    state = state_of(view)
    combined = state == "done" and Outputs.of_batch(view.header).combined_json
    return {"py/object": "batchkit.batch_status.BatchStatus", "batch_id": number,
            "run_summary_path": str(results_dir / SUMMARY_NAME),
            "results_dir": None if state == "waiting" else str(results_dir),
            "combined_results_file": str(results_dir / COMBINED_NAME) if combined else None, "status": state}


class BatchKit:
    """batch-kit's operations on top of `BatchService`."""

    def __init__(self, svc: BatchService) -> None:
        self.svc = svc

    def results_dir(self, number: int) -> Path:
        return self.svc.config.batchkit_out / f"batch_{number}"

    def batch_id(self, raw: str | None) -> tuple[int, str]:
        if raw is None:
            raise bad_request("Arg 'batch_id' was not supplied")
        try:
            number = int(raw)
        except ValueError:
            raise bad_request(f"Arg 'batch_id' must be an integer, got {raw!r}") from None
        ours = self.svc.store.batchkit_batch(number)
        if ours is None:
            raise ApiError(404, "NotFound", f"batch_id: {number} does not exist")
        return number, ours

    def status(self, raw: str | None) -> dict[str, Any]:
        number, ours = self.batch_id(raw)
        view = load_view(self.svc.store, ours, with_failures=False)
        return status_json(number, view, self.results_dir(number))

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        options = request_options(body)
        files = [os.path.abspath(f) for f in body["files"]]  # as batch-kit: relative to the server's folder
        number = self.svc.store.new_batchkit_id()
        results = self.results_dir(number)
        outputs = Outputs(combined_json=str(body["combine_results"]).lower() == "true")  # batch-kit's to_bool
        _report, view = self.svc.submit(files, results, options, outputs, display_name=f"batch-kit {number}")
        self.svc.store.bind_batchkit_id(number, view.batch_id)
        return status_json(number, view, results)

    def delete(self, raw: str | None) -> dict[str, Any]:
        """Cancel (if still running), then remove the batch's results, as batch-kit does."""
        number, ours = self.batch_id(raw)
        try:
            self.svc.cancel(ours)
        except AlreadyFinished:
            pass
        results = self.results_dir(number)
        view = load_view(self.svc.store, ours, with_failures=False)
        for record in iter_records(self.svc.store, ours, range(view.total)):
            output = Path(record.output)
            if results in output.parents:
                for path in (output, output.with_suffix(".txt")):
                    path.unlink(missing_ok=True)
        for name in (SUMMARY_NAME, COMBINED_NAME):
            (results / name).unlink(missing_ok=True)
        self.svc.store.mark_batch(ours, deleted_at=f"{time.time():.3f}")
        return status_json(number, load_view(self.svc.store, ours, with_failures=False), results)


def request_options(body: dict[str, Any]) -> TranscriptionOptions:
    """SpeechSDKBatchRequest.from_json's checks, in its words, then our options."""
    if "type" not in body:
        raise bad_request("Missing 'type' key in json dict specifying the batch")
    if body["type"] != REQUEST_TYPE:
        raise bad_request(f"Request body argument 'type' not found in syspath: {body['type']!r} "
                          f"(this server takes {REQUEST_TYPE})")
    for arg in ARGS:
        if arg not in body:
            raise bad_request(f"Missing '{arg}' argument (string) in request body")
    if not isinstance(body["nbest"], int) or isinstance(body["nbest"], bool) or not 1 <= body["nbest"] <= 10:
        raise bad_request(f"Request body argument 'nbest' was not an integer from 1 to 10: '{body['nbest']}'")
    for arg in ("allow_resume", "sentiment", "combine_results"):
        if str(body[arg]).lower() not in ("true", "false"):
            raise bad_request(f"'{arg}' argument needs boolean in request body")
    files = body["files"]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise bad_request("Request body argument 'files' was not List[str]")
    if body["diarization"] not in DIARIZATION:
        raise bad_request(f"'diarization' must be one of {', '.join(DIARIZATION)}, "
                          f"got {body['diarization']!r}")
    if body["profanity"] not in PROFANITY:
        raise bad_request(f"'profanity' must be one of {', '.join(PROFANITY)}, got {body['profanity']!r}")
    if not isinstance(body["language"], str) or not body["language"]:
        raise bad_request("Request body argument 'language' was not a language such as en-US")
    try:
        language = Options.model_validate({"language": body["language"]}).language
    except ValueError:
        raise bad_request(f"'language' is not a language tag such as en-US: {body['language']!r}") from None
    return TranscriptionOptions(language=language, nbest=body["nbest"], profanity=body["profanity"].lower(),
                                diarization=body["diarization"] != "None")


def kit(svc: Annotated[BatchService, Depends(service)]) -> BatchKit:
    return BatchKit(svc)


Kit = Annotated[BatchKit, Depends(kit)]


@router.post("/submit")
def submit(body: Annotated[Any, Body()], k: Kit) -> dict[str, Any]:
    """batch-kit's submit: a SpeechSDKBatchRequest; answers its BatchStatus (status waiting)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return k.submit(body)
    except InputError as exc:
        if type(exc) is InputError:  # batch-kit says 400 for what it cannot use
            raise bad_request(str(exc)) from exc
        raise


@router.get("/status")
def status(k: Kit, batch_id: str | None = None) -> dict[str, Any]:
    return k.status(batch_id)


@router.get("/watch")
async def watch(request: Request, k: Kit, batch_id: str | None = None, target_state: str | None = None,
                timeout: str | None = None) -> dict[str, Any]:
    """Long poll until the batch's state is `target_state` or beyond (waiting < running < done <
    deleted), or `timeout` seconds (none: no limit) have passed; answers its BatchStatus."""
    number, ours = await run_in_threadpool(k.batch_id, batch_id)
    if target_state is None:
        raise bad_request("Arg 'target_state' was not supplied")
    if target_state not in STATES:
        raise bad_request(f"'target_state': {target_state} is invalid. Options are: {list(STATES)}")
    seconds = None
    if timeout is not None:
        try:
            seconds = max(0.0, float(timeout))
        except ValueError:
            raise bad_request(f"'timeout': {timeout} is invalid (must be numeric)") from None
    goal = STATES.index(target_state)
    view = await k.svc.wait(request, ours, seconds, lambda v: STATES.index(state_of(v)) >= goal)
    return status_json(number, view, k.results_dir(number))


@router.put("/delete")
def delete(k: Kit, batch_id: str | None = None) -> dict[str, Any]:
    return k.delete(batch_id)


@router.get("/list")
def list_ids(k: Kit) -> list[int]:
    return k.svc.store.batchkit_ids()
