"""The role model of a federation: identities, broker permissions, Redis ACLs. Pure.

DESIGN §10: every role has its own broker user, and a receiver that compares the AMQP
``user_id`` of a message (checked by RabbitMQ against the connection's user) with the
identity the message claims knows who sent it. This module says, without touching a
server, *which* users exist for a federation and what each may do:

- :class:`Identities`: the user name of each role (``client k`` is ``f"{prefix}{k}"``) and
  the sender rules the services apply (:meth:`Identities.upload_sender_ok`, ...).
- :func:`broker_permissions`: the configure/write/read regexes of one role on the
  federation's exchanges and queues (``rabbitmqctl set_permissions``).
- :func:`redis_rules`: the ``ACL SETUSER`` rules (without the password) of the roles that
  hold Redis credentials at all.
- :func:`plan`: one :class:`RoleGrant` per role of a federation; ``scarlet provision``
  (``scarlet/provision.py``) carries it out and the Kubernetes manifests make one Secret
  per grant from it.

Names come from :mod:`shared.protocol.routes`; a change of a queue or exchange name there
changes the permissions here (``tests/unit/test_roles.py`` checks every name a role uses
against its regexes).
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from dataclasses import dataclass

from shared.config import ServiceSettings
from shared.protocol import routes

__all__ = [
    "NOTHING",
    "BrokerPermissions",
    "Identities",
    "Role",
    "RoleGrant",
    "broker_permissions",
    "identities_of",
    "plan",
    "redis_rules",
    "sender_identities",
    "user_from_url",
]

NOTHING = "^$"
"""A permission regex that matches no resource name."""

DEFAULT_DEAD_LETTER_EXCHANGE = "scarlet.dlx"
DEFAULT_DEAD_LETTER_QUEUE = "scarlet.dead-letters"


class Role(enum.StrEnum):
    """The five kinds of principal of a federation."""

    AGGREGATOR = "aggregator"
    CACHE = "cache"
    CLIENT = "client"  # one per pinned client
    POOL = "pool"  # every pool worker: one trust domain
    MONITORING = "monitoring"


@dataclass(frozen=True, slots=True)
class Identities:
    """The broker user name of each role.

    Attributes:
        aggregator: the aggregator's user; workers accept tasks only from it.
        cache: the cache service's user; workers accept cache-sync replies only from it.
        pool: the user every pool worker shares.
        client_prefix: pinned client k's user is ``f"{client_prefix}{k}"``.
        monitoring: read-only observer (no publish, no consume).
    """

    aggregator: str = "scarlet-aggregator"
    cache: str = "scarlet-cache"
    pool: str = "scarlet-pool"
    client_prefix: str = "scarlet-client-"
    monitoring: str = "scarlet-monitoring"

    @classmethod
    def for_run(cls, run_id: str) -> Identities:
        """Per-federation names (``<run>-aggregator``, ...): several runs share a broker."""
        return cls(
            aggregator=f"{run_id}-aggregator",
            cache=f"{run_id}-cache",
            pool=f"{run_id}-pool",
            client_prefix=f"{run_id}-client-",
            monitoring=f"{run_id}-monitoring",
        )

    def client(self, client_id: int) -> str:
        """Pinned client ``client_id``'s user."""
        return f"{self.client_prefix}{client_id}"

    def client_of(self, user: str | None) -> int | None:
        """The client id whose user ``user`` is, or None."""
        if user is None or not user.startswith(self.client_prefix):
            return None
        digits = user[len(self.client_prefix) :]
        return int(digits) if digits.isdigit() and str(int(digits)) == digits else None

    def upload_sender_ok(self, user: str | None, client_id: int, worker_mode: str) -> bool:
        """May ``user`` upload for ``client_id``? (pinned: that client; pool: the pool)."""
        if user is None:
            return False  # a message without user_id proves nothing
        if worker_mode == "pool":
            return user == self.pool
        return user == self.client(client_id)

    def task_sender_ok(self, user: str | None) -> bool:
        """Tasks come from the aggregator only."""
        return user is not None and user == self.aggregator

    def reply_sender_ok(self, user: str | None) -> bool:
        """Cache-sync replies come from the cache service only."""
        return user is not None and user == self.cache

    def requester_ok(self, user: str | None, clients: int, worker_mode: str) -> bool:
        """May ``user`` ask the cache service for the cache? (a client of the run, or the pool)."""
        if user is None:
            return False
        if worker_mode == "pool":
            return user == self.pool
        client = self.client_of(user)
        return client is not None and 0 <= client < clients

    def user(self, role: Role, client_id: int | None = None) -> str:
        """The user of ``role`` (``client_id`` for :attr:`Role.CLIENT`)."""
        if role is Role.CLIENT:
            if client_id is None:
                raise ValueError("a client role needs its client id")
            return self.client(client_id)
        return {
            Role.AGGREGATOR: self.aggregator,
            Role.CACHE: self.cache,
            Role.POOL: self.pool,
            Role.MONITORING: self.monitoring,
        }[role]


