"""Where inputs and outputs live: a path on (shared) disk, or a blob in Azure Blob storage.

Three spellings of a blob location are accepted wherever a path is:

* ``az://CONTAINER[/PREFIX]`` — the account is the one of ``AZURE_STORAGE_CONNECTION_STRING``;
  the rest is the blob name as written (no percent-decoding);
* ``https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX][?SAS]`` — the account's URL (any
  ``*.blob.*`` host: sovereign clouds too); the path is percent-decoded;
* ``http(s)://HOST[:PORT]/ACCOUNT/CONTAINER[/PREFIX][?SAS]`` — path-style, for hosts that are not
  ``*.blob.*`` (Azurite, Azure Stack).

A SAS token in the query is a secret: it is kept apart (`BlobLocation.sas`, never in `repr`, never
in `canonical`), so the location that Redis, logs, Flower and outputs hold is the canonical one
without it. Workers find their credentials in their own environment (`common.blob`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from batchscribe.common.errors import InputError

AZ_SCHEME = "az://"
_URL_SCHEMES = ("https://", "http://")
_NAME_SAFE = "/~!$&'()*+,;=:@"  # what stays unescaped in a canonical blob URL's path


@dataclass(frozen=True)
class BlobLocation:
    """A container, and a blob name or name prefix inside it."""

    container: str
    name: str = ""  # blob name or prefix, without a leading '/'; "" = the whole container
    account_url: str = ""  # "https://ACCOUNT.blob.core.windows.net", path-style base, or "" for az://
    sas: str = field(default="", repr=False, compare=False)  # from the URL's query: a secret

    @property
    def canonical(self) -> str:
        """The location without its secret: what is stored, logged and written into outputs."""
        if not self.account_url:
            return f"{AZ_SCHEME}{self.container}" + (f"/{self.name}" if self.name else "")
        path = quote(self.container, safe="") + (f"/{quote(self.name, safe=_NAME_SAFE)}" if self.name else "")
        return f"{self.account_url}/{path}"

    @property
    def container_key(self) -> str:
        """Identifies the container (account + name), e.g. to look a credential up."""
        return BlobLocation(self.container, "", self.account_url).canonical

    def child(self, rel: str) -> BlobLocation:
        """The blob `rel` (a '/'-separated relative name) under this prefix."""
        rel = rel.strip("/")
        name = f"{self.name.rstrip('/')}/{rel}" if self.name.strip("/") else rel
        return BlobLocation(self.container, name, self.account_url, self.sas)

    def relative(self, full_name: str) -> str:
        """The name of a blob listed under this prefix, relative to it."""
        prefix = self.name.rstrip("/")
        if prefix and full_name.startswith(prefix + "/"):
            return full_name[len(prefix) + 1:]
        return full_name if not prefix else posixpath.basename(full_name)

    def __str__(self) -> str:
        return self.canonical


def is_blob(location: str | Path) -> bool:
    """Whether `location` names blob storage rather than a path."""
    text = str(location) if not isinstance(location, Path) else ""
    return text.startswith(AZ_SCHEME) or text.startswith(_URL_SCHEMES)


def parse_blob(location: str) -> BlobLocation:
    """A `BlobLocation` from one of the spellings of the module docstring; InputError otherwise."""
    if location.startswith(AZ_SCHEME):
        rest = location[len(AZ_SCHEME):]
        container, _, name = rest.partition("/")
        return _checked(location, BlobLocation(container, name.lstrip("/")))
    parts = urlsplit(location)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{shown(location)}: not a path, az://CONTAINER/… or https://ACCOUNT.blob… URL")
    segments = unquote(parts.path).lstrip("/").split("/")
    base = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    if ".blob." in parts.hostname:  # virtual-host style: the account is the host's first label
        container, name = segments[0], "/".join(segments[1:])
    else:  # path-style (Azurite, Azure Stack): /ACCOUNT/CONTAINER/NAME
        if len(segments) < 2 or not segments[0]:
            raise InputError(f"{shown(location)}: a path-style blob URL is http(s)://HOST/ACCOUNT/CONTAINER[/PREFIX]")
        base += f"/{segments[0]}"
        container, name = segments[1], "/".join(segments[2:])
    return _checked(location, BlobLocation(container, name, base, parts.query))


def _checked(location: str, blob: BlobLocation) -> BlobLocation:
    if not blob.container:
        raise InputError(f"{shown(location)}: no container named")
    return blob


def shown(location: str | Path) -> str:
    """A location as messages may show it: a blob URL without its query (its SAS token)."""
    text = str(location)
    if is_blob(text) and "?" in text:
        return text.split("?", 1)[0] + "?…"
    return text


def join(base: str | Path, rel: str) -> str:
    """`rel` (relative, '/'-separated) under `base`, for paths and blob prefixes alike."""
    text = str(base)
    if is_blob(text):
        return parse_blob(text).child(rel).canonical
    if (rel and text[1:] and text[0] == "/" and not text.endswith("/") and "//" not in text
            and rel[0] not in "/." and not rel.endswith("/") and "//" not in rel and "/." not in rel):
        return f"{text}/{rel}"  # what Path(base) / rel gives for a clean absolute base and rel
    return str(Path(base) / rel)


def with_suffix(location: str, suffix: str) -> str:
    """`location` with its last suffix replaced (``…/a_wav.json`` → ``…/a_wav.srt``)."""
    if is_blob(location):
        head, _, name = location.rpartition("/")
        stem = name.rsplit(".", 1)[0] if "." in name else name
        return f"{head}/{stem}{suffix}"
    return str(Path(location).with_suffix(suffix))


def name_of(location: str) -> str:
    """The last component: a file's or a blob's name."""
    if is_blob(location):
        return unquote(location.rstrip("/").rpartition("/")[2]) if not location.startswith(AZ_SCHEME) \
            else location.rstrip("/").rpartition("/")[2]
    return Path(location).name
