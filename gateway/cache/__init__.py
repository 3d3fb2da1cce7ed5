"""The response cache: which requests may be answered from the store (:mod:`.policy`),
identical requests in flight sharing one upstream call (:mod:`.flights`), and the
service the director calls at its lookup, replay and finish steps (:mod:`.service`)."""

from gateway.cache.flights import Flight, FlightFailed, Flights
from gateway.cache.policy import CachePolicy, cache_key, deterministic, read_directives, serves
from gateway.cache.service import ResponseCaching, finished, keep_answer, whole

__all__ = ["CachePolicy", "Flight", "FlightFailed", "Flights", "ResponseCaching",
           "cache_key", "deterministic", "finished", "keep_answer", "read_directives",
           "serves", "whole"]
