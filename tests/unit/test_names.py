"""Names shown on a terminal: nothing a file name holds reaches it raw."""

from __future__ import annotations

import os

from batchscribe.common.names import printable


def test_plain_names_are_shown_as_they_are() -> None:
    assert printable("/in/Grüße 2024/call (1).wav") == "/in/Grüße 2024/call (1).wav"


def test_control_characters_and_undecodable_bytes_are_escaped() -> None:
    assert printable("a\x1b[2Jb\x07\n\t.wav") == "a\\x1b[2Jb\\x07\\x0a\\x09.wav"
    assert printable("x\u202egnp.wav") == "x\\u202egnp.wav"  # right-to-left override
    assert printable(os.fsdecode(b"caf\xe9.wav")) == "caf\\xe9.wav"  # the byte itself
