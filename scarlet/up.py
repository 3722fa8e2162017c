"""``scarlet up``: the real services as separate OS processes against local RabbitMQ/Redis.

It starts the cache service, the aggregator and the workers (one per client in pinned
mode, ``--workers`` in pool mode), follows the aggregator's progress through the store,
prints the same per-round lines and results file as ``scarlet simulate``, and stops every
process cleanly at the end, on Ctrl-C, or when one of them fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from shared.config import FederationConfig, ServiceSettings, dump_toml
from shared.errors import TransportError
from shared.protocol import routes
from shared.results import RoundRecord, RunResults, format_round_line
from shared.state import open_federation_store
from shared.state.base import FederationStore
from shared.transport import open_transport

__all__ = ["Launcher"]

_STOP_GRACE_S = 15.0


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass
class Launcher:
    """Starts, watches and stops one local federation.

    Args:
        config: the federation.
        settings: broker, store and service settings (``worker_mode`` picks the mode).
        workers: pool-mode worker count (pinned mode runs one worker per client).
        run_dir: where the children's logs and configuration go.
        fresh: delete the run's previous state and queues first.
    """

    config: FederationConfig
    settings: ServiceSettings
    workers: int
    run_dir: Path
    fresh: bool = True
    children: list[_Child] = field(default_factory=list)

    def run(self, out: Path, progress: bool = True) -> int:
        """Run the federation to its end; returns an exit status (0 on success)."""
        store = open_federation_store(self.settings.redis_url, self.config.run_id)
        self.prepare(store)
        config_path = self.write_config()
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
                failed = self._failed()
                if failed is not None:
                    print(
                        f"scarlet: {failed.name} exited with status "
                        f"{failed.process.returncode}; see {failed.log.name}",
                        file=sys.stderr,
                    )
                    return 1
                if self.child("aggregator").process.poll() == 0:
                    break
                time.sleep(0.5)
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
                run = self.config.run_id
                queues = [
                    routes.uploads_queue(run),
                    routes.pool_tasks_queue(run),
                    routes.cache_rpc_queue(run),
                ]
                queues += [routes.client_tasks_queue(run, k) for k in range(self.config.clients)]
                for queue in queues:
                    with contextlib.suppress(TransportError):
                        transport.delete_queue(queue)
        finally:
            transport.close()

    def start_all(self, config_path: Path) -> None:
        """Start the cache service, the aggregator and the workers."""
        base = ["--config", str(config_path)]
        self.start("cache", ["services.cache", "run", *base])
        self.start("aggregator", ["services.aggregator", "run", *base])
        if self.settings.worker_mode == "pool":
            for i in range(self.workers):
                self.start(f"worker-{i}", ["services.worker", "run", "--pool", *base])
        else:
            for k in range(self.config.clients):
                self.start(f"worker-{k}", ["services.worker", "run", "--client", str(k), *base])

    def start(self, name: str, module_args: list[str]) -> None:
        """Start ``python -m <module_args>`` as child ``name``, logging to ``<name>.log``."""
        log = (self.run_dir / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            [sys.executable, "-m", *module_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.children.append(_Child(name, process, log))

    def child(self, name: str) -> _Child:
        """The running child called ``name``."""
        return next(c for c in self.children if c.name == name)

    def write_config(self) -> Path:
        """Write the children's configuration file; returns its path.

        Pool workers are separate processes: an in-memory client state store cannot be
        shared between them, so a file store under the run folder replaces it.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.worker_mode == "pool" and self.settings.state_url.startswith("memory:"):
            state = f"file://{(self.run_dir / 'client-state').resolve()}"
            self.settings = self.settings.model_copy(update={"state_url": state})
        path = self.run_dir / "config.toml"
        path.write_text(dump_toml(self.config, self.settings))
        return path

    def _failed(self) -> _Child | None:
        # a non-zero exit, or a service other than the aggregator that stopped by itself
        for child in self.children:
            code = child.process.poll()
            if code is not None and code != 0:
                return child
            if code == 0 and child.name != "aggregator":
                return child
        return None

    def stop_all(self) -> None:
        """SIGTERM every child still running, wait, then SIGKILL stragglers."""
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
