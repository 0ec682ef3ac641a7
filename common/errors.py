"""The one exception tree of batchscribe.

    BatchscribeError
    ├── ConfigError              bad endpoint YAML, bad settings (user fixes the file)
    ├── InputError               what was asked to submit does not exist / cannot be listed
    │   ├── PathNotAllowedError      a path outside the folders `serve` may read and write (--allow-root)
    │   └── OutputConflictError      an output another running batch writes for another input
    ├── StateError               Redis failed under us (translated at the state boundary, common.state)
    │   ├── RedisUnavailableError    cannot connect, connection dropped, timed out, still loading: wait
    │   ├── RedisCredentialsError    wrong or missing password (or the user lacks a permission)
    │   ├── RedisOutOfMemoryError    maxmemory reached under noeviction: writes refused, reads work
    │   ├── RedisReadOnlyError       the URL points at a read-only replica
    │   └── PublishError             task messages may not all have been sent (common.publish)
    └── ProcessingError          one file's attempt failed; the subclass decides what happens next
        ├── TransientError       retry with backoff on any endpoint; spends the file's retry budget
        │   ├── StallError       no progress within the watchdog time
        │   ├── BlobUnavailableError  Blob storage timed out, dropped the connection, answered 5xx/503
        │   └── BlobChangedError      the blob was overwritten while it was read (its ETag changed)
        ├── EndpointError        the endpoint is down / refuses / rejects our key: reroute, budget untouched
        └── PermanentError       retrying cannot help: fail the file with a reason, the batch goes on
            ├── AudioError       unreadable, corrupt, empty or unsupported media (carries ffmpeg's words)
            ├── BlobNotFoundError     no such blob or container
            └── BlobAccessError       credential missing, refused or short of a permission (names which)

Blob errors are translated from the SDK's where they enter (`common.blob`), worded with canonical
locations only: never a SAS token, an account key or a connection string.

"crash" (a worker process killed mid-file) is not an exception: it is seen as a redelivered
message (late ack + reject on worker loss) and counted per job.
"""

from __future__ import annotations

from enum import Enum


class ErrorClass(str, Enum):
    """The error classes of design.md; the value is what Redis, outputs and `status` show."""

    TRANSIENT = "transient"
    ENDPOINT = "endpoint"
    PERMANENT = "permanent"
    CRASH = "crash"


class BatchscribeError(Exception):
    """Root of every error batchscribe raises on purpose."""


class ConfigError(BatchscribeError):
    """A configuration file or setting is wrong; the message names file, endpoint and key."""


class InputError(BatchscribeError):
    """The paths given to submit/run cannot be used (missing, not a folder or file)."""


class PathNotAllowedError(InputError):
    """An input or output path lies outside the allowed roots (after resolving symlinks and '..')."""


class OutputConflictError(InputError):
    """A batch still running writes one of this batch's outputs for another input."""


class StateError(BatchscribeError):
    """Redis (the system of record) cannot be reached or answered unexpectedly.

    Only `common.state` (and the task publisher) talk to Redis; they raise this tree, never
    redis-py's exceptions, so callers decide by kind: wait for `RedisUnavailableError`, report
    the others.
    """


class RedisUnavailableError(StateError):
    """Not answering now (refused, dropped mid-command, timed out, loading its data): may come back."""


class RedisCredentialsError(StateError):
    """Redis refused the password (or user) in the URL; retrying cannot help."""


class RedisOutOfMemoryError(StateError):
    """Redis reached maxmemory under noeviction: it refuses writes until memory is freed."""


class RedisReadOnlyError(StateError):
    """The URL points at a read-only replica, not the primary."""


class ProcessingError(BatchscribeError):
    """One attempt at one file failed; `error_class` tells the retry policy what to do."""

    error_class: ErrorClass = ErrorClass.TRANSIENT

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(ProcessingError):
    """Worth retrying later, on any endpoint (timeouts, 429, 5xx, resets mid-stream)."""

    error_class = ErrorClass.TRANSIENT


class StallError(TransientError):
    """The endpoint stopped making progress; the slot is released and the file retried."""


class EndpointError(ProcessingError):
    """The endpoint itself is unusable (refused, auth failure, probe failing)."""

    error_class = ErrorClass.ENDPOINT


class PermanentError(ProcessingError):
    """Retrying cannot help: bad input, missing file, request the service rejects."""

    error_class = ErrorClass.PERMANENT


class AudioError(PermanentError):
    """The media cannot be decoded into audio the engine accepts."""


class BlobUnavailableError(TransientError):
    """Blob storage did not answer in time, dropped the connection, or is throttling (5xx, 503)."""


class BlobChangedError(TransientError):
    """The blob changed between two reads of one download: another try reads the new version whole."""


class BlobNotFoundError(PermanentError):
    """The blob (or its container) does not exist."""


class BlobAccessError(PermanentError):
    """No credential for the container, or the one found is refused: the message says which, and what to
    set."""
