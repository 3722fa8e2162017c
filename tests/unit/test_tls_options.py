"""The TLS query parameters of broker and store URLs (shared.security.tls)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.security.tls import TlsOptions, client_context, split_tls_query


def test_a_tls_url_gives_its_options_and_keeps_the_other_parameters():
    # Given an amqps:// URL with TLS files and one of pika's own parameters
    url = "amqps://u:pw@h:5671/%2F?heartbeat=5&tls_ca_file=%2Fca.pem&tls_cert_file=/c.pem"
    # When the TLS parameters are taken out
    cleaned, options = split_tls_query(url, ("amqps",))
    # Then the URL keeps the rest and the options name the files, verification on
    assert cleaned == "amqps://u:pw@h:5671/%2F?heartbeat=5"
    assert options == TlsOptions(ca_file="/ca.pem", cert_file="/c.pem", verify=True)


def test_a_tls_scheme_without_parameters_verifies_against_the_system_store():
    # Given a bare rediss:// URL
    # When it is split
    cleaned, options = split_tls_query("rediss://h:6380/0", ("rediss",))
    # Then TLS is on with default options
    assert (cleaned, options) == ("rediss://h:6380/0", TlsOptions())


def test_a_plaintext_url_has_no_tls_options():
    # Given a redis:// URL without TLS parameters
    # When it is split
    # Then nothing changes
    assert split_tls_query("redis://h:6379/0", ("rediss",)) == ("redis://h:6379/0", None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://h/?tls_ca_file=/ca.pem", "plaintext"),
        ("amqps://h/?tls_ca=/ca.pem", "unknown TLS URL parameter"),
        ("amqps://h/?tls_verify=maybe", "tls_verify must be true or false"),
        ("amqps://h/?tls_ca_file=/a&tls_ca_file=/b", "more than once"),
        ("amqps://h/?tls_key_file=/k.pem", "without tls_cert_file"),
    ],
)
def test_malformed_tls_parameters_are_configuration_errors(url: str, message: str):
    # Given a URL whose TLS parameters are wrong
    # When it is split
    # Then the error says what is wrong
    with pytest.raises(ConfigError, match=message):
        split_tls_query(url, ("amqps",))


def test_the_client_context_verifies_host_names_unless_told_not_to():
    # Given default options and options with verification off
    # When contexts are made
    strict = client_context(TlsOptions())
    lax = client_context(TlsOptions(verify=False))
    # Then only the first checks the chain and the host name, both at TLS 1.2 or later
    assert strict.check_hostname and strict.verify_mode == ssl.CERT_REQUIRED
    assert not lax.check_hostname and lax.verify_mode == ssl.CERT_NONE
    assert strict.minimum_version == lax.minimum_version == ssl.TLSVersion.TLSv1_2


def test_an_unreadable_ca_file_is_a_configuration_error_naming_it(tmp_path: Path):
    # Given a CA path that does not exist
    missing = str(tmp_path / "nope.pem")
    # When a context is made
    # Then the error names the parameter and the file
    with pytest.raises(ConfigError, match="tls_ca_file.*nope.pem"):
        client_context(TlsOptions(ca_file=missing))
