"""The worker's pure decisions (session clocks, admission, rank-refresh triggers), apart
from its I/O; the stores' layouts, the feature definitions and the types they work on are
contracts in `schemas`.

Nothing in this package imports Faust, Redis, Cassandra, Kafka or fastavro, and anything
that depends on time takes it as an argument.
"""
