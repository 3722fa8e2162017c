"""``scarlet provision``: per-role broker and Redis users for one federation.

The plan (who gets what) is pure and lives in :mod:`shared.security.roles`; this module
carries it out on the local servers, or prints it for an operator:

- RabbitMQ: one user per role with a random password and least-privilege permissions on
  the vhost of the admin broker URL (tags only for monitoring), all of them in one
  ``rabbitmqctl import_definitions`` call (:func:`broker_definitions`): the definitions
  document goes on standard input and holds each password only as RabbitMQ's salted
  SHA-256 hash (:func:`password_hash`), so no password is in a process list, a file or
  the document;
- Redis: ``ACL SETUSER`` for the aggregator and the cache service (the run's keys) and,
  in pool mode with a ``redis://`` client-state store, the pool (client keys only, no
  SCAN/KEYS/RANDOMKEY); pinned clients get no Redis user at all;
- one configuration file per role, ``<out>/<role>.toml`` with mode 0600 in a 0700 folder,
  holding that role's own URLs (with its password) and none of another's: a pinned
  worker's file has no Redis setting at all;
- the broker topology, declared with the admin URL, so that workers, which may declare
  nothing but their reply queues, can start in any order.

``scarlet provision --delete RUN`` removes the users again (``scarlet up`` does it when
the run stops), in one ``rabbitmqctl eval`` (:func:`delete_users`). Users are named
``<run>-<role>`` (``Identities.for_run``), so two runs on one broker never share a user.

Each ``rabbitmqctl`` call boots an Erlang VM (about 0.6 s), which is why creation and
deletion are one call each whatever the number of users (DECISIONS 32).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import subprocess
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import FederationConfig, ServiceSettings
from shared.config_loading import dump_toml
from shared.errors import ConfigError, ScarletError
from shared.security.roles import Identities, Role, RoleGrant, plan
from shared.transport import open_transport
from shared.transport.base import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE
from shared.transport.topology import declare_topology

logger = logging.getLogger(__name__)

__all__ = [
    "Provisioned",
    "broker_definitions",
    "broker_users",
    "delete_users",
    "password_hash",
    "provision",
    "role_settings",
]

_PASSWORD_BYTES = 24
_MANIFEST = "users.json"  # names only, never a password: what --delete removes
_HASHING = "rabbit_password_hashing_sha256"
_SALT_BYTES = 4  # RabbitMQ's own salt length
_DELETE_PARALLEL = 4  # the fallback's rabbitmqctl processes at once (8: no faster on 2 cores)


@dataclass
class Provisioned:
    """What :func:`provision` made.

    Attributes:
        grants: the plan it carried out.
        files: role name (``aggregator``, ``client-0``, ...) -> its configuration file.
        commands: the operator commands (``--print``): the broker's import (password
            hashes only) and the Redis ones (passwords included); empty when they were
            run.
        identities: the users, for ``ServiceSettings``.
    """

    grants: tuple[RoleGrant, ...]
    files: dict[str, Path] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    identities: Identities = field(default_factory=Identities)


Runner = Callable[[Sequence[str], str | None], None]
"""Runs one command (argv, standard input); raises ScarletError when it fails."""


def run_command(argv: Sequence[str], stdin: str | None) -> None:
    """Run ``argv`` with ``stdin``; a failure raises ConfigError with its stderr."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"provision: cannot run {argv[0]}: {e}") from None
    if done.returncode != 0:
        # the argv never holds a password (it goes on stdin)
        raise ConfigError(
            f"provision: {shlex.join(argv[:3])} failed: {(done.stderr or done.stdout).strip()}"
        )


