"""Pool section: 10,000 logical clients for 3 rounds, and memory against |P| and K.

**The run.** ``scarlet up`` in pool mode (two workers, the default file state store)
serves K = 10,000 clients with sample ratio 0.01 (100 clients a round) for 3 rounds on
Fashion-MNIST with the MLP; the rows give the round latency (p50 and p95 of the rounds'
wall times as the aggregator records them; with 3 rounds the p95 is the slowest one),
the whole run's wall time, and the peak resident set (``VmHWM``, sampled every 0.2 s) of
the aggregator and of the larger worker.

**The memory table.** Each cell (|P|, K) runs one fresh process per role and reports its
peak RSS (``ru_maxrss``):

* *aggregator*: the aggregator's data (:func:`prepare_server_data`: public set and test
  split), its :class:`AggregatorCore` and three rounds of 10 sampled clients (synthetic
  uploads), checkpointed after each round as the service does;
* *worker*: the whole split of K clients and a pool provider over a file store serving the
  same three rounds (30 tasks, each client's runtime built, trained and saved, the MLP);
  the round bookkeeping of an :class:`AggregatorCore` runs in the same process to make the
  tasks, so its few MB count here too.

The number of clients per round stays 10, so a cell differs from another only in K and
|P|: flat in K means the K = 10,000 process is within 1.25x of the K = 10 one. Fashion-MNIST
has 60,000 train images: |P| = 2,000 and 20,000 use them (K x 4 private images each),
|P| = 100,000 uses a synthetic image set of the same shape (random pixels, 120,000 train
and 10,000 test images), which measures the structures, not learning; the setting column
says which.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from bench.load.memory import high_water_mib
from bench.load.table import Row
from shared.config import FederationConfig
from shared.data import RawImages, read_dataset
from shared.protocol.messages import SoftLabelUpload, TrainTask

__all__ = ["run"]

_SECTION = "pool"
_FLAT = 1.25
_PER_ROUND = 10  # clients sampled per round in the memory table
_RUN_TIMEOUT_S = 540


def run(quick: bool) -> list[Row]:
    """The pool run (quick: K = 1,000) and the memory table (quick: a 2 x 2 corner)."""
    rows = _pool_run(clients=1_000 if quick else 10_000)
    publics = (2_000, 20_000) if quick else (2_000, 20_000, 100_000)
    ks = (10, 1_000) if quick else (10, 1_000, 10_000)
    rows += _memory_table(publics, ks)
    return rows


# ----------------------------------------------------------------------------- the run


def _pool_toml(run_id: str, clients: int) -> str:
    return f"""run_id = "{run_id}"
dataset = "fashion-mnist"
model = "mlp"
clients = {clients}
sample_ratio = 0.01
rounds = 3
samples_per_client = 5
test_per_client = 10
public_size = 10000
public_per_round = 500
local_epochs = 1
distill_epochs = 1
server_distill_epochs = 1
batch_size = 5
cache_duration = 10

[service]
broker_url = "amqp://guest:guest@127.0.0.1:5672/%2F"
redis_url = "redis://127.0.0.1:6379/0"
worker_mode = "pool"
round_timeout_s = 300
log_level = "INFO"
"""


def _pool_run(clients: int) -> list[Row]:
    setting = f"K={clients:,}, ratio 0.01, 3 rounds, 2 pool workers, fashion-mnist, mlp"
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        folder = Path(tmp)
        run_id = f"bench-pool-{uuid.uuid4().hex[:6]}"
        config = folder / "federation.toml"
        config.write_text(_pool_toml(run_id, clients))
        out = folder / "results.json"
        command = [
            sys.executable, "-m", "scarlet.cli", "up", "--config", str(config),
            "--workers", "2", "--out", str(out), "--run-dir", str(folder / "run"),
            "--no-progress",
        ]  # fmt: skip
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        peaks: dict[int, tuple[str, float]] = {}
        sampler = threading.Thread(target=_sample, args=(process, peaks), daemon=True)
        sampler.start()
        try:
            output, _ = process.communicate(timeout=_RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        wall = time.perf_counter() - start
        sampler.join(5)
        subprocess.run(
            [sys.executable, "-m", "scarlet.cli", "down", "--config", str(config)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if process.returncode != 0 or not out.exists():
            tail = output[-3000:]
            raise RuntimeError(f"scarlet up (pool) exited with {process.returncode}:\n{tail}")
        rounds = json.loads(out.read_text())["rounds"]
    seconds = sorted(float(r["seconds"]) for r in rounds)
    by_role: dict[str, float] = {}
    for role, mib in peaks.values():
        by_role[role] = max(by_role.get(role, 0.0), mib)
    done = len(rounds) == 3
    return [
        Row(_SECTION, "rounds completed", setting, f"{len(rounds)}", "3", done),
        Row(_SECTION, "round latency p50", setting, f"{_percentile(seconds, 50):.1f} s"),
        Row(_SECTION, "round latency p95", setting, f"{_percentile(seconds, 95):.1f} s"),
        Row(_SECTION, "scarlet up wall time", setting, f"{wall:.0f} s"),
        Row(_SECTION, "aggregator peak RSS", setting, _mib(by_role.get("aggregator"))),
        Row(_SECTION, "worker peak RSS (largest)", setting, _mib(by_role.get("worker"))),
    ]


def _percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted ``values`` (the largest for q near 100)."""
    rank = max(1, int(np.ceil(q / 100 * len(values))))
    return values[rank - 1]


def _mib(value: float | None) -> str:
    return "not seen" if value is None else f"{value:.0f} MiB"


