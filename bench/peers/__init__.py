"""The peers of `bench/peers_bench.py`: other ways to keep the same last-k sorted sets."""
