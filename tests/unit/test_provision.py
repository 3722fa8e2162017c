"""``scarlet provision`` without servers: the password hash and the definitions document."""

from __future__ import annotations

import base64
import hashlib
import json
import tomllib
import urllib.parse
from pathlib import Path

from scarlet.provision import broker_definitions, password_hash, provision
from shared.config import FederationConfig, ServiceSettings
from shared.security.roles import Identities, plan


def test_password_hash_is_rabbitmqs_salted_sha256_of_the_documented_example():
    # Given the example of RabbitMQ's passwords guide: password test12, salt 908DC60A
    salt = bytes.fromhex("908DC60A")
    # When it is hashed
    hashed = password_hash("test12", salt)
    # Then it is the guide's value, and a random salt is four bytes before the digest
    assert hashed == "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    raw = base64.b64decode(password_hash("pw"))
    assert len(raw) == 4 + 32 and raw[4:] == hashlib.sha256(raw[:4] + b"pw").digest()


def test_definitions_hold_every_planned_user_and_permission_and_no_password():
    # Given the plan of a pinned run with two clients and its passwords
    grants = plan("defs", 2, "pinned", Identities.for_run("defs"))
    passwords = {g.name: f"secret-{g.name}-0123456789" for g in grants}
    # When the definitions document is made for vhost "v"
    doc = broker_definitions(grants, passwords, "v")
    # Then each grant has one user (hash, algorithm, tags) and one permission, as planned
    users = {u["name"]: u for u in doc["users"]}  # type: ignore[union-attr]
    assert sorted(users) == sorted(g.user for g in grants)
    for g in grants:
        user = users[g.user]
        raw = base64.b64decode(user["password_hash"])
        assert raw[4:] == hashlib.sha256(raw[:4] + passwords[g.name].encode()).digest()
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert user["tags"] == (["monitoring"] if g.broker_tags else [])
    perms = {p["user"]: p for p in doc["permissions"]}  # type: ignore[union-attr]
    assert {u: (p["vhost"], p["configure"], p["write"], p["read"]) for u, p in perms.items()} == {
        g.user: ("v", g.broker.configure, g.broker.write, g.broker.read) for g in grants
    }
    text = json.dumps(doc)
    assert not [pw for pw in passwords.values() if pw in text]


def test_print_mode_gives_one_import_here_document_and_no_broker_password(tmp_path):
    # Given a pinned run of three clients
    config = FederationConfig(run_id="printed-import", clients=3)
    settings = ServiceSettings(broker_url="amqp://admin:pw@broker:5672/fed")
    # When it is provisioned in print mode
    made = provision(config, settings, tmp_path / "secrets", apply=False)
    # Then the broker part is one import_definitions command reading a quoted here-document
    broker = [c for c in made.commands if "rabbitmqctl" in c]
    assert len(broker) == 1
    head, _, rest = broker[0].partition("\n")
    assert head == "rabbitmqctl import_definitions --format json <<'EOF'"
    body, _, end = rest.rpartition("\n")
    assert end == "EOF"
    doc = json.loads(body)
    assert len(doc["users"]) == len(doc["permissions"]) == 3 + 3
    assert {p["vhost"] for p in doc["permissions"]} == {"fed"}
    # And no role's password is in it (the role files hold them)
    passwords = [_password(path) for path in made.files.values()]
    assert len(passwords) == 6 and all(len(pw) >= 24 for pw in passwords)
    assert not [pw for pw in passwords if pw in broker[0]]


def _password(role_file: Path) -> str:
    url = tomllib.loads(role_file.read_text())["service"]["broker_url"]
    return urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")
