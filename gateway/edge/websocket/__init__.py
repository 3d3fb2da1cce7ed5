"""WebSocket serving: the ``/v1/ws`` multiplexed request protocol and the ``/v1/realtime``
relay to an engine (routes in :mod:`gateway.edge.routes.ws`)."""
