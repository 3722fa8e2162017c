"""One exception hierarchy for the whole project.

Every error a caller is expected to handle derives from :class:`ScarletError`::

    ScarletError
    ├── ProtocolError            a message that cannot be accepted
    │   ├── DecodeError          malformed bytes, wrong types, shapes, ranges or values
    │   ├── UnsupportedVersion   a schema version this build does not speak
    │   └── MessageTooLarge      a body over the configured size limit
    ├── TransportError           the message broker
    │   ├── TransportUnavailable cannot connect (yet); retry with backoff
    │   ├── TransportClosed      the connection went away under us
    │   └── AccessRefused        the broker refused an operation this user may not do
    ├── StateError               the state store or a round state machine
    │   ├── StoreUnavailable     the store cannot be reached
    │   ├── RoundStateConflict   an operation that the round's state forbids
    │   └── CacheDesync          a cache replica whose digest does not match
    ├── DataError                a data set that is missing or unusable
    └── ConfigError              invalid configuration

Adapters convert library exceptions (pika, redis, msgpack) into these at the boundary.
"""

from __future__ import annotations

__all__ = [
    "AccessRefused",
    "CacheDesync",
    "ConfigError",
    "DataError",
    "DecodeError",
    "MessageTooLarge",
    "ProtocolError",
    "RoundStateConflict",
    "ScarletError",
    "StateError",
    "StoreUnavailable",
    "TransportClosed",
    "TransportError",
    "TransportUnavailable",
    "UnsupportedVersion",
]


class ScarletError(Exception):
    """Base class of every error raised on purpose by scarlet-fd."""


class ProtocolError(ScarletError):
    """A message that cannot be accepted."""


class DecodeError(ProtocolError):
    """Bytes that do not decode into a valid message (the text says which field and why)."""


class UnsupportedVersion(ProtocolError):
    """A message whose schema version this build does not understand."""


class MessageTooLarge(ProtocolError):
    """A message body (or a length field inside it) over the configured limit."""


class TransportError(ScarletError):
    """The message broker failed."""


class TransportUnavailable(TransportError):
    """The broker cannot be reached; callers retry with backoff."""


class TransportClosed(TransportError):
    """The broker connection or channel was closed."""


class AccessRefused(TransportError):
    """The broker refused what the connection's user may not do (403, or a forged user_id)."""


class StateError(ScarletError):
    """The state store or a round state machine refused an operation."""


class StoreUnavailable(StateError):
    """The state store cannot be reached."""


class RoundStateConflict(StateError):
    """An operation that the current round state forbids."""


class CacheDesync(StateError):
    """A soft-label cache replica that no longer matches the authoritative cache."""


class DataError(ScarletError):
    """A data set that is missing, malformed or unusable for the requested split."""


class ConfigError(ScarletError):
    """Invalid configuration (unknown key, bad value, inconsistent combination)."""
