"""Scorers: how well each candidate suits a request, in [0, 1], one module each."""
