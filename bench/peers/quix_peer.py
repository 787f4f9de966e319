"""The Quix Streams peer: what adopting Quix Streams the textbook way looks like. A
StreamingDataFrame over the raw events topic into a `BatchingSink` that writes each batch
with one redis-py pipeline. Quix accumulates a sink's batches per partition between
checkpoints and flushes them on commit, before the offsets are committed: its at-least-once
path. Runs in the benchmark's own venv (`bench/peers/venv.py`); see `bench/peers/common.py`
for what every peer keeps."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import redis
from quixstreams import Application
from quixstreams.sinks import BatchingSink, SinkBatch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Decoder, Write, arguments, queue_writes

#: At most this many seconds between checkpoints (each flushes the sink, then commits);
#: under load a checkpoint comes every `--batch` messages instead.
COMMIT_INTERVAL_S = 1.0


class RedisLastK(BatchingSink):
    """One partition's batch of writes (what `Decoder` made of its events) -> one redis-py
    pipeline. Quix calls `write()` per partition on each checkpoint, then commits."""

    def __init__(self, redis_url: str, prefix: str, last_k: dict[str, int]) -> None:
        super().__init__()
        self._redis_url = redis_url
        self._prefix = prefix
        self._last_k = last_k
        self._client: redis.Redis | None = None

    def setup(self) -> None:
        """Called by Quix when the app starts: connect, and fail early if Redis is down."""
        self._client = redis.Redis.from_url(self._redis_url)
        self._client.ping()

    def write(self, batch: SinkBatch) -> None:
        assert self._client is not None, "setup() connects before the first write"
        pipe = self._client.pipeline(transaction=False)
        writes: list[Write] = [item.value for item in batch]
        if queue_writes(pipe, writes, self._last_k, self._prefix):
            pipe.execute()


def main() -> int:
    args = arguments(__doc__ or "")
    with tempfile.TemporaryDirectory(prefix="quix-peer-") as state_dir:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            commit_interval=COMMIT_INTERVAL_S,
            commit_every=args.batch,
            # The topic exists (the benchmark creates it): declare nothing.
            auto_create_topics=False,
            state_dir=state_dir,
            loglevel="WARNING",
        )
        topic = app.topic(args.topic, key_deserializer="bytes", value_deserializer="bytes")
        sdf = app.dataframe(topic)
        # Decoding is a dataframe step, as Quix intends: the sink gets (and buffers) only
        # the interactions. Decoding the raw values inside the sink instead measured the same.
        sdf = sdf.apply(Decoder(args.prefix)).filter(lambda write: write is not None)
        sdf.sink(RedisLastK(args.redis_url, args.prefix, args.last_k))
        app.run()  # until SIGTERM: stops polling, flushes the sink and commits, then returns
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
