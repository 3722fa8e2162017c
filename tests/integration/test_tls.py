"""TLS end to end: a federation over ``amqps://`` and ``rediss://`` with verification on.

Everything runs against PRIVATE servers with TLS listeners (DESIGN §7: the shared
RabbitMQ and Redis are never reconfigured): one RabbitMQ node with
``listeners.ssl`` and ``verify_peer``/``fail_if_no_peer_cert``, one Redis with
``--tls-port`` and ``--tls-auth-clients yes``, both on 127.0.0.1 and 127.0.0.2. The CAs,
server and client certificates are made at test time with the ``openssl`` CLI: a
trusted CA (signs the servers and the genuine client) and a rogue CA (signs a client
the servers must refuse, and is what a misconfigured client trusts instead).

The server certificates name ``localhost`` and 127.0.0.1 only, so connecting to
127.0.0.2 shows that host names are verified by default.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from scarlet.simulate import EmbeddedFederation
from shared.config import FederationConfig
from shared.errors import ConfigError, StoreUnavailable, TransportUnavailable
from shared.protocol import routes
from shared.rounds.setup import prepare_data
from shared.state import open_federation_store
from shared.transport import AmqpTransport
from tests.conftest import skip_or_fail
from tests.integration.test_amqp_reconnect import (
    PrivateRabbitNode,
    _can_run_private_node,
    _free_port,
    _port_open,
    _wait_until,
)
from tests.system import harness

pytestmark = pytest.mark.integration

SERVER_BOOT_S = 60.0
FEDERATION_S = 150.0
SHARED_REDIS = "redis://127.0.0.1:6379/0"
TLS_HOSTS = ("127.0.0.1", "127.0.0.2")  # the certificates name the first one only


# ---------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """The files of a throw-away PKI (PEM)."""

    base: Path

    def path(self, name: str) -> str:
        return str(self.base / name)


def _openssl(pki: Pki, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=pki.base, check=True, capture_output=True, timeout=30)


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _make_ca(pki: Pki, name: str) -> None:
    _openssl(
        pki,
        "req", "-x509", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _issue(pki: Pki, ca: str, name: str, usage: str, san: str = "") -> None:
    """Make ``name.key`` and ``name.pem``, signed by ``ca``."""
    ext = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if san:
        ext.append(f"subjectAltName={san}")
    (pki.base / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl(pki, "req", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}")  # fmt: skip
    _openssl(
        pki,
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-set_serial", str(secrets.randbits(63)), "-days", "1", "-out", f"{name}.pem",
        "-extfile", f"{name}.ext",
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to make test certificates", pytrace=False)
    pki = Pki(Path(tempfile.mkdtemp(prefix="scarlet-pki-")))
    try:
        _make_ca(pki, "ca")
        _make_ca(pki, "rogue-ca")
        _issue(pki, "ca", "server", "serverAuth", "DNS:localhost,IP:127.0.0.1")
        _issue(pki, "ca", "client", "clientAuth")
        _issue(pki, "rogue-ca", "rogue-client", "clientAuth")
        # the RabbitMQ node runs as user rabbitmq: it must read its certificate and key
        pki.base.chmod(0o755)
        for f in pki.base.iterdir():
            f.chmod(0o644 if f.suffix == ".pem" else 0o600)
        if os.geteuid() == 0:
            rabbit = pwd.getpwnam("rabbitmq")
            os.chown(pki.base / "server.key", rabbit.pw_uid, rabbit.pw_gid)
        yield pki
    finally:
        shutil.rmtree(pki.base, ignore_errors=True)


def _tls_query(pki: Pki, ca: str = "ca", client: str | None = "client", **extra: str) -> str:
    params = {"tls_ca_file": pki.path(f"{ca}.pem")}
    if client is not None:
        params |= {
            "tls_cert_file": pki.path(f"{client}.pem"),
            "tls_key_file": pki.path(f"{client}.key"),
        }
    return urllib.parse.urlencode(params | extra)


# ---------------------------------------------------------------------- servers


@dataclass
class TlsRabbitNode(PrivateRabbitNode):
    """A private node with only a TLS listener, which requires a client certificate."""

    tls_port: int = 0
    pki: Pki | None = None

    def prepare(self) -> None:
        super().prepare()
        assert self.pki is not None
        conf = self.base / "rabbitmq.conf"
        listeners = [f"listeners.ssl.{i} = {h}:{self.tls_port}" for i, h in enumerate(TLS_HOSTS)]
        # no plaintext listener at all: whatever connects to this node speaks TLS
        conf.write_text(
            "\n".join(
                [
                    "listeners.tcp = none",
                    *listeners,
                    f"ssl_options.cacertfile = {self.pki.path('ca.pem')}",
                    f"ssl_options.certfile = {self.pki.path('server.pem')}",
                    f"ssl_options.keyfile = {self.pki.path('server.key')}",
                    "ssl_options.verify = verify_peer",
                    "ssl_options.fail_if_no_peer_cert = true",
                ]
            )
            + "\n"
        )

    def start(self) -> None:
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self.env(),
            check=True,
            timeout=30,
            capture_output=True,
        )
        _wait_until(lambda: _port_open(self.tls_port), SERVER_BOOT_S, "TLS listener")
        self._ctl("await_startup", "--timeout", str(int(SERVER_BOOT_S)))

    def queues(self) -> list[str]:
        listing = subprocess.run(
            [
                "rabbitmqctl",
                "-n",
                self.name,
                "list_queues",
                "name",
                "--quiet",
                "--no-table-headers",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return listing.stdout.split()

    def tls_url(self, query: str, host: str = "127.0.0.1", scheme: str = "amqps") -> str:
        port = self.tls_port
        return f"{scheme}://guest:guest@{host}:{port}/%2F" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def tls_rabbitmq(pki: Pki) -> Iterator[TlsRabbitNode]:
    if reason := _can_run_private_node():
        skip_or_fail(f"cannot start a private RabbitMQ node: {reason}")
    node = TlsRabbitNode(
        name=f"scarlet-tls-{uuid.uuid4().hex[:8]}@localhost",
        port=_free_port(),
        dist_port=_free_port(),
        base=Path(tempfile.mkdtemp(prefix="scarlet-rmq-tls-")),
        tls_port=_free_port(),
        pki=pki,
    )
    try:
        node.prepare()
        node.start()
        yield node
    finally:
        node.destroy()


@dataclass
class TlsRedis:
    """A private Redis with only a TLS port, which requires a client certificate."""

    port: int
    base: Path
    pki: Pki

    def url(self, query: str, host: str = "127.0.0.1", scheme: str = "rediss") -> str:
        return f"{scheme}://{host}:{self.port}/0" + (f"?{query}" if query else "")

    def start(self) -> None:
        p = self.pki.path
        subprocess.run(
            ["redis-server", "--port", "0", "--tls-port", str(self.port),
             "--bind", *TLS_HOSTS,
             "--tls-cert-file", p("server.pem"), "--tls-key-file", p("server.key"),
             "--tls-ca-cert-file", p("ca.pem"), "--tls-auth-clients", "yes",
             "--daemonize", "yes", "--dir", str(self.base),
             "--pidfile", str(self.base / "redis.pid"), "--logfile", str(self.base / "redis.log"),
             "--save", "", "--appendonly", "no"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        _wait_until(lambda: _port_open(self.port), SERVER_BOOT_S, "Redis TLS port")

    def destroy(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.base / "redis.pid").read_text().strip())
            os.kill(pid, signal.SIGTERM)  # our own server, by its pid file
            _wait_until(lambda: not _port_open(self.port), 30, "Redis stopped")
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_redis(pki: Pki) -> Iterator[TlsRedis]:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")
    server = TlsRedis(_free_port(), Path(tempfile.mkdtemp(prefix="scarlet-redis-tls-")), pki)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


# ---------------------------------------------------------------------- helpers


def _amqp(url: str) -> AmqpTransport:
    # one attempt: a refused handshake is refused again, the backoff would only wait
    return AmqpTransport(url, reconnect_attempts=1, heartbeat_s=0)


def _redis_version(url: str) -> int:
    store = open_federation_store(url, f"t{uuid.uuid4().hex[:8]}", retry_s=0, read_attempts=1)
    return store.cache_version()


def _blames_the_client_certificate(text: str) -> bool:
    # TLS 1.3: the server refuses the certificate after the client's handshake is done,
    # so the client sees either the alert or only the broker hanging up (with our hint)
    return "client certificate" in text or "alert" in text.lower()


# ---------------------------------------------------------------------- the federation


def test_a_whole_federation_over_amqps_and_rediss_matches_the_embedded_run(
    pki: Pki, tls_rabbitmq: TlsRabbitNode, tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch
):
    # Given a small federation run in-process, and the services pointed at the TLS
    # listeners only, with the CA, a client certificate and verification on
    config = FederationConfig(
        run_id=harness.new_run_id(), **{**harness.SMALL_FEDERATION, "rounds": 2}
    )
    data = prepare_data(config)
    expected = EmbeddedFederation(config, data)
    expected.run()
    monkeypatch.setattr(harness, "AMQP", tls_rabbitmq.tls_url(_tls_query(pki)))
    monkeypatch.setattr(harness, "REDIS", tls_redis.url(_tls_query(pki)))
    started = time.monotonic()
    with harness.federation(config, data) as fed:
        fed.start_cache_service()
        fed.start_aggregator()
        for k in range(config.clients):
            fed.start_worker(k)
        # When it runs to the end
        fed.wait(FEDERATION_S)
        elapsed = time.monotonic() - started
        # Then the global cache, the accuracies and the bytes are those of the embedded run
        labels, written = fed.global_labels()
        cache = expected.aggregator.core.cache
        assert cache is not None
        assert np.array_equal(written, cache.written)
        assert np.allclose(labels, cache.labels, atol=1e-6)
        assert fed.aggregator is not None
        got, want = fed.aggregator.records, expected.results.rounds
        assert [r.round for r in got] == [r.round for r in want] and len(got) == config.rounds
        for g, w in zip(got, want, strict=True):
            assert g.server_accuracy == pytest.approx(w.server_accuracy, abs=1e-9)
            assert (g.wire_bytes_up, g.wire_bytes_down) == (w.wire_bytes_up, w.wire_bytes_down)
        # And it all went through the private TLS servers, none through the shared ones
        assert open_federation_store(harness.REDIS, config.run_id).cache_version() > 0
        assert open_federation_store(SHARED_REDIS, config.run_id).cache_version() == 0
        assert routes.uploads_queue(config.run_id) in tls_rabbitmq.queues()
    print(f"\nTLS federation: {config.clients} clients x {config.rounds} rounds in {elapsed:.1f} s")


# ---------------------------------------------------------------------- refusals: AMQP


def test_the_genuine_client_certificate_connects_to_the_broker(pki, tls_rabbitmq):
    # Given the CA that signed the server and a client certificate it signed
    # When a client connects over amqps:// to the name in the server's certificate
    transport = _amqp(tls_rabbitmq.tls_url(_tls_query(pki)))
    # Then the broker accepts it
    transport.close()


def test_a_client_that_trusts_another_ca_refuses_the_broker(pki, tls_rabbitmq):
    # Given a client whose CA file is the rogue CA, not the one that signed the server
    # When it connects
    with pytest.raises(TransportUnavailable) as refused:
        _amqp(tls_rabbitmq.tls_url(_tls_query(pki, ca="rogue-ca")))
    # Then the handshake fails on the server's certificate, and the error says so
    assert "certificate verify failed" in str(refused.value).lower()


def test_the_broker_refuses_a_client_certificate_from_an_untrusted_ca(pki, tls_rabbitmq):
    # Given a client that trusts the server but presents a certificate of the rogue CA
    # When it connects
    # Then the broker ends the handshake, and the error points at the certificate
    with pytest.raises(TransportUnavailable) as refused:
        _amqp(tls_rabbitmq.tls_url(_tls_query(pki, client="rogue-client")))
    assert _blames_the_client_certificate(str(refused.value))


def test_the_broker_refuses_a_client_without_a_certificate(pki, tls_rabbitmq):
    # Given a client that trusts the server but presents no certificate
    # When it connects
    # Then the broker ends the handshake (fail_if_no_peer_cert)
    with pytest.raises(TransportUnavailable) as refused:
        _amqp(tls_rabbitmq.tls_url(_tls_query(pki, client=None)))
    assert _blames_the_client_certificate(str(refused.value))


def test_plaintext_amqp_to_the_tls_port_fails_with_a_clear_error(tls_rabbitmq):
    # Given a plaintext amqp:// URL that points at the TLS port
    # When a client connects
    with pytest.raises(TransportUnavailable) as refused:
        _amqp(tls_rabbitmq.tls_url("", scheme="amqp"))
    # Then it is not connected, and the error names the endpoint (password redacted)
    text = str(refused.value)
    assert f"127.0.0.1:{tls_rabbitmq.tls_port}" in text and "guest:***@" in text
    assert "is this a TLS port (amqps://)?" in text


def test_the_broker_host_name_is_verified_by_default(pki, tls_rabbitmq):
    # Given a trusted server reached through an address its certificate does not name
    url = tls_rabbitmq.tls_url(_tls_query(pki), host=TLS_HOSTS[1])
    # When a client connects with default settings
    with pytest.raises(TransportUnavailable) as refused:
        _amqp(url)
    # Then it refuses the server; only an explicit tls_verify=false lets it through
    assert "certificate verify failed" in str(refused.value).lower()
    _amqp(tls_rabbitmq.tls_url(_tls_query(pki, tls_verify="false"), host=TLS_HOSTS[1])).close()


# ---------------------------------------------------------------------- refusals: Redis


def test_the_genuine_client_certificate_connects_to_redis(pki, tls_redis):
    # Given the trusted CA and client certificate
    # When a store reads over rediss://
    # Then Redis answers
    assert _redis_version(tls_redis.url(_tls_query(pki))) == 0


def test_a_client_that_trusts_another_ca_refuses_redis(pki, tls_redis):
    # Given a store whose CA file is the rogue CA
    # When it reads
    with pytest.raises(StoreUnavailable) as refused:
        _redis_version(tls_redis.url(_tls_query(pki, ca="rogue-ca")))
    # Then the handshake fails on Redis's certificate, and the error says so
    assert "certificate verify failed" in str(refused.value).lower()


@pytest.mark.parametrize("client", ["rogue-client", None], ids=["rogue-ca-client", "no-cert"])
def test_redis_refuses_a_client_without_a_trusted_certificate(pki, tls_redis, client):
    # Given a store that trusts Redis but presents a rogue certificate, or none
    # When it reads
    # Then Redis ends the connection (tls-auth-clients yes)
    with pytest.raises(StoreUnavailable):
        _redis_version(tls_redis.url(_tls_query(pki, client=client)))


def test_plaintext_redis_to_the_tls_port_fails_with_a_clear_error(tls_redis):
    # Given a plaintext redis:// URL that points at the TLS port
    # When a store reads
    with pytest.raises(StoreUnavailable) as refused:
        _redis_version(tls_redis.url("", scheme="redis"))
    # Then it fails, naming the endpoint
    assert f"127.0.0.1:{tls_redis.port}" in str(refused.value)


def test_the_redis_host_name_is_verified_by_default(pki, tls_redis):
    # Given trusted Redis reached through an address its certificate does not name
    # When a store reads with default settings
    with pytest.raises(StoreUnavailable) as refused:
        _redis_version(tls_redis.url(_tls_query(pki), host=TLS_HOSTS[1]))
    # Then it refuses the server; only tls_verify=false lets it through
    assert "certificate verify failed" in str(refused.value).lower()
    url = tls_redis.url(_tls_query(pki, tls_verify="false"), host=TLS_HOSTS[1])
    assert _redis_version(url) == 0


def test_tls_parameters_on_a_plaintext_url_are_a_configuration_error(pki):
    # Given TLS file parameters on amqp:// and redis:// URLs
    # When a client is made from them
    # Then it fails before connecting: the operator meant TLS and would not get it
    with pytest.raises(ConfigError, match="plaintext"):
        AmqpTransport(f"amqp://guest:guest@127.0.0.1:1/%2F?{_tls_query(pki)}")
    with pytest.raises(ConfigError, match="plaintext"):
        open_federation_store(f"redis://127.0.0.1:1/0?{_tls_query(pki)}", "r")
