"""Helpers of the RabbitMQ transport: error wording, URL redaction, header conversion.

Owns what :mod:`shared.transport.amqp`, :mod:`shared.transport.amqp_connection` and
:mod:`shared.transport.amqp_delivery` share: the typed error of a broker refusal, the
operator-facing reason of a failed connect, :func:`redact_url`, the AMQP header table to
``str -> str`` conversion, the :class:`Pending` record of a pushed message, and the
broker reply codes and limits they test against.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import pika
import pika.exceptions

from shared.errors import AccessRefused, TransportError
from shared.transport.base import HEADER_ORIGINAL_QUEUE, HEADER_REJECT_REASON

__all__ = [
    "ACCESS_REFUSED",
    "MAX_RECONNECT_CYCLES",
    "PRECONDITION_FAILED",
    "Pending",
    "connect_failure",
    "redact_url",
    "refusal",
    "text_headers",
]

MAX_RECONNECT_CYCLES: Final = 3  # per operation: a broker that drops us again at once is down
ACCESS_REFUSED: Final = 403
PRECONDITION_FAILED: Final = 406
_BROKER_DEATH_HEADERS: Final = {
    HEADER_ORIGINAL_QUEUE: "x-first-death-queue",
    HEADER_REJECT_REASON: "x-first-death-reason",
}


def refusal(op: str, e: pika.exceptions.ChannelClosedByBroker) -> TransportError:
    """The typed error of a broker refusal: permissions and forged user_id are AccessRefused."""
    text = f"{op}: broker refused ({e.reply_code} {e.reply_text})"
    if e.reply_code == ACCESS_REFUSED or (
        e.reply_code == PRECONDITION_FAILED and "user_id" in str(e.reply_text)
    ):
        return AccessRefused(text)
    return TransportError(text)


def connect_failure(e: Exception, tls: bool) -> str:
    """Why a connection attempt failed, in words an operator can act on."""
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed: {e}"
    if isinstance(e, pika.exceptions.IncompatibleProtocolError | pika.exceptions.StreamLostError):
        # with TLS 1.3 a refused client certificate only shows as the broker hanging up
        hint = (
            "was the client certificate refused (tls_cert_file)?"
            if tls
            else "is this a TLS port (amqps://)?"
        )
        return f"{type(e).__name__}: the broker closed the connection; {hint}"
    return type(e).__name__


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***`` (for logs and errors)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def text_headers(raw: Mapping[str, object] | None) -> dict[str, str]:
    """AMQP header table -> ``str -> str`` (nested tables such as ``x-death`` are left out)."""
    headers: dict[str, str] = {}
    for key, value in (raw or {}).items():
        if isinstance(value, str):
            headers[key] = value
        elif isinstance(value, bytes):
            headers[key] = value.decode("utf-8", "replace")
        elif isinstance(value, int | float):  # e.g. x-delivery-count of quorum queues
            headers[key] = str(value)
    for ours, broker in _BROKER_DEATH_HEADERS.items():
        if ours not in headers and broker in headers:
            headers[ours] = headers[broker]
    return headers


@dataclass(frozen=True, slots=True)
class Pending:
    """A message the broker pushed to one of our consumers, not yet returned by get()."""

    tag: int
    redelivered: bool
    raw_headers: dict[str, object] | None
    body: bytes
    user_id: str | None = None