def provision(
    config: FederationConfig,
    settings: ServiceSettings,
    out: Path,
    *,
    apply: bool = True,
    rabbitmqctl: Sequence[str] = ("rabbitmqctl",),
    runner: Runner = run_command,
    dead_letter_exchange: str = DEAD_LETTER_EXCHANGE,
    dead_letter_queue: str = DEAD_LETTER_QUEUE,
    declare: bool = True,
) -> Provisioned:
    """Create the federation's users and write one configuration file per role.

    Args:
        config: the federation (run id, clients).
        settings: the operator's settings: ``broker_url`` and ``redis_url`` are admin
            URLs (their host, port and vhost are kept; the user is replaced per role).
        out: folder for the role files (created 0700).
        apply: run the commands (True) or only return them (``--print``).
        rabbitmqctl: the command prefix (e.g. ``("rabbitmqctl", "-n", "rabbit@host")``).
        runner: how a command runs (tests may record instead).
        dead_letter_exchange: the dead-letter exchange the services use.
        dead_letter_queue: the dead-letter queue the services use.
        declare: with ``apply``, declare the broker topology with the admin URL.

    Raises:
        ConfigError: a command failed, or the Redis admin connection was refused.
    """
    run, mode = config.run_id, settings.worker_mode
    ids = Identities.for_run(run)
    grants = plan(run, config.clients, mode, ids, dead_letter_exchange, dead_letter_queue)
    passwords = {g.name: secrets.token_urlsafe(_PASSWORD_BYTES) for g in grants}
    result = Provisioned(grants, identities=ids)
    import_argv = [*rabbitmqctl, "import_definitions", "--format", "json"]
    definitions = json.dumps(
        broker_definitions(grants, passwords, _vhost(settings.broker_url)), indent=2
    )
    redis_cmds = [
        ["ACL", "SETUSER", g.user, "reset", f">{passwords[g.name]}", *g.redis]
        for g in grants
        if g.redis is not None and _holds_redis(g, settings)
    ]
    if apply:
        # one VM boot for every user and permission; an existing user is overwritten
        runner(import_argv, definitions)
        _run_redis(settings.redis_url, redis_cmds)
    else:
        # a quoted here-document: the shell expands nothing in the regexes
        result.commands.append(f"{shlex.join(import_argv)} <<'EOF'\n{definitions}\nEOF")
        result.commands += [f"redis-cli {shlex.join(cmd)}" for cmd in redis_cmds]
    _private_dir(out)
    for g in grants:
        path = out / f"{g.name}.toml"
        text = dump_role(config, role_settings(g, settings, passwords[g.name], ids), g)
        _write_private(path, text)
        result.files[g.name] = path
    _write_private(
        out / _MANIFEST,
        json.dumps({"run_id": run, "users": [g.user for g in grants]}, indent=2) + "\n",
    )
    if apply and declare:
        transport = open_transport(
            settings.broker_url,
            reconnect_attempts=2,
            dead_letter_exchange=dead_letter_exchange,
            dead_letter_queue=dead_letter_queue,
        )
        try:
            declare_topology(transport, config, mode)
        finally:
            transport.close()
    return result


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` form of ``password``.

    ``base64(salt + sha256(salt + utf-8 password))`` with a 4-byte random salt (or
    ``salt``), what ``rabbitmqctl add_user`` stores; the ``password_hash`` of a user in a
    definitions document.
    """
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def broker_definitions(
    grants: Sequence[RoleGrant], passwords: dict[str, str], vhost: str
) -> dict[str, object]:
    """The RabbitMQ definitions document that creates ``grants``' users on ``vhost``.

    Args:
        grants: the plan (:func:`shared.security.roles.plan`).
        passwords: role name (``RoleGrant.name``) -> password; only its hash is kept.
        vhost: the virtual host of the permissions.

    Returns:
        ``users`` (name, salted hash, hashing algorithm, tags) and ``permissions``
        (configure, write, read regexes), for ``rabbitmqctl import_definitions``.
    """
    users = [
        {
            "name": g.user,
            "password_hash": password_hash(passwords[g.name]),
            "hashing_algorithm": _HASHING,
            "tags": [t for t in g.broker_tags.split(",") if t],
        }
        for g in grants
    ]
    permissions = [
        {
            "user": g.user,
            "vhost": vhost,
            "configure": g.broker.configure,
            "write": g.broker.write,
            "read": g.broker.read,
        }
        for g in grants
    ]
    return {"users": users, "permissions": permissions}


def role_settings(
    grant: RoleGrant, settings: ServiceSettings, password: str, ids: Identities
) -> ServiceSettings:
    """``settings`` as ``grant``'s role sees them: its own URLs and the run's identities."""
    update: dict[str, object] = {
        "broker_url": _with_user(settings.broker_url, grant.user, password),
        "verify_senders": True,
        "aggregator_user": ids.aggregator,
        "cache_user": ids.cache,
        "pool_user": ids.pool,
        "client_user_prefix": ids.client_prefix,
    }
    if "redis_url" in grant.config_keys:
        update["redis_url"] = _with_user(settings.redis_url, grant.user, password)
    if "state_url" in grant.config_keys and settings.state_url.startswith("redis"):
        update["state_url"] = _with_user(settings.state_url, grant.user, password)
    return settings.model_copy(update=update)


_URL_KEYS = ("broker_url", "redis_url", "state_url")


def dump_role(config: FederationConfig, settings: ServiceSettings, grant: RoleGrant) -> str:
    """The TOML of one role: the federation, and of the URL keys only the role's own.

    A key left out takes its default when the file is read; the URLs a role must not
    hold are left out (a pinned worker's file names no Redis at all).
    """
    text = dump_toml(config, settings)
    head, _, service = text.partition("[service]\n")
    kept = [
        line
        for line in service.splitlines()
        if line.split(" = ", 1)[0] not in _URL_KEYS or line.split(" = ", 1)[0] in grant.config_keys
    ]
    return head + "[service]\n" + "\n".join(kept) + "\n"


def delete_users(
    run_id: str,
    settings: ServiceSettings,
    *,
    rabbitmqctl: Sequence[str] = ("rabbitmqctl",),
    runner: Runner = run_command,
) -> list[str]:
    """Delete the broker and Redis users of ``run_id`` (``<run>-<role>``); returns their names.

    The broker's go in one ``rabbitmqctl eval`` (one VM boot instead of one per user plus
    the listing; the admin who may run ``rabbitmqctl`` may run ``eval``): it lists the
    internal users, deletes those named ``<run>-<role>`` and prints their names. Should
    that fail (a broker whose internal functions differ), ``list_users`` and one
    ``delete_user`` per user do the same. Redis users are deleted over the admin URL.

    Raises:
        ConfigError: the user list could not be read, or a user could not be deleted.
    """
    try:
        names = _delete_in_one_call(run_id, rabbitmqctl)
    except ConfigError as e:
        # a broker whose internals differ: the documented commands, one VM per user
        logger.warning("provision: one-call delete failed (%s); deleting user by user", e)
        names = broker_users(run_id, rabbitmqctl)
        _delete_broker_users(names, runner, rabbitmqctl)
    prefix = f"{run_id}-"
    try:
        import redis

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
        try:
            for raw in client.acl_users():
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                if name.startswith(prefix) and _is_role_user(name, prefix):
                    client.acl_deluser(name)
                    names.append(f"redis:{name}")
        finally:
            client.close()
    except redis.RedisError as e:
        raise ConfigError(f"provision: cannot delete the Redis users: {e}") from None
    return names


# ---------------------------------------------------------------------- helpers


def _is_role_user(name: str, prefix: str) -> bool:
    role = name[len(prefix) :]
    return role in {r.value for r in Role} or (
        role.startswith("client-") and role[len("client-") :].isdigit()
    )


def broker_users(run_id: str, rabbitmqctl: Sequence[str] = ("rabbitmqctl",)) -> list[str]:
    """The broker users of ``run_id`` (``<run>-<role>``).

    Raises:
        ConfigError: ``rabbitmqctl list_users`` failed.
    """
    out = _output([*rabbitmqctl, "list_users", "--silent"], "list the broker users")
    prefix = f"{run_id}-"
    users = [line.split("\t", 1)[0] for line in out.splitlines() if line.strip()]
    return [u for u in users if u.startswith(prefix) and _is_role_user(u, prefix)]


def _output(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or e.stdout or "").strip()
        raise ConfigError(f"provision: cannot {what}: {detail or e}") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise ConfigError(f"provision: cannot {what}: {e}") from None
    return done.stdout


def _delete_in_one_call(run_id: str, rabbitmqctl: Sequence[str]) -> list[str]:
    # the user-name pattern of _is_role_user, as the bytes of an Erlang binary: no quoting
    # of the run id into Erlang source (the pattern is data, whatever the run id holds)
    roles = "|".join(re.escape(r.value) for r in Role if r is not Role.CLIENT)
    pattern = f"^{re.escape(run_id)}-(?:{roles}|client-[0-9]+)\\z".encode()
    code = (
        f"Re = <<{','.join(str(b) for b in pattern)}>>, "
        "Gone = [N || U <- rabbit_auth_backend_internal:all_users(), "
        "N <- [internal_user:get_username(U)], re:run(N, Re) =/= nomatch], "
        # a user that cannot be deleted fails the call (and the fallback runs): none is
        # left behind unreported
        '[ok = rabbit_auth_backend_internal:delete_user(N, <<"scarlet-provision">>) '
        "|| N <- Gone], "
        '[io:format("~s~n", [N]) || N <- Gone], ok.'
    )
    out = _output([*rabbitmqctl, "eval", code], "delete the broker users")
    prefix = f"{run_id}-"
    return [n for n in out.splitlines() if n.startswith(prefix) and _is_role_user(n, prefix)]


def _delete_broker_users(names: list[str], runner: Runner, rabbitmqctl: Sequence[str]) -> None:
    # one VM per user, a few at once: the boots overlap
    def delete(name: str) -> None:
        try:
            runner([*rabbitmqctl, "delete_user", name], None)
        except ScarletError as e:
            if "no_such_user" not in str(e) and "does not exist" not in str(e):
                raise  # gone already (another --delete) is what was asked

    if not names:
        return
    with ThreadPoolExecutor(min(len(names), _DELETE_PARALLEL)) as pool:
        for future in [pool.submit(delete, n) for n in names]:
            future.result()


def _run_redis(url: str, cmds: list[list[str]]) -> None:
    if not cmds:
        return
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=10)
        try:
            for cmd in cmds:
                client.execute_command(*cmd)
        finally:
            client.close()
    except redis.RedisError as e:
        # the command holds a password: name only the user
        raise ConfigError(f"provision: Redis refused the ACL users: {type(e).__name__}") from None


def _holds_redis(grant: RoleGrant, settings: ServiceSettings) -> bool:
    if grant.role is Role.POOL:
        return settings.state_url.startswith("redis")
    return True


def _vhost(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def _with_user(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    cred = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{cred}@{host}"))


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str) -> None:
    # created 0600 (never readable by others, not even for an instant), then replaced
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
