"""The benchmark-only virtualenv the Quix Streams peer runs in (`.venv-peers/`).

Quix Streams is compared against, not used: it must not become a dependency of the project,
and its own confluent-kafka pin must not move ours. So it lives in a separate venv built from
the interpreter that built `.venv` (same Python, so the peers compare like with like), with
the rest of what `bench/peers/common.py` needs, pinned to the versions `.venv` has.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS_VENV = ROOT / ".venv-peers"
QUIXSTREAMS_VERSION = "3.28.1"
#: What the peers venv holds; fastavro, redis and hiredis as in the project's `.venv`.
REQUIREMENTS = (
    f"quixstreams=={QUIXSTREAMS_VERSION}",
    "fastavro==1.13.1",
    "redis==8.1.0",
    "hiredis==3.5.0",
)
#: Written after a successful install: the requirements it installed (a change reinstalls).
MARKER = PEERS_VENV / "peers-requirements.txt"


def base_interpreter() -> str:
    """The interpreter that built `.venv` (its pyvenv.cfg), else this one's base."""
    config = ROOT / ".venv" / "pyvenv.cfg"
    if config.exists():
        for line in config.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "executable" and Path(value.strip()).exists():
                return value.strip()
    return getattr(sys, "_base_executable", sys.executable)


def ensure_peers_venv() -> Path:
    """Create `.venv-peers` and install the pinned packages unless already done; returns
    the venv's python. Idempotent: a venv whose marker lists the same pins is reused."""
    python = PEERS_VENV / "bin" / "python"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if python.exists() and MARKER.exists() and MARKER.read_text() == wanted:
        return python
    print(f"installing {', '.join(REQUIREMENTS)} into {PEERS_VENV} ...", flush=True)
    if not python.exists():
        subprocess.run([base_interpreter(), "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS], check=True)
    MARKER.write_text(wanted)
    return python


if __name__ == "__main__":
    print(ensure_peers_venv())
