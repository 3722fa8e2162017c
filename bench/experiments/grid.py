"""The experiment grid: methods x Dirichlet alpha x seeds, one results file per run.

Every federated method runs on the same core (:class:`scarlet.simulate.EmbeddedFederation`)
and differs from the others only by :class:`shared.config.FederationConfig` keys; the two
reference points (``centralized``, ``individual``) live in :mod:`bench.experiments.baselines`.
All methods of one (alpha, seed) cell see the same data split, and every client starts
from the same initial weights whatever the method.

A run writes ``<out>/runs/<method>__alpha-<a>__seed-<s>.json`` ("+" in a method name
written "-"): the :meth:`shared.results.RunResults.to_json` document plus an
``experiment`` key naming the cell. A run whose file exists is skipped, so an
interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import math
import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from shared.config import FederationConfig
from shared.data import FederatedData
from shared.results import RunResults

__all__ = [
    "BASELINE_METHODS",
    "FEDERATED_METHODS",
    "FULL_SIZES",
    "METHODS",
    "QUICK_SIZES",
    "GridSpec",
    "RunSpec",
    "alpha_label",
    "estimate_seconds",
    "run_grid",
    "run_one",
]

# Config keys of each federated method, on top of the grid's common sizes. Every codec is
# pinned, never left to the config default, so that a row means the same codec whatever the
# default becomes. The codec rows all use q8+ans (the default since DECISIONS §30): DS-FL
# and CFD with the same codec as ours are the fair baselines for "ours" (issue 13).
CODEC = "q8+ans"
FEDERATED_METHODS: dict[str, dict[str, object]] = {
    "dsfl": {"algorithm": "dsfl", "uplink_codec": "f32", "downlink_codec": "f32"},
    "dsfl+codec": {"algorithm": "dsfl", "uplink_codec": CODEC, "downlink_codec": CODEC},
    "cfd": {"algorithm": "cfd", "uplink_codec": CODEC, "downlink_codec": CODEC},
    # Selective-FD (DECISIONS §35): f32 like plain DS-FL, and with DS-FL + codec's codec
    "selective_fd": {"algorithm": "selective_fd", "uplink_codec": "f32", "downlink_codec": "f32"},
    "selective_fd+codec": {
        "algorithm": "selective_fd",
        "uplink_codec": CODEC,
        "downlink_codec": CODEC,
    },
    # COMET (issue 14): K_c = 2 centroids per sample down, weight 1.0, as the authors run it
    "comet": {"algorithm": "comet", "uplink_codec": "f32", "downlink_codec": "f32"},
    "comet+codec": {"algorithm": "comet", "uplink_codec": CODEC, "downlink_codec": CODEC},
    "scarlet": {
        "algorithm": "scarlet",
        "cache_policy": "fixed",
        "uplink_codec": "f32",
        "downlink_codec": "f32",
    },
    "scarlet+codec": {
        "algorithm": "scarlet",
        "cache_policy": "fixed",
        "uplink_codec": CODEC,
        "downlink_codec": CODEC,
    },
    "scarlet+adaptive": {
        "algorithm": "scarlet",
        "cache_policy": "adaptive",
        "uplink_codec": CODEC,
        "downlink_codec": CODEC,
    },
    # ours (DECISIONS §38): half of each window new, and Enhanced ERA at beta = 4
    "scarlet+sliding": {
        "algorithm": "scarlet",
        "cache_policy": "sliding",
        "refresh_share": 0.5,
        "beta": 4.0,
        "uplink_codec": CODEC,
        "downlink_codec": CODEC,
    },
}

# Reference points without federated traffic (see bench.experiments.baselines).
BASELINE_METHODS: tuple[str, ...] = ("centralized", "individual")

# Table and plot order.
METHODS: tuple[str, ...] = (
    "centralized",
    "dsfl",
    "dsfl+codec",
    "cfd",
    "selective_fd",
    "selective_fd+codec",
    "comet",
    "comet+codec",
    "scarlet",
    "scarlet+codec",
    "scarlet+adaptive",
    "scarlet+sliding",
    "individual",
)

# The full grid on Fashion-MNIST, sized for about an hour on 2 CPU cores (docs/EXPERIMENTS.md).
FULL_SIZES: dict[str, object] = {
    "dataset": "fashion-mnist",
    "model": "mlp",
    "clients": 10,
    "samples_per_client": 1000,
    "test_per_client": 200,
    "public_size": 2500,
    "public_per_round": 500,
    "rounds": 40,
    "local_epochs": 2,
    "distill_epochs": 2,
    "server_distill_epochs": 5,
    "batch_size": 50,
    "distill_batch_size": 50,
    "cache_duration": 10,
    "beta": 2.0,
    "temperature": 0.1,
}

# A smoke-test grid: seconds per run, fits even the 8x8 digits.
QUICK_SIZES: dict[str, object] = {
    **FULL_SIZES,
    "clients": 3,
    "samples_per_client": 150,
    "test_per_client": 50,
    "public_size": 300,
    "public_per_round": 100,
    "rounds": 3,
    "local_epochs": 1,
    "distill_epochs": 1,
    "server_distill_epochs": 1,
    "cache_duration": 2,
}


def alpha_label(alpha: float) -> str:
    """``"iid"`` for alpha = 0 (the config's IID convention), else the number as written."""
    return "iid" if alpha == 0 else f"{alpha:g}"


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: a method on one (alpha, seed) split.

    Attributes:
        method: a key of :data:`FEDERATED_METHODS` or one of :data:`BASELINE_METHODS`.
        alpha: the Dirichlet alpha (0 = IID).
        seed: the seed of the split, the initial weights and every draw.
        config: the complete federation configuration of the run (for the baselines: the
            sizes, model and epochs they share with the federated methods).
        path: the results file.
    """

    method: str
    alpha: float
    seed: int
    config: FederationConfig
    path: Path

    @property
    def name(self) -> str:
        """``method alpha=a seed=s``, for progress lines."""
        return f"{self.method} alpha={alpha_label(self.alpha)} seed={self.seed}"


@dataclass(frozen=True)
class GridSpec:
    """A grid: which methods, alphas and seeds, with which common configuration.

    Attributes:
        methods: method names (see :data:`METHODS`).
        alphas: Dirichlet alphas; 0 means IID.
        seeds: seeds.
        sizes: FederationConfig keys common to every run (data set, sizes, epochs, ...).
        out: the results folder.
        overrides: keys set on the command line (``--set``); they win over a method's own
            keys too, so ``--set beta=2`` really runs β = 2 for every method.
    """

    methods: tuple[str, ...]
    alphas: tuple[float, ...]
    seeds: tuple[int, ...]
    sizes: Mapping[str, object] = field(default_factory=lambda: dict(FULL_SIZES))
    out: Path = Path("results/experiments")
    overrides: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if any(a < 0 for a in self.alphas):
            raise ValueError(f"alphas must be >= 0 (0 = IID), got {self.alphas}")

    def runs(self) -> list[RunSpec]:
        """Every cell, ordered alpha-major then seed then method (one split at a time)."""
        out = []
        for alpha in self.alphas:
            for seed in self.seeds:
                for method in self.methods:
                    keys = FEDERATED_METHODS.get(method, {})
                    config = FederationConfig.model_validate(
                        {
                            **self.sizes,
                            **keys,
                            **self.overrides,
                            "alpha": alpha,
                            "seed": seed,
                            "run_id": _run_id(method, alpha, seed),
                        }
                    )
                    path = self.out / "runs" / f"{_run_id(method, alpha, seed)}.json"
                    out.append(RunSpec(method, alpha, seed, config, path))
        return out


def _run_id(method: str, alpha: float, seed: int) -> str:
    # run ids allow A-Za-z0-9_.- only: "scarlet+codec" becomes "scarlet-codec"
    return f"{method.replace('+', '-')}__alpha-{alpha_label(alpha)}__seed-{seed}"


def run_one(spec: RunSpec, data: FederatedData | None = None) -> RunResults:
    """Run one cell and write its results file.

    Args:
        spec: the cell.
        data: the split (built from ``spec.config`` when None); every method of a cell
            derives the same split from the same sizes, alpha and seed.

    Returns:
        The run's results (also written to ``spec.path``).
    """
    from bench.experiments import baselines  # local: keeps worker start-up light
    from scarlet.simulate import EmbeddedFederation, prepare_data

    if data is None:
        data = prepare_data(spec.config)
    if spec.method == "centralized":
        results = baselines.run_centralized(spec.config, data)
    elif spec.method == "individual":
        results = baselines.run_individual(spec.config, data)
    else:
        results = EmbeddedFederation(spec.config, data).run()
    write_results(spec, results)
    return results


def write_results(spec: RunSpec, results: RunResults) -> Path:
    """Write ``results`` with the cell's identity under ``experiment`` (atomic rename)."""
    doc = results.to_json()
    doc["experiment"] = {"method": spec.method, "alpha": spec.alpha, "seed": spec.seed}
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(spec.path)
    return spec.path


def summary_line(spec: RunSpec, results: RunResults) -> str:
    """One human line for a finished run."""
    s = results.summary()
    client = s["final_client_accuracy"]
    client_text = "  -  " if math.isnan(client) else f"{client:6.2%}"
    return (
        f"{spec.name:<42} server {s['final_server_accuracy']:6.2%} "
        f"(best {s['best_server_accuracy']:6.2%})  client {client_text}  "
        f"paper {s['paper_bytes_total'] / 2**20:8.2f} MiB  wire "
        f"{s['wire_bytes_total'] / 2**20:8.2f} MiB  {results.wall_seconds:6.1f}s"
    )


def estimate_seconds(specs: Sequence[RunSpec]) -> tuple[float, str]:
    """Measure one federated round and one local epoch; extrapolate to ``specs``.

    The probe runs two rounds of DS-FL with f32 codecs (the costliest federated method:
    every label travels) on the first spec's split and times the second round, which
    has the full distill-train-predict work. Baselines are priced from one private epoch
    of one client. The estimate ignores that SCARLET requests fewer labels, so it errs
    on the high side.

    Returns:
        (seconds, a human explanation).
    """
    from scarlet.simulate import EmbeddedFederation, prepare_data
    from shared.distill.training import evaluate, train_supervised
    from shared.models import build_model

    if not specs:
        return 0.0, "nothing to run"
    probe_cfg = specs[0].config.model_copy(
        update={**FEDERATED_METHODS["dsfl"], "rounds": 2, "run_id": "probe"}
    )
    data = prepare_data(probe_cfg)
    fed = EmbeddedFederation(probe_cfg, data)
    fed.run_round()
    start = time.perf_counter()
    fed.run_round()
    round_s = time.perf_counter() - start
    shard = data.clients[0]
    model = build_model(probe_cfg.model, data.input_shape, data.num_classes, seed=0)
    start = time.perf_counter()
    train_supervised(
        model,
        shard.images,
        shard.labels,
        epochs=1,
        batch_size=probe_cfg.batch_size,
        lr=probe_cfg.lr,
        generator=torch.Generator().manual_seed(0),
    )
    epoch_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(model, data.test.images, data.test.labels)
    eval_s = time.perf_counter() - start
    total = 0.0
    for spec in specs:
        cfg = spec.config
        if spec.method in BASELINE_METHODS:
            # K shards' worth of epochs (centralized trains on their union), plus the
            # per-round evaluations on the full test split (individual: one per client)
            evals = cfg.clients if spec.method == "individual" else 1
            total += cfg.rounds * (cfg.clients * cfg.local_epochs * epoch_s + evals * eval_s)
        else:
            total += cfg.rounds * round_s
    note = (
        f"one federated round {round_s:.2f}s, one private epoch {epoch_s:.3f}s, "
        f"one test pass {eval_s:.3f}s"
    )
    return total, note


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_run(spec: RunSpec) -> tuple[RunSpec, RunResults]:
    return spec, run_one(spec)


def run_grid(
    grid: GridSpec,
    *,
    jobs: int = 1,
    threads: int | None = None,
    estimate: bool = True,
    dry_run: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> list[Path]:
    """Run every missing cell of ``grid``; return the results files of all cells.

    Args:
        grid: the grid.
        jobs: runs in parallel (processes); 1 runs in this process.
        threads: torch threads per run (default 1: the small models of this grid run
            several times faster on one thread than on two contended ones).
        estimate: measure a round first and print the estimated time.
        dry_run: stop after the estimate (nothing is run or written).
        progress: show a tqdm bar over runs.
        echo: where lines go (default ``tqdm.write``).
    """
    say = echo or tqdm.write
    specs = grid.runs()
    pending = [s for s in specs if not s.path.exists()]
    done = len(specs) - len(pending)
    threads = threads or 1
    torch.set_num_threads(threads)
    say(
        f"grid: {len(specs)} runs ({len(grid.methods)} methods x {len(grid.alphas)} alphas x "
        f"{len(grid.seeds)} seeds), {done} already done, {len(pending)} to run; "
        f"{jobs} job(s) x {threads} thread(s); results in {grid.out}"
    )
    if estimate and pending:
        seconds, note = estimate_seconds(pending)
        say(
            f"estimate: {seconds / 60:.1f} min of compute for the pending runs "
            f"(~{seconds / 60 / max(jobs, 1):.1f} min wall with {jobs} job(s)); {note}"
        )
    if dry_run:
        for spec in pending:
            say(f"would run {spec.name} -> {spec.path}")
        return [s.path for s in specs]
    started = time.perf_counter()
    bar = tqdm(total=len(specs), initial=done, unit="run", disable=not progress, smoothing=0)
    try:
        if jobs <= 1:
            for spec in pending:
                bar.set_postfix_str(spec.name)
                results = run_one(spec)
                say(summary_line(spec, results))
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(
                jobs, mp_context=context, initializer=_worker_init, initargs=(threads,)
            ) as pool:
                waiting = [pool.submit(_worker_run, spec) for spec in pending]
                for future in futures.as_completed(waiting):
                    spec, results = future.result()
                    say(summary_line(spec, results))
                    bar.update()
    finally:
        bar.close()
    if pending:
        say(f"grid: {len(pending)} runs in {(time.perf_counter() - started) / 60:.1f} min")
    return [s.path for s in specs]


def parse_alphas(values: Iterable[str]) -> tuple[float, ...]:
    """``["0.05", "0.5", "iid"]`` -> ``(0.05, 0.5, 0.0)``."""
    out = []
    for value in values:
        out.append(0.0 if value.lower() == "iid" else float(value))
    return tuple(out)


def parse_sets(values: Iterable[str]) -> dict[str, Any]:
    """``["cache_duration=20", "model=cnn"]`` -> a dict of FederationConfig keys.

    Values stay strings; pydantic converts them when the configs are built.

    Raises:
        ValueError: for an item without ``=`` or an unknown key.
    """
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in FederationConfig.model_fields:
            raise ValueError(
                f"--set: unknown configuration key {key!r}; valid keys: "
                f"{', '.join(sorted(FederationConfig.model_fields))}"
            )
        out[key] = value
    return out
