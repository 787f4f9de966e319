"""A long-lived Kafka-protocol broker for the local stack: librdkafka's mock cluster.

librdkafka (bundled in the confluent-kafka wheel) ships an in-memory implementation of
the Kafka protocol used to test librdkafka itself. This module runs it as its own process
on 127.0.0.1, prints/writes its bootstrap address, and accepts control commands on a
Unix socket, because the mock cannot create topics through the Kafka API (CreateTopics).

It is a stand-in, not a production broker: one process, memory only, no retention or
compaction, no topic configs. See README "Production notes". The control socket also
deletes a partition's records below an offset (`delete_records`): the benchmarks use it
to drop what they have consumed, because the mock walks a partition's whole list of
produce batches to find a fetch offset, so its fetches get slower as the log grows.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import signal
import socket
import socketserver
import sys
import threading
from pathlib import Path
from typing import Any

RD_KAFKA_PRODUCER = 0
RD_KAFKA_RESP_ERR_NO_ERROR = 0
RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS = 36


def _load_librdkafka() -> ctypes.CDLL:
    import confluent_kafka  # noqa: PLC0415  (only the broker process needs the shared library)

    package_dir = Path(confluent_kafka.__file__).resolve().parent
    candidates = sorted(
        glob.glob(str(package_dir.parent / "confluent_kafka.libs" / "librdkafka*.so*"))
    )
    if not candidates:
        raise RuntimeError(f"librdkafka not found next to {package_dir} (confluent-kafka wheel)")
    lib = ctypes.CDLL(candidates[0])
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_mock_topic_create.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.rd_kafka_mock_partition_delete_records.restype = ctypes.c_int
    lib.rd_kafka_mock_partition_delete_records.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.c_int64,
    ]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    lib.rd_kafka_err2str.argtypes = [ctypes.c_int]
    return lib


class MockCluster:
    """The mock cluster plus the topics created on it (the mock cannot list them for us)."""

    def __init__(self, brokers: int, rebalance_delay_ms: int) -> None:
        self._lib = _load_librdkafka()
        errstr = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        # The handle only hosts the mock cluster and never connects anywhere, so silence its
        # "no bootstrap.servers" warning.
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"3", errstr, len(errstr))
        self._rk = self._lib.rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {errstr.value.decode()}")
        self._mc = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._mc:
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._mc, rebalance_delay_ms)
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._mc).decode()
        self.topics: dict[str, int] = {}
        self._lock = threading.Lock()

    def create_topic(self, name: str, partitions: int, replication: int) -> dict[str, Any]:
        with self._lock:
            existing = self.topics.get(name)
            if existing is not None:
                return {"ok": True, "created": False, "partitions": existing}
            err = self._lib.rd_kafka_mock_topic_create(
                self._mc, name.encode(), partitions, replication
            )
            if err not in (RD_KAFKA_RESP_ERR_NO_ERROR, RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS):
                return {"ok": False, "error": self._lib.rd_kafka_err2str(err).decode()}
            self.topics[name] = partitions
            return {
                "ok": True,
                "created": err == RD_KAFKA_RESP_ERR_NO_ERROR,
                "partitions": partitions,
            }

    def delete_records(self, name: str, partition: int, before_offset: int) -> dict[str, Any]:
        """Drop a partition's records below `before_offset`, as retention would."""
        err = self._lib.rd_kafka_mock_partition_delete_records(
            self._mc, name.encode(), partition, before_offset
        )
        if err != RD_KAFKA_RESP_ERR_NO_ERROR:
            return {"ok": False, "error": self._lib.rd_kafka_err2str(err).decode()}
        return {"ok": True}


def _serve(cluster: MockCluster, control_path: Path) -> socketserver.UnixStreamServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                try:
                    request = json.loads(line)
                    reply = _dispatch(cluster, request)
                except Exception as exc:  # a bad request must not kill the broker
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

    if control_path.exists():
        control_path.unlink()
    server = socketserver.ThreadingUnixStreamServer(str(control_path), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="mock-control", daemon=True).start()
    return server


def _dispatch(cluster: MockCluster, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "ping":
        return {"ok": True, "bootstrap": cluster.bootstrap, "pid": os.getpid()}
    if op == "create_topic":
        return cluster.create_topic(
            str(request["name"]), int(request["partitions"]), int(request.get("replication", 1))
        )
    if op == "delete_records":
        return cluster.delete_records(
            str(request["name"]), int(request["partition"]), int(request["before_offset"])
        )
    if op == "list_topics":
        return {"ok": True, "topics": dict(cluster.topics)}
    return {"ok": False, "error": f"unknown op {op!r}"}


def control(
    control_path: str | Path, request: dict[str, Any], timeout: float = 5.0
) -> dict[str, Any]:
    """Send one command to a running mock broker and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(control_path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buffer = b""
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
    reply: dict[str, Any] = json.loads(buffer)
    return reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--control", required=True, type=Path, help="Unix socket for control commands"
    )
    parser.add_argument(
        "--bootstrap-file", required=True, type=Path, help="where to write host:port"
    )
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument(
        "--rebalance-delay-ms",
        type=int,
        default=0,
        help="group.initial.rebalance.delay.ms; 0 makes local workers join at once",
    )
    args = parser.parse_args(argv)

    cluster = MockCluster(args.brokers, args.rebalance_delay_ms)
    server = _serve(cluster, args.control)
    tmp = args.bootstrap_file.with_suffix(".tmp")
    tmp.write_text(cluster.bootstrap + "\n")
    tmp.replace(args.bootstrap_file)  # readers never see a half-written address
    print(f"mock kafka broker ready at {cluster.bootstrap} (control {args.control})", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    args.control.unlink(missing_ok=True)
    args.bootstrap_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
