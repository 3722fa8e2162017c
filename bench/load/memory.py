"""Peak memory: the processes that run no model (cache service, launcher) against 150 MiB.

Two measurements of real processes against the local RabbitMQ and Redis:

* **scarlet up** on a tiny federation (digits, pinned clients, the default codecs): the
  peak resident set (``VmHWM`` in ``/proc/<pid>/status``) of the launcher and of every
  child it starts, sampled every 0.1 s while they run. The launcher and the cache service
  have the goal; the aggregator and the workers, which run models, are reported.
* **the cache service answering**: ``python -m services.cache run`` serving full-snapshot
  cache-sync requests for a committed cache of |P| entries (C = 10); its peak is its
  ``VmHWM`` read once the requests are answered (not the ``ru_maxrss`` of its exit: when
  ``subprocess`` forks instead of spawning, that keeps this bench's own size from before
  the exec, 591 MiB once the ingest section has run). No process above imports torch
  unless it trains (DECISIONS §28), which is what keeps the first two under the goal.

Why sampling for ``scarlet up``: the launcher waits for its children, and a waited-for
child's peak counts in its parent's ``ru_maxrss``, so only ``VmHWM`` separates them. A
peak reached in the last 0.1 s of a process's life can be missed; the high-water mark
only grows, so what is read is a lower bound that is exact for steady processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.load.table import Row
from scarlet.down import tear_down
from services.worker.resync import CacheResync
from shared.cache_policy import ClientCache, ServerCache
from shared.config import FederationConfig, ServiceSettings
from shared.config_loading import load_config
from shared.protocol.codec import DecodeLimits
from shared.protocol.routes import cache_rpc_exchange, replies_exchange
from shared.state.base import CacheUpdate
from shared.state.redis import RedisFederationStore
from shared.transport import open_transport
from shared.transport.base import ExchangeSpec
from shared.transport.topology import cache_rpc_queue_spec

__all__ = ["run"]

GOAL_MIB = 150
_SECTION = "memory"
_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
_REDIS = "redis://127.0.0.1:6379/0"
_ROLES = (("services.cache", "cache"), ("services.aggregator", "aggregator"))
_CLASSES = 10
_DEFAULTS = FederationConfig(run_id="bench-memory")


def run(quick: bool) -> list[Row]:
    """Measure both and return the rows (about 15 s on a 2-core machine, either size)."""
    peaks = scarlet_up_peaks(rounds=1 if quick else 2)
    public = 2_000 if quick else 10_000
    serving = cache_service_peak(public, requests=3 if quick else 10)
    setting = f"scarlet up, digits, 2 clients, {1 if quick else 2} rounds, {_DEFAULTS.uplink_codec}"
    rows = [
        _goal_row("launcher (scarlet up) peak RSS", setting, peaks.get("launcher")),
        _goal_row("cache service peak RSS", setting + ", idle", peaks.get("cache")),
        _goal_row(
            "cache service peak RSS",
            f"answering full snapshots, |P|={public:,}, C={_CLASSES}",
            serving,
        ),
    ]
    for role in ("aggregator", "worker"):
        value = peaks.get(role)
        rows.append(
            Row(_SECTION, f"{role} peak RSS", setting, _mib(value) if value else "not seen")
        )
    return rows


def _goal_row(metric: str, setting: str, mib: float | None) -> Row:
    value = _mib(mib) if mib is not None else "not seen"
    return Row(
        _SECTION, metric, setting, value, f"<= {GOAL_MIB} MiB", mib is not None and mib <= GOAL_MIB
    )


def _mib(value: float) -> str:
    return f"{value:.0f} MiB"


# ------------------------------------------------------------------------- scarlet up


def scarlet_up_peaks(rounds: int) -> dict[str, float]:
    """Run ``scarlet up`` on a tiny federation; the peak RSS (MiB) of each role.

    Roles: ``launcher``, ``cache``, ``aggregator`` and ``worker`` (the largest worker).

    Raises:
        RuntimeError: ``scarlet up`` failed (its output is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        folder = Path(tmp)
        run_id = f"bench-mem-{uuid.uuid4().hex[:8]}"
        config = folder / "federation.toml"
        config.write_text(_federation_toml(run_id, rounds))
        command = [
            sys.executable, "-m", "scarlet.cli", "up", "--config", str(config),
            "--out", str(folder / "results.json"), "--run-dir", str(folder / "run"),
            "--no-progress", "--no-provision",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        peaks: dict[int, tuple[str, float]] = {}
        sampler = threading.Thread(target=_sample, args=(process, peaks), daemon=True)
        sampler.start()
        output, _ = process.communicate(timeout=600)
        sampler.join(5)
        _tear_down(config)
        if process.returncode != 0:
            raise RuntimeError(f"scarlet up exited with {process.returncode}:\n{output[-3000:]}")
    by_role: dict[str, float] = {}
    for role, mib in peaks.values():
        by_role[role] = max(by_role.get(role, 0.0), mib)
    return by_role


def _federation_toml(run_id: str, rounds: int) -> str:
    return f"""run_id = "{run_id}"
dataset = "digits"
clients = 2
rounds = {rounds}
samples_per_client = 200
test_per_client = 50
public_size = 300
public_per_round = 100
local_epochs = 1
distill_epochs = 1
server_distill_epochs = 1
uplink_codec = "{_DEFAULTS.uplink_codec}"
downlink_codec = "{_DEFAULTS.downlink_codec}"
threads = 1

[service]
broker_url = "{_AMQP}"
redis_url = "{_REDIS}"
worker_mode = "pinned"
log_level = "WARNING"
"""


def _sample(root: subprocess.Popen[str], peaks: dict[int, tuple[str, float]]) -> None:
    """Record each process's high-water mark until ``root`` exits."""
    while root.poll() is None:
        for pid, role in _tree(root.pid).items():
            hwm = high_water_mib(pid)
            if hwm is not None:
                peaks[pid] = (role, max(hwm, peaks.get(pid, (role, 0.0))[1]))
        time.sleep(0.1)


def _tree(root: int) -> dict[int, str]:
    """``root`` and its descendants, by pid, each with its role."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                parents.setdefault(parent, []).append(int(entry))
    found, todo = {root: "launcher"}, [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = _role(child)
            todo.append(child)
    return found


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces or parens


def _role(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    return next((role for module, role in _ROLES if module in command), "worker")


def high_water_mib(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of process ``pid`` in MiB, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def _tear_down(config: Path, reply_workers: tuple[str, ...] = ()) -> None:
    """Delete the run's queues, exchanges and Redis keys (``scarlet down``)."""
    settings = load_config(ServiceSettings, path=config, env={}, section="service")
    tear_down(load_config(FederationConfig, path=config, env={}), settings, reply_workers)


# ------------------------------------------------------------------ the cache service


def cache_service_peak(public_size: int, requests: int) -> float:
    """Peak RSS (MiB) of a cache service that answered ``requests`` full snapshots.

    Raises:
        RuntimeError: the service did not start, answer or stop cleanly.
    """
    run_id = f"bench-mem-{uuid.uuid4().hex[:8]}"
    limits = DecodeLimits(public_size, _CLASSES)
    store = RedisFederationStore(_REDIS, run_id)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        config = Path(tmp) / "cache.toml"
        config.write_text(_cache_toml(run_id, public_size))
        try:
            server = _commit_full_cache(store, public_size)
            transport = open_transport(_AMQP)
            try:
                # the service's own declaration (idempotent): requests wait for it to start
                transport.declare(
                    [
                        ExchangeSpec(cache_rpc_exchange(run_id)),
                        ExchangeSpec(replies_exchange(run_id)),
                    ],
                    [cache_rpc_queue_spec(run_id)],
                )
                resync = CacheResync(transport, run_id, 0, "bench", limits, timeout_s=60)
                resync.declare()
                with _cache_service(config) as process:
                    for _ in range(requests):
                        replica = ClientCache(public_size, _CLASSES)
                        resync.resync(replica, None)
                        if replica.digest() != server.digest():
                            raise RuntimeError("the cache service sent another cache")
                    # VmHWM, not the exit's ru_maxrss: when subprocess forks (rather than
                    # spawns) the child's ru_maxrss keeps this bench's own pre-exec size
                    peak = high_water_mib(process.pid)
            finally:
                transport.close()
            _check_clean_exit(process)
            if peak is None:
                raise RuntimeError("the cache service exited before its memory was read")
            return peak
        finally:
            store.close()
            _tear_down(config, reply_workers=("bench",))


def _commit_full_cache(store: RedisFederationStore, public_size: int) -> ServerCache:
    """Commit one round that fills every entry of a (|P|, C) cache."""
    rng = np.random.default_rng(0)
    server = ServerCache(public_size, _CLASSES)
    plan = server.plan_requests(np.arange(public_size, dtype=np.int64), now=0, duration=1)
    logits = rng.standard_normal((public_size, _CLASSES)) * 3
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    server.commit(plan, (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32), 0, 1)
    indices = np.arange(public_size, dtype=np.int64)
    empty = np.empty(0, dtype=np.int64)
    update = CacheUpdate(
        server.version, server.digest(), indices, server.written.copy(), server.labels.copy(), empty
    )
    store.commit_round(0, b"bench", update, _CLASSES)
    return server


def _cache_toml(run_id: str, public_size: int) -> str:
    return f"""run_id = "{run_id}"
dataset = "fashion-mnist"
public_size = {public_size}
public_per_round = 100

[service]
broker_url = "{_AMQP}"
redis_url = "{_REDIS}"
verify_senders = false
log_level = "WARNING"
"""


@contextmanager
def _cache_service(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m services.cache run``; SIGTERM (a clean stop) when the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cache", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)


def _check_clean_exit(process: subprocess.Popen[bytes]) -> None:
    """Wait for ``process``; a non-zero exit status is an error."""
    if process.wait(timeout=60) != 0:
        raise RuntimeError(f"the cache service exited with {process.returncode}")
