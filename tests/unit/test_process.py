import os
import subprocess
import sys
from pathlib import Path

from infra.process import ManagedProcess, is_running, port_free


def managed(tmp_path: Path, marker: str) -> ManagedProcess:
    return ManagedProcess("sleeper", tmp_path / "p.pid", tmp_path / "p.log", marker=marker)


def test_start_find_and_stop_by_pid(tmp_path: Path) -> None:
    proc = managed(tmp_path, marker="import time; time.sleep(600)")
    pid = proc.start([sys.executable, "-c", "import time; time.sleep(600)"])
    assert proc.pid() == pid
    assert proc.stop(timeout_s=5)
    assert proc.pid() is None
    assert not proc.pid_file.exists()
    assert not is_running(pid)


def test_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    proc = managed(tmp_path, marker="a marker no process has")
    proc.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not our service
    assert proc.pid() is None
    assert not proc.stop()
    assert not proc.pid_file.exists()


def test_port_free_sees_a_listener() -> None:
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
            "print(s.getsockname()[1], flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        assert not port_free(port)
    finally:
        server.kill()
        server.wait()
        assert server.stdout is not None
        server.stdout.close()


def test_a_stand_in_an_earlier_build_started_is_stopped_and_others_left_alone(
    tmp_path: Path,
) -> None:
    """Upgrading a checkout whose stack runs the old mock broker: `up`/`down` stop it; a
    PID file of the new servers (another marker) is not touched."""
    from infra.services import StackConfig  # noqa: PLC0415
    from infra.stack import stop_stand_ins  # noqa: PLC0415

    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", "infra.kafka_mock"]
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pids = tmp_path / "pids"
        pids.mkdir()
        (pids / "kafka.pid").write_text(f"{stand_in.pid}\n")
        (pids / "cassandra.pid").write_text(f"{other.pid}\n")
        said: list[str] = []
        stop_stand_ins(StackConfig(state_dir=tmp_path), said.append)
        assert stand_in.wait(timeout=10) is not None
        assert said == [
            f"kafka: stopped the stand-in an earlier version started (pid {stand_in.pid})"
        ]
        assert other.poll() is None
        assert (pids / "cassandra.pid").read_text() == f"{other.pid}\n"
    finally:
        for process in (stand_in, other):
            process.kill()
            process.wait()


class FakeService:
    """Just what `infra.stack.refusals` asks of a service."""

    def __init__(self, name: str, drift: str | None, problems: list[str] | None = None) -> None:
        self.name = name
        self._drift = drift
        self._problems = problems or []

    def drift(self) -> str | None:
        return self._drift

    def problems(self) -> list[str]:
        return self._problems


def test_up_refuses_drift_only_for_a_server_that_keeps_running() -> None:
    """A stopped server about to start writes its config afresh: the file an earlier run
    left (other settings) is no reason to refuse, as `./dev down; ./dev up` once was."""
    from infra.stack import refusals  # noqa: PLC0415

    stopped = FakeService("cassandra", drift="cassandra: running with other settings")
    running = FakeService("kafka", drift="kafka: running with other settings")
    blocked = FakeService("redis", drift=None, problems=["redis: port in use"])
    assert refusals([stopped], [stopped]) == []  # type: ignore[list-item]
    assert refusals([stopped, running, blocked], [stopped, blocked]) == [  # type: ignore[list-item]
        "redis: port in use",
        "kafka: running with other settings",
    ]
