"""The terminal: a live display on a terminal and plain lines elsewhere, `NO_COLOR` honoured, and file
names printed as they are (never read as rich markup, never raw escape sequences).

Whether output is a terminal is decided by rich from the stream, or forced through rich's
environment: `TTY_COMPATIBLE=1` (a terminal), `TTY_INTERACTIVE=1` (live redraws), `FORCE_COLOR`."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.cli import run_cli

NAME = "odd [red]x[bold] :smile: \x1b[2J.wav"  # markup, an emoji code and a screen-clearing escape
SHOWN = "odd [red]x[bold] :smile: \\x1b[2J.wav"
TERMINAL = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}
COLOR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|9[0-7]|38;[25];)")  # an SGR foreground colour


def bad_batch(root: Path) -> Path:
    """A batch that fails at submit (not a WAV file): it completes with no worker at all."""
    root.mkdir()
    (root / NAME).write_text("not audio")
    return root


def test_without_a_terminal_progress_is_plain_lines(tmp_path: Path, redis_server) -> None:
    result = run_cli("submit", str(bad_batch(tmp_path / "in")), "--out", str(tmp_path / "out"), "--wait",
                     broker=redis_server.url)
    assert result.returncode == 1
    assert "1/1 files (100%)" in result.stderr and "failed 1 (permanent 1)" in result.stderr
    assert "\x1b" not in result.stderr  # no cursor movement, no colour
    assert f"{SHOWN}: not a WAV file" in result.stderr


def test_on_a_terminal_progress_is_one_live_display(tmp_path: Path, redis_server) -> None:
    result = run_cli("submit", str(bad_batch(tmp_path / "in")), "--out", str(tmp_path / "out"), "--wait",
                     broker=redis_server.url, **TERMINAL)
    assert result.returncode == 1
    assert "\x1b[?25l" in result.stderr and "\x1b[?25h" in result.stderr  # a live display hides the cursor
    assert "1/1 files" in result.stderr and "━" in result.stderr  # its bar
    assert "(100%)" not in result.stderr  # not the plain lines


def test_status_tables_honour_no_color_and_print_names_as_they_are(tmp_path: Path, redis_server) -> None:
    submitted = run_cli("submit", str(bad_batch(tmp_path / "in")), "--out", str(tmp_path / "out"),
                        broker=redis_server.url)
    batch_id = submitted.stdout.strip()
    coloured = run_cli("status", batch_id, broker=redis_server.url, FORCE_COLOR="1", **TERMINAL)
    plain = run_cli("status", batch_id, broker=redis_server.url, FORCE_COLOR="1", NO_COLOR="1", **TERMINAL)
    assert coloured.returncode == plain.returncode == 1
    assert COLOR.search(coloured.stdout), coloured.stdout  # the failures are in red on a terminal ...
    assert not COLOR.search(plain.stdout), plain.stdout  # ... and in no colour with NO_COLOR
    for shown in (coloured.stdout, plain.stdout):
        assert SHOWN in shown and "\x1b[2J" not in shown and "😄" not in shown
    listed = run_cli("status", broker=redis_server.url, NO_COLOR="1", **TERMINAL)
    assert listed.returncode == 0 and batch_id in listed.stdout and not COLOR.search(listed.stdout)
