"""Word error rate for tests and benchmarks, with the normalisation that makes engines comparable.

Both sides are lowercased, stripped of punctuation, and numbers are spelled out the way espeak-ng
says them ("42" -> "forty two"), so "It's 42." and "its forty-two" differ only where words do.
"""

from __future__ import annotations

import re

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1000, "thousand"), (100, "hundred"))
_TOKEN_RE = re.compile(r"\d+|[a-z]+(?:'[a-z]+)*")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3})")  # "1,250" is one number


def number_words(n: int) -> str:
    """English words for a non-negative integer, without "and" (as espeak-ng en-us says it)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in _SCALES:
        if n >= size:
            rest = n % size
            return f"{number_words(n // size)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def normalise(text: str) -> list[str]:
    """Lowercase words, punctuation dropped, digits spelled, apostrophes removed ("it's" -> "its")."""
    words: list[str] = []
    for token in _TOKEN_RE.findall(_THOUSANDS_RE.sub("", text.lower())):
        words.extend(number_words(int(token)).split() if token.isdigit() else [token.replace("'", "")])
    return words


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions all cost 1)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word errors divided by reference words, after `normalise` (1.0 for an empty reference with output)."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
