"""What `batchscribe serve` is configured with: the allowed roots, the API tokens, batch-kit's
results folder. Read once at start-up; tokens are kept only as digests, never printed."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchscribe.common.errors import ConfigError

TOKENS_VAR = "BATCHSCRIBE_API_TOKENS"
MIN_TOKEN_LENGTH = 16
BATCHKIT_FOLDER = "batchkit"  # default results folder of batch-kit submissions, under the first root


class TokenSet:
    """The accepted bearer tokens, as SHA-256 digests compared in constant time (every digest is
    compared, so neither the length nor which token matched shows in the timing)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"TokenSet({len(self)} token(s))"

    def accepts(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(known, digest)
        return found


def load_tokens(environ: Mapping[str, str], token_file: str | None) -> list[str]:
    """Tokens from BATCHSCRIBE_API_TOKENS (comma-separated) and --token-file (one per line, '#'
    comments); each at least MIN_TOKEN_LENGTH characters. Errors never show a token."""
    tokens = [t.strip() for t in environ.get(TOKENS_VAR, "").split(",") if t.strip()]
    sources = [TOKENS_VAR] * len(tokens)
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it: {exc}") from exc
        from_file = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not from_file:
            raise ConfigError(f"--token-file {token_file}: no token in it (one per line)")
        tokens += from_file
        sources += [token_file] * len(from_file)
    for number, (token, source) in enumerate(zip(tokens, sources), start=1):
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise ConfigError(f"API token #{number} (from {source}) is {len(token)} characters or holds "
                              f"spaces: use at least {MIN_TOKEN_LENGTH} characters without spaces "
                              "(e.g. `openssl rand -hex 24`); its value is not shown")
    return tokens


def token_file_warning(token_file: str | None) -> str | None:
    """A warning when the token file can be read by other users (as ssh warns about keys)."""
    if token_file and os.stat(token_file).st_mode & 0o077:
        return f"warning: --token-file {token_file} is readable by other users: chmod 600 it"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ApiConfig:
    """Everything the app needs besides the store and the submitter (`create_app`)."""

    roots: tuple[Path, ...]  # resolved: inputs and outputs must be under one of them
    tokens: TokenSet | None  # None: no authentication (`--no-auth`, localhost only)
    batchkit_out: Path  # batch-kit submissions write to batchkit_out/batch_<id>/
    batchkit_localhost: bool = False  # batch-kit's routes answer loopback clients without a token
    poll_interval: float = 0.5  # seconds between looks at a batch while a request long-polls it

    @classmethod
    def build(cls, roots: Sequence[str | Path], tokens: TokenSet | None,
              batchkit_out: str | Path | None = None, batchkit_localhost: bool = False,
              poll_interval: float = 0.5) -> ApiConfig:
        resolved = tuple(Path(os.path.realpath(r)) for r in roots)
        if not resolved:
            raise ConfigError("give at least one --allow-root DIR: the folders the API may read and write")
        missing = [str(r) for r, real in zip(roots, resolved) if not real.is_dir()]
        if missing:
            raise ConfigError(f"--allow-root {missing[0]}: not a folder")
        out = Path(os.path.realpath(batchkit_out)) if batchkit_out else resolved[0] / BATCHKIT_FOLDER
        if not any(out == r or r in out.parents for r in resolved):
            raise ConfigError(f"--batchkit-out {out} must be inside one of the --allow-root folders")
        return cls(resolved, tokens, out, batchkit_localhost, poll_interval)
