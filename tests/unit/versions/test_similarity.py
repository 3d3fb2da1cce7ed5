"""Text similarity of shadow comparisons: word bigrams, 0 to 1."""

from __future__ import annotations

import pytest

from gateway.versions.similarity import similarity

WORDS = [f"w{i}" for i in range(200)]
TEXT = " ".join(WORDS)


def test_the_same_words_are_1_whatever_the_spacing() -> None:
    assert similarity(TEXT, TEXT) == 1.0
    assert similarity("a b  c\n", " a b c") == 1.0
    assert similarity("", "") == 1.0


def test_nothing_in_common_is_0() -> None:
    assert similarity(TEXT, " ".join(w.upper() for w in WORDS)) == 0.0
    assert similarity("", "word") == 0.0
    assert similarity("one", "two") == 0.0


def test_one_word_in_twenty_changed_is_about_0_9() -> None:
    edited = " ".join("x" if i % 20 == 10 else w for i, w in enumerate(WORDS))
    assert similarity(TEXT, edited) == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("cut", [50, 100, 150])
def test_a_different_tail_scores_the_share_kept(cut: int) -> None:
    other = " ".join(WORDS[:cut] + [w + "'" for w in WORDS[cut:]])
    assert similarity(TEXT, other) == pytest.approx(cut / 200, abs=0.01)
    assert similarity(other, TEXT) == similarity(TEXT, other)


def test_the_order_of_words_counts() -> None:
    assert similarity("a b c d", "d c b a") == 0.0
