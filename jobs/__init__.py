"""Command-line entry points and offline jobs (producers, readers, replay, training)."""
