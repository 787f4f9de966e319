"""Starting, finding and stopping the stack's own processes, by PID file.

A PID file alone is not trusted: a recycled PID could belong to anything. A process
counts as ours only if its command line still contains the marker it was started with.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Children started by this interpreter, kept so they are reaped (not left as zombies)
#: and so their Popen objects do not warn about a still-running process when collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
#: A log file past this size is moved to `<name>.log.1` when its process starts again.
LOG_ROTATE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class ManagedProcess:
    """One long-lived process of the stack: its PID file, log file and identity marker."""

    name: str
    pid_file: Path
    log_file: Path
    marker: str

    def pid(self) -> int | None:
        """The PID if our process is alive, else None (and a stale PID file is removed)."""
        pid = self.recorded_pid()
        if pid is None:
            return None
        if self.marker in (_cmdline(pid) or ""):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def recorded_pid(self) -> int | None:
        """The PID in the PID file, alive or not, ours or not."""
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def runs_with(self, marker: str) -> int | None:
        """The recorded PID if that process is alive with `marker` in its command line
        (an earlier build's process under the same name); the PID file is left alone."""
        pid = self.recorded_pid()
        return pid if pid is not None and marker in (_cmdline(pid) or "") else None

    def start(
        self, argv: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> int:
        """Start detached (own session, survives this CLI), logging to `log_file`."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists() and self.log_file.stat().st_size > LOG_ROTATE_BYTES:
            self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _CHILDREN[process.pid] = process
        self.pid_file.write_text(f"{process.pid}\n")
        return process.pid

    def exited_early(self) -> bool:
        return self.pid() is None

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, wait, then SIGKILL. Returns True if a process was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def startup_error(self, since: int) -> str:
        """Why a process that died while starting died: the first error line it logged
        after byte `since` of its log (a JVM's last lines are stack frames), else the tail."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith(("ERROR", "Exception", "Error:", "Caused by")) or (
                " ERROR " in stripped or "Exception: " in stripped
            ):
                return stripped[:400]
        return self.log_tail()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:])


def is_running(pid: int) -> bool:
    """True for a live process; a zombie (dead, waiting to be reaped) is not running."""
    return _cmdline(pid) is not None


def _cmdline(pid: int) -> str | None:
    """The command line of a live process, None if it is gone or a zombie.

    Right after fork/exec the kernel can briefly report an empty command line for a live
    process, so an empty answer is re-read for a moment before it counts as a zombie.
    """
    for _ in range(50):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None
        if state in ("Z", "X"):
            return None
        if raw:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.01)
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    _reap(pid)
    return _cmdline(pid) is not None


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child, so it does not linger as a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on host:port (so a service of ours can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) != 0


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> bool:
    """Poll `check()` until it returns True or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except Exception:  # noqa: S110  (not ready yet is expected while polling)
            pass
        time.sleep(interval_s)
    return False
