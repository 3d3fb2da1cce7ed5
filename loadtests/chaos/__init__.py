"""The chaos test: concurrent chat streams through the gateway while one engine is
SIGKILLed and restarted on the same port.

``run`` drives the timeline (``loadtests.client.stream_chat`` records every stream token
by token), ``watch`` reads the gateway's view of the killed engine from its ``/metrics``,
``report`` judges the run and ``bench`` is the full-scale benchmark::

    python -m loadtests.chaos.bench --out results/chaos
"""
