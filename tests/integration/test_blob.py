"""common.blob against a real Azurite: listing, streaming, uploads that appear whole, each credential
path, the error classes, and no secret in any message or log record."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from batchscribe.common.blob import BlobStore, StoredObject
from batchscribe.common.errors import (
    BlobAccessError,
    BlobChangedError,
    BlobNotFoundError,
    BlobUnavailableError,
    ConfigError,
)
from batchscribe.common.locations import BlobLocation, parse_blob
from tests.support.azurite import ACCOUNT_KEY, Azurite, NewContainer, running_azurite

MiB = 1 << 20
WRONG_KEY = "d3Jvbmcta2V5LW5vdC10aGUtYWNjb3VudHM="  # base64, the length of no real key


def secrets_of(azurite: Azurite) -> list[str]:
    """What must appear nowhere: the account key, every SAS made, each SAS's signature alone."""
    sigs = [part[4:] for sas in azurite.issued for part in sas.split("&") if part.startswith("sig=")]
    return [ACCOUNT_KEY, WRONG_KEY, *azurite.issued, *sigs, *map(unquote, sigs), "sig=", "AccountKey="]


def assert_no_secret(text: str, azurite: Azurite) -> None:
    leaked = [secret for secret in secrets_of(azurite) if secret in text]
    assert not leaked, f"secret {leaked[0]!r} in: {text}"


def assert_clean_error(exc: BaseException, azurite: Azurite) -> None:
    """Neither our message nor anything chained under it (what a traceback prints) holds a secret."""
    assert_no_secret("".join(traceback.format_exception(exc)) + repr(exc), azurite)


@pytest.fixture(autouse=True)
def no_secret_logged(caplog: pytest.LogCaptureFixture, azurite: Azurite) -> Iterator[None]:
    """Every test here runs with the root logger at DEBUG; no record may hold a secret."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.get_records("setup") + caplog.get_records("call"):  # .records: teardown's only
        text = record.getMessage() + ("".join(traceback.format_exception(*record.exc_info)) if record.exc_info else "")
        assert_no_secret(f"{record.name}: {text}", azurite)


@pytest.fixture
def conn_env(azurite: Azurite) -> dict[str, str]:
    return {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}


@pytest.fixture
def open_store() -> Iterator[Callable[[dict[str, str]], BlobStore]]:
    """BlobStores on given environments, all closed after the test."""
    opened: list[BlobStore] = []

    def make(env: dict[str, str]) -> BlobStore:
        opened.append(BlobStore(env))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def blobs(open_store: Callable[[dict[str, str]], BlobStore], conn_env: dict[str, str]) -> BlobStore:
    """A store with the connection string: what az:// locations use."""
    return open_store(conn_env)


def az(container: str, name: str = "") -> BlobLocation:
    return parse_blob(f"az://{container}/{name}")


def rels(objects: Iterator[StoredObject]) -> list[str]:
    return [obj.rel for obj in objects]


# ---- reading ---------------------------------------------------------------------------------------


def test_list_recurses_in_name_order_and_takes_the_prefix_as_a_folder(
        azurite: Azurite, blobs: BlobStore, new_container: NewContainer) -> None:
    c = new_container("list")
    odd = "in/sub/with space é ü 日本語.wav"
    names = ["in/a.wav", "in/sub/b.wav", "in/sub/deeper/c.wav", odd, "inbox/x.wav", "in-old/y.wav",
             "in.txt", "top.wav"]
    for i, name in enumerate(names):
        azurite.upload(c, name, b"x" * (i + 1))

    listed = list(blobs.list(az(c, "in")))
    assert [o.rel for o in listed] == ["a.wav", "sub/b.wav", "sub/deeper/c.wav", "sub/with space é ü 日本語.wav"]
    assert [o.size for o in listed] == [1, 2, 3, 4]
    assert all(o.version.strip('"') for o in listed)
    assert listed[0].location == f"az://{c}/in/a.wav"
    assert rels(blobs.list(az(c, "in/"))) == [o.rel for o in listed]
    assert rels(blobs.list(az(c))) == sorted(names)
    assert rels(blobs.list(az(c, "in/sub/deeper"))) == ["c.wav"]
    assert rels(blobs.list(az(c, "nothing"))) == []


def test_a_prefix_that_names_a_blob_lists_that_blob(azurite: Azurite, blobs: BlobStore,
                                                    new_container: NewContainer) -> None:
    c = new_container("one")
    azurite.upload(c, "in/a.wav", b"abc")
    azurite.upload(c, "in/a.wav.json", b"{}")
    [only] = blobs.list(az(c, "in/a.wav"))
    assert (only.rel, only.size, only.location) == ("a.wav", 3, f"az://{c}/in/a.wav")


