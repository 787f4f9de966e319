"""`signals-stack up` twice is a no-op, `down` leaves nothing running, and a taken port is
one clear line with nothing half-started. Runs a second, private stack on its own ports."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.cassandra_server import cassandra_bundle
from infra.process import is_running
from infra.services import CLUSTER_BUS_OFFSET
from tests.conftest import ROOT, free_port

CLUSTER_PORTS_ENV = "SIGNALS_STACK_REDIS_CLUSTER_PORTS"


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_ports(count: int = 3) -> list[int]:
    """Free ports whose cluster bus port (+10000) is free too; both below the ephemeral
    range, where a random free port (free_port) could leave no room for the bus port."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 22000)
        if port not in ports and bindable(port) and bindable(port + CLUSTER_BUS_OFFSET):
            ports.append(port)
    return ports


@pytest.fixture
def private_stack_env(stack: None) -> Iterator[dict[str, str]]:
    state = Path(tempfile.mkdtemp(prefix="stk", dir="/tmp"))
    shared_vendor = Path(os.environ.get("SIGNALS_STATE_DIR", ROOT / ".state")).resolve() / "vendor"
    (state / "vendor").symlink_to(shared_vendor)  # reuse the servers the main stack fetched
    env = {
        **os.environ,
        "SIGNALS_STATE_DIR": str(state),
        "SIGNALS_STACK_REDIS_PORT": str(free_port()),
        CLUSTER_PORTS_ENV: ",".join(str(port) for port in free_cluster_ports()),
        "SIGNALS_STACK_KAFKA_PORT": str(free_port()),
        "SIGNALS_STACK_KAFKA_CONTROLLER_PORT": str(free_port()),
        "SIGNALS_STACK_KAFKA_HEAP": "256m",
        "SIGNALS_STACK_CQL_PORT": str(free_port()),
        "SIGNALS_STACK_CQL_STORAGE_PORT": str(free_port()),
        "SIGNALS_STACK_CASSANDRA_HEAP": "512m",
    }
    # Real variables win over the env file, so drop the main stack's addresses.
    for key in [
        k
        for k in env
        if k.startswith("SIGNALS_") and not k.startswith(("SIGNALS_STACK", "SIGNALS_STATE"))
    ]:
        del env[key]
    yield env
    subprocess.run(
        [sys.executable, "-m", "infra.stack", "down"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        check=False,
        timeout=120,
    )
    shutil.rmtree(state, ignore_errors=True)


def stack_cli(
    env: dict[str, str], *args: str, wrapper: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`signals-stack ARGS` in the private stack's environment (under `wrapper`, if any)."""
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "infra.stack", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def pids(state: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}


def test_up_twice_is_a_no_op_and_down_leaves_no_process(private_stack_env: dict[str, str]) -> None:
    state = Path(private_stack_env["SIGNALS_STATE_DIR"])
    first = stack_cli(private_stack_env, "up")
    assert first.returncode == 0, first.stderr
    started = pids(state)
    cluster_ports = private_stack_env[CLUSTER_PORTS_ENV].split(",")
    assert set(started) == {"redis", "kafka", "cassandra"} | {
        f"redis-cluster-{port}" for port in cluster_ports
    }
    assert (
        f"SIGNALS_REDIS_CLUSTER_URL=redis://127.0.0.1:{cluster_ports[0]}/0"
        in (state / "stack.env").read_text()
    )
    env_file = (state / "stack.env").read_text()

    second = stack_cli(private_stack_env, "up")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already up") == 4
    assert "created" not in second.stdout and "applied" not in second.stdout
    assert pids(state) == started
    assert (state / "stack.env").read_text() == env_file

    assert stack_cli(private_stack_env, "status").returncode == 0
    down = stack_cli(private_stack_env, "down")
    assert down.returncode == 0, down.stderr
    for pid in started.values():
        assert not is_running(pid), f"pid {pid} still running after down"
    assert stack_cli(private_stack_env, "status").returncode == 1
    assert not (state / "stack.env").exists()


def test_a_taken_port_is_one_clear_line_and_nothing_starts(
    private_stack_env: dict[str, str],
) -> None:
    state = Path(private_stack_env["SIGNALS_STATE_DIR"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = stack_cli({**private_stack_env, "SIGNALS_STACK_REDIS_PORT": str(port)}, "up")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"signals-stack: error: redis: port 127.0.0.1:{port} is already in use by another process "
        "(set SIGNALS_STACK_REDIS_PORT to use another)"
    )
    assert pids(state) == {}


def test_a_taken_cluster_port_is_one_clear_line_and_nothing_starts(
    private_stack_env: dict[str, str],
) -> None:
    state = Path(private_stack_env["SIGNALS_STATE_DIR"])
    ports = private_stack_env[CLUSTER_PORTS_ENV].split(",")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(ports[1])))
        squatter.listen()
        result = stack_cli(private_stack_env, "up")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"signals-stack: error: redis-cluster: port 127.0.0.1:{ports[1]} is already in use by "
        f"another process (set {CLUSTER_PORTS_ENV} to use another)"
    )
    assert pids(state) == {}


def test_missing_java_is_reported_before_anything_starts(
    private_stack_env: dict[str, str], tmp_path: Path
) -> None:
    state = Path(private_stack_env["SIGNALS_STATE_DIR"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("redis-server", "mvn"):
        found = subprocess.run(
            ["which", tool], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {**private_stack_env, "PATH": str(bin_dir)}
    for pointer in ("SIGNALS_STACK_JAVA", "JAVA_HOME"):  # nothing may lead to a java
        env.pop(pointer, None)
    result = stack_cli(env, "up")
    assert result.returncode == 1
    assert "signals-stack: error: cassandra: java not found" in result.stderr
    assert "signals-stack: error: kafka: java not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert pids(state) == {}


def test_maven_central_unreachable_is_one_clear_line_and_nothing_starts(
    private_stack_env: dict[str, str], tmp_path: Path
) -> None:
    """A first `up` with no network: the first server cannot be fetched, so `up` says so
    in one line and starts nothing. Run in a network namespace of its own (no interface
    up: the test needs root, as CI has), with an empty Maven cache, so Maven really tries
    and fails."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to take the network away from `up`")
    state = Path(private_stack_env["SIGNALS_STATE_DIR"])
    (state / "vendor").unlink()  # nothing fetched yet, as on a fresh machine
    env = {**private_stack_env, "MAVEN_OPTS": f"-Dmaven.repo.local={tmp_path / 'm2'}"}
    result = stack_cli(env, "up", wrapper=("unshare", "--net"))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "signals-stack: error: cassandra: Maven Central is unreachable from this machine: "
    ), lines[0]
    assert "Traceback" not in result.stderr
    assert pids(state) == {}
    assert not cassandra_bundle().is_assembled(state)
