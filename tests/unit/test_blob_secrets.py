"""What Azurite never makes the SDK say: errors and log lines that quote a request URL with its SAS
(a connect timeout's urllib3 message, a service's words quoting the request). Raised at the SDK's
edge here, and seen through the public `BlobStore` methods."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestTimeoutError
from azure.storage.blob import BlobClient
from requests.exceptions import ConnectTimeout
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from batchscribe.common.blob import BlobStore
from batchscribe.common.errors import BlobAccessError, BlobUnavailableError
from batchscribe.common.locations import parse_blob

SIG = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
SAS = f"sv=2024-08-04&sr=c&sp=r&se=2030-01-01&sig={SIG}"
KEY = "c2VjcmV0LWFjY291bnQta2V5LW5vYm9keS1zZWVz"
TYPED = f"https://acct.blob.core.windows.net/in/a.wav?{SAS}"


def raising(exc: Exception) -> Any:
    def method(*args: Any, **kwargs: Any) -> Any:
        raise exc
    return method


class Response:
    """As much of an HTTP response as HttpResponseError reads."""

    def __init__(self, status: int, reason: str) -> None:
        self.status_code, self.reason, self.headers = status, reason, {}

    def text(self) -> str:
        return ""


def assert_clean(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc))
    for secret in (SIG, SIG.replace("%3D", "="), SAS, KEY, "sig="):
        assert secret not in text, text


def test_a_connect_timeout_quoting_the_url_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests' ConnectTimeout carries urllib3's "Max retries exceeded with url: /in/a.wav?…sig=…"."""
    inner = MaxRetryError(None, f"/in/a.wav?{SAS}", ConnectTimeoutError(f"timed out connecting for /in/a.wav?{SAS}"))
    err = ConnectTimeout(inner)
    monkeypatch.setattr(BlobClient, "download_blob", raising(ServiceRequestTimeoutError(err, error=err)))
    with BlobStore({}) as store, pytest.raises(BlobUnavailableError) as caught:
        store.read(parse_blob(TYPED))
    assert str(caught.value) == ("Blob storage unavailable for https://acct.blob.core.windows.net/in/a.wav: "
                                 "cannot connect (timed out)")
    assert_clean(caught.value)


def test_a_refusal_quoting_the_request_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    err = HttpResponseError(message=f"Server failed to authenticate https://acct.blob.core.windows.net/in/a.wav?{SAS} "
                                    f"with AccountKey={KEY}", response=Response(403, "Forbidden"))
    err.error_code = "AuthenticationFailed"  # type: ignore[attr-defined]  # as the storage SDK sets it
    monkeypatch.setattr(BlobClient, "get_blob_properties", raising(err))
    with BlobStore({"AZURE_STORAGE_KEY": KEY}) as store, pytest.raises(BlobAccessError) as caught:
        store.stat(parse_blob(TYPED.split("?")[0]))
    assert str(caught.value).startswith("access to https://acct.blob.core.windows.net/in/a.wav refused "
                                        "(AuthenticationFailed): AZURE_STORAGE_KEY was not accepted")
    assert_clean(caught.value)


def test_urllib3_request_lines_lose_their_query(caplog: pytest.LogCaptureFixture) -> None:
    import batchscribe.common.blob  # noqa: F401  # installs the filter

    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").debug('%s "%s %s"', "https://acct.blob.core.windows.net:443",
                                                      "GET", f"/in/a.wav?{SAS}")
    assert caplog.messages == ['https://acct.blob.core.windows.net:443 "GET /in/a.wav?…"']