@dataclass(frozen=True, slots=True)
class BrokerPermissions:
    """RabbitMQ ``set_permissions`` regexes (matched against exchange and queue names)."""

    configure: str = NOTHING
    write: str = NOTHING
    read: str = NOTHING


@dataclass(frozen=True, slots=True)
class RoleGrant:
    """What one principal of a federation is given.

    Attributes:
        role: its role.
        user: its broker user (and Redis user, when it has one).
        client_id: the client, for :attr:`Role.CLIENT`.
        broker: its broker permissions on the federation's vhost.
        broker_tags: RabbitMQ user tags (``""``: none: no management access).
        redis: its ``ACL SETUSER`` rules without the password, or None: it gets no Redis
            credentials at all (pinned clients, monitoring).
        config_keys: the ``[service]`` keys its configuration file holds.
    """

    role: Role
    user: str
    client_id: int | None
    broker: BrokerPermissions
    broker_tags: str
    redis: tuple[str, ...] | None
    config_keys: tuple[str, ...]

    @property
    def name(self) -> str:
        """File and Secret name: ``aggregator``, ``cache``, ``pool``, ``client-<k>``, ..."""
        if self.role is Role.CLIENT:
            return f"client-{self.client_id}"
        return self.role.value


def _alt(*patterns: str) -> str:
    unique = dict.fromkeys(patterns)  # the uploads exchange and queue share a name
    return "^(" + "|".join(unique) + ")$"


def broker_permissions(
    role: Role,
    run_id: str,
    identities: Identities,
    client_id: int | None = None,
    dead_letter_exchange: str = DEFAULT_DEAD_LETTER_EXCHANGE,
    dead_letter_queue: str = DEFAULT_DEAD_LETTER_QUEUE,
) -> BrokerPermissions:
    """Least-privilege configure/write/read regexes of ``role`` on run ``run_id``.

    RabbitMQ's rules that shape them: declaring or deleting a queue or exchange is
    *configure* on it; publishing is *write* on the exchange; binding is *write* on the
    queue and *read* on the exchange; consuming is *read* on the queue; declaring a queue
    with a dead-letter exchange is *read* on the queue and *write* on the dead-letter
    exchange. The default exchange (``amq.default``, reaching every queue) is never
    writable: every kind of message has an exchange of its own.
    """
    e = re.escape
    rounds = e(routes.rounds_exchange(run_id))
    uploads_x = e(routes.uploads_exchange(run_id))
    uploads_q = e(routes.uploads_queue(run_id))
    rpc_x = e(routes.cache_rpc_exchange(run_id))
    rpc_q = e(routes.cache_rpc_queue(run_id))
    replies = e(routes.replies_exchange(run_id))
    pool_q = e(routes.pool_tasks_queue(run_id))
    client_qs = e(routes.client_tasks_queue(run_id, 0))[: -len("0")] + r"\d+"
    dlx, dlq = e(dead_letter_exchange), e(dead_letter_queue)
    if role is Role.AGGREGATOR:
        # it declares the whole topology (so no worker ever needs configure on it)
        # but the RPC queue, which is the cache service's
        every = (rounds, uploads_x, uploads_q, rpc_x, replies, pool_q, client_qs, dlx, dlq)
        return BrokerPermissions(
            configure=_alt(*every),
            write=_alt(rounds, uploads_q, pool_q, client_qs, dlx, dlq),
            read=_alt(rounds, uploads_x, uploads_q, pool_q, client_qs, dlx),
        )
    if role is Role.CACHE:
        return BrokerPermissions(
            configure=_alt(rpc_x, rpc_q, replies, dlx, dlq),
            write=_alt(replies, rpc_q, dlx, dlq),
            read=_alt(rpc_x, rpc_q, dlx),
        )
    if role in (Role.CLIENT, Role.POOL):
        if role is Role.CLIENT:
            if client_id is None:
                raise ValueError("a client role needs its client id")
            tasks = e(routes.client_tasks_queue(run_id, client_id))
        else:
            tasks = pool_q
        user = identities.user(role, client_id)
        # its own reply queues only: the worker id starts with the user (routes.reply_queue)
        own_replies = e(routes.reply_queue(run_id, user + ".")) + r"[A-Za-z0-9_.-]+"
        return BrokerPermissions(
            configure=_alt(own_replies),
            write=_alt(uploads_x, rpc_x, own_replies, dlx),
            read=_alt(tasks, own_replies, replies),
        )
    return BrokerPermissions()  # monitoring: observes through /metrics and management


