"""How alike two answer texts are: a number in [0, 1], linear in their length.

The measure is the Dice coefficient of the texts' word bigrams (as multisets, each text
framed by a start and an end mark, so one-word and empty texts compare too):
``2 * |A & B| / (|A| + |B|)``. Identical texts score 1, texts sharing no pair of
consecutive words 0; a text with one word in twenty changed scores about 0.9, one whose
second half differs about 0.5. Whitespace is not compared (texts are split into words).

It stands in for ``difflib.SequenceMatcher.ratio``, which scores alike but costs too much
at the size compared (16 KiB of text): 16 to 220 ms a pair on words (the most with a
small vocabulary), seconds on characters, where this takes 1.5 to 3 ms (medians, one
core of a shared 2-core machine). It runs on the event loop, in the mirror's task, so
its cost is bounded by the length the texts are cut to (``shadow_text_chars``).
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

_EDGE = "\0"
"""The start and end mark of a text (no word contains it)."""


def similarity(a: str, b: str) -> float:
    """How alike ``a`` and ``b`` are, from 0 (nothing in common) to 1 (the same words)."""
    if a == b:
        return 1.0
    pairs_a, pairs_b = _bigrams(a), _bigrams(b)
    shared = sum((pairs_a & pairs_b).values())
    return 2 * shared / (pairs_a.total() + pairs_b.total())


def _bigrams(text: str) -> Counter[tuple[str, str]]:
    words = [_EDGE, *text.split(), _EDGE]
    return Counter(pairwise(words))
