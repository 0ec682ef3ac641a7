"""`serve`'s tokens and roots: read from the environment and a file, checked without showing them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchscribe.api.config import ApiConfig, TokenSet, is_loopback, load_tokens, token_file_warning
from batchscribe.common.errors import ConfigError
from batchscribe.producer.discover import outside_roots

A, B = "a" * 24, "b" * 32


def test_tokens_from_the_environment_and_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# the API's tokens\n{B}\n\n")
    assert load_tokens({"BATCHSCRIBE_API_TOKENS": f" {A} ,"}, str(path)) == [A, B]
    assert load_tokens({}, None) == []
    empty = tmp_path / "empty"
    empty.write_text("# none\n")
    with pytest.raises(ConfigError, match="no token in it"):
        load_tokens({}, str(empty))


@pytest.mark.parametrize("bad", ["short-secret", "x" * 10 + " " + "y" * 10])
def test_a_weak_token_is_refused_without_showing_it(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_tokens({"BATCHSCRIBE_API_TOKENS": f"{A},{bad}"}, None)
    assert "API token #2 (from BATCHSCRIBE_API_TOKENS)" in str(caught.value)
    assert bad not in str(caught.value) and A not in str(caught.value)


def test_the_token_set_accepts_only_whole_tokens_and_never_shows_them() -> None:
    tokens = TokenSet([A, B])
    assert tokens.accepts(A) and tokens.accepts(B)
    for wrong in ("", A[:-1], A + "a", B.upper(), A + B):
        assert not tokens.accepts(wrong)
    assert A not in repr(tokens) and "2 token(s)" in repr(tokens)


def test_a_token_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(A)
    os.chmod(path, 0o600)
    assert token_file_warning(str(path)) is None
    os.chmod(path, 0o644)
    assert "chmod 600" in (token_file_warning(str(path)) or "")


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.org"))


def test_roots_resolve_symlinks_and_dot_dot(tmp_path: Path) -> None:
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "in").mkdir(parents=True)
    other.mkdir()
    (root / "link").symlink_to(other)
    (tmp_path / "root-sibling").mkdir()
    config = ApiConfig.build([root / "in" / ".."], TokenSet([A]))
    assert config.roots == (root,) and config.batchkit_out == root / "batchkit"
    paths = [root / "in", root / "in" / ".." / ".." / "other", root / "link" / "x.wav",
             tmp_path / "root-sibling" / "x.wav", root / "new" / "out"]
    assert outside_roots(paths, config.roots) == [str(paths[1]), str(paths[2]), str(paths[3])]
    with pytest.raises(ConfigError, match="must be inside"):
        ApiConfig.build([root], None, batchkit_out=other)
    with pytest.raises(ConfigError, match="not a folder"):
        ApiConfig.build([root / "missing"], None)
