"""Connection slots (``gateway/edge/slots.py``) and sockets held per caller
(``gateway/edge/websocket/holds.py``), without a server: connections are strings."""

from __future__ import annotations

import pytest

from gateway.config.connections import ConnectionLimits
from gateway.edge.slots import Admission, Slots, is_probe
from gateway.edge.websocket.holds import Holds


def slots(**limits: int) -> Slots[str]:
    return Slots(ConnectionLimits(**{"max_connections": 2, "reserved_connections": 1,
                                     "max_connections_per_address": 10, **limits}))


def opened(table: Slots[str], names: list[str], address: str = "10.0.0.1") -> None:
    """Open ``names`` in order, each holding a request (none waits for a head)."""
    for name in names:
        assert table.open(name, address, len(names)) == Admission()


@pytest.mark.parametrize(("method", "url", "probe"), [
    (b"GET", b"/health", True), (b"HEAD", b"/ready", True), (b"GET", b"/ready?x=1", True),
    (b"POST", b"/health", False), (b"GET", b"/metrics", False),
    (b"GET", b"/health/x", False), (b"GET", b"http://gateway/health", False)])
def test_only_a_get_or_head_of_health_or_ready_is_a_probe(method: bytes, url: bytes,
                                                          probe: bool) -> None:
    assert is_probe(method, url) is probe


def test_past_the_limit_the_oldest_waiting_connection_is_evicted() -> None:
    table = slots()
    opened(table, ["a", "b"])
    table.waiting.update({"a": None, "b": None})
    assert table.open("c", "10.0.0.2", 3) == Admission(evict="a")
    assert list(table.waiting) == ["b"]


def test_with_every_slot_holding_a_request_a_new_one_takes_the_reserve_then_is_refused(
        ) -> None:
    table = slots()
    opened(table, ["a", "b"])
    assert table.open("c", "10.0.0.2", 3).probes_only is not None
    refused = table.open("d", "10.0.0.3", 4)
    assert refused.refusal is not None
    assert refused.evict is None
    table.close("d")
    assert list(table.reserved) == ["c"]


def test_a_reserved_connection_still_waiting_makes_room_and_passes_its_slot_on() -> None:
    table = slots()
    opened(table, ["a", "b"])
    table.open("c", "10.0.0.2", 3)
    table.waiting["c"] = None  # silent so far
    admitted = table.open("d", "10.0.0.3", 4)
    assert admitted.evict == "c"
    assert admitted.probes_only is not None
    table.close("c")
    assert list(table.reserved) == ["d"]


def test_an_address_past_its_cap_gets_only_the_reserve_until_one_of_its_closes() -> None:
    table = slots(max_connections=100, max_connections_per_address=2)
    opened(table, ["a", "b"])
    capped = table.open("c", "10.0.0.1", 3)
    assert capped.probes_only is not None
    assert "address" in capped.probes_only
    assert table.open("d", "10.0.0.2", 4) == Admission()  # another address
    for name in "abc":
        table.close(name)
    assert table.per_address == {"10.0.0.2": 1}
    assert table.open("e", "10.0.0.1", 2) == Admission()


def test_a_unix_socket_has_no_address_to_cap() -> None:
    table = slots(max_connections=100, max_connections_per_address=1)
    assert table.open("a", None, 1) == Admission()
    assert table.open("b", None, 2) == Admission()
    assert table.per_address == {}


def test_holds_cap_each_holder_and_forget_it_when_it_holds_none() -> None:
    holds = Holds(most=2)
    with holds.hold("k1"), holds.hold("k1"):
        assert holds.full("k1")
        assert not holds.full("k2")
    assert holds.held("k1") == 0
    with pytest.raises(RuntimeError), holds.hold("k1"):
        raise RuntimeError
    assert holds.held("k1") == 0
