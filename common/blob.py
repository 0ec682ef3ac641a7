"""Azure Blob storage, the port the producer and the workers read inputs and write outputs through.

Built on the official SDK (azure-storage-blob, azure-identity for `DefaultAzureCredential`, the
`blob` extra): import this module only where a location is a blob (`common.locations.is_blob`),
so that installs without the extra keep working on paths.

Credentials come from the process's own environment, per container, never from Redis (what Redis
holds is the canonical location, without its SAS):

1. the SAS in the location itself (a URL typed with ``?sv=…``);
2. ``BATCHSCRIBE_BLOB_SAS``: a JSON object ``{container_key: SAS}``, how a one-machine run hands
   the SAS of a typed URL to its local workers;
3. for ``az://``: ``AZURE_STORAGE_CONNECTION_STRING`` (required: it names the account);
   for a URL: that connection string if its account is the URL's, else ``AZURE_STORAGE_KEY``
   (the account key; the account named by the URL), else ``AZURE_STORAGE_SAS_TOKEN``, else
   ``DefaultAzureCredential()`` (managed identity, ``az login``, ``AZURE_CLIENT_ID``/…).

``BATCHSCRIBE_BLOB_API_VERSION`` pins the service API version the SDK speaks (an Azurite started
without ``--skipApiVersionCheck`` accepts only versions it knows).

Every SDK error is translated where it enters into the Blob* classes of `common.errors`, worded
with canonical locations only. A secret (SAS token, account key, connection string) reaches no
message, log line or repr: the SDK's exceptions chained under ours are scrubbed in place (their
messages can hold request URLs with the SAS), and the ``azure`` loggers (which log requests) are
held at WARNING.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import quote, unquote, urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import BlobClient, ContainerClient, ContentSettings, LinearRetry

from batchscribe.common.errors import (
    BlobAccessError,
    BlobChangedError,
    BlobNotFoundError,
    BlobUnavailableError,
    ConfigError,
    PermanentError,
    ProcessingError,
)
from batchscribe.common.locations import BlobLocation

log = logging.getLogger(__name__)


CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_KEY = "AZURE_STORAGE_KEY"
SAS_TOKEN = "AZURE_STORAGE_SAS_TOKEN"
SAS_BY_CONTAINER = "BATCHSCRIBE_BLOB_SAS"
API_VERSION = "BATCHSCRIBE_BLOB_API_VERSION"

_MiB = 1 << 20
_CLIENT_OPTIONS: dict[str, Any] = {
    "connection_timeout": 10,  # seconds to connect
    "read_timeout": 60,  # seconds between two reads of a response (not the whole transfer)
    "max_single_get_size": 4 * _MiB,  # downloads go in ranges this big: bounded memory…
    "max_chunk_get_size": 4 * _MiB,  # …and each range after the first is fetched if-match its ETag
    "max_single_put_size": 8 * _MiB,  # larger uploads are staged as blocks and committed at the end
    "max_block_size": 4 * _MiB,
}

Permission = Literal["read", "write", "list", "delete", "create"]
_Credential = str | dict[str, str] | TokenCredential  # a SAS, an account name and key, an identity


@dataclass(frozen=True)
class StoredObject:
    """One blob as listed: where it is, its name under the listed prefix, its size and version."""

    location: str  # canonical (`BlobLocation.canonical`): no secret
    rel: str  # relative to the listed prefix, '/'-separated
    size: int
    version: str  # the ETag: changes whenever the content does


@dataclass(frozen=True)
class _Container:
    """A cached client, with what messages say about its credential and what they must not say."""

    client: ContainerClient
    source: str  # the credential, as messages name it ("AZURE_STORAGE_KEY", "the SAS in the URL", …)
    sas: str = field(repr=False)  # the location's own SAS it was built with ("" otherwise)
    is_sas: bool = False


class BlobStore:
    """Blob operations on `BlobLocation`s, with credentials from `environ` (default os.environ).

    Thread-safe: one ContainerClient per container (`BlobLocation.container_key`) is built on
    first use and shared (the SDK's clients are safe to use from several threads).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if environ is None else environ)
        self._sas_by_container = _sas_map(self._env)
        self._api_version = _api_version(self._env)
        self._secrets = _secrets_of(self._env, self._sas_by_container)
        self._lock = threading.Lock()
        self._containers: dict[str, _Container] = {}
        self._replaced: list[ContainerClient] = []  # may still be in use by another thread: closed at close()

    def __repr__(self) -> str:
        return f"<BlobStore: {len(self._containers)} container(s)>"

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the cached clients' connections."""
        with self._lock:
            clients = [c.client for c in self._containers.values()] + self._replaced
            self._containers, self._replaced = {}, []
        for client in clients:
            client.close()

    # ---- reading -------------------------------------------------------------------------------

    def list(self, root: BlobLocation) -> Iterator[StoredObject]:
        """Every blob under `root` in name order. The prefix is a folder (``az://c/in`` lists
        ``in/…``, not ``inbox/…``); a prefix that names a blob exactly yields that blob too."""
        client = self._container(root).client
        prefix = root.name.rstrip("/")
        with self._translated(root, "list"):
            if prefix and not root.name.endswith("/"):
                # "in" sorts before every other name starting with it: the first one listed tells.
                first = next(iter(client.list_blobs(name_starts_with=prefix, results_per_page=1)), None)
                if first is not None and first.name == prefix:
                    yield self._stored(root, first.name, first.size, first.etag)
            for blob in client.list_blobs(name_starts_with=f"{prefix}/" if prefix else None,
                                          include=["metadata"]):
                if (blob.metadata or {}).get("hdi_isfolder") != "true":  # a folder of a hierarchical account
                    yield self._stored(root, blob.name, blob.size, blob.etag)

    def stat(self, loc: BlobLocation) -> StoredObject | None:
        """The blob's size and version; None when it does not exist."""
        with self._translated(loc, "read"):
            try:
                props = self._blob(loc).get_blob_properties()
            except ResourceNotFoundError:
                return None
        return self._stored(loc, loc.name, props.size, props.etag)

    def exists(self, loc: BlobLocation) -> bool:
        with self._translated(loc, "read"):
            return self._blob(loc).exists()

    def read_chunks(self, loc: BlobLocation, chunk: int = _MiB) -> Iterator[bytes]:
        """The blob's content, streamed in pieces of `chunk` bytes (the last may be shorter).

        The SDK fetches it in ranges, each after the first on condition that the ETag is still the
        first one's: a blob overwritten meanwhile raises `BlobChangedError`, never a mix of two.
        """
        if chunk <= 0:
            raise ValueError(f"chunk must be a positive number of bytes, got {chunk}")
        blob = self._blob(loc)
        with self._translated(loc, "read"):
            stream = blob.download_blob()
            while data := stream.read(chunk):
                yield data

    def read(self, loc: BlobLocation) -> bytes:
        with self._translated(loc, "read"):
            return self._blob(loc).download_blob().readall()

    def download(self, loc: BlobLocation, dest: Path) -> str:
        """Stream the blob to `dest`; the sha256 hex of what was written. On any error `dest` is
        removed (a part of a blob is nobody's input)."""
        digest = hashlib.sha256()
        try:
            with dest.open("wb") as out:
                for data in self.read_chunks(loc):
                    digest.update(data)
                    out.write(data)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    # ---- writing -------------------------------------------------------------------------------

    def upload(self, source: Path, loc: BlobLocation) -> None:
        """Upload `source` as a block blob, replacing any blob of that name. It becomes visible
        whole, once committed (one Put Blob, or staged blocks and a final Put Block List): a
        failed upload leaves the old blob, or none."""
        with source.open("rb") as data:
            self._upload(loc, data, os.fstat(data.fileno()).st_size)

    def put(self, loc: BlobLocation, data: bytes) -> None:
        """`data` as the blob's whole content (small outputs: JSON, transcripts, failure records)."""
        self._upload(loc, data, len(data))

    def delete(self, loc: BlobLocation) -> None:
        """Delete the blob (and its snapshots); one that does not exist is fine."""
        with self._translated(loc, "delete"):
            try:
                self._blob(loc).delete_blob(delete_snapshots="include")
            except ResourceNotFoundError:
                pass

    def ensure_container(self, loc: BlobLocation) -> None:
        """Create `loc`'s container if it does not exist (for outputs).

        A container SAS cannot create containers (nor, when write-only, even see whether its own
        exists): with a SAS a refusal is taken to mean that the container is there; if it is not,
        the first upload says so (`BlobNotFoundError`).
        """
        container = self._container(loc)
        where = BlobLocation(loc.container, "", loc.account_url)
        try:
            with self._translated(where, "create"):
                try:
                    container.client.create_container()
                except ResourceExistsError:
                    pass
        except BlobAccessError:
            if not container.is_sas:
                raise
            log.debug("blob: %s: the SAS may not create containers; taken to exist", where)

    def _upload(self, loc: BlobLocation, data: bytes | IO[bytes], length: int) -> None:
        content_type = mimetypes.guess_type(loc.name)[0] or "application/octet-stream"
        with self._translated(loc, "write"):
            self._blob(loc).upload_blob(data, length=length, overwrite=True,
                                        content_settings=ContentSettings(content_type=content_type))

    # ---- clients and credentials -----------------------------------------------------------------

    def _blob(self, loc: BlobLocation) -> BlobClient:
        return self._container(loc).client.get_blob_client(loc.name)

    def _container(self, loc: BlobLocation) -> _Container:
        """The cached client of `loc`'s container; a location bringing its own (other) SAS
        replaces it, so the SAS a user just typed is the one used."""
        key = loc.container_key
        with self._lock:
            cached = self._containers.get(key)
            if cached is None or (loc.sas and loc.sas != cached.sas):
                if loc.sas:
                    self._secrets.add(_bare(loc.sas))
                if cached is not None:
                    self._replaced.append(cached.client)
                cached = self._containers[key] = self._connect(loc)
                log.debug("blob: %s with %s", key, cached.source)
        return cached

    def _connect(self, loc: BlobLocation) -> _Container:
        """A client for `loc`'s container with the first credential of the module docstring's order."""
        sas, sas_source = (loc.sas, "the SAS in the URL") if loc.sas else \
            (self._sas_by_container.get(loc.container_key, ""), f"the SAS in {SAS_BY_CONTAINER}")
        conn = self._env.get(CONNECTION_STRING, "")
        source = sas_source if sas else CONNECTION_STRING
        try:
            if not loc.account_url:
                if not conn:
                    raise BlobAccessError(
                        f"no credential for {loc.container_key}: az:// locations are in the account of "
                        f"{CONNECTION_STRING}, which is not set (or write the account's URL: "
                        f"https://ACCOUNT.blob.core.windows.net/{loc.container}/…)")
                client = ContainerClient.from_connection_string(
                    conn, loc.container, credential=_bare(sas) or None, **self._options())
                is_sas = bool(sas) or "sharedaccesssignature=" in conn.lower()
                return _Container(client, source, loc.sas, is_sas)
            if not sas and conn:
                client = ContainerClient.from_connection_string(conn, loc.container, **self._options())
                if f"{client.scheme}://{client.primary_hostname}".lower() == loc.account_url.lower():
                    return _Container(client, source, "")
                client.close()
            credential, source = self._url_credential(loc, sas, sas_source)
            client = ContainerClient(loc.account_url, loc.container, credential=credential, **self._options())
            return _Container(client, source, loc.sas, isinstance(credential, str))
        except ValueError as exc:  # a malformed connection string or key: the SDK's words may quote it
            raise BlobAccessError(f"cannot use {source} for {loc.container_key}: "
                                  f"{_scrub(str(exc).splitlines()[0], self._secrets)}") from None

    def _url_credential(self, loc: BlobLocation, sas: str, sas_source: str) -> tuple[_Credential, str]:
        """The credential for a URL location that no connection string serves, and its name."""
        if sas:
            return _bare(sas), sas_source
        if self._env.get(ACCOUNT_KEY):
            return {"account_name": _account_name(loc), "account_key": self._env[ACCOUNT_KEY]}, ACCOUNT_KEY
        if self._env.get(SAS_TOKEN):
            return _bare(self._env[SAS_TOKEN]), SAS_TOKEN
        if urlsplit(loc.account_url).scheme != "https":
            raise BlobAccessError(f"no credential for {loc.container_key}: Azure identity needs https; set "
                                  f"{ACCOUNT_KEY}, {SAS_TOKEN}, {CONNECTION_STRING} or a SAS in the URL")
        return _default_credential(), _IDENTITY

    def _options(self) -> dict[str, Any]:
        """The SDK client's keyword arguments: timeouts, a short retry, range sizes, API version."""
        # Our own retry policy backs off on transient errors (`BlobUnavailableError`): the SDK tries
        # a request twice more, about a second apart, so a dead endpoint is reported in seconds.
        retry = LinearRetry(backoff=1, retry_total=2, random_jitter_range=1)
        return {**_CLIENT_OPTIONS, **self._api_version, "retry_policy": retry}

    @staticmethod
    def _stored(root: BlobLocation, name: str, size: int | None, etag: str | None) -> StoredObject:
        return StoredObject(BlobLocation(root.container, name, root.account_url).canonical,
                            root.relative(name), size or 0, etag or "")

    # ---- errors ----------------------------------------------------------------------------------

    @contextmanager
    def _translated(self, loc: BlobLocation, permission: Permission) -> Iterator[None]:
        """Raise the SDK's errors inside as ours (chained, with their secrets scrubbed)."""
        try:
            yield
        except AzureError as exc:
            with self._lock:
                secrets, container = list(self._secrets), self._containers.get(loc.container_key)
            _scrub_exception(exc, secrets)
            source = container.source if container else "no credential"
            raise _translate(exc, loc, permission, source) from exc


_IDENTITY = "DefaultAzureCredential (Azure identity)"

# What to do about a refused credential, by credential.
_ACCESS_HINTS = {
    CONNECTION_STRING: f"check the account key in {CONNECTION_STRING}",
    ACCOUNT_KEY: f"check {ACCOUNT_KEY}: the key of the URL's account",
    SAS_TOKEN: f"set {SAS_TOKEN} to a SAS that grants it",
    f"the SAS in {SAS_BY_CONTAINER}": f"put a SAS that grants it in {SAS_BY_CONTAINER}",
    "the SAS in the URL": "use a SAS that grants it (sp=) and has not expired (se=)",
    _IDENTITY: (f"give the identity a Storage Blob Data role on the container, or set {ACCOUNT_KEY}, "
                f"{SAS_TOKEN} or {SAS_BY_CONTAINER}"),
}
_AUTHENTICATION_CODES = {"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation"}


def _translate(exc: AzureError, loc: BlobLocation, permission: Permission, source: str) -> ProcessingError:
    """Ours for an SDK error, by kind; worded with the canonical location and the error code only
    (the service's own text can quote the request, signature included)."""
    status = exc.status_code if isinstance(exc, HttpResponseError) else None
    code = getattr(exc, "error_code", None) or ""  # set by the storage SDK, from x-ms-error-code…
    code = str(getattr(code, "value", code))  # …as a StorageErrorCode when it knows the code
    where = loc.canonical
    if isinstance(exc, ResourceModifiedError) or status == 412:
        return BlobChangedError(f"{where} changed while it was read (its ETag moved on): read it again")
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        what = "container" if code == "ContainerNotFound" else "blob"
        return BlobNotFoundError(f"{what} not found: {loc.container_key if what == 'container' else where}")
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        hint = _ACCESS_HINTS.get(source, "")
        if status is None:  # no answer to refuse anything: the identity found no token
            return BlobAccessError(f"no credential for {where}: {source} found none; {hint}")
        refused = f"access to {where} refused ({code or status})"
        if code in _AUTHENTICATION_CODES or source in (ACCOUNT_KEY, CONNECTION_STRING):  # a key may do all
            return BlobAccessError(f"{refused}: {source} was not accepted (wrong key or signature, "
                                   f"or expired); {hint}")
        return BlobAccessError(f"{refused}: {source} lacks {permission} permission; {hint}")
    answer = f"{status} {code}".strip() if status else _reason(exc)
    if status is None or status in (408, 429) or status >= 500:
        return BlobUnavailableError(f"Blob storage unavailable for {where}: {answer}")
    return PermanentError(f"Blob storage refused to {permission} {where} ({answer})")


def _reason(exc: AzureError) -> str:
    """A connection error in a few words ("cannot connect (connection refused)"), from its text."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")(]+)", text)
    detail = errno.group(1).strip().lower() if errno else \
        "timed out" if re.search(r"(?i)timed out|timeout", text) else type(exc).__name__
    return f"{'cannot connect' if isinstance(exc, ServiceRequestError) else 'no answer'} ({detail})"


# ---- secrets -----------------------------------------------------------------------------------------

_URL_QUERY = re.compile(r"\?[^\s'\"<>?]*=[^\s'\"<>]*")
_SECRET_FIELD = re.compile(r"(?i)\b(sig|AccountKey|SharedAccessSignature)=[^\s&;'\"<>]*")


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret it quotes, and every URL query (a SAS token, maybe), taken out."""
    for secret in secrets:
        for spelling in (secret, unquote(secret), quote(secret, safe="")):
            text = text.replace(spelling, "***")
    return _SECRET_FIELD.sub(r"\1=***", _URL_QUERY.sub("?…", text))


def _scrub_exception(exc: BaseException, secrets: list[str]) -> None:
    """Scrub the messages of `exc` and of every exception it chains or wraps, in place: ours are
    raised `from` it, so a traceback prints them."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.args = tuple(_scrub(a, secrets) if isinstance(a, str) else a for a in current.args)
        for name in ("message", "reason"):
            if isinstance(getattr(current, name, None), str):
                try:
                    setattr(current, name, _scrub(getattr(current, name), secrets))
                except AttributeError:  # a read-only property
                    pass
        linked = [*current.args, current.__cause__, current.__context__,
                  getattr(current, "inner_exception", None), getattr(current, "reason", None)]
        pending.extend(e for e in linked if isinstance(e, BaseException))


class _NoQueries(logging.Filter):
    """Takes URL queries (SAS tokens, maybe) out of the records of a logger that prints request URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = _scrub(message, ())
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        return True


# azure-core logs each request (URL, headers) at INFO and DEBUG: held at WARNING whatever the root
# logger's level. urllib3, under it, logs each request line (with the SAS in its query) at DEBUG
# and retries at WARNING: those records lose their queries instead.
_azure_log = logging.getLogger("azure")
_azure_log.setLevel(max(_azure_log.level, logging.WARNING))
for _name in ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_NoQueries())


