"""A real Prometheus scrapes a live federation; every dashboard query returns data and the
byte counters add up to the bytes the aggregator recorded.

The federation runs as OS processes (``scarlet.up.Launcher``) with ``metrics_port`` set, so
each process serves ``/metrics`` on its own port and the launcher writes the file_sd targets
file Prometheus reads. The aggregator exits after its last round; to let Prometheus scrape
its final values, the test starts it through this module's ``__main__``, which runs the real
aggregator and then keeps its ``/metrics`` up until SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from scarlet.up import Launcher
from shared.config import FederationConfig, ServiceSettings
from shared.errors import ScarletError
from shared.protocol import routes
from shared.results import RoundRecord, RunResults
from shared.state import open_federation_store
from tests.conftest import AMQP_URL, require_rabbitmq, require_redis, require_tool
from tests.deploy.test_dashboard import load_builder, panel_queries
from tests.system.harness import SMALL_FEDERATION, new_run_id

pytestmark = [pytest.mark.integration, pytest.mark.system]

ROOT = Path(__file__).resolve().parents[2]
SMALL = {**SMALL_FEDERATION}
SCRAPE_S = 1.0


def require_prometheus() -> str:
    """The prometheus binary (skip locally, fail in CI when it is not installed)."""
    return require_tool("prometheus", "apt-get install prometheus (scripts/install.sh does)")


def _free_port_block(count: int) -> int:
    """A base port with ``count`` consecutive ports free on loopback right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no block of {count} free ports")


class LingeringLauncher(Launcher):
    """Starts the aggregator through :func:`aggregator_then_linger` (this module)."""

    def start(self, name: str, module_args: list[str]) -> None:
        if name == "aggregator":
            module_args = [__name__, *module_args[1:]]
        super().start(name, module_args)


def aggregator_then_linger(argv: Sequence[str]) -> int:
    """Run ``scarlet-aggregator``, then keep serving ``/metrics`` until SIGTERM."""
    from services.aggregator.__main__ import main

    code = main(argv)
    if code != 0:
        return code
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    return 0


