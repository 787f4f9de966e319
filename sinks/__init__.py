"""Adapters to the stores the stream writes: Redis (hot tier) and CQL (cold tier)."""
