"""The Faust peer: what adopting Faust (faust-streaming) the textbook way looks like. One
`@app.agent` over the raw events topic, `stream.take()` batches, fastavro, one redis.asyncio
pipeline per batch. Faust acks a batch's events when the agent loop moves on to the next
one and commits acked offsets itself: its at-least-once path. See `bench/peers/common.py`
for what every peer keeps."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import faust
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Decoder, arguments, queue_writes

#: How long `take()` waits for a batch to fill before it hands over what it has.
TAKE_WITHIN_S = 0.05


def build_app(args: argparse.Namespace, datadir: Path) -> faust.App:
    """The app, its topic and its agent. The broker is a plain Kafka 4 whose topics exist
    already: Faust must not declare any (Kafka 4 rejects Faust's CreateTopics) nor use the
    leader topic of its assignor."""
    app = faust.App(
        args.group,  # the app id is the consumer group
        broker=[f"kafka://{server}" for server in args.bootstrap.split(",")],
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        datadir=str(datadir),
        # Faust's throughput knob (prefetch): room for a few full batches while one is written.
        stream_buffer_maxsize=max(4096, 4 * args.batch),
    )
    topic = app.topic(args.topic, value_serializer="raw", key_serializer="raw")
    client = aioredis.Redis.from_url(args.redis_url)
    decode = Decoder(args.prefix)

    @app.agent(topic)
    async def record_interactions(stream: faust.StreamT[bytes]) -> None:
        """Each batch: decode, queue its writes on one pipeline (queueing is synchronous in
        redis.asyncio), execute it; the batch is acked when the loop asks for the next."""
        try:
            async for values in stream.take(args.batch, within=TAKE_WITHIN_S):
                writes = [write for write in map(decode, values) if write is not None]
                pipe = client.pipeline(transaction=False)
                if queue_writes(pipe, writes, args.last_k, args.prefix):
                    await pipe.execute()
        finally:
            await client.aclose()

    return app


def main() -> int:
    args = arguments(__doc__ or "")
    with tempfile.TemporaryDirectory(prefix="faust-peer-") as datadir:
        app = build_app(args, Path(datadir))
        # faust.Worker, not `app.main()`: it reads no command line, so this program's own
        # arguments never reach Faust's CLI. It handles SIGTERM (stops the agent, commits
        # the acked offsets, leaves the group) and exits the process when it stops.
        worker = faust.Worker(app, loglevel="warning", quiet=True)
        worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