def test_listed_url_locations_are_canonical_and_parse_back(
        azurite: Azurite, open_store: Callable[[dict[str, str]], BlobStore], new_container: NewContainer) -> None:
    """A name with spaces and non-ASCII letters comes back percent-encoded, without the SAS, and parses
    back to the same blob."""
    c = new_container("url")
    name = "in/with space é 日本語 #1.wav"
    azurite.upload(c, name, b"abcd")
    store = open_store({})
    [listed] = store.list(parse_blob(azurite.url(c, "in", azurite.container_sas(c, "rl"))))
    assert listed.rel == "with space é 日本語 #1.wav"
    assert "?" not in listed.location and " " not in listed.location
    assert parse_blob(listed.location).name == name
    assert store.read(parse_blob(azurite.url(c, name, azurite.container_sas(c, "r")))) == b"abcd"


def test_stat_and_exists(azurite: Azurite, blobs: BlobStore, new_container: NewContainer) -> None:
    c = new_container("stat")
    azurite.upload(c, "in/a.wav", b"12345")
    found = blobs.stat(az(c, "in/a.wav"))
    etag = azurite.service.get_blob_client(c, "in/a.wav").get_blob_properties().etag
    assert found == StoredObject(f"az://{c}/in/a.wav", "a.wav", 5, etag)
    assert blobs.stat(az(c, "in/missing.wav")) is None
    assert blobs.stat(az("no-such-container", "a.wav")) is None
    assert blobs.exists(az(c, "in/a.wav")) and not blobs.exists(az(c, "in/missing.wav"))
    azurite.upload(c, "in/a.wav", b"123456")
    changed = blobs.stat(az(c, "in/a.wav"))
    assert changed is not None and changed.size == 6 and changed.version != etag


