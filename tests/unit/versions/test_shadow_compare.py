"""What a shadow comparison counts: a status alone, else tokens and text each."""

from __future__ import annotations

from gateway.versions.shadow import Answer, Mirror, compare


def primary(status: str = "200", tokens: int | None = 4,
            text: str | None = "the same answer") -> Mirror:
    mirror = Mirror("chat", "v2", chat=True)
    mirror.primary_status, mirror.primary_tokens, mirror.primary_text = status, tokens, text
    return mirror


def test_the_same_answer_does_not_diverge() -> None:
    assert compare(primary(), Answer("200", 4, "the same answer"), 0.9) == ([], 1.0)


def test_a_different_status_is_that_alone() -> None:
    assert compare(primary(), Answer("500"), 0.9) == (["status"], None)
    assert compare(primary("502", None, None), Answer("200", 4, "x"), 0.9) == (["status"],
                                                                               None)


def test_tokens_and_text_count_apart() -> None:
    assert compare(primary(), Answer("200", 5, "the same answer"), 0.9) == (["tokens"], 1.0)
    reasons, alike = compare(primary(), Answer("200", 4, "another reply here"), 0.9)
    assert (reasons, alike) == (["text"], 0.0)
    reasons, _ = compare(primary(), Answer("200", 3, "another"), 0.9)
    assert reasons == ["tokens", "text"]


def test_the_threshold_decides_what_is_a_text_divergence() -> None:
    mirror = primary(text="one two three four five six seven eight nine")
    answer = Answer("200", 4, "one two three four five six seven eight ten")
    (loose, alike), (exact, _) = compare(mirror, answer, 0.8), compare(mirror, answer, 1.0)
    assert alike == 0.8  # 8 of the 10 bigrams (the edges included) kept
    assert (loose, exact) == ([], ["text"])


def test_an_unknown_text_or_a_shared_error_is_not_compared() -> None:
    assert compare(primary(text=None), Answer("200", 4, "x"), 0.9) == ([], None)
    assert compare(primary("503", None, None), Answer("503"), 0.9) == ([], None)


def test_unknown_tokens_are_not_compared() -> None:
    """A request answered from the cache has no usage: its copy's tokens differ from
    nothing, and only the texts are compared."""
    assert compare(primary(tokens=None), Answer("200", 4, "the same answer"), 0.9) == (
        [], 1.0)
    assert compare(primary(tokens=None), Answer("200", 4, "another"), 0.9)[0] == ["text"]
