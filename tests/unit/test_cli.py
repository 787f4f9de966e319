"""Bad arguments get one line and the usage, never a traceback."""

import itertools
import json
import subprocess
import sys

import pytest

from jobs.traffic import TrafficParams, simulate
from tests.conftest import ROOT


def run(
    *args: str, module: str = "jobs.cli", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--rate", "-5"], "must be > 0"),
        (["generate", "--count", "many"], "expected a whole number"),
        (["generate", "--unpaced"], "--unpaced needs --count"),
        (["last-k", "u1", "--type", "app_open"], "carry no product"),
        (["last-k", "u1", "--type", "like"], "unknown type 'like'"),
        (["last-k"], "required: user_id"),
        (["last-k", "}u1"], "without spaces, '{' or '}'"),
        (["features", "user", "a b"], "without spaces"),
        (["features", "trending", "c1", "c2"], "takes one id, got 2"),
        (["features", "shop", "x"], "invalid choice"),
        (["features", "product", "p1", "--at", "soon"], "expected a whole number"),
        (["catalog", "load"], "one CSV file, or --generated"),
        (["catalog", "show"], "needs at least one product id"),
        (["train", "--events", "0"], "must be > 0"),
        (["train", "--file", "a.jsonl", "--topic"], "not allowed with argument"),
        (["model", "use"], "needs a VERSION"),
        (["frobnicate"], "invalid choice"),
        (["replay", "--day", "2026-12-01"], "one of the arguments --to-parquet"),
        (["replay", "--to-parquet", "x", "--start", "soon", "--end", "later"], "is not a time"),
        (["replay", "--to-parquet", "x", "--day", "2026-13-01"], "is not a day"),
        (["replay", "--to-parquet", "x", "--offsets", "0:5-5"], "is empty"),
        (["replay", "--to-parquet", "x", "--offsets", "zero"], "is not PARTITION:FROM-TO"),
        (["replay", "--to-parquet", "x", "--partitions", "3-1"], "empty partition range"),
        (["replay", "--to-parquet", "x", "--lateness", "-1", "--day", "2026-12-01"], ">= 0"),
        (["replay", "--to-parquet", "x"], "give one of: --start and --end, --day, or --offsets"),
        (["replay", "--to-parquet", "x", "--start", "2026-12-01"], "needs both --start and --end"),
        (
            ["replay", "--to-parquet", "x", "--start", "2026-12-02", "--end", "2026-12-01"],
            "end is before start",
        ),
        (["replay", "--to-pipeline", "Bad-Name", "--day", "2026-12-01"], "is not a namespace name"),
        (["backfill", "--from-parquet", "nowhere"], "holds no replay"),
        (["backfill", "--from-parquet", "nowhere", "--day", "2026-12-01"], "give no range"),
        (["cold-index", "drop"], "invalid choice"),
    ],
)
def test_bad_arguments_get_one_line_and_usage(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: signals")
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0]


def test_help_explains_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in (
        "worker",
        "ranker",
        "produce",
        "generate",
        "last-k",
        "features",
        "catalog",
        "demo",
    ):
        assert command in result.stdout


def bare_env(tmp_path, **variables: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "SIGNALS_STATE_DIR": str(tmp_path), **variables}


def test_unreachable_redis_is_one_line_not_a_traceback(tmp_path) -> None:
    result = run("last-k", "u1", env=bare_env(tmp_path, SIGNALS_REDIS_URL="redis://127.0.0.1:1/0"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("signals: error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_cold_index_with_redis_down_or_switched_off_is_one_line(tmp_path) -> None:
    down = run(
        "cold-index", "status", env=bare_env(tmp_path, SIGNALS_REDIS_URL="redis://127.0.0.1:1/0")
    )
    assert down.returncode == 1
    assert "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
    off = run("cold-index", "status", env=bare_env(tmp_path, SIGNALS_COLD_INDEX_ENABLED="false"))
    assert off.returncode == 2
    assert "SIGNALS_COLD_INDEX_ENABLED=false" in off.stderr.splitlines()[-1]


def test_unreachable_redis_for_features_is_one_line(tmp_path) -> None:
    env = bare_env(tmp_path, SIGNALS_REDIS_URL="redis://127.0.0.1:1/0")
    result = run("features", "product", "p1", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_stack_cli_rejects_a_bad_port_in_one_line(tmp_path) -> None:
    result = run(
        "status", module="infra.stack", env=bare_env(tmp_path, SIGNALS_STACK_REDIS_PORT="http")
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "signals-stack: error: SIGNALS_STACK_REDIS_PORT must be a whole number, got 'http'"
    )


def test_a_catalog_with_bad_rows_is_refused_line_by_line(tmp_path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(
        "product_id,category_id,price_paise,seller_id,language,created_ms\n"
        "p1,c1,100,s1,hi,5\np2,c1,,s1,hi,5\n",
        encoding="utf-8",
    )
    result = run("catalog", "load", str(path), env=bare_env(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}:3: missing price_paise" in result.stderr
    assert "1 bad rows, nothing loaded" in result.stderr


def test_training_on_too_little_data_is_one_line_and_model_list_says_what_to_do(tmp_path) -> None:
    env = {**bare_env(tmp_path), "SIGNALS_MODEL_DIR": str(tmp_path / "models")}
    result = run("train", "--events", "300", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not enough data to train" in result.stderr.splitlines()[-1]
    listed = run("model", "list", env=env)
    assert listed.returncode == 0 and "run `signals train`" in listed.stdout
    missing = run("model", "use", "20260101T000000Z-00000000", env=env)
    assert missing.returncode == 2 and "no model file for version" in missing.stderr


def test_training_from_a_file_writes_and_publishes_a_model(tmp_path) -> None:
    params = TrafficParams(seed=3, users=200, products=300, categories=10, rate=5.0)
    events = itertools.islice(simulate(params, 1_764_547_200_000), 8_000)
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events) + "not json\n")
    env = {**bare_env(tmp_path), "SIGNALS_MODEL_DIR": str(tmp_path / "models")}
    result = run(
        "train", "--file", str(log), "--seed", "3", "--products", "300", "--categories", "10",
        "--rounds", "30", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "left out 1 records that are not valid events" in result.stdout
    assert "published" in result.stdout and "test NDCG@20" in result.stdout
    listed = run("model", "list", env=env)
    assert listed.stdout.startswith("* ") and "x popularity" in listed.stdout
