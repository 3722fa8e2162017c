"""``scarlet up``: the real services as separate OS processes against local RabbitMQ/Redis.

It starts the cache service, the aggregator and the workers (one per client in pinned
mode, ``--workers`` in pool mode), follows the aggregator's progress through the store,
prints the same per-round lines and results file as ``scarlet simulate``, and stops every
process cleanly at the end, on Ctrl-C, or when one of them keeps failing: a child that
crashes (non-zero exit, kill -9) is started again, up to ``max_restarts`` times each
(:meth:`Launcher.supervise`), and resumes from the store or its state dir.

Metrics: with ``metrics_port`` N set (``scarlet up --metrics-port N``), N is a base port:
the cache service serves ``/metrics`` on N, the aggregator on N+1 and the workers on N+2,
N+3, ... (one port per process; the shared configuration file says 0 and each child gets
``--metrics-port`` on its command line, flags win over the file). It then writes a
Prometheus ``file_sd_configs`` file listing those ports with a ``service`` label, by default
``targets/<run_id>.json`` beside the run folder (``runs/targets/<run_id>.json`` for the
default ``runs/<run_id>``; ``deploy/prometheus/prometheus.yml`` watches
``runs/targets/*.json``: Prometheus globs file names only, not folders), and empties it
when the run stops, so a finished run's targets leave Prometheus.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from scarlet.children import ChildProcess, Starter, default_starter
from scarlet.provision import delete_users, provision
from shared.config import FederationConfig, ServiceSettings
from shared.config_loading import dump_toml
from shared.errors import ConfigError, ScarletError, TransportError
from shared.protocol import routes
from shared.results import RoundRecord, RunResults, format_round_line
from shared.state import open_federation_store
from shared.state.base import FederationStore
from shared.transport import open_transport

__all__ = ["Launcher"]

_STOP_GRACE_S = 15.0
_METRICS_HOST = "127.0.0.1"


@dataclass
class _Child:
    name: str
    process: ChildProcess
    log: IO[bytes]
    args: list[str] = field(default_factory=list)  # to start it again the same way
    restarts: int = 0


@dataclass
class Launcher:
    """Starts, watches and stops one local federation.

    Args:
        config: the federation.
        settings: broker, store and service settings (``worker_mode`` picks the mode).
        workers: pool-mode worker count (pinned mode runs one worker per client).
        run_dir: where the children's logs and configuration go.
        fresh: delete the run's previous state and queues first.
        targets_path: the Prometheus targets file (default
            ``<run_dir>/../targets/<run_id>.json``).
        max_restarts: how often one child that crashed (a non-zero exit, a signal) is
            started again before the whole federation is stopped (0: never).
        provision: give every service its own broker user (``scarlet provision``): each
            child gets only its role's file from ``<run_dir>/secrets/`` (mode 0600), the
            workers never hold the admin user, and the users are deleted when the run
            stops. False (``scarlet up --no-provision``): every child shares the admin
            URLs of ``settings`` and sender checks are off (``verify_senders = false``).
        starter: how children are started; by default forked from a fork server that
            imported the services once (:mod:`scarlet.children`), started before the
            users are provisioned.

    Pinned workers keep their client's state in ``<run_dir>/state/<worker>/`` (written
    atomically after each task), so a restarted worker continues where it stopped.

    ``settings.metrics_port`` is the base of the children's metrics ports (0: no metrics);
    see :meth:`metrics_ports`.
    """

    config: FederationConfig
    settings: ServiceSettings
    workers: int
    run_dir: Path
    fresh: bool = True
    children: list[_Child] = field(default_factory=list)
    targets_path: Path | None = None
    max_restarts: int = 3
    provision: bool = False
    role_configs: dict[str, Path] = field(default_factory=dict)
    starter: Starter = field(default_factory=default_starter)

    def run(self, out: Path, progress: bool = True) -> int:
        """Run the federation to its end; returns an exit status (0 on success)."""
        self.starter.warm_up()  # the services' imports overlap the provisioning below
        store = open_federation_store(self.settings.redis_url, self.config.run_id)
        self.prepare(store)
        config_path = self.write_config()
        ports = self.metrics_ports()
        if ports:
            print(
                f"scarlet: /metrics on ports {min(ports.values())}-{max(ports.values())} "
                f"(cache, aggregator, workers); Prometheus targets in {self.targets_file}",
                file=sys.stderr,
            )
        start = time.perf_counter()
        bar = tqdm(total=self.config.rounds, unit="round", disable=not progress, file=sys.stderr)
        seen = 0
        try:
            self.start_all(config_path)
            while True:
                rows = store.results()
                for row in rows[seen:]:
                    record = RoundRecord.from_json(json.loads(row))
                    bar.write(format_round_line(record))
                    bar.set_postfix(acc=f"{record.server_accuracy:.3f}")
                    bar.update(1)
                seen = len(rows)
                failed = self.supervise()
                if failed is not None:
                    print(
                        f"scarlet: {failed.name} exited with status "
                        f"{failed.process.returncode}; see {failed.log.name}",
                        file=sys.stderr,
                    )
                    return 1
                # done when the aggregator exits, or has recorded every round (it may linger)
                if self.child("aggregator").process.poll() == 0 or seen >= self.config.rounds:
                    break
                time.sleep(0.2)  # one LRANGE: cheap, and the last round is seen sooner
        except KeyboardInterrupt:
            print("scarlet: interrupted, stopping the services", file=sys.stderr)
            return 130
        finally:
            bar.close()
            self.stop_all()
        results = RunResults(config=self.config.model_dump())
        results.rounds = [RoundRecord.from_json(json.loads(r)) for r in store.results()]
        results.wall_seconds = time.perf_counter() - start
        path = results.write(out)
        s = results.summary()
        print(
            f"scarlet: done in {s['wall_seconds']:.0f}s: final server accuracy "
            f"{s['final_server_accuracy']:.2%}; wire {s['wire_bytes_total'] / 2**20:.2f} MiB "
            f"vs DS-FL f32 {s['baseline_bytes_total'] / 2**20:.2f} MiB"
        )
        print(f"scarlet: results written to {path}; service logs in {self.run_dir}")
        return 0

    def prepare(self, store: FederationStore) -> None:
        """Check the broker answers; with ``fresh``, delete the run's state and queues."""
        # fail early with a clear message when the broker is down
        transport = open_transport(self.settings.broker_url, reconnect_attempts=2)
        try:
            if self.fresh:
                store.delete_all()
                shutil.rmtree(self.state_dir, ignore_errors=True)  # or workers resume it
                run = self.config.run_id
                queues = [
                    routes.uploads_queue(run),
                    routes.pool_tasks_queue(run),
                    routes.cache_rpc_queue(run),
                ]
                if self.settings.worker_mode != "pool":  # K queues: none exist in pool mode
                    clients = range(self.config.clients)
                    queues += [routes.client_tasks_queue(run, k) for k in clients]
                for queue in queues:
                    with contextlib.suppress(TransportError):
                        transport.delete_queue(queue)
        finally:
            transport.close()

    def start_all(self, config_path: Path) -> None:
        """Start the cache service, the aggregator and the workers."""

        def base(name: str) -> list[str]:
            return ["--config", str(self.config_for(name, config_path))]

        self.start("cache", ["services.cache", "run", *base("cache")])
        self.start("aggregator", ["services.aggregator", "run", *base("aggregator")])
        for k, name in enumerate(self.worker_names()):
            self.start(name, ["services.worker", "run", *self.worker_flags(k), *base(name)])

    @property
    def state_dir(self) -> Path:
        """Where pinned workers keep their clients' state (one folder per worker)."""
        return self.run_dir / "state"

    def worker_flags(self, k: int) -> list[str]:
        """The mode flags of worker ``k``: ``--pool``, or its client and its state dir."""
        if self.settings.worker_mode == "pool":
            return ["--pool"]
        state = (self.state_dir / f"worker-{k}").resolve()
        return ["--client", str(k), "--state-dir", str(state)]

    def worker_names(self) -> list[str]:
        """The children names of the workers, in start order."""
        count = self.workers if self.settings.worker_mode == "pool" else self.config.clients
        return [f"worker-{i}" for i in range(count)]

    def metrics_ports(self) -> dict[str, int]:
        """Child name -> its /metrics port: cache N, aggregator N+1, workers N+2...

        Empty when ``settings.metrics_port`` (the base N) is 0.

        Raises:
            ConfigError: the ports would run past 65535.
        """
        base = self.settings.metrics_port
        if not base:
            return {}
        names = ["cache", "aggregator", *self.worker_names()]
        if base + len(names) - 1 > 65535:
            raise ConfigError(
                f"metrics_port: {len(names)} processes need ports {base}-"
                f"{base + len(names) - 1}, past 65535; choose a lower base port"
            )
        return {name: base + i for i, name in enumerate(names)}

    @property
    def targets_file(self) -> Path:
        """Where :meth:`write_targets` writes."""
        if self.targets_path is not None:
            return self.targets_path
        return self.run_dir.parent / "targets" / f"{self.config.run_id}.json"

    def write_targets(self) -> Path | None:
        """Write the Prometheus file_sd targets file of the metrics ports (None: no metrics).

        One target group per service (``cache``, ``aggregator``, ``worker``), each with a
        ``service`` label the dashboard and the alerts select on.
        """
        ports = self.metrics_ports()
        if not ports:
            return None
        groups: dict[str, list[str]] = {}
        for name, port in ports.items():
            service = "worker" if name.startswith("worker-") else name
            groups.setdefault(service, []).append(f"{_METRICS_HOST}:{port}")
        doc: list[dict[str, object]] = [
            {"targets": t, "labels": {"service": s}} for s, t in groups.items()
        ]
        return self._write_targets_doc(doc)

    def clear_targets(self) -> None:
        """Empty the targets file (if written): Prometheus stops scraping this run."""
        if self.metrics_ports() and self.targets_file.exists():
            self._write_targets_doc([])

    def _write_targets_doc(self, doc: list[dict[str, object]]) -> Path:
        path = self.targets_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # not *.json: Prometheus ignores it
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)  # Prometheus watches the file: never let it read half of it
        return path

    def start(self, name: str, module_args: list[str]) -> None:
        """Start ``python -m <module_args>`` as child ``name``, logging to ``<name>.log``.

        (Forked from the fork server by default: the same process, without the imports.)

        A child with a metrics port (:meth:`metrics_ports`) gets ``--metrics-port`` on its
        command line, also when it is started again after a crash.
        """
        port = self.metrics_ports().get(name)
        if port is not None and "--metrics-port" not in module_args:
            module_args = [*module_args, "--metrics-port", str(port)]
        path = self.run_dir / f"{name}.log"
        log = path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = self.starter.start(module_args, path, env)
        self.children.append(_Child(name, process, log, module_args))

    def child(self, name: str) -> _Child:
        """The running child called ``name``."""
        return next(c for c in self.children if c.name == name)

    def write_config(self) -> Path:
        """Write the children's configuration file; returns its path.

        Many processes share few cores: unless ``threads`` is set, each child runs torch on
        one thread (several threads per process only fight over the cores).

        Pool workers are separate processes: an in-memory client state store cannot be
        shared between them, so a file store under the run folder replaces it. The file says
        ``metrics_port = 0``: each child gets its own port on its command line, and the
        Prometheus targets file (:meth:`write_targets`) is written beside it.

        Raises:
            ConfigError: the metrics ports would run past 65535.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config.threads == 0:
            self.config = self.config.model_copy(update={"threads": 1})
        if self.settings.worker_mode == "pool" and self.settings.state_url.startswith("memory:"):
            state = f"file://{(self.run_dir / 'client-state').resolve()}"
            self.settings = self.settings.model_copy(update={"state_url": state})
        path = self.run_dir / "config.toml"
        shared = self.settings.model_copy(update={"metrics_port": 0})
        if self.provision:
            # no shared file: it would hold the admin URLs; one file per role instead
            made = provision(self.config, shared, self.run_dir / "secrets")
            self.role_configs = made.files
            self.write_targets()
            return self.role_configs["aggregator"]
        # every child is the same (admin) user: a sender check could not tell them apart
        shared = shared.model_copy(update={"verify_senders": False})
        path.write_text(dump_toml(self.config, shared))
        self.write_targets()
        return path

    def config_for(self, name: str, default: Path) -> Path:
        """The configuration file of child ``name`` (its role's when provisioned)."""
        if not self.role_configs:
            return default
        if name.startswith("worker-"):
            if self.settings.worker_mode == "pool":
                return self.role_configs["pool"]
            return self.role_configs[f"client-{name.removeprefix('worker-')}"]
        return self.role_configs[name]

    def supervise(self) -> _Child | None:
        """Start again every child that crashed; the child that may not be, if any.

        A crash is a non-zero exit or a signal (kill -9, the OOM killer). Each child is
        restarted at most ``max_restarts`` times, with the same command line; the
        services resume from the store (aggregator, cache service) or their state dir
        (pinned workers). A service other than the aggregator that stopped by itself
        with status 0 is not restarted: it was told to stop.
        """
        for child in list(self.children):
            code = child.process.poll()
            if code is None or (code == 0 and child.name == "aggregator"):
                continue
            if code == 0 or child.restarts >= self.max_restarts or not child.args:
                return child
            print(
                f"scarlet: {child.name} exited with status {code}; starting it again "
                f"({child.restarts + 1}/{self.max_restarts}), see {child.log.name}",
                file=sys.stderr,
            )
            child.log.close()
            self.children.remove(child)
            self.start(child.name, child.args)
            self.child(child.name).restarts = child.restarts + 1
        return None

    def stop_all(self) -> None:
        """SIGTERM every child still running, wait, then SIGKILL stragglers.

        The Prometheus targets file is emptied first.
        """
        self.clear_targets()
        for child in self.children:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for child in self.children:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            child.log.close()
        self.children.clear()
        self.deprovision()

    def deprovision(self) -> None:
        """Delete the run's broker and Redis users (when provisioned); idempotent."""
        if not self.role_configs:
            return
        self.role_configs = {}
        try:
            deleted = delete_users(self.config.run_id, self.settings)
        except ScarletError as e:
            print(f"scarlet: could not delete the run's users: {e}", file=sys.stderr)
            return
        print(f"scarlet: deleted {len(deleted)} users of run {self.config.run_id}", file=sys.stderr)
