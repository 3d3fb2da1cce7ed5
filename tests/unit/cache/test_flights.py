"""Flights: one leader's batches read by any number of followers, bounded waits."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache import Flight, FlightFailed, Flights
from gateway.stores import CachedResponse


async def read_all(flight: Flight) -> list[list[bytes]]:
    batches = [await flight.head(5)]
    async for batch in flight.rest(5):
        batches.append(batch)
    return batches


async def test_followers_read_every_batch_as_it_comes() -> None:
    flight = Flight("k")
    readers = [asyncio.create_task(read_all(flight)) for _ in range(5)]
    await asyncio.sleep(0)
    for n in range(3):
        flight.append([b"%d" % n])
        await asyncio.sleep(0)
    flight.close(CachedResponse(events=(b"0", b"1", b"2")))
    assert await asyncio.gather(*readers) == [[[b"0"], [b"1"], [b"2"]]] * 5


async def test_a_late_follower_reads_from_the_start() -> None:
    flight = Flight("k")
    flight.append([b"a"])
    flight.append([b"b", b"c"])
    flight.close(CachedResponse(events=(b"a", b"b", b"c")))
    assert await read_all(flight) == [[b"a"], [b"b", b"c"]]


async def test_a_leader_failing_before_its_head_or_mid_way() -> None:
    flight = Flight("k")
    waiting = asyncio.create_task(flight.head(5))
    await asyncio.sleep(0)
    flight.close(None)
    with pytest.raises(FlightFailed):
        await waiting
    cut = Flight("k")
    cut.append([b"a"])
    cut.close(None)
    with pytest.raises(FlightFailed):
        await read_all(cut)


async def test_waits_are_bounded() -> None:
    flight = Flight("k")
    with pytest.raises(TimeoutError):
        await flight.head(0.01)
    with pytest.raises(TimeoutError):
        await flight.answer(0.01)
    flight.append([b"a"])
    with pytest.raises(TimeoutError):
        await _rest(flight, 0.01)


async def _rest(flight: Flight, between_s: float) -> None:
    async for _ in flight.rest(between_s):
        pass


async def test_a_non_streamed_answer() -> None:
    flight = Flight("k")
    waiting = asyncio.create_task(flight.answer(5))
    await asyncio.sleep(0)
    flight.close(CachedResponse(body=b"{}"))
    assert (await waiting).body == b"{}"


def test_one_flight_per_key_forgotten_when_it_lands() -> None:
    flights = Flights()
    first = flights.lead("k")
    assert first is not None
    assert flights.lead("k") is None
    assert flights.find("k") is first
    flights.land(first, None)
    assert first.closed
    assert flights.find("k") is None
    assert len(flights) == 0
