"""The request pipeline: one context per request, a director that runs its steps
(admission among them), the connector that opens upstream attempts, the stream session
that relays and continues chat and completions streams, and the passthrough for the rest
of vLLM's endpoints (with its own relay for ``/v1/responses`` event streams)."""
