"""Prompt canonicalisation, chained block hashes and the per-engine prefix index."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from gateway.scheduling.producers.prefix_index import PrefixIndex, block_hashes, prompt_text


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def h8(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


# --- prompt_text -------------------------------------------------------------------------


def test_chat_messages_with_string_content() -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"}]}
    assert prompt_text(body) == "\x1esystem\x1fBe brief.\x1euser\x1fHi"


def test_chat_content_parts_keep_only_text() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Look at "},
        {"type": "image_url", "image_url": {"url": "data:..."}},
        {"type": "text", "text": "this."},
    ]}]}
    assert prompt_text(body) == "\x1euser\x1fLook at this."


def test_chat_missing_or_null_content_is_empty() -> None:
    body = {"messages": [{"role": "assistant", "content": None, "tool_calls": []},
                         {"role": "tool"}]}
    assert prompt_text(body) == "\x1eassistant\x1f\x1etool\x1f"


def test_chat_malformed_pieces_are_skipped_not_raised() -> None:
    body = {"messages": [
        "not a message",
        {"role": 7, "content": "x"},
        {"role": "user", "content": [{"type": "text", "text": 5}, "junk", {"type": "text"},
                                     {"type": "text", "text": "ok"}]},
        {"role": "user", "content": {"text": "a dict"}},
    ]}
    assert prompt_text(body) == "\x1e\x1fx\x1euser\x1fok\x1euser\x1f"


def test_empty_message_list_is_empty() -> None:
    assert prompt_text({"messages": []}) == ""


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Once upon a time", "Once upon a time"),
        (["first", "second"], "first"),
        ([101, 7, 42], "101,7,42"),
        ([], ""),
        ([1, "mixed"], ""),
        (["mixed", 1], ""),
        ([[1, 2], [3]], ""),
        ([True, False], ""),
        (None, ""),
        (42, ""),
    ],
)
def test_completions_prompt(prompt: Any, expected: str) -> None:
    assert prompt_text({"prompt": prompt}) == expected


@pytest.mark.parametrize("body", [{}, {"messages": "hi"}, {"messages": None, "input": "x"}])
def test_anything_else_is_empty(body: dict[str, Any]) -> None:
    assert prompt_text(body) == ""


def test_messages_list_wins_over_prompt() -> None:
    assert prompt_text({"messages": [], "prompt": "p"}) == ""
    assert prompt_text({"messages": "bad", "prompt": "p"}) == "p"


# --- block_hashes ------------------------------------------------------------------------


def test_block_hashes_follow_the_documented_chain() -> None:
    root = h8(b"model-a")
    first = h8(root + b"abcd")
    second = h8(first + b"efgh")
    expected = [int.from_bytes(first, "little"), int.from_bytes(second, "little")]
    assert block_hashes("abcdefghij", 4, "model-a") == expected


def test_non_ascii_text_hashes_its_utf8_bytes() -> None:
    first = h8(h8(b"m") + "h\u00e9!\u4e2d".encode())
    assert block_hashes("h\u00e9!\u4e2dxy", 4, "m") == [int.from_bytes(first, "little")]


def test_lone_surrogates_do_not_raise() -> None:
    assert len(block_hashes("\ud800abc" * 4, 4, "m")) == 4


def test_only_full_blocks_are_hashed() -> None:
    assert block_hashes("abc", 4, "m") == []
    assert block_hashes("", 4, "m") == []
    assert len(block_hashes("a" * 12, 4, "m")) == 3
    assert block_hashes("a" * 12 + "b", 4, "m") == block_hashes("a" * 12, 4, "m")


def test_shared_prefix_shares_leading_hashes_and_diverges_after() -> None:
    base = block_hashes("aaaabbbbccccdddd", 4, "m")
    changed_third = block_hashes("aaaabbbbXcccdddd", 4, "m")
    assert changed_third[:2] == base[:2]
    assert changed_third[2] != base[2]
    assert changed_third[3] != base[3]  # the chain carries the difference forward
    changed_first = block_hashes("Xaaabbbbccccdddd", 4, "m")
    assert all(a != b for a, b in zip(changed_first, base, strict=True))


def test_same_block_at_another_position_hashes_differently() -> None:
    hashes = block_hashes("abcdabcd", 4, "m")
    assert hashes[0] != hashes[1]


def test_root_separates_models() -> None:
    assert block_hashes("abcdefgh", 4, "m1")[0] != block_hashes("abcdefgh", 4, "m2")[0]


def test_hashes_are_64_bit_and_pinned() -> None:
    # A salted or changed hash would silently break affinity across gateway replicas.
    (value,) = block_hashes("abcd", 4, "m")
    assert 0 <= value < 2**64
    assert value == int.from_bytes(h8(h8(b"m") + b"abcd"), "little")


def test_block_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="block_chars"):
        block_hashes("abcd", 0, "m")


# --- PrefixIndex -------------------------------------------------------------------------


def test_match_counts_the_leading_run_per_engine() -> None:
    index = PrefixIndex(capacity_blocks=100, ttl_s=60.0, clock=FakeClock())
    index.record("e0", [1, 2, 3])
    index.record("e1", [1, 2])
    assert index.match([1, 2, 3, 4], ["e0", "e1", "e2"]) == {"e0": 3, "e1": 2, "e2": 0}


def test_a_hole_stops_the_run() -> None:
    index = PrefixIndex(capacity_blocks=100, ttl_s=60.0, clock=FakeClock())
    index.record("e0", [1, 3, 4])
    assert index.match([1, 2, 3, 4], ["e0"]) == {"e0": 1}
    assert index.match([9, 1, 3], ["e0"]) == {"e0": 0}


def test_match_with_no_hashes_or_no_engines() -> None:
    index = PrefixIndex(capacity_blocks=100, ttl_s=60.0, clock=FakeClock())
    index.record("e0", [1])
    assert index.match([], ["e0"]) == {"e0": 0}
    assert index.match([1], []) == {}


def test_capacity_evicts_least_recent() -> None:
    index = PrefixIndex(capacity_blocks=4, ttl_s=60.0, clock=FakeClock())
    index.record("e0", [1, 2])  # oldest first: 2 1
    index.record("e0", [3, 4])  # 2 1 4 3
    index.record("e0", [1])  # 2 4 3 1: refreshed, so 2 is now the least recent
    index.record("e0", [5])  # 2 4 3 1 5, one over: 2 goes
    assert index.size("e0") == 4
    assert index.match([2], ["e0"]) == {"e0": 0}
    assert index.match([1], ["e0"]) == {"e0": 1}
    assert index.match([3, 4], ["e0"]) == {"e0": 2}
    assert index.match([5], ["e0"]) == {"e0": 1}
    index.record("e0", [6])  # 4 3 1 5 6, one over: 4 goes
    assert index.match([3, 4], ["e0"]) == {"e0": 1}


def test_a_prompt_longer_than_capacity_keeps_its_head() -> None:
    index = PrefixIndex(capacity_blocks=3, ttl_s=60.0, clock=FakeClock())
    index.record("e0", [1, 2, 3, 4, 5])
    assert index.size("e0") == 3
    assert index.match([1, 2, 3, 4, 5], ["e0"]) == {"e0": 3}


def test_head_of_a_recorded_prompt_outlives_its_tail() -> None:
    index = PrefixIndex(capacity_blocks=4, ttl_s=60.0, clock=FakeClock())
    index.record("e0", [1, 2, 3])
    index.record("e0", [7, 8])  # one over capacity: the tail block 3 goes first
    assert index.match([1, 2, 3], ["e0"]) == {"e0": 2}


def test_capacity_is_per_engine() -> None:
    index = PrefixIndex(capacity_blocks=2, ttl_s=60.0, clock=FakeClock())
    index.record("e0", [1, 2])
    index.record("e1", [3, 4])
    assert index.size("e0") == 2
    assert index.size("e1") == 2
    assert index.match([1, 2], ["e0", "e1"]) == {"e0": 2, "e1": 0}


def test_blocks_expire_after_ttl() -> None:
    clock = FakeClock(1000.0)
    index = PrefixIndex(capacity_blocks=100, ttl_s=60.0, clock=clock)
    index.record("e0", [1, 2])
    clock.now = 1030.0
    index.record("e0", [3])
    clock.now = 1059.999
    assert index.match([1, 2], ["e0"]) == {"e0": 2}
    assert index.size("e0") == 3
    clock.now = 1060.0
    assert index.match([1, 2], ["e0"]) == {"e0": 0}
    assert index.match([3], ["e0"]) == {"e0": 1}
    assert index.size("e0") == 1
    clock.now = 1090.0
    assert index.size("e0") == 0


def test_recording_again_refreshes_the_ttl() -> None:
    clock = FakeClock(1000.0)
    index = PrefixIndex(capacity_blocks=100, ttl_s=60.0, clock=clock)
    index.record("e0", [1, 2])
    clock.now = 1050.0
    index.record("e0", [1])
    clock.now = 1100.0
    assert index.match([1, 2], ["e0"]) == {"e0": 1}


def test_matching_does_not_refresh() -> None:
    clock = FakeClock(1000.0)
    index = PrefixIndex(capacity_blocks=100, ttl_s=60.0, clock=clock)
    index.record("e0", [1])
    clock.now = 1050.0
    assert index.match([1], ["e0"]) == {"e0": 1}
    clock.now = 1060.0
    assert index.match([1], ["e0"]) == {"e0": 0}


def test_forget_empties_one_engine() -> None:
    index = PrefixIndex(capacity_blocks=100, ttl_s=60.0, clock=FakeClock())
    index.record("e0", [1, 2])
    index.record("e1", [1, 2])
    index.forget("e0")
    index.forget("never-seen")
    assert index.size("e0") == 0
    assert index.match([1, 2], ["e0", "e1"]) == {"e0": 0, "e1": 2}
    index.record("e0", [1])
    assert index.match([1, 2], ["e0"]) == {"e0": 1}


def test_size_of_an_unknown_engine_is_zero() -> None:
    assert PrefixIndex(capacity_blocks=1, ttl_s=1.0).size("nobody") == 0


def test_works_with_real_block_hashes() -> None:
    index = PrefixIndex(capacity_blocks=100, ttl_s=60.0, clock=FakeClock())
    system = "You are a helpful assistant. " * 8
    index.record("e0", block_hashes(system + "First question?", 16, "m"))
    follow_up = block_hashes(system + "A different question entirely", 16, "m")
    shared_blocks = len(system) // 16  # 232 // 16 = 14 full blocks are identical
    assert index.match(follow_up, ["e0", "e1"]) == {"e0": shared_blocks, "e1": 0}


@pytest.mark.parametrize(("capacity", "ttl"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_invalid_settings(capacity: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        PrefixIndex(capacity_blocks=capacity, ttl_s=ttl)
