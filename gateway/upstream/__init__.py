"""The gateway's side of the engine protocol: a transport seam, the client, load parsing.

``transport`` defines what the client needs from HTTP; ``http1`` is the production
transport: generation POSTs on its own HTTP/1.1 client (``http1_connection``,
``http1_pool``), everything else on ``aiohttp_transport`` (the one place aiohttp's errors
become Sluice errors);
``memory`` is an in-memory transport that tests script without sockets, the way httpx
tests use ``MockTransport``.
"""
