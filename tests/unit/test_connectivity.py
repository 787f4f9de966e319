"""Settings turned into each client library's security options (`sinks.connectivity`),
and secrets kept out of what gets printed."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from sinks.connectivity import (
    aiokafka_options,
    cql_options,
    kafka_config,
    redacted,
    redis_options,
)
from streams.settings import Settings


def test_plaintext_defaults_add_nothing_but_the_protocol() -> None:
    settings = Settings()
    assert kafka_config(settings) == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "plaintext",
    }
    assert aiokafka_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert redis_options(settings) == {}
    assert cql_options(settings) == {}


def test_sasl_ssl_reaches_every_kafka_client_the_same_way(tmp_path: Path) -> None:
    secret = tmp_path / "kafka.password"
    secret.write_text("s3cret-value\n")
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="app",
        kafka_sasl_password_file=secret,
    )
    config = kafka_config(settings)
    assert config["sasl.password"] == "s3cret-value"  # one trailing newline dropped
    assert config["sasl.mechanism"] == "SCRAM-SHA-256"
    assert config["ssl.ca.location"] == "probe"  # the system's CAs
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    options = aiokafka_options(settings)
    assert options["sasl_plain_password"] == "s3cret-value"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in str(settings.model_dump())


def test_redis_and_cql_logins_and_tls() -> None:
    settings = Settings(
        redis_url="rediss://cache:6380/0",
        redis_username="app",
        redis_password="r-secret",
        cql_username="app",
        cql_password="c-secret",
        cql_tls=True,
    )
    options = redis_options(settings)
    assert (options["username"], options["password"]) == ("app", "r-secret")
    assert options["ssl_check_hostname"] is True
    cql = cql_options(settings)
    assert cql["auth_provider"].username == "app"
    assert cql["ssl_context"].verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "SIGNALS_KAFKA_SASL_USERNAME"),
        ({"kafka_ssl_ca_file": "/ca.pem"}, "use SSL or SASL_SSL"),
        ({"redis_tls_ca_file": "/ca.pem"}, "not rediss://"),
        ({"cql_username": "app"}, "go together"),
        (
            {"cql_tls": True, "cql_tls_cert_file": "/c.pem"},
            "CERT_FILE and SIGNALS_CQL_TLS_KEY_FILE",
        ),
        ({"redis_password": "a", "redis_password_file": "/x"}, "not both"),
    ],
)
def test_half_a_configuration_is_refused_with_the_settings_named(
    values: dict[str, object], says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(**values)


def test_a_password_in_a_url_is_masked_where_it_could_be_printed() -> None:
    url = "redis://app:pa55@cache:6379/0"
    assert redacted(url) == "redis://app:***@cache:6379/0"
    assert redacted("redis://cache:6379/0") == "redis://cache:6379/0"
    assert "pa55" not in repr(Settings(redis_url=url))
