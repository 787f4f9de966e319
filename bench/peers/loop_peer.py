"""The hand-written peer: a plain confluent-kafka `consume()` loop, fastavro, one redis-py
pipeline per batch, a synchronous commit after it. What a team writes instead of adopting
a framework; see `bench/peers/common.py` for what every peer keeps."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import redis
from confluent_kafka import Consumer, KafkaException

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Decoder, arguments, queue_writes


def main() -> int:
    args = arguments(__doc__ or "")
    running = True

    def stop(_signum: int, _frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.topic])
    client = redis.Redis.from_url(args.redis_url)
    decode = Decoder(args.prefix)
    try:
        while running:
            messages = consumer.consume(args.batch, timeout=0.1)
            if not messages:
                continue
            writes = []
            for message in messages:
                if message.error():
                    raise KafkaException(message.error())
                write = decode(message.value())
                if write is not None:
                    writes.append(write)
            pipe = client.pipeline(transaction=False)
            queue_writes(pipe, writes, args.last_k, args.prefix)
            pipe.execute()
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
