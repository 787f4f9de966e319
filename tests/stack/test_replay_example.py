"""The README's replay example, run as written: traffic generated, a day replayed to
Parquet, orders counted per category with DuckDB and with pandas; both counts equal the
orders of that day in the topic."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from jobs.event_log import topic_events
from schemas.events import EventType
from streams.settings import Settings, state_dir
from tests.conftest import ROOT, readme_blocks

SECTION = "## Replay and backfill (for analysts)"


def section_blocks(language: str) -> list[str]:
    return readme_blocks(SECTION, language)


def test_the_readme_replay_example_counts_the_days_orders(
    provisioned: Settings, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    [example] = [block for block in section_blocks("bash") if "generate" in block]
    # Run from a scratch folder: the stack's addresses come from its absolute state folder.
    env = {
        **os.environ,
        **isolated_env,
        "PYTHONPATH": str(ROOT),
        "SIGNALS_STATE_DIR": str(state_dir()),
    }
    signals = f"{sys.executable} -m jobs.cli"
    for line in example.strip().splitlines():
        done = subprocess.run(
            ["bash", "-c", re.sub(r"^signals ", f"{signals} ", line)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, (line, done.stdout, done.stderr)
    day = time.strftime("%Y-%m-%d", time.gmtime())  # what `date -u +%F` gave (or the day before)
    events, _invalid = topic_events(provisioned.kafka_bootstrap, provisioned.events_topic)
    orders = Counter(
        e.category_id
        for e in events
        if e.event_type is EventType.ORDER
        and time.strftime("%Y-%m-%d", time.gmtime(e.event_time_ms / 1000)) == day
    )
    assert sum(orders.values()) > 10
    most = max(orders.values())

    outputs = []
    for snippet in section_blocks("python"):
        if "replay/" not in snippet:
            continue
        done = subprocess.run(
            [sys.executable, "-c", snippet],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outputs.append(done.stdout)
    assert len(outputs) == 2, "the DuckDB and the pandas example"
    for output in outputs:
        shown = re.findall(r"(c\d{4})\W+(\d+)\b", output)
        assert len(shown) == 5, output
        assert all(orders[category] == int(count) for category, count in shown), output
        assert int(shown[0][1]) == most, output
