"""``scarlet provision`` on the local RabbitMQ and Redis: one import, real logins, full deletes.

Each test makes users of its own run (``new_run_id``) and deletes them again. What the
broker holds is read back with ``rabbitmqctl`` (JSON formatter), never assumed.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import pika
import pika.exceptions
import pytest

from scarlet.provision import broker_users, delete_users, provision, run_command
from shared.config import FederationConfig, ServiceSettings
from shared.protocol import routes
from tests.conftest import require_rabbitmq, require_redis
from tests.system.harness import SMALL_FEDERATION, new_run_id

pytestmark = [pytest.mark.integration]

ADMIN = ServiceSettings(log_level="INFO")


@pytest.fixture(autouse=True)
def _servers() -> None:
    require_rabbitmq()
    require_redis()


def _config(run: str, clients: int) -> FederationConfig:
    return FederationConfig(
        run_id=run, **{**SMALL_FEDERATION, "clients": clients, "samples_per_client": 100}
    )


def _url(role_file: Path) -> str:
    return str(tomllib.loads(role_file.read_text())["service"]["broker_url"])


def _password(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")


def _ctl_json(*args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        ["rabbitmqctl", *args, "--formatter", "json", "--silent"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return list(json.loads(done.stdout))


class _Recorder:
    """Runs each command for real and keeps its argv and standard input."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None) -> None:
        self.calls.append((list(argv), stdin))
        run_command(argv, stdin)


def test_one_import_makes_users_that_log_in_and_hold_exactly_the_planned_permissions(tmp_path):
    # Given a pinned run of three clients and a runner that records what it runs
    run = new_run_id()
    recorder = _Recorder()
    try:
        # When it is provisioned
        made = provision(
            _config(run, 3), ADMIN, tmp_path / "secrets", declare=False, runner=recorder
        )
        urls = {name: _url(path) for name, path in made.files.items()}
        passwords = [_password(url) for url in urls.values()]
        # Then the broker got one command, an import, and no password in argv or input
        assert [argv for argv, _ in recorder.calls] == [
            ["rabbitmqctl", "import_definitions", "--format", "json"]
        ]
        sent = " ".join(recorder.calls[0][0]) + (recorder.calls[0][1] or "")
        assert len(passwords) == 6 and not [pw for pw in passwords if pw in sent]
        # And every role logs in with the password of its file, and not with another
        for name, url in urls.items():
            pika.BlockingConnection(pika.URLParameters(url)).close()
            wrong = url.replace(_password(url), "not-" + _password(url)[4:])
            with pytest.raises(pika.exceptions.ProbableAuthenticationError):
                pika.BlockingConnection(pika.URLParameters(wrong))
            assert name in made.files
        # And the broker holds exactly the plan's permissions and tags
        held = {
            str(p["user"]): (p["configure"], p["write"], p["read"])
            for p in _ctl_json("list_permissions", "-p", "/")
            if str(p["user"]).startswith(f"{run}-")
        }
        planned = {g.user: (g.broker.configure, g.broker.write, g.broker.read) for g in made.grants}
        assert held == planned
        tags = {
            str(u["user"]): u["tags"]
            for u in _ctl_json("list_users")
            if str(u["user"]).startswith(f"{run}-")
        }
        assert tags == {g.user: (["monitoring"] if g.broker_tags else []) for g in made.grants}
        # And a publish the plan forbids is refused: client 0 on the rounds exchange
        connection = pika.BlockingConnection(pika.URLParameters(urls["client-0"]))
        channel = connection.channel()
        channel.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_publish(routes.rounds_exchange(run), "client.1", b"x")
        assert refused.value.reply_code == 403
        connection.close()
    finally:
        delete_users(run, ADMIN)


def test_provisioning_a_run_again_replaces_every_password(tmp_path):
    # Given a run provisioned once
    run = new_run_id()
    try:
        first = provision(_config(run, 1), ADMIN, tmp_path / "one", declare=False)
        old = _url(first.files["client-0"])
        # When it is provisioned again
        second = provision(_config(run, 1), ADMIN, tmp_path / "two", declare=False)
        new = _url(second.files["client-0"])
        # Then the new password logs in and the old one no longer does
        assert _password(old) != _password(new)
        pika.BlockingConnection(pika.URLParameters(new)).close()
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.URLParameters(old))
    finally:
        delete_users(run, ADMIN)


def test_delete_removes_every_user_of_the_run_and_none_of_another_run(tmp_path):
    # Given two runs provisioned on one broker, the first with four clients, and users
    # whose names only look like the first run's
    run, other = new_run_id(), new_run_id()
    provision(_config(run, 4), ADMIN, tmp_path / "a", declare=False)
    decoys = [f"{run}-stranger", f"{run}-client-1x", f"{run}x-aggregator"]
    _add_users(decoys)
    try:
        provision(_config(other, 1), ADMIN, tmp_path / "b", declare=False)
        # When the first run's users are deleted
        deleted = delete_users(run, ADMIN)
        # Then rabbitmqctl list_users has no user of it but the look-alikes, and every
        # user of the other run
        left = [str(u["user"]) for u in _ctl_json("list_users")]
        assert sorted(u for u in left if u.startswith(f"{run}-")) == sorted(decoys[:2])
        assert decoys[2] in left
        assert len([u for u in left if u.startswith(f"{other}-")]) == 1 + 3
        assert len([n for n in deleted if not n.startswith("redis:")]) == 4 + 3
        # And deleting it again finds nothing and fails on nothing
        assert delete_users(run, ADMIN) == []
    finally:
        delete_users(run, ADMIN)
        delete_users(other, ADMIN)
        _delete_users(decoys)
    assert broker_users(other) == []


def test_delete_falls_back_to_one_delete_user_per_user_and_still_removes_all(tmp_path):
    # Given a provisioned run and a rabbitmqctl on which eval fails
    run = new_run_id()
    provision(_config(run, 2), ADMIN, tmp_path / "secrets", declare=False)
    ctl = tmp_path / "rabbitmqctl-without-eval"
    ctl.write_text('#!/bin/sh\n[ "$1" = eval ] && exit 69\nexec rabbitmqctl "$@"\n')
    ctl.chmod(0o700)
    try:
        # When its users are deleted through it
        deleted = delete_users(run, ADMIN, rabbitmqctl=(str(ctl),))
    finally:
        delete_users(run, ADMIN)
    # Then every broker user of the run was deleted all the same
    assert len([n for n in deleted if not n.startswith("redis:")]) == 2 + 3
    assert not [u for u in _ctl_json("list_users") if str(u["user"]).startswith(f"{run}-")]


def _add_users(names: list[str]) -> None:
    users = [{"name": n, "password_hash": "", "tags": []} for n in names]
    run_command(["rabbitmqctl", "import_definitions"], json.dumps({"users": users}))


def _delete_users(names: list[str]) -> None:
    for name in names:
        subprocess.run(["rabbitmqctl", "delete_user", name], capture_output=True, check=False)
