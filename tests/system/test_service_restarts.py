"""Processes die; the federation does not. Services run as real OS processes here."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from scarlet.simulate import EmbeddedFederation
from scarlet.up import Launcher
from shared.config import FederationConfig, ServiceSettings
from shared.results import RoundRecord
from shared.rounds.setup import prepare_data
from shared.state import open_federation_store
from tests.conftest import require_rabbitmq, require_redis
from tests.system.harness import SMALL_FEDERATION, new_run_id

pytestmark = [pytest.mark.system, pytest.mark.integration]

# one torch thread: the launched services (one thread each) and the embedded reference
# must agree bit for bit
BASE = {**SMALL_FEDERATION, "rounds": 4, "threads": 1}


@pytest.fixture
def launched(tmp_path: Path):
    require_rabbitmq()
    require_redis()
    config = FederationConfig(run_id=new_run_id(), **BASE)
    launcher = Launcher(config, ServiceSettings(log_level="INFO"), 2, tmp_path / "run")
    store = open_federation_store(launcher.settings.redis_url, config.run_id)
    launcher.prepare(store)
    path = launcher.write_config()
    yield config, launcher, store, path
    launcher.stop_all()
    launcher.fresh = True
    launcher.prepare(store)  # deletes the run's keys and queues


def _wait(
    store, launcher: Launcher, *, results: int, timeout_s: float = 240, poll_s: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout_s
    while len(store.results()) < results:
        for child in launcher.children:
            code = child.process.poll()
            if code not in (None, 0):
                log = Path(child.log.name).read_text()[-3000:]
                pytest.fail(f"{child.name} exited with {code}:\n{log}")
        assert time.monotonic() < deadline, f"only {len(store.results())} rounds finished"
        time.sleep(poll_s)


def _kill(launcher: Launcher, name: str) -> None:
    child = launcher.child(name)
    child.process.send_signal(signal.SIGKILL)
    child.process.wait(10)
    child.log.close()
    launcher.children.remove(child)


def _records(store) -> list[RoundRecord]:
    return [RoundRecord.from_json(json.loads(r)) for r in store.results()]


def test_a_killed_worker_restarts_resyncs_its_cache_and_its_uploads_are_accepted(launched):
    config, launcher, store, path = launched
    launcher.start_all(path)
    # Given round 1 is closed: worker 1 holds labels cached in round 0 that round 2 reuses
    _wait(store, launcher, results=2)
    # When its process is killed and a fresh one (empty replica) takes over
    _kill(launcher, "worker-1")
    launcher.start("worker-1", ["services.worker", "run", "--client", "1", "--config", str(path)])
    _wait(store, launcher, results=config.rounds)
    # Then it resynced through the cache service, digest verified, and was accepted
    log = (launcher.run_dir / "worker-1.log").read_text()
    assert "replica reinstalled at cache version" in log
    records = _records(store)
    assert all(r.uploads.get("accepted") == config.clients for r in records)
    assert [r.round for r in records] == list(range(config.rounds))


def test_an_aggregator_killed_mid_round_resumes_and_finishes_with_identical_results(launched):
    config, launcher, store, path = launched
    expected = EmbeddedFederation(config, prepare_data(config))
    expected.run()
    launcher.start_all(path)
    # When the aggregator is killed as soon as round 0 is recorded (round 1 under way)
    _wait(store, launcher, results=1, poll_s=0.02)
    _kill(launcher, "aggregator")
    launcher.start("aggregator", ["services.aggregator", "run", "--config", str(path)])
    _wait(store, launcher, results=config.rounds)
    # Then the federation finished with the uninterrupted run's results
    got = _records(store)
    want = expected.results.rounds
    assert [r.round for r in got] == [r.round for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.server_accuracy == pytest.approx(w.server_accuracy, abs=1e-9)
        assert (g.labels_up, g.labels_down, g.paper_bytes_up, g.paper_bytes_down) == (
            w.labels_up,
            w.labels_down,
            w.paper_bytes_up,
            w.paper_bytes_down,
        )
        assert g.uploads.get("accepted") == config.clients
    snap = store.cache_snapshot()
    cache = expected.aggregator.core.cache
    assert cache is not None
    assert np.array_equal(snap.written, cache.written[snap.indices])
    assert np.allclose(snap.labels, cache.labels[snap.indices], atol=1e-6)
    assert "resume: round=1 " in (launcher.run_dir / "aggregator.log").read_text()


@pytest.mark.parametrize("mode", ["pinned", "pool"])
def test_scarlet_up_runs_the_services_and_writes_the_same_results_file(tmp_path, capsys, mode):
    require_rabbitmq()
    require_redis()
    from scarlet.cli import main

    run_id = new_run_id()
    out = tmp_path / "up.json"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**BASE, "rounds": 2}.items()]
    code = main(
        [
            "up",
            "--run-id",
            run_id,
            "--out",
            str(out),
            "--no-progress",
            "--run-dir",
            str(tmp_path / "run"),
            "--worker-mode",
            mode,
            "--workers",
            "2",
            *flags,
        ]
    )
    try:
        assert code == 0, capsys.readouterr().err
        doc = json.loads(out.read_text())
        assert [r["round"] for r in doc["rounds"]] == [0, 1]
        assert all(r["uploads"]["accepted"] == BASE["clients"] for r in doc["rounds"])
        assert "round   1" in capsys.readouterr().out
    finally:
        store = open_federation_store("redis://127.0.0.1:6379/0", run_id)
        Launcher(
            FederationConfig(run_id=run_id, **BASE), ServiceSettings(), 1, tmp_path / "run"
        ).prepare(store)
