"""Pure logic shared by the live agents and the offline jobs.

Nothing in this package imports Faust, Redis, Cassandra, Kafka or fastavro, and anything
that depends on time takes it as an argument.
"""
