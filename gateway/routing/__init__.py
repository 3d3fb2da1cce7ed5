"""Pure routing primitives: circuit breaker, retry budget, bounded-load hash ring, prefix index."""
