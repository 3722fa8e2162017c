"""TLS options of a broker or store URL (``amqps://``, ``rediss://``).

The TLS settings ride in the URL they apply to, as query parameters, so that every
process that is given a URL (``broker_url``, ``redis_url``, ``state_url``) connects the
way its operator meant without any other setting travelling with it, and the broker and
the store may have different CAs or client certificates::

    amqps://user:pw@rabbitmq:5671/%2F?tls_ca_file=/etc/scarlet/tls/ca.pem
        &tls_cert_file=/etc/scarlet/tls/client.pem&tls_key_file=/etc/scarlet/tls/client.key
    rediss://user:pw@redis:6380/0?tls_ca_file=/etc/scarlet/tls/ca.pem

Parameters (every one optional):

- ``tls_ca_file``: PEM bundle of the CAs trusted to sign the server's certificate
  (default: the system's trust store).
- ``tls_cert_file`` / ``tls_key_file``: the client certificate (and its key, unless the
  certificate file holds it) presented to a server that asks for one.
- ``tls_verify``: ``true`` (default) verifies the server's certificate chain *and* that
  it names the host of the URL; ``false`` turns both off (a test bench only).

:func:`split_tls_query` is pure; :func:`client_context` reads the files.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass

from shared.errors import ConfigError

__all__ = ["TLS_PARAMETERS", "TlsOptions", "client_context", "split_tls_query"]

TLS_PARAMETERS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify")
"""The query parameters this module owns; any other ``tls_*`` parameter is an error."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """How a client opens a TLS connection.

    Attributes:
        ca_file: CA bundle that signs the server's certificate (None: system store).
        cert_file: client certificate (PEM), or None: none is presented.
        key_file: its private key, or None: in ``cert_file``.
        verify: verify the server's chain and host name.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


def split_tls_query(url: str, tls_schemes: tuple[str, ...]) -> tuple[str, TlsOptions | None]:
    """Take the ``tls_*`` parameters out of ``url``.

    Args:
        url: a broker or store URL.
        tls_schemes: the schemes that mean TLS for this kind of URL (``("amqps",)``).

    Returns:
        The URL without the ``tls_*`` parameters (other parameters kept in order) and the
        TLS options, or None when the scheme is a plaintext one.

    Raises:
        ConfigError: ``tls_*`` parameters on a plaintext URL, an unknown or repeated
            ``tls_*`` parameter, ``tls_verify`` not a boolean, or a key without its
            certificate. The message never contains the URL (it may hold a password).
    """
    parts = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = [(k, v) for k, v in pairs if k.startswith("tls_")]
    rest = [(k, v) for k, v in pairs if not k.startswith("tls_")]
    secure = parts.scheme.lower() in tls_schemes
    if ours and not secure:
        raise ConfigError(
            f"{parts.scheme}:// is plaintext: TLS parameters "
            f"{sorted(k for k, _ in ours)} need {' or '.join(s + '://' for s in tls_schemes)}"
        )
    names = [k for k, _ in ours]
    unknown = sorted(set(names) - set(TLS_PARAMETERS))
    if unknown:
        raise ConfigError(f"unknown TLS URL parameter(s) {unknown}; valid: {list(TLS_PARAMETERS)}")
    repeated = sorted({k for k in names if names.count(k) > 1})
    if repeated:
        raise ConfigError(f"TLS URL parameter(s) {repeated} given more than once")
    cleaned = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    if not secure:
        return cleaned, None
    given = dict(ours)
    verify_text = given.get("tls_verify", "true").lower()
    if verify_text not in _TRUE + _FALSE:
        raise ConfigError(f"tls_verify must be true or false, got {given['tls_verify']!r}")
    options = TlsOptions(
        ca_file=given.get("tls_ca_file") or None,
        cert_file=given.get("tls_cert_file") or None,
        key_file=given.get("tls_key_file") or None,
        verify=verify_text in _TRUE,
    )
    if options.key_file and not options.cert_file:
        raise ConfigError("tls_key_file is given without tls_cert_file")
    return cleaned, options


def client_context(options: TlsOptions) -> ssl.SSLContext:
    """A client ``SSLContext``: TLS 1.2 or later, chain and host name verified by default.

    Raises:
        ConfigError: a CA, certificate or key file that cannot be read or parsed (the
            error names the parameter and the file, never a key's content).
    """
    try:
        context = ssl.create_default_context(cafile=options.ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"tls_ca_file {options.ca_file!r} cannot be loaded: {e}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not options.verify:
        context.check_hostname = False  # must be off before verify_mode may be CERT_NONE
        context.verify_mode = ssl.CERT_NONE
    if options.cert_file:
        try:
            context.load_cert_chain(options.cert_file, options.key_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"tls_cert_file {options.cert_file!r} / tls_key_file {options.key_file!r} "
                f"cannot be loaded: {e}"
            ) from None
    return context
