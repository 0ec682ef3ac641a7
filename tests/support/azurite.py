"""Azurite, the Azure Storage emulator (its blob service), for the tests of Blob inputs and outputs.

`scripts/setup --dev` installs it into .tools/ (npm); `running_azurite` starts it on a free
loopback port with its data in a temporary folder, waits until it answers, and stops it after.
The helpers talk to it with the SDK directly (not through `common.blob`), so a test sets up and
checks with a second opinion.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from tests.support.cli import ROOT
from tests.support.poll import wait_for
from tests.support.service import ServiceProcess

NewContainer = Callable[..., str]  # the `new_container` fixture: (hint="c") -> a fresh container's name

BINARY = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key (public: it is in Azure's documentation).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite(ServiceProcess):
    """`azurite-blob` on 127.0.0.1 and a port of its choosing (it prints which); a context manager."""

    def __init__(self, location: Path, log_path: Path | None = None, timeout: float = 30.0) -> None:
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: run scripts/setup --dev (it installs Azurite with npm)")
        # --skipApiVersionCheck: any azure-storage-blob release may talk to it; --loose: headers it
        # does not know are ignored; --disableTelemetry: it would phone home otherwise.
        cmd = [str(BINARY), "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", str(location),
               "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]
        super().__init__(cmd, r"successfully listens on http://127\.0\.0\.1:(\d+)", dict(os.environ),
                         log_path=log_path, timeout=timeout, cwd=location)
        self.port = int(self.announced[0].group(1))
        self.account_url = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.connection_string = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                                  f"BlobEndpoint={self.account_url};")
        self.service = BlobServiceClient.from_connection_string(self.connection_string)
        self.issued: list[str] = []  # every SAS token made here: secrets that no message may show
        try:
            wait_for(self._answers, timeout=timeout, what="Azurite to answer")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        next(iter(self.service.list_containers(results_per_page=1)), None)
        return True

    def __enter__(self) -> Azurite:
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.service.close()
        super().stop(timeout)

    # ---- helpers ---------------------------------------------------------------------------------

    def create_container(self, name: str) -> str:
        self.service.create_container(name)
        return name

    def upload(self, container: str, name: str, data: bytes | Path) -> None:
        content = data.read_bytes() if isinstance(data, Path) else data
        self.service.get_blob_client(container, name).upload_blob(content, overwrite=True)

    def names(self, container: str, prefix: str = "") -> list[str]:
        """Every blob name in `container` under `prefix` (a plain string prefix), in the service's order."""
        client = self.service.get_container_client(container)
        return [blob.name for blob in client.list_blobs(name_starts_with=prefix or None)]

    def content(self, container: str, name: str) -> bytes:
        return self.service.get_blob_client(container, name).download_blob().readall()

    def container_sas(self, container: str, permission: str = "rl", hours: float = 1.0) -> str:
        """A SAS token for `container` signed with the account key; `permission` in SAS letters (racwdl)."""
        sas = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                     permission=ContainerSasPermissions.from_string(permission),
                                     expiry=datetime.now(timezone.utc) + timedelta(hours=hours))
        self.issued.append(sas)
        return sas

    def url(self, container: str, name: str = "", sas: str = "") -> str:
        """The path-style URL of a container or blob, as a user would type it (with `sas` as its query)."""
        path = f"{self.account_url}/{container}" + (f"/{quote(name)}" if name else "")
        return f"{path}?{sas}" if sas else path


@contextlib.contextmanager
def running_azurite(log_path: Path | None = None) -> Iterator[Azurite]:
    """Azurite with its data in a fresh temporary folder, removed after it stops."""
    with tempfile.TemporaryDirectory(prefix="batchscribe-azurite-") as location, \
            Azurite(Path(location), log_path=log_path) as azurite:
        yield azurite
