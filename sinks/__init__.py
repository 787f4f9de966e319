"""Adapters to the stores the stream writes and reads: Redis (hot tier, online features),
CQL (cold tier), and Kafka for what the worker publishes (triggers) and producers send."""
