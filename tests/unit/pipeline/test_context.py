"""The request context's own logic: the Server-Timing value of its timings."""

from __future__ import annotations

from gateway.core.context import Timings


def test_server_timing_names_each_phase_from_the_end_of_the_one_before() -> None:
    timings = Timings(arrived=10.0, admitted=10.0005, scheduled=10.0015, connected=10.0115,
                      first_byte=10.2115)
    assert timings.server_timing() == \
        "admit;dur=0.5, sched;dur=1.0, connect;dur=10.0, ttfb;dur=200.0"


def test_server_timing_stops_at_the_first_phase_not_reached() -> None:
    assert Timings(arrived=1.0, admitted=1.002).server_timing() == "admit;dur=2.0"
    assert Timings(arrived=1.0, admitted=1.0, scheduled=1.0, connected=None,
                   first_byte=2.0).server_timing() == "admit;dur=0.0, sched;dur=0.0"
    assert Timings(arrived=1.0).server_timing() == ""