def _sample(root: subprocess.Popen[str], peaks: dict[int, tuple[str, float]]) -> None:
    """Record the high-water mark of ``root``'s service descendants until it exits."""
    while root.poll() is None:
        for pid in _descendants(root.pid):
            role = _role(pid)
            hwm = high_water_mib(pid)
            if role is not None and hwm is not None:
                peaks[pid] = (role, max(hwm, peaks.get(pid, (role, 0.0))[1]))
        time.sleep(0.2)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _role(pid: int) -> str | None:
    # forked services show their own python -m command line (scarlet.children.retitle)
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    for module, role in (("services.aggregator", "aggregator"), ("services.worker", "worker")):
        if f"-m {module}" in command:
            return role
    return None


# ------------------------------------------------------------------------ memory table


def _memory_table(publics: tuple[int, ...], ks: tuple[int, ...]) -> list[Row]:
    rows: list[Row] = []
    for public in publics:
        for role in ("aggregator", "worker"):
            peaks = {k: _probe(role, public, k) for k in ks}
            source = "synthetic images" if public > 50_000 else "fashion-mnist"
            for k, mib in peaks.items():
                setting = f"|P|={public:,}, K={k:,}, {_PER_ROUND} clients/round, {source}"
                rows.append(Row(_SECTION, f"{role} peak RSS", setting, f"{mib:.0f} MiB"))
            ratio = peaks[max(ks)] / peaks[min(ks)]
            rows.append(
                Row(
                    _SECTION,
                    f"{role} RSS K={max(ks):,} / K={min(ks):,}",
                    f"|P|={public:,}",
                    f"{ratio:.2f}x",
                    f"<= {_FLAT}x (flat in K)",
                    ratio <= _FLAT,
                )
            )
    return rows


def _probe(role: str, public: int, clients: int) -> float:
    """Peak RSS (MiB) of a fresh process playing ``role`` for (|P|, K)."""
    code = f"from bench.load.pool import probe; probe({role!r}, {public}, {clients})"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{role} probe |P|={public} K={clients}:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])


def probe(role: str, public: int, clients: int) -> None:
    """In a fresh process: play ``role`` for three rounds, print ``{"peak_mib": ...}``."""
    from shared.rounds.aggregator import AggregatorCore
    from shared.rounds.aggregator_state import dump_aggregator
    from shared.rounds.setup import apply_threads

    config, train, test = _probe_data(public, clients)
    apply_threads(config)
    core = AggregatorCore(config, train.num_classes)
    if role == "aggregator":
        from shared.data import split_public_and_test

        data = split_public_and_test(train, test, public_size=public, seed=config.seed)
        rng = np.random.default_rng(0)
        for _ in range(config.rounds):
            for task in core.open_round():
                core.accept(_synthetic_upload(task, train.num_classes, rng))
            core.close_round()
            dump_aggregator(core, extra={"public": int(data.public.shape[0])})
    else:
        from services.worker.clients import PoolClients
        from shared.data import split_federation
        from shared.state.files import FileClientStateStore

        data = split_federation(
            train,
            test,
            num_clients=clients,
            alpha=config.alpha,
            samples_per_client=config.samples_per_client,
            public_size=public,
            test_per_client=config.test_per_client,
            seed=config.seed,
        )
        with tempfile.TemporaryDirectory(prefix="bench-pool-state-") as tmp:
            pool = PoolClients(config, data, FileClientStateStore(Path(tmp)))
            for _ in range(config.rounds):
                for task in core.open_round():
                    runtime = pool.get(task.client_id)
                    assert runtime is not None
                    upload = runtime.handle(task)
                    runtime.completed_round = task.round
                    pool.save(runtime)
                    core.accept(upload)
                core.close_round()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak}))


def _probe_data(public: int, clients: int) -> tuple[FederationConfig, RawImages, RawImages]:

    per_client = 4
    settings = dict(
        run_id="bench-pool-probe",
        model="mlp",
        clients=clients,
        sample_ratio=min(1.0, _PER_ROUND / clients),
        rounds=3,
        samples_per_client=per_client,
        test_per_client=10,
        public_per_round=500,
        local_epochs=1,
        distill_epochs=1,
        server_distill_epochs=1,
        batch_size=4,
        cache_duration=10,
        threads=1,
    )
    if public + clients * per_client <= 60_000:
        config = FederationConfig(dataset="fashion-mnist", public_size=public, **settings)
        train, test = read_dataset("fashion-mnist")
        return config, train, test
    # past Fashion-MNIST's 60,000: synthetic images of its shape, built here (the config's
    # size check knows the real data sets only: it is made small, then resized unchecked)
    import torch

    small = {**settings, "clients": 10, "sample_ratio": 1.0}
    config = FederationConfig(dataset="fashion-mnist", public_size=2_000, **small)
    config = config.model_copy(
        update={"public_size": public, "clients": clients, "sample_ratio": settings["sample_ratio"]}
    )
    rng = np.random.default_rng(1)
    train_n, test_n = public + clients * per_client + 10_000, 10_000

    def make(n: int) -> RawImages:
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        return RawImages(pixels, torch.from_numpy(rng.integers(0, 10, size=n)), 10, "fashion-mnist")

    return config, make(train_n), make(test_n)


def _synthetic_upload(task: TrainTask, classes: int, rng: np.random.Generator) -> SoftLabelUpload:
    labels = rng.dirichlet(np.ones(classes), size=task.request_indices.size).astype(np.float32)
    return SoftLabelUpload(
        task.run_id, task.round, task.client_id, task.request_indices, labels, 0.5, float("nan")
    )
