"""The request pipeline: one context per request, a director that runs its steps, the
connector that opens upstream attempts and the stream session that relays them."""