def _api_version(env: Mapping[str, str]) -> dict[str, str]:
    """``{"api_version": …}`` from the environment, checked now (the SDK knows which it speaks)."""
    version = env.get(API_VERSION, "")
    if not version:
        return {}
    try:
        ContainerClient("https://account.blob.core.windows.net", "check", api_version=version).close()
    except ValueError:
        raise ConfigError(f"{API_VERSION}={version}: not an API version azure-storage-blob speaks") from None
    return {"api_version": version}


def _bare(sas: str) -> str:
    return sas.lstrip("?")


def _sas_map(env: Mapping[str, str]) -> dict[str, str]:
    raw = env.get(SAS_BY_CONTAINER, "")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f'{SAS_BY_CONTAINER} must be a JSON object {{"CONTAINER_URL": "SAS", …}}')
    return {str(k): v for k, v in value.items()}


def _secrets_of(env: Mapping[str, str], sas_by_container: Mapping[str, str]) -> set[str]:
    """Every secret the environment holds, whole and in parts (a connection string's key and SAS)."""
    found = {_bare(v) for v in sas_by_container.values()}
    found |= {_bare(env[var]) for var in (ACCOUNT_KEY, SAS_TOKEN, CONNECTION_STRING) if env.get(var)}
    for part in env.get(CONNECTION_STRING, "").split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature") and value:
            found.add(_bare(value.strip()))
    return {s for s in found if s}


def _account_name(loc: BlobLocation) -> str:
    """The account of a URL location: the path's segment (path-style) or the host's first label."""
    parts = urlsplit(loc.account_url)
    return parts.path.strip("/") or (parts.hostname or "").split(".")[0]


def _default_credential() -> TokenCredential:
    from azure.identity import DefaultAzureCredential  # imported only when used: it is slow to import

    return DefaultAzureCredential()
