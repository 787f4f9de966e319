"""The local Redis Cluster's pure parts: slot split, port settings, CLUSTER INFO parsing."""

from __future__ import annotations

from itertools import pairwise

import pytest

from infra.services import CLUSTER_SLOTS, StackConfig, StackError, parse_cluster_info, slot_ranges
from infra.stack import load_config, parse_cluster_ports

NAME = "SIGNALS_STACK_REDIS_CLUSTER_PORTS"


@pytest.mark.parametrize("masters", [1, 2, 3, 5, 7])
def test_slot_ranges_cover_every_slot_once_in_order(masters: int) -> None:
    ranges = slot_ranges(masters)
    assert len(ranges) == masters
    assert ranges[0][0] == 0 and ranges[-1][1] == CLUSTER_SLOTS - 1
    for (_, last), (first, _) in pairwise(ranges):
        assert first == last + 1
    sizes = [last - first + 1 for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_three_masters_split_like_redis_cli() -> None:
    assert slot_ranges(3) == [(0, 5460), (5461, 10921), (10922, 16383)]


def test_slot_ranges_need_a_master() -> None:
    with pytest.raises(ValueError, match="at least one master"):
        slot_ranges(0)


def test_cluster_ports_parse_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_cluster_ports(NAME, " 21001, 21002,21003 ") == (21001, 21002, 21003)
    monkeypatch.delenv(NAME, raising=False)
    assert load_config().redis_cluster_ports == StackConfig.redis_cluster_ports
    monkeypatch.setenv(NAME, "21001,21002,21003")
    assert load_config().redis_cluster_ports == (21001, 21002, 21003)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "at least one port"),
        ("21001,21001,21002", "must not repeat"),
        ("21001,x", "whole number"),
        ("21001,0", "TCP port"),
        ("21001,60000", "at most 55535"),  # its bus port would be 70000
    ],
)
def test_bad_cluster_ports_are_one_clear_error(raw: str, reason: str) -> None:
    with pytest.raises(StackError, match=reason):
        parse_cluster_ports(NAME, raw)


def test_cluster_info_parses_whatever_redis_py_returns() -> None:
    text = "cluster_state:ok\r\ncluster_slots_ok:16384\r\ncluster_known_nodes:3\r\n"
    expected = {"cluster_state": "ok", "cluster_slots_ok": "16384", "cluster_known_nodes": "3"}
    assert parse_cluster_info(text) == expected
    assert parse_cluster_info(text.encode()) == expected
    assert parse_cluster_info({"cluster_state": "ok", "cluster_known_nodes": 3}) == {
        "cluster_state": "ok",
        "cluster_known_nodes": "3",
    }


def test_the_composition_root_builds_the_client_the_settings_ask_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis.asyncio as aioredis  # noqa: PLC0415

    from streams.bootstrap import build_redis  # noqa: PLC0415
    from streams.settings import Settings  # noqa: PLC0415

    monkeypatch.setenv("SIGNALS_REDIS_CLUSTER", "true")
    cluster = Settings(redis_url="redis://127.0.0.1:17101/0")
    assert cluster.redis_cluster is True
    assert isinstance(build_redis(cluster), aioredis.RedisCluster)  # lazy: connects on use
    single = Settings(redis_url="redis://127.0.0.1:16379/0", redis_cluster=False)
    assert isinstance(build_redis(single), aioredis.Redis)
