"""The gateway's side of the engine protocol: a transport seam, the client, load parsing.

``transport`` defines what the client needs from HTTP; ``aiohttp_transport`` is the
production transport (and the one place aiohttp's errors become Sluice errors);
``memory`` is an in-memory transport that tests script without sockets, the way httpx
tests use ``MockTransport``.
"""
