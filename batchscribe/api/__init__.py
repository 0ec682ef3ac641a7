"""`batchscribe serve`: the HTTP API over the same Redis state, dedupe, queues and outputs as
`submit` (it sits on top: it imports the producer and common, never the worker).

    config     allowed roots, tokens, batch-kit's results folder
    auth       bearer tokens, checked before anything else
    app        the app factory (`create_app`): everything passed in, no globals
    routes     our routes (Azure-batch-transcription-like: batches, files, report)
    batchkit   batch-processing-kit's routes (/submit, /status, /watch, /delete, /list, /ready)
    service    what both route sets do, over the store and the producer's Submitter
    models     request/response bodies; errors: every error as JSON
"""

from batchscribe.api.app import create_app
from batchscribe.api.config import ApiConfig, TokenSet

__all__ = ["ApiConfig", "TokenSet", "create_app"]