def redis_rules(role: Role, run_id: str, worker_mode: str) -> tuple[str, ...] | None:
    """``ACL SETUSER`` rules (no password) of ``role``, or None: no Redis user at all.

    The aggregator and the cache service get every command but administration and the
    dangerous ones (FLUSHALL, KEYS, DEBUG, ...) on the run's keys only; pool workers (when
    their client state lives in Redis) get the client keys only and no key enumeration
    (SCAN, KEYS, RANDOMKEY); pinned clients and monitoring get nothing.
    """
    if role in (Role.AGGREGATOR, Role.CACHE):
        return (
            "on",
            "resetkeys",
            f"~scarlet:{run_id}:*",
            "resetchannels",
            "+@all",
            "-@admin",
            "-@dangerous",
        )
    if role is Role.POOL and worker_mode == "pool":
        return (
            "on",
            "resetkeys",
            f"~scarlet:{run_id}:client:*",
            "resetchannels",
            "+@all",
            "-@admin",
            "-@dangerous",
            "-scan",
            "-keys",
            "-randomkey",
        )
    return None


_COMMON_KEYS = ("broker_url", "worker_mode", "verify_senders") + (
    "aggregator_user",
    "cache_user",
    "pool_user",
    "client_user_prefix",
)


def plan(
    run_id: str,
    clients: int,
    worker_mode: str,
    identities: Identities | None = None,
    dead_letter_exchange: str = DEFAULT_DEAD_LETTER_EXCHANGE,
    dead_letter_queue: str = DEFAULT_DEAD_LETTER_QUEUE,
) -> tuple[RoleGrant, ...]:
    """Every principal of a federation and what it is given.

    Pinned mode: aggregator, cache, one client per id, monitoring. Pool mode: aggregator,
    cache, pool, monitoring.
    """
    ids = identities or Identities.for_run(run_id)
    dl = (dead_letter_exchange, dead_letter_queue)

    def grant(role: Role, keys: tuple[str, ...], client_id: int | None = None) -> RoleGrant:
        return RoleGrant(
            role=role,
            user=ids.user(role, client_id),
            client_id=client_id,
            broker=broker_permissions(role, run_id, ids, client_id, *dl),
            broker_tags="monitoring" if role is Role.MONITORING else "",
            redis=redis_rules(role, run_id, worker_mode),
            config_keys=keys,
        )

    server = (*_COMMON_KEYS, "redis_url")
    grants = [grant(Role.AGGREGATOR, server), grant(Role.CACHE, server)]
    if worker_mode == "pool":
        grants.append(grant(Role.POOL, (*_COMMON_KEYS, "state_url")))
    else:
        grants += [grant(Role.CLIENT, _COMMON_KEYS, k) for k in range(clients)]
    grants.append(grant(Role.MONITORING, ("broker_url",)))
    return tuple(grants)


def user_from_url(url: str) -> str | None:
    """The user name of a broker URL (``amqp://user:pw@host/vhost``), or None."""
    if url.startswith("memory:"):
        return None
    user = urllib.parse.urlsplit(url).username
    return urllib.parse.unquote(user) if user else None


def identities_of(settings: ServiceSettings) -> Identities:
    """The identities a service's settings name (``aggregator_user``, ...)."""
    return Identities(
        aggregator=settings.aggregator_user,
        cache=settings.cache_user,
        pool=settings.pool_user,
        client_prefix=settings.client_user_prefix,
    )


def sender_identities(settings: ServiceSettings) -> Identities | None:
    """The identities receivers check senders against; None when ``verify_senders`` is off."""
    return identities_of(settings) if settings.verify_senders else None