def test_read_chunks_streams_in_pieces_across_ranges(azurite: Azurite, blobs: BlobStore,
                                                    new_container: NewContainer) -> None:
    """9.5 MiB: more than one of the SDK's 4 MiB ranges, handed out in pieces of the size asked."""
    c = new_container("chunks")
    data = os.urandom(9 * MiB + MiB // 2)
    azurite.upload(c, "big.bin", data)
    pieces = list(blobs.read_chunks(az(c, "big.bin"), chunk=MiB))
    assert [len(p) for p in pieces] == [MiB] * 9 + [MiB // 2]
    assert b"".join(pieces) == data
    assert b"".join(blobs.read_chunks(az(c, "big.bin"), chunk=3 * MiB + 1)) == data
    with pytest.raises(ValueError, match="chunk must be a positive number"):
        next(blobs.read_chunks(az(c, "big.bin"), chunk=0))


def test_a_blob_overwritten_while_read_raises_blob_changed(azurite: Azurite, blobs: BlobStore,
                                                          new_container: NewContainer) -> None:
    """The ranges after the first are asked for if-match the first's ETag: never a mix of two versions."""
    c = new_container("changed")
    azurite.upload(c, "big.bin", os.urandom(9 * MiB))
    stream = blobs.read_chunks(az(c, "big.bin"), chunk=MiB)
    next(stream)
    azurite.upload(c, "big.bin", os.urandom(9 * MiB))
    with pytest.raises(BlobChangedError, match=f"az://{c}/big.bin changed while it was read") as caught:
        list(stream)
    assert_clean_error(caught.value, azurite)


def test_download_writes_the_file_and_returns_its_sha256(
        azurite: Azurite, blobs: BlobStore, new_container: NewContainer, tmp_path: Path) -> None:
    c = new_container("dl")
    data = os.urandom(5 * MiB + 17)
    azurite.upload(c, "in/a b.mp4", data)
    dest = tmp_path / "a.mp4"
    assert blobs.download(az(c, "in/a b.mp4"), dest) == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    with pytest.raises(BlobNotFoundError):
        blobs.download(az(c, "in/missing.mp4"), tmp_path / "missing.mp4")
    assert not (tmp_path / "missing.mp4").exists()


# ---- writing ---------------------------------------------------------------------------------------


class ObservedReader(io.BufferedReader):
    """The upload's source file: runs `on_read` each time past the first read (the first block has
    been taken then); raises OSError instead once `fail_after` bytes have been handed out."""

    def __init__(self, path: Path, on_read: Callable[[], None], fail_after: int | None = None) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self.on_read, self.fail_after, self.handed = on_read, fail_after, 0

    def read(self, size: int | None = -1) -> bytes:
        if self.fail_after is not None and self.handed >= self.fail_after:
            raise OSError(5, "Input/output error (injected)")
        if self.handed:
            self.on_read()
        data = super().read(size)
        self.handed += len(data)
        return data


@pytest.fixture
def observe_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make `Path.open` of one file return an `ObservedReader`."""

    def observe(path: Path, on_read: Callable[[], None], fail_after: int | None = None) -> None:
        original = Path.open

        def patched(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if self == path and mode == "rb":
                return ObservedReader(path, on_read, fail_after)
            return original(self, mode, *args, **kwargs)

        monkeypatch.setattr(Path, "open", patched)

    return observe


def test_an_upload_is_visible_only_once_committed(
        azurite: Azurite, blobs: BlobStore, new_container: NewContainer, tmp_path: Path,
        observe_reads: Callable[..., None]) -> None:
    """12 MiB: staged as blocks (over the single-put size), committed at the end; nothing shows before."""
    c = new_container("up")
    source = tmp_path / "out.mp3"
    source.write_bytes(data := os.urandom(12 * MiB))
    seen: list[list[str]] = []
    observe_reads(source, lambda: seen.append(azurite.names(c)))
    blobs.upload(source, az(c, "out/a.mp3"))
    assert seen and all(names == [] for names in seen)
    stored = blobs.stat(az(c, "out/a.mp3"))
    assert stored is not None and stored.size == len(data)
    assert azurite.content(c, "out/a.mp3") == data
    props = azurite.service.get_blob_client(c, "out/a.mp3").get_blob_properties()
    assert props.content_settings.content_type == "audio/mpeg"


def test_a_failed_upload_leaves_no_blob_and_the_old_one_intact(
        azurite: Azurite, blobs: BlobStore, new_container: NewContainer, tmp_path: Path,
        observe_reads: Callable[..., None]) -> None:
    c = new_container("fail")
    source = tmp_path / "out.mp3"
    source.write_bytes(os.urandom(12 * MiB))
    observe_reads(source, lambda: None, fail_after=4 * MiB)
    with pytest.raises(OSError, match="injected"):
        blobs.upload(source, az(c, "new.mp3"))
    assert azurite.names(c) == []
    azurite.upload(c, "old.mp3", b"the old version")
    with pytest.raises(OSError, match="injected"):
        blobs.upload(source, az(c, "old.mp3"))
    assert azurite.content(c, "old.mp3") == b"the old version"


def test_put_read_delete_exists(azurite: Azurite, blobs: BlobStore, new_container: NewContainer) -> None:
    c = new_container("put")
    loc = az(c, "out/a_wav.json")
    blobs.put(loc, b'{"ok": true}')
    assert blobs.read(loc) == b'{"ok": true}' and blobs.exists(loc)
    blobs.put(loc, b"{}")  # overwrites
    assert blobs.read(loc) == b"{}"
    blobs.delete(loc)
    assert not blobs.exists(loc) and azurite.names(c) == []
    blobs.delete(loc)  # already gone: fine
    blobs.delete(az("no-such-container", "x"))


def test_ensure_container_creates_it_once(azurite: Azurite, blobs: BlobStore) -> None:
    name = f"made-{os.urandom(6).hex()}"
    loc = az(name, "out/a.json")
    blobs.ensure_container(loc)
    blobs.ensure_container(loc)  # exists now: fine
    blobs.put(loc, b"{}")
    assert azurite.names(name) == ["out/a.json"]


def test_ensure_container_with_a_container_sas_takes_it_to_exist(
        azurite: Azurite, open_store: Callable[[dict[str, str]], BlobStore], new_container: NewContainer) -> None:
    """A container SAS may not create containers: a write-only one cannot even check; the upload tells."""
    c = new_container("sasout")
    store = open_store({})
    loc = parse_blob(azurite.url(c, "out/a.json", azurite.container_sas(c, "cw")))
    store.ensure_container(loc)
    store.put(loc, b"{}")
    assert azurite.names(c) == ["out/a.json"]
    missing = parse_blob(azurite.url("not-made-yet", "a.json", azurite.container_sas("not-made-yet", "cw")))
    store.ensure_container(missing)
    with pytest.raises(BlobNotFoundError, match="container not found") as caught:
        store.put(missing, b"{}")
    assert_clean_error(caught.value, azurite)


def test_one_store_serves_many_threads(azurite: Azurite, blobs: BlobStore, new_container: NewContainer) -> None:
    c = new_container("threads")

    def round_trip(i: int) -> bytes:
        loc = az(c, f"t/{i}.bin")
        blobs.put(loc, str(i).encode() * 1000)
        return blobs.read(loc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(round_trip, range(32)))
    assert results == [str(i).encode() * 1000 for i in range(32)]
    assert repr(blobs) == "<BlobStore: 1 container(s)>"  # one client for the container, shared


# ---- credentials -----------------------------------------------------------------------------------

CredentialCase = Callable[[Azurite, str], tuple[dict[str, str], str]]

CREDENTIALS: dict[str, CredentialCase] = {
    # name: (environment, location typed) for a container
    "connection string, az://": lambda a, c: ({"AZURE_STORAGE_CONNECTION_STRING": a.connection_string}, f"az://{c}/p"),
    "connection string of the URL's account": lambda a, c: (
        {"AZURE_STORAGE_CONNECTION_STRING": a.connection_string}, a.url(c, "p")),
    "container SAS in the URL": lambda a, c: ({}, a.url(c, "p", a.container_sas(c, "racwdl"))),
    "SAS in BATCHSCRIBE_BLOB_SAS": lambda a, c: (
        {"BATCHSCRIBE_BLOB_SAS": json.dumps({a.url(c): a.container_sas(c, "racwdl")})}, a.url(c, "p")),
    "account key in AZURE_STORAGE_KEY": lambda a, c: ({"AZURE_STORAGE_KEY": ACCOUNT_KEY}, a.url(c, "p")),
    "SAS in AZURE_STORAGE_SAS_TOKEN": lambda a, c: (
        {"AZURE_STORAGE_SAS_TOKEN": a.container_sas(c, "racwdl")}, a.url(c, "p")),
}


@pytest.mark.parametrize("case", sorted(CREDENTIALS))
def test_each_credential_path_reaches_the_container(
        case: str, azurite: Azurite, open_store: Callable[[dict[str, str]], BlobStore],
        new_container: NewContainer) -> None:
    c = new_container("cred")
    env, typed = CREDENTIALS[case](azurite, c)
    store, root = open_store(env), parse_blob(typed)
    store.put(root.child("x/a.json"), b"{}")
    assert [(o.rel, o.size) for o in store.list(root)] == [("x/a.json", 2)]
    assert store.read(root.child("x/a.json")) == b"{}"
    store.delete(root.child("x/a.json"))
    assert azurite.names(c) == []


def test_the_sas_typed_comes_before_the_environment(
        azurite: Azurite, open_store: Callable[[dict[str, str]], BlobStore], new_container: NewContainer,
        conn_env: dict[str, str]) -> None:
    """A read-only SAS in the URL is used even with a connection string of the account at hand; a SAS in
    BATCHSCRIBE_BLOB_SAS before the account key."""
    c = new_container("order")
    store = open_store(conn_env)
    with pytest.raises(BlobAccessError, match="the SAS in the URL lacks write permission"):
        store.put(parse_blob(azurite.url(c, "a.json", azurite.container_sas(c, "r"))), b"{}")
    store = open_store({"AZURE_STORAGE_KEY": ACCOUNT_KEY,
                        "BATCHSCRIBE_BLOB_SAS": json.dumps({azurite.url(c): azurite.container_sas(c, "rl")})})
    with pytest.raises(BlobAccessError, match="the SAS in BATCHSCRIBE_BLOB_SAS lacks write permission") as caught:
        store.put(parse_blob(azurite.url(c, "a.json")), b"{}")
    assert_clean_error(caught.value, azurite)


def test_missing_credentials_say_what_to_set(azurite: Azurite, open_store: Callable[[dict[str, str]], BlobStore],
                                             new_container: NewContainer) -> None:
    c = new_container("nocred")
    store = open_store({})
    with pytest.raises(BlobAccessError, match=f"no credential for az://{c}: .*AZURE_STORAGE_CONNECTION_STRING"):
        store.stat(az(c, "a.wav"))
    with pytest.raises(BlobAccessError, match="Azure identity needs https; set AZURE_STORAGE_KEY"):
        list(store.list(parse_blob(azurite.url(c))))


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="BATCHSCRIBE_BLOB_SAS must be a JSON object"):
        BlobStore({"BATCHSCRIBE_BLOB_SAS": "sv=2024&sig=abc"})
    with pytest.raises(ConfigError, match="BATCHSCRIBE_BLOB_API_VERSION=1999-01-01: not an API version"):
        BlobStore({"BATCHSCRIBE_BLOB_API_VERSION": "1999-01-01"})


def test_a_pinned_api_version_is_spoken(open_store: Callable[[dict[str, str]], BlobStore],
                                        conn_env: dict[str, str], new_container: NewContainer) -> None:
    c = new_container("api")
    store = open_store({**conn_env, "BATCHSCRIBE_BLOB_API_VERSION": "2021-08-06"})
    store.put(az(c, "a.json"), b"{}")
    assert store.read(az(c, "a.json")) == b"{}"


# ---- errors ----------------------------------------------------------------------------------------


def test_missing_blobs_and_containers_are_not_found(azurite: Azurite, blobs: BlobStore,
                                                   new_container: NewContainer) -> None:
    c = new_container("nf")
    with pytest.raises(BlobNotFoundError, match=f"^blob not found: az://{c}/in/missing.wav$"):
        blobs.read(az(c, "in/missing.wav"))
    with pytest.raises(BlobNotFoundError, match="^container not found: az://no-such-container$"):
        list(blobs.list(az("no-such-container", "in")))
    with pytest.raises(BlobNotFoundError, match=f"^blob not found: az://{c}/x$"):
        list(blobs.read_chunks(az(c, "x")))


def test_a_sas_without_write_permission_is_refused_without_showing_it(
        azurite: Azurite, open_store: Callable[[dict[str, str]], BlobStore], new_container: NewContainer,
        tmp_path: Path) -> None:
    c = new_container("ro")
    typed = azurite.url(c, "out/a.mp3", azurite.container_sas(c, "rl"))
    store = open_store({})
    source = tmp_path / "a.mp3"
    source.write_bytes(b"mp3")
    with pytest.raises(BlobAccessError) as caught:
        store.upload(source, parse_blob(typed))
    assert str(caught.value) == (
        f"access to {azurite.url(c, 'out/a.mp3')} refused (AuthorizationPermissionMismatch): the SAS in the URL "
        "lacks write permission; use a SAS that grants it (sp=) and has not expired (se=)")
    assert_clean_error(caught.value, azurite)
    assert azurite.names(c) == []


def test_a_wrong_account_key_is_refused_without_showing_it(
        azurite: Azurite, open_store: Callable[[dict[str, str]], BlobStore], new_container: NewContainer) -> None:
    c = new_container("key")
    azurite.upload(c, "a.wav", b"x")
    store = open_store({"AZURE_STORAGE_KEY": WRONG_KEY})
    with pytest.raises(BlobAccessError, match="AZURE_STORAGE_KEY was not accepted") as caught:
        store.read(parse_blob(azurite.url(c, "a.wav")))
    assert_clean_error(caught.value, azurite)


@pytest.mark.timeout(60)
def test_a_stopped_azurite_is_unavailable_soon(open_store: Callable[[dict[str, str]], BlobStore],
                                               azurite: Azurite) -> None:
    """Transient, reported after the SDK's few quick retries (our retry policy backs off, not the SDK);
    the refused request's URL carried the SAS, which the chained errors no longer show."""
    with running_azurite() as doomed:
        c = doomed.create_container("gone")
        doomed.upload(c, "a.wav", b"x")
        sas = doomed.container_sas(c, "rl")
        loc = parse_blob(doomed.url(c, "a.wav", sas))
        store = open_store({})
        assert store.read(loc) == b"x"
        doomed.stop()
        for operation in (lambda: store.read(loc), lambda: list(store.list(loc))):
            with pytest.raises(BlobUnavailableError, match="cannot connect") as caught:
                operation()
            text = "".join(traceback.format_exception(caught.value))
            assert sas not in text and "sig=" not in text, text


def test_secrets_stay_out_of_reprs(azurite: Azurite, open_store: Callable[[dict[str, str]], BlobStore],
                                   new_container: NewContainer) -> None:
    c = new_container("repr")
    loc = parse_blob(azurite.url(c, "a.wav", azurite.container_sas(c, "r")))
    store = open_store({"BATCHSCRIBE_BLOB_SAS": json.dumps({azurite.url(c): azurite.container_sas(c, "r")}),
                        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    assert not store.exists(loc)
    for shown in (repr(loc), str(loc), repr(store), repr(store.stat(loc))):
        assert_no_secret(shown, azurite)


def test_the_sdk_logs_no_request_and_urllib3_none_with_its_query(
        caplog: pytest.LogCaptureFixture, azurite: Azurite, open_store: Callable[[dict[str, str]], BlobStore],
        new_container: NewContainer) -> None:
    c = new_container("logs")
    store = open_store({})
    store.put(parse_blob(azurite.url(c, "a.json", azurite.container_sas(c, "rw"))), b"{}")
    assert not [r for r in caplog.records if r.name.startswith("azure") and r.levelno < logging.WARNING]
    requests = [r.getMessage() for r in caplog.records if r.name == "urllib3.connectionpool" and '"PUT ' in r.getMessage()]
    assert requests and all("?…" in line for line in requests), requests