class Prometheus:
    """A private Prometheus on a free port, its data in a temporary folder."""

    def __init__(self, binary: str, folder: Path, targets: Path) -> None:
        self.port = _free_port_block(1)
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": f"{SCRAPE_S:g}s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
            "scrape_configs": [
                {
                    "job_name": "scarlet",
                    "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                }
            ],
        }
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log = (folder / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited: {self.log_tail()}"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"prometheus not ready after {timeout_s} s: {self.log_tail()}")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result as a list of samples (a scalar becomes one)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        """The single value of ``expr``."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])

    def log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    require_rabbitmq()
    require_redis()
    binary = require_prometheus()
    # the aggregator child imports this module: make the repository importable from anywhere
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    config = FederationConfig(run_id=new_run_id(), **SMALL)
    base = _free_port_block(2 + config.clients)
    settings = ServiceSettings(metrics_port=base, log_level="INFO")
    launcher = LingeringLauncher(config, settings, 1, tmp_path / "run")
    store = open_federation_store(settings.redis_url, config.run_id)
    launcher.prepare(store)
    config_path = launcher.write_config()
    prometheus = Prometheus(binary, tmp_path / "prometheus", launcher.targets_file)
    try:
        prometheus.wait_ready()
        launcher.start_all(config_path)
        yield config, launcher, store, prometheus
    finally:
        launcher.stop_all()
        prometheus.stop()
        launcher.fresh = True
        launcher.prepare(store)  # deletes the run's keys and queues
        with contextlib.suppress(ScarletError):
            from shared.transport import AmqpTransport

            with AmqpTransport(AMQP_URL) as admin:
                admin.delete_exchange(routes.rounds_exchange(config.run_id))


def _wait_for_rounds(store: Any, launcher: Launcher, rounds: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(store.results()) < rounds:
        for child in launcher.children:
            code = child.process.poll()
            if code is not None:
                log = Path(child.log.name).read_text()[-3000:]
                pytest.fail(f"{child.name} exited with {code}:\n{log}")
        assert time.monotonic() < deadline, f"only {len(store.results())} rounds finished"
        time.sleep(0.2)


def _wait_for_final_scrapes(prometheus: Prometheus, targets: int, after: float) -> None:
    """Every target scraped successfully at least twice since ``after`` (wall time)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        up = prometheus.query('up{job="scarlet"}')
        if len(up) == targets and all(s["value"][1] == "1" for s in up):
            oldest = prometheus.query('min(timestamp(up{job="scarlet"}))')
            if oldest and float(oldest[0]["value"][1]) >= after + 2 * SCRAPE_S:
                return
        time.sleep(SCRAPE_S / 2)
    pytest.fail(f"prometheus did not scrape every target twice more: {prometheus.log_tail()}")


def test_prometheus_scrapes_a_live_federation_and_every_dashboard_query_returns_data(
    federation: Any,
) -> None:
    config, launcher, store, prometheus = federation
    processes = 2 + config.clients
    # Given a federation running to its end with /metrics on one port per process
    _wait_for_rounds(store, launcher, config.rounds, timeout_s=120)
    _wait_for_final_scrapes(prometheus, processes, after=time.time())
    records = [RoundRecord.from_json(json.loads(r)) for r in store.results()]

    # Then every panel of the generated dashboard returns data
    dashboard = json.loads(load_builder().DASHBOARD_PATH.read_text())
    empty = [
        f"{title}: {expr}" for title, expr in panel_queries(dashboard) if not prometheus.query(expr)
    ]
    assert empty == [], "panels without data:\n" + "\n".join(empty)

    # and the workers, the cache service and the aggregator were all discovered and up
    for service, count in (("cache", 1), ("aggregator", 1), ("worker", config.clients)):
        assert prometheus.value(f'sum(up{{service="{service}"}})') == count

    # and the bytes sent (counted where published) are the bodies the aggregator recorded
    wire_up = sum(r.wire_bytes_up for r in records)
    wire_down = sum(r.wire_bytes_down for r in records)
    assert prometheus.value('sum(scarlet_bytes_total{kind="upload"})') == wire_up
    assert prometheus.value('sum(scarlet_bytes_total{kind="task"})') == wire_down
    sync = prometheus.value('sum(scarlet_bytes_total{kind="cache_sync"})')
    assert sync == prometheus.value('sum(scarlet_bytes_overhead_total{reason="cache_sync"})')
    actual = prometheus.value("sum(scarlet_bytes_total)")
    assert actual == wire_up + wire_down + sync

    # and baseline - actual == saved - overhead, as the aggregator's own ledger says
    summary = RunResults(config=config.model_dump(), rounds=records).summary()
    baseline = prometheus.value("sum(scarlet_baseline_bytes_total)")
    saved = prometheus.value("sum(scarlet_bytes_saved_total)")
    overhead = prometheus.value("sum(scarlet_bytes_overhead_total)")
    assert baseline == summary["baseline_bytes_total"]
    assert prometheus.value("sum(scarlet_paper_bytes_total)") == summary["paper_bytes_total"]
    assert baseline - actual == saved - overhead
    for reason, expected in (
        ("cache", summary["saved_by_cache_bytes"]),
        ("compression", summary["saved_by_compression_bytes"]),
    ):
        net = prometheus.value(
            f'sum(scarlet_bytes_saved_total{{reason="{reason}"}})'
            f' - sum(scarlet_bytes_overhead_total{{reason="{reason}"}})'
        )
        assert net == expected, reason
    share = prometheus.value(
        "(sum(scarlet_bytes_saved_total) - sum(scarlet_bytes_overhead_total))"
        " / sum(scarlet_baseline_bytes_total)"
    )
    assert math.isclose(share, 1 - actual / baseline)

    # and the learning and round metrics match the records
    last = records[-1]
    assert prometheus.value("sum(scarlet_rounds_completed_total)") == config.rounds
    assert prometheus.value('sum(scarlet_uploads_total{outcome="accepted"})') == (
        config.rounds * config.clients
    )
    assert math.isclose(prometheus.value("max(scarlet_server_accuracy)"), last.server_accuracy)
    assert prometheus.value('sum(scarlet_round_bytes{direction="down", accounting="wire"})') == (
        last.wire_bytes_down
    )
    hits = prometheus.value("sum(scarlet_cache_hits_total)")
    assert hits == sum(r.reused for r in records)
    assert prometheus.value("max(scarlet_round_age_seconds)") == 0  # finished: no open round
    assert prometheus.value("max(scarlet_clients_missing)") == 0
    assert prometheus.value('sum(scarlet_worker_phase_seconds_count{phase="train"})') == (
        config.rounds * config.clients
    )

    # and every alert rule evaluates cleanly against the live series, none firing
    groups = prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(rule["health"] == "ok" for rule in rules), rules
    assert [r["name"] for r in rules if r["state"] == "firing"] == []


if __name__ == "__main__":
    sys.exit(aggregator_then_linger(sys.argv[1:]))
