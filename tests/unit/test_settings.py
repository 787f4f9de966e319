import pytest
from pydantic import ValidationError

from schemas.events import EventType
from streams.settings import DEFAULT_LAST_K, Settings


def test_defaults_need_no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("SIGNALS_STATE_DIR", str(tmp_path))
    settings = Settings.load()
    assert settings.last_k == DEFAULT_LAST_K
    assert settings.inactivity_gap_s == 1800


def test_partial_last_k_override_keeps_other_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNALS_LAST_K", '{"view": 7}')
    settings = Settings()
    assert settings.last_k[EventType.VIEW] == 7
    assert settings.last_k[EventType.ORDER] == DEFAULT_LAST_K[EventType.ORDER]


@pytest.mark.parametrize("value", ['{"app_open": 3}', '{"like": 3}', '{"view": 0}'])
def test_bad_last_k_is_rejected(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SIGNALS_LAST_K", value)
    with pytest.raises(ValidationError):
        Settings()


def test_env_file_is_read_and_real_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    (tmp_path / "stack.env").write_text(
        "SIGNALS_REDIS_URL=redis://127.0.0.1:1/0\nSIGNALS_KAFKA_BOOTSTRAP=a:1,b:2\n"
    )
    monkeypatch.setenv("SIGNALS_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("SIGNALS_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("SIGNALS_REDIS_URL", "redis://override:2/0")
    settings = Settings.load()
    assert settings.kafka_servers == ["a:1", "b:2"]
    assert settings.redis_url == "redis://override:2/0"


def test_a_hot_key_ttl_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hot keys never expire while their user is in an active set: the old TTL setting is
    refused, not silently ignored."""
    monkeypatch.setenv("SIGNALS_HOT_TTL_S", "3600")
    with pytest.raises(ValidationError, match="SIGNALS_HOT_TTL_S is not a setting any more"):
        Settings()


def test_last_k_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNALS_LAST_K", '{"view": 1000}')
    assert Settings().last_k[EventType.VIEW] == 1000
    monkeypatch.setenv("SIGNALS_LAST_K", '{"view": 1001}')
    with pytest.raises(ValidationError, match="between 1 and 1000"):
        Settings()


def test_faust_data_directories_are_made_with_their_parents(tmp_path) -> None:
    """The ranker's Faust directory (`<datadir>/ranker`) on a machine where the worker has
    not made `<datadir>` yet: Faust itself makes only the last level and failed."""
    from streams.app import faust_app_options  # noqa: PLC0415

    datadir = tmp_path / "fresh" / "faust" / "ranker"
    options = faust_app_options(Settings(), datadir)
    assert datadir.is_dir()
    assert options["datadir"] == str(datadir)
