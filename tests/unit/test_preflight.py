"""The one-line causes `signals check` and the long-running processes give, from the
client libraries' own words (messages seen from the secured local stack)."""

from __future__ import annotations

import pytest

from sinks.preflight import Reach, Trouble, classify


@pytest.mark.parametrize(
    ("text", "tls", "trouble"),
    [
        (
            "SASL authentication error: Authentication failed during authentication due to "
            "invalid credentials with SASL mechanism SCRAM-SHA-512 (after 316ms in state AUTH_REQ)",
            True,
            Trouble.AUTH,
        ),
        (
            "AuthenticationError: invalid username-password pair or user is disabled.",
            True,
            Trouble.AUTH,
        ),
        (
            "AuthenticationFailed('Failed to authenticate to 127.0.0.1:29042: Error from server: "
            'code=0100 [Bad credentials] message="Provided username feedsignals and/or password '
            "are incorrect\"')",
            True,
            Trouble.AUTH,
        ),
        (
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker "
            "certificate could not be verified",
            True,
            Trouble.TLS,
        ),
        (
            "ConnectionError: Error 1 connecting to 127.0.0.1:26379. "
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
            "self-signed certificate in certificate chain",
            True,
            Trouble.TLS,
        ),
        (
            "Disconnected: connection closed by peer: receive 0 after POLLIN (after 1ms in state "
            "APIVERSION_QUERY)",
            False,
            Trouble.PLAINTEXT,
        ),
        ("ConnectionResetError(104, 'Connection reset by peer')", False, Trouble.PLAINTEXT),
        ("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)", True, Trouble.NOT_TLS),
        (
            "Connect to ipv4#127.0.0.1:29092 failed: Connection refused "
            "(after 0ms in state CONNECT)",
            True,
            Trouble.UNREACHABLE,
        ),
        ("something else entirely", True, Trouble.OTHER),
    ],
)
def test_each_clients_words_name_the_cause(text: str, tls: bool, trouble: Trouble) -> None:
    assert classify(text, tls) is trouble


def test_only_configuration_problems_stop_a_process_and_every_line_names_its_server() -> None:
    assert {t for t in Trouble if t.fatal} == {
        Trouble.AUTH,
        Trouble.TLS,
        Trouble.NOT_TLS,
        Trouble.PLAINTEXT,
    }
    line = Reach("kafka 127.0.0.1:9092", Trouble.AUTH, "refused").line()
    assert line == "kafka 127.0.0.1:9092: authentication failed: refused"
    assert "\n" not in line
    assert (
        Reach("redis 127.0.0.1:6379", Trouble.NONE, "TLS").line()
        == "redis 127.0.0.1:6379: ok (TLS)"
    )
