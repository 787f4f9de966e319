"""Fixtures of the stack tests that run the worker against the oracle (`oracle.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.events import EventType
from streams.settings import Settings
from tests.stack.oracle import GAP_S, LAST_K, SESSION_ENV, Store
from tests.stack.test_faults import PrivateRedis


@pytest.fixture
def session_settings(provisioned: Settings, isolated_env: dict[str, str]) -> Settings:
    """The test's settings with short sessions and small k; the worker gets the same."""
    for key, value in SESSION_ENV.items():
        isolated_env[key] = value
    return provisioned.model_copy(
        update={"last_k": {EventType(t): k for t, k in LAST_K.items()}, "inactivity_gap_s": GAP_S}
    )


@pytest.fixture
def store(session_settings: Settings) -> Iterator[Store]:
    reader = Store(session_settings)
    yield reader
    reader.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of this test's own, which the test may stop and start."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
