"""File names: how an input's name becomes its output's name, and how a name is shown on a terminal.

Names are `str` as Python gives them for the file system: bytes that are not UTF-8 are carried as
lone surrogates (PEP 383, ``os.fsdecode``), so ``os.fsencode`` gives the exact bytes back. Redis
stores those bytes (`common.state` connects with ``surrogateescape``), outputs get the same bytes in
their names, and JSON outputs write such a byte as the escape ``\\udcXX``.
"""

from __future__ import annotations

import hashlib
import os

NAME_MAX = 255  # bytes in one file name on every file system we write to (ext4, xfs, NFS, SMB)
_HASH_CHARS = 12  # hex digits of the full name's sha256 that keep shortened names apart


def output_name(input_name: str, suffix: str = ".json") -> str:
    """``call.wav`` → ``call_wav.json`` (batch-processing-kit's naming).

    A result longer than `NAME_MAX` bytes keeps as much of the stem as fits, then ``~`` and 12 hex
    digits of the sha256 of the whole input name: ``<stem cut>~<hash>_<ext>.json``, 255 bytes.
    Two long names that share the cut stem still differ by their hash.
    """
    stem, dot, ext = input_name.rpartition(".")
    if not dot or not stem:
        stem, ext = input_name, ""
    return fitted(stem, f"_{ext}{suffix}" if ext else suffix, input_name)


def fitted(stem: str, tail: str, whole: str) -> str:
    """``stem + tail``, or, when that is over `NAME_MAX` bytes, the stem cut to fit with ``~`` and
    12 hex digits of the sha256 of `whole` (the input's name) before `tail`."""
    if _size(stem + tail) <= NAME_MAX:
        return stem + tail
    tag = "~" + hashlib.sha256(os.fsencode(whole)).hexdigest()[:_HASH_CHARS]
    budget = NAME_MAX - _size(tag + tail)
    cut = stem[:budget]  # a character is at least one byte: start from here, never split one
    while _size(cut) > budget:
        cut = cut[:-1]
    return cut + tag + tail


def _size(name: str) -> int:
    return len(os.fsencode(name))


def printable(text: str) -> str:
    """`text` safe to print on a terminal: unprintable characters escaped.

    An escape sequence in a file name (``\\x1b[2J`` clears the screen, ``\\x1b]0;…\\x07`` sets the
    title) must never reach the terminal raw. Control and format characters become ``\\xNN`` /
    ``\\uNNNN``, and a byte that is not UTF-8 becomes ``\\xNN``: the byte itself.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, carried as a lone surrogate
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
