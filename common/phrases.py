"""The Speech service's phrase shape, as every engine, the emulator and the outputs speak it.

Times are in 100-ns ticks (`Offset`, `Duration`); `Lexical` is the text in lower case without
punctuation. One definition of each, so the azure engine, the local engine, the emulator and the
output writer cannot drift apart.
"""

from __future__ import annotations

import re

TICKS_PER_SECOND = 10_000_000
_PUNCTUATION = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")  # keeps the apostrophe of "don't"


def ticks(seconds: float) -> int:
    return int(round(seconds * TICKS_PER_SECOND))


def seconds(ticks_: int | float) -> float:
    """Ticks as seconds with millisecond precision (the `…InSeconds` fields of outputs)."""
    return round(int(ticks_) / TICKS_PER_SECOND, 3)


def lexical(text: str) -> str:
    """Lowercase words without punctuation, as the Speech service's `Lexical` field (digits kept)."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())
