"""Consistent hashing with bounded loads: stability, spread, consistency and spill."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from gateway.scheduling.scorers.hashring import BoundedLoadRing, stable_hash

NODES = ["e0", "e1", "e2", "e3"]
IDLE = dict.fromkeys(NODES, 0)
KEYS = [f"session-{i}" for i in range(10_000)]


def key_on(ring: BoundedLoadRing, node: str, nodes: list[str] = NODES) -> str:
    """Some key that an idle ring of `nodes` places on `node`."""
    idle = dict.fromkeys(nodes, 0)
    return next(key for key in KEYS if ring.pick(key, idle, 1.25) == node)


def test_stable_hash_is_blake2b_little_endian() -> None:
    digest = hashlib.blake2b(b"abc", digest_size=8).digest()
    assert stable_hash("abc") == int.from_bytes(digest, "little")


def test_empty_loads_pick_nothing() -> None:
    assert BoundedLoadRing().pick("k", {}, 1.25) is None


def test_single_node_takes_every_key() -> None:
    ring = BoundedLoadRing()
    assert {ring.pick(key, {"only": 7}, 1.25) for key in KEYS[:100]} == {"only"}


def test_same_key_same_node() -> None:
    ring = BoundedLoadRing()
    first = [ring.pick(key, IDLE, 1.25) for key in KEYS[:500]]
    again = [ring.pick(key, IDLE, 1.25) for key in KEYS[:500]]
    assert first == again
    assert len(set(first)) == 4  # and it is not one node for everything


def test_two_rings_agree() -> None:
    a, b = BoundedLoadRing(), BoundedLoadRing()
    keys = KEYS[:1000]
    assert [a.pick(k, IDLE, 1.25) for k in keys] == [b.pick(k, IDLE, 1.25) for k in keys]


def test_placement_does_not_depend_on_the_process() -> None:
    # Pinned once: a salted `hash` would move these between runs and between replicas.
    ring = BoundedLoadRing()
    picks = [ring.pick(f"session-{i}", IDLE, 1.25) for i in range(8)]
    assert picks == ["e0", "e1", "e1", "e3", "e3", "e0", "e3", "e2"]


def test_spread_is_roughly_even() -> None:
    ring = BoundedLoadRing()
    counts = Counter(ring.pick(key, IDLE, 1.25) for key in KEYS)
    mean = len(KEYS) / len(NODES)
    assert set(counts) == set(NODES)
    for node in NODES:
        assert 0.75 * mean <= counts[node] <= 1.25 * mean, counts


def test_removing_a_node_moves_only_its_keys() -> None:
    ring = BoundedLoadRing()
    before = {key: ring.pick(key, IDLE, 1.25) for key in KEYS}
    without_e2 = {node: 0 for node in NODES if node != "e2"}
    after = {key: ring.pick(key, without_e2, 1.25) for key in KEYS}
    moved = [key for key in KEYS if before[key] != after[key]]
    assert moved  # e2 owned some keys
    assert all(before[key] == "e2" for key in moved)
    assert all(after[key] != "e2" for key in KEYS)


def test_adding_a_node_only_takes_keys_for_itself() -> None:
    ring = BoundedLoadRing()
    before = {key: ring.pick(key, IDLE, 1.25) for key in KEYS}
    grown = {**IDLE, "e4": 0}
    after = {key: ring.pick(key, grown, 1.25) for key in KEYS}
    assert all(after[key] in (before[key], "e4") for key in KEYS)


def test_full_node_spills_to_the_next_node_clockwise() -> None:
    ring = BoundedLoadRing()
    key = key_on(ring, "e1")
    # Walking on past e1's points is the same as asking a ring without e1.
    expected = ring.pick(key, {node: 0 for node in NODES if node != "e1"}, 1.25)
    # total 10, capacity ceil(1.25 * 11 / 4) = 4: e1 at 10 is full, the others are empty.
    loads = {**IDLE, "e1": 10}
    spilled = ring.pick(key, loads, 1.25)
    assert spilled == expected
    assert spilled != "e1"


def test_spill_skips_every_full_node() -> None:
    ring = BoundedLoadRing()
    key = key_on(ring, "e1")
    first_spill = ring.pick(key, {node: 0 for node in NODES if node != "e1"}, 1.25)
    assert first_spill is not None
    remaining = {node: 0 for node in NODES if node not in ("e1", first_spill)}
    second_spill = ring.pick(key, remaining, 1.25)
    # total 12, capacity ceil(1.0 * 13 / 4) = 4: e1 and its successor are full (6 + 1 > 4).
    loads = {**IDLE, "e1": 6, first_spill: 6}
    assert ring.pick(key, loads, 1.0) == second_spill


def test_node_at_exactly_capacity_minus_one_keeps_the_key() -> None:
    ring = BoundedLoadRing()
    key = key_on(ring, "e0")
    # total 3, capacity ceil(1.0 * 4 / 4) = 1: e0 at 0 fits, e0 at 1 would not.
    assert ring.pick(key, {"e0": 0, "e1": 1, "e2": 1, "e3": 1}, 1.0) == "e0"
    assert ring.pick(key, {"e0": 1, "e1": 0, "e2": 1, "e3": 1}, 1.0) != "e0"


def test_load_factor_is_honoured() -> None:
    ring = BoundedLoadRing()
    key = key_on(ring, "a", ["a", "b"])
    loads = {"a": 2, "b": 0}
    # load_factor 1: capacity ceil(1 * 3 / 2) = 2 and a would reach 3, so b.
    assert ring.pick(key, loads, 1.0) == "b"
    # load_factor 2: capacity ceil(2 * 3 / 2) = 3 and a reaches exactly 3, so a.
    assert ring.pick(key, loads, 2.0) == "a"
    # load_factor 1.5: capacity ceil(1.5 * 3 / 2) = ceil(2.25) = 3, still a.
    assert ring.pick(key, loads, 1.5) == "a"


def test_bounded_loads_keep_every_node_within_capacity() -> None:
    ring = BoundedLoadRing()
    loads = dict.fromkeys(NODES, 0)
    hot_key = "one-very-long-session"
    for _ in range(400):
        capacity = -(-5 * (sum(loads.values()) + 1) // (4 * len(loads)))  # load_factor 1.25
        node = ring.pick(hot_key, loads, 1.25)
        assert node is not None
        assert loads[node] + 1 <= capacity
        loads[node] += 1
    assert max(loads.values()) <= -(-5 * 400 // 16)  # ceil(1.25 * 400 / 4) = 125


def test_ring_cache_is_bounded() -> None:
    ring = BoundedLoadRing(points_per_node=4)
    for size in range(1, 20):
        ring.pick("k", {f"n{i}": 0 for i in range(size)}, 1.25)
    assert len(ring._rings) == 8
    assert frozenset(f"n{i}" for i in range(19)) in ring._rings


def test_points_per_node_sets_the_ring_size() -> None:
    ring = BoundedLoadRing(points_per_node=16)
    ring.pick("k", IDLE, 1.25)
    (built,) = ring._rings.values()
    assert len(built.points) == 64
    assert built.points == sorted(built.points)
    assert Counter(built.owners) == dict.fromkeys(NODES, 16)


def test_rejects_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="points_per_node"):
        BoundedLoadRing(points_per_node=0)
    with pytest.raises(ValueError, match="load_factor"):
        BoundedLoadRing().pick("k", IDLE, 0.9)
