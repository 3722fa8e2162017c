"""Sensitivity sweeps: Enhanced ERA's β against DS-FL's T, and the cache duration D.

Three parts, written to ``<out>/sensitivity.md`` with two PNGs:

1. **Sharpening in the federation.** SCARLET with β in a list and DS-FL with T in a list,
   everything else equal. SCARLET runs with ``cache_duration = 0`` and both with f32
   codecs, so the two differ only in the aggregation rule. Every round the harness reads
   the per-index mean of the accepted uploads (just before the aggregator closes the
   round) and the global soft labels the aggregator then sends
   (``core.downlink_targets.fresh_labels``), and records the mean entropy of both.
2. **Analytic response on fixed real soft labels.** The averaged soft labels of the last
   round of the β = 1 run (β = 1 is the identity, so these are the plain means of the
   clients' predictions) are pushed through :func:`shared.distill.era.enhanced_era` on a
   dense β grid and :func:`shared.distill.era.era` on a dense T grid. Reported: the mean
   entropy, and how linear the control is (R² of entropy against β, resp. against
   log10 T, and the steepest slope relative to a linear response over the swept range).
3. **Cache duration D.** SCARLET (f32 codecs) with the fixed policy and with the adaptive
   policy for each D, plus one DS-FL f32 run: accuracy, requested share (measured, and the
   steady-state value 2 / (2 + p·D) of PAPER.md §2.4, p = public_per_round / public_size)
   and bytes in both accountings.

Every run's results (with the entropies) go to ``<out>/runs/<name>.json``; existing
files are reused, so the sweep resumes.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from shared.config import FederationConfig
from shared.distill.aggregate import mean_by_index
from shared.distill.era import enhanced_era, era
from shared.results import RoundRecord, RunResults
from shared.rounds.aggregator import RoundResult

__all__ = [
    "SensitivitySpec",
    "SweepRun",
    "analytic_response",
    "linearity",
    "mean_entropy",
    "row_entropy",
    "run_sensitivity",
]

F32 = {"uplink_codec": "f32", "downlink_codec": "f32"}


@dataclass(frozen=True)
class SensitivitySpec:
    """What to sweep.

    Attributes:
        sizes: FederationConfig keys shared by every run (data set, sizes, epochs).
        alpha: the Dirichlet alpha (0 = IID).
        seed: the seed of every run.
        betas: Enhanced ERA exponents.
        temperatures: DS-FL ERA temperatures.
        durations: cache durations D.
        sharpening_rounds: rounds of each β / T run.
        out: the output folder.
        policies: cache policies of the D sweep.
    """

    sizes: Mapping[str, object]
    alpha: float
    seed: int
    betas: tuple[float, ...]
    temperatures: tuple[float, ...]
    durations: tuple[int, ...]
    sharpening_rounds: int
    out: Path
    policies: tuple[str, ...] = ("fixed", "adaptive")


@dataclass
class SweepRun:
    """One sensitivity run: results plus the per-round entropies (bits)."""

    name: str
    config: FederationConfig
    results: RunResults = field(default_factory=lambda: RunResults(config={}))
    input_entropy: list[float] = field(default_factory=list)  # of the plain means
    sent_entropy: list[float] = field(default_factory=list)  # of the labels sent down
    last_means: Tensor | None = None  # the last round's averaged soft labels


@dataclass(frozen=True)
class CacheRow:
    """One run of the cache-duration sweep, as tabulated and plotted."""

    policy: str  # fixed, adaptive, or dsfl (the reference)
    duration: int
    final_accuracy: float
    paper_ratio: float
    wire_ratio: float


def row_entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in bits of each row of ``probs`` (0 log 0 = 0), float64."""
    p = probs.to(torch.float64)
    return torch.where(p > 0, -p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p)).sum(1)


def mean_entropy(probs: Tensor) -> float:
    """Mean Shannon entropy in bits of the rows of ``probs`` (NaN for no rows)."""
    if probs.numel() == 0:
        return math.nan
    return float(row_entropy(probs).mean())


def _runs_dir(out: Path) -> Path:
    return out / "runs"


def _path(out: Path, name: str) -> Path:
    return _runs_dir(out) / f"{name}.json"


def run_instrumented(config: FederationConfig, name: str) -> SweepRun:
    """Run a federation and record, each round, the entropy of its averaged and sent labels."""
    from scarlet.simulate import EmbeddedFederation, prepare_data

    config = config.model_copy(update={"run_id": name.replace(".", "_")})
    fed = EmbeddedFederation(config, prepare_data(config))
    core = fed.aggregator.core
    run = SweepRun(name, config)
    original_close = core.close_round

    def close_round() -> RoundResult:
        # the uploads are still held here; close_round() clears them
        ordered = [core.uploads[k] for k in sorted(core.uploads)]
        if ordered:
            labels = torch.from_numpy(np.concatenate([u.soft_labels for u in ordered]))
            index = torch.from_numpy(np.concatenate([u.indices for u in ordered]))
            means, _ = mean_by_index(labels, index, config.public_size)
            run.last_means = means
            run.input_entropy.append(mean_entropy(means))
        else:
            run.input_entropy.append(math.nan)
        return original_close()

    core.close_round = close_round  # type: ignore[method-assign]

    def on_round(_: RoundRecord) -> None:
        sent = core.downlink_targets
        sent_labels = None if sent is None else torch.from_numpy(sent.fresh_labels)
        run.sent_entropy.append(math.nan if sent_labels is None else mean_entropy(sent_labels))

    run.results = fed.run(on_round)
    return run


def _save(out: Path, run: SweepRun) -> None:
    doc = run.results.to_json()
    doc["sensitivity"] = {
        "name": run.name,
        "input_entropy": [None if math.isnan(x) else x for x in run.input_entropy],
        "sent_entropy": [None if math.isnan(x) else x for x in run.sent_entropy],
    }
    path = _path(out, run.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json.tmp").write_text(json.dumps(doc) + "\n")
    path.with_suffix(".json.tmp").replace(path)
    if run.last_means is not None:
        torch.save(run.last_means, path.with_suffix(".means.pt"))


def _load(out: Path, name: str, config: FederationConfig) -> SweepRun | None:
    path = _path(out, name)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    results = RunResults(config=doc["config"])
    results.rounds = [RoundRecord.from_json(r) for r in doc["rounds"]]
    results.wall_seconds = float(doc["summary"].get("wall_seconds") or 0.0)
    sens = doc["sensitivity"]
    means_path = path.with_suffix(".means.pt")
    means = torch.load(means_path) if means_path.exists() else None
    return SweepRun(
        name,
        config,
        results,
        [math.nan if x is None else x for x in sens["input_entropy"]],
        [math.nan if x is None else x for x in sens["sent_entropy"]],
        means,
    )


def analytic_response(
    means: Tensor, betas: np.ndarray, temperatures: np.ndarray
) -> tuple[list[float], list[float]]:
    """Mean entropy (bits) of Enhanced ERA over ``betas`` and of ERA over ``temperatures``."""
    h_beta = [mean_entropy(enhanced_era(means, float(b))) for b in betas]
    h_temp = [mean_entropy(era(means, float(t))) for t in temperatures]
    return h_beta, h_temp


def linearity(x: np.ndarray, h: list[float]) -> tuple[float, float]:
    """(R² of a straight-line fit of h on x, steepest |slope| / mean |slope|).

    The second number is 1 for a perfectly linear response and grows when the change is
    concentrated in a narrow band of the parameter (a switch rather than a dial).
    """
    y = np.asarray(h, dtype=np.float64)
    coeffs = np.polyfit(x, y, 1)
    residual = float(np.sum((y - np.polyval(coeffs, x)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else 1.0
    slopes = np.abs(np.diff(y) / np.diff(x))
    mean_slope = abs(y[-1] - y[0]) / abs(x[-1] - x[0])
    peak = float(slopes.max() / mean_slope) if mean_slope > 0 else math.inf
    return r2, peak


def _row_effects(before: Tensor, after: Tensor) -> tuple[float, float]:
    """(share of rows whose entropy rose by more than 1e-6 bits, share with the same argmax)."""
    flattened = float((row_entropy(after) > row_entropy(before) + 1e-6).double().mean())
    kept = float((before.argmax(dim=1) == after.argmax(dim=1)).double().mean())
    return flattened, kept


def _crossing(grid: np.ndarray, h: list[float], level: float) -> float | None:
    """The first grid value (linearly interpolated) where ``h`` crosses ``level``."""
    for i in range(len(h) - 1):
        a, b = h[i] - level, h[i + 1] - level
        if a == 0:
            return float(grid[i])
        if a * b < 0:
            return float(grid[i] + (grid[i + 1] - grid[i]) * a / (a - b))
    return None


def _fmt_pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.2f}"


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def _config(spec: SensitivitySpec, **keys: object) -> FederationConfig:
    return FederationConfig.model_validate(
        {**spec.sizes, "alpha": spec.alpha, "seed": spec.seed, **keys}
    )


def _plan(spec: SensitivitySpec) -> list[tuple[str, str, float, FederationConfig]]:
    """(name, group, parameter, config) of every run, in execution order."""
    r = spec.sharpening_rounds
    plan = []
    for beta in spec.betas:
        cfg = _config(spec, algorithm="scarlet", beta=beta, cache_duration=0, rounds=r, **F32)
        plan.append((f"beta-{beta:g}", "beta", beta, cfg))
    for t in spec.temperatures:
        cfg = _config(spec, algorithm="dsfl", temperature=t, rounds=r, **F32)
        plan.append((f"temperature-{t:g}", "temperature", t, cfg))
    plan.append(("cache-dsfl", "dsfl", 0.0, _config(spec, algorithm="dsfl", **F32)))
    for policy in spec.policies:
        for d in spec.durations:
            cfg = _config(
                spec,
                algorithm="scarlet",
                cache_policy=policy,
                cache_duration=d,
                **F32,
            )
            plan.append((f"cache-{policy}-D{d}", policy, float(d), cfg))
    return plan


def _sweep_worker(name: str, config: FederationConfig, out: Path, threads: int) -> str:
    torch.set_num_threads(threads)
    run = run_instrumented(config, name)
    _save(out, run)
    return _line(run)


def _line(run: SweepRun) -> str:
    s = run.results.summary()
    return (
        f"{run.name:<24} server {s['final_server_accuracy']:6.2%}  "
        f"H(sent) {_nanmean(run.sent_entropy):.3f} bits  paper "
        f"{s['paper_bytes_total'] / 2**20:7.2f} MiB  wire "
        f"{s['wire_bytes_total'] / 2**20:7.2f} MiB  {run.results.wall_seconds:5.1f}s"
    )


def run_sensitivity(
    spec: SensitivitySpec,
    *,
    jobs: int = 1,
    threads: int = 1,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Run every missing sweep run, then write ``sensitivity.md`` and the PNGs.

    Args:
        spec: what to sweep.
        jobs: runs in parallel (processes).
        threads: torch threads per run.
        progress: show a tqdm bar over runs.
        echo: where lines go (default ``tqdm.write``).
    """
    say = echo or tqdm.write
    plan = _plan(spec)
    pending = [(name, cfg) for name, _, _, cfg in plan if not _path(spec.out, name).exists()]
    say(
        f"sensitivity: {len(plan)} runs, {len(plan) - len(pending)} already done, "
        f"{len(pending)} to run; {jobs} job(s) x {threads} thread(s); results in {spec.out}"
    )
    torch.set_num_threads(threads)
    started = time.perf_counter()
    bar = tqdm(
        total=len(plan),
        initial=len(plan) - len(pending),
        unit="run",
        smoothing=0,
        disable=not progress,
    )
    try:
        if jobs <= 1:
            for name, cfg in pending:
                bar.set_postfix_str(name)
                say(_sweep_worker(name, cfg, spec.out, threads))
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
                waiting = [
                    pool.submit(_sweep_worker, name, cfg, spec.out, threads)
                    for name, cfg in pending
                ]
                for future in futures.as_completed(waiting):
                    say(future.result())
                    bar.update()
    finally:
        bar.close()
    say(f"sensitivity: {len(pending)} runs in {(time.perf_counter() - started) / 60:.1f} min")
    runs: dict[str, tuple[str, float, SweepRun]] = {}
    for name, group, value, cfg in plan:
        run = _load(spec.out, name, cfg)
        assert run is not None, name
        runs[name] = (group, value, run)
    return _write(spec, runs)


def _write(spec: SensitivitySpec, runs: Mapping[str, tuple[str, float, SweepRun]]) -> Path:
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Sensitivity: Enhanced ERA's β vs DS-FL's T, and the cache duration D", ""]
    any_cfg = next(iter(runs.values()))[2].config
    lines.append(
        f"Data set `{any_cfg.dataset}`, model `{any_cfg.model}`, {any_cfg.clients} clients x "
        f"{any_cfg.samples_per_client} private samples, public {any_cfg.public_per_round} of "
        f"{any_cfg.public_size} per round, α = {'IID' if spec.alpha == 0 else spec.alpha}, "
        f"seed {spec.seed}. Entropies in bits (uniform over {_classes(runs)} classes = "
        f"{math.log2(_classes(runs)):.3f}); accuracies in %."
    )
    lines.append("")

    # 1. in the federation
    lines += [
        f"## 1. Sharpening inside the federation ({spec.sharpening_rounds} rounds, f32, "
        "SCARLET with D = 0)",
        "",
        "*H(mean)*: entropy of the per-index mean of the clients' uploads; *H(sent)*: of the "
        "global soft labels the aggregator sends; both averaged over rounds.",
        "",
        "| rule | parameter | final server acc | best server acc | final client acc "
        "| H(mean) | H(sent) | H(sent) − H(mean) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group, label, symbol in (("beta", "Enhanced ERA", "β"), ("temperature", "ERA", "T")):
        for _name, (g, value, run) in runs.items():
            if g != group:
                continue
            s = run.results.summary()
            h_in, h_out = _nanmean(run.input_entropy), _nanmean(run.sent_entropy)
            lines.append(
                f"| {label} | {symbol} = {value:g} | {_fmt_pct(s['final_server_accuracy'])} | "
                f"{_fmt_pct(s['best_server_accuracy'])} | "
                f"{_fmt_pct(s['final_client_accuracy'])} | {h_in:.3f} | {h_out:.3f} | "
                f"{h_out - h_in:+.3f} |"
            )
    lines.append("")

    # 2. analytic
    reference = next(
        (r for g, v, r in runs.values() if g == "beta" and v == 1.0 and r.last_means is not None),
        next((r for g, _, r in runs.values() if r.last_means is not None), None),
    )
    beta_grid = np.linspace(1.0, max(spec.betas + (1.0,)), 81)
    t_lo, t_hi = min(spec.temperatures), max(spec.temperatures)
    temp_grid = np.logspace(math.log10(t_lo), math.log10(t_hi), 81)
    analytic = None
    if reference is not None and reference.last_means is not None:
        means = reference.last_means
        h_in = mean_entropy(means)
        h_beta, h_temp = analytic_response(means, beta_grid, temp_grid)
        r2_b, peak_b = linearity(beta_grid, h_beta)
        r2_t, peak_t = linearity(np.log10(temp_grid), h_temp)
        analytic = (means, h_in, h_beta, h_temp)
        pt_b, pt_t = analytic_response(means, np.asarray(spec.betas), np.asarray(spec.temperatures))
        lines += [
            "## 2. Analytic response on fixed real averaged soft labels",
            "",
            f"{means.shape[0]} averaged soft labels from run `{reference.name}` (last round), "
            f"mean entropy {h_in:.3f} bits, mean max-probability "
            f"{float(means.max(dim=1).values.mean()):.3f}.",
            "",
            "*flattened*: share of the rows whose entropy the rule *raises* (a sharpening "
            "rule should never do that); *argmax kept*: share of rows whose top class is "
            "unchanged.",
            "",
            "| rule | parameter | mean entropy (bits) | change vs input | mean p_max "
            "| flattened | argmax kept |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        rules = [("Enhanced ERA", "β", b, enhanced_era(means, b)) for b in spec.betas]
        rules += [("ERA", "T", t, era(means, t)) for t in spec.temperatures]
        for label, symbol, value, sharp in rules:
            flat, kept = _row_effects(means, sharp)
            h = mean_entropy(sharp)
            lines.append(
                f"| {label} | {symbol} = {value:g} | {h:.3f} | {h - h_in:+.3f} | "
                f"{float(sharp.max(dim=1).values.mean()):.3f} | "
                f"{100 * flat:.1f} % | {100 * kept:.1f} % |"
            )
        crossing = _crossing(temp_grid, h_temp, h_in)
        lines += [
            "",
            "Controllability over the swept ranges (81-point grids): R² of a straight-line fit "
            "of the entropy (against β, resp. against log10 T), and the steepest local slope "
            "divided by the mean slope (1 = perfectly even; large = the change happens in a "
            "narrow band).",
            "",
            "| rule | range | entropy range (bits) | R² (linear fit) | steepest / mean slope |",
            "|---|---|---:|---:|---:|",
            f"| Enhanced ERA | β ∈ [1, {beta_grid[-1]:g}] | {h_beta[0]:.3f} → {h_beta[-1]:.3f} "
            f"| {r2_b:.3f} | {peak_b:.2f} |",
            f"| ERA | T ∈ [{t_lo:g}, {t_hi:g}] (log) | {h_temp[-1]:.3f} → {h_temp[0]:.3f} "
            f"| {r2_t:.3f} | {peak_t:.2f} |",
            "",
            "Enhanced ERA is the identity at β = 1 and lowers the entropy monotonically from "
            "there. ERA has no identity: "
            + (
                f"above T ≈ {crossing:.3g} it *raises* the mean entropy (towards uniform, "
                f"{math.log2(means.shape[1]):.3f} bits), below it lowers it."
                if crossing is not None
                else "it does not cross the input entropy on the swept range."
            ),
            "",
        ]

    # 3. cache duration
    dsfl = next((r for g, _, r in runs.values() if g == "dsfl"), None)
    lines += [
        "## 3. Cache duration D (SCARLET, f32 codecs)",
        "",
        "*requested*: share of the drawn public samples the clients were asked to predict, "
        "mean over rounds; *theory*: the steady state 2 / (2 + p·D) of PAPER.md §2.4 "
        "(fixed policy; reached only after the first expiries). Ratios divide by the DS-FL "
        "f32 run with the same sizes.",
        "",
        "| policy | D | final server acc | best server acc | final client acc | requested "
        "| theory | paper (MiB) | wire (MiB) | vs DS-FL (paper) | vs DS-FL (wire) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cache_rows = []
    for _name, (g, value, run) in runs.items():
        if g not in ("dsfl", *spec.policies):
            continue
        cfg, s = run.config, run.results.summary()
        recs = run.results.rounds
        drawn = sum(r.requested + r.reused for r in recs)
        requested = sum(r.requested for r in recs) / drawn if drawn else math.nan
        p = cfg.public_per_round / cfg.public_size
        d = int(value)
        theory = 1.0 if g == "dsfl" else (2 / (2 + p * d) if g == "fixed" else math.nan)
        paper, wire = float(s["paper_bytes_total"]), float(s["wire_bytes_total"])
        ratio_p = paper / float(dsfl.results.summary()["paper_bytes_total"]) if dsfl else math.nan
        ratio_w = wire / float(dsfl.results.summary()["wire_bytes_total"]) if dsfl else math.nan
        cache_rows.append(CacheRow(g, d, float(s["final_server_accuracy"]), ratio_p, ratio_w))
        lines.append(
            f"| {g} | {'—' if g == 'dsfl' else d} | {_fmt_pct(s['final_server_accuracy'])} | "
            f"{_fmt_pct(s['best_server_accuracy'])} | {_fmt_pct(s['final_client_accuracy'])} "
            f"| {requested:.3f} | {'—' if math.isnan(theory) else f'{theory:.3f}'} | "
            f"{paper / 2**20:.2f} | {wire / 2**20:.2f} | {ratio_p:.3f} | {ratio_w:.3f} |"
        )
    lines += [
        "",
        "![sharpening](sensitivity_sharpening.png)",
        "",
        "![cache duration](sensitivity_cache.png)",
        "",
    ]
    _plot_sharpening(spec, runs, beta_grid, temp_grid, analytic)
    _plot_cache(spec, cache_rows)
    path = out / "sensitivity.md"
    path.write_text("\n".join(lines))
    return path


def _classes(runs: Mapping[str, tuple[str, float, SweepRun]]) -> int:
    for _, _, run in runs.values():
        if run.last_means is not None:
            return int(run.last_means.shape[1])
    return 10


def _plot_sharpening(
    spec: SensitivitySpec,
    runs: Mapping[str, tuple[str, float, SweepRun]],
    beta_grid: np.ndarray,
    temp_grid: np.ndarray,
    analytic: tuple[Tensor, float, list[float], list[float]] | None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    h_max = math.log2(_classes(runs))
    for col, (group, grid, symbol) in enumerate(
        (("beta", beta_grid, "β"), ("temperature", temp_grid, "T"))
    ):
        ax_h, ax_acc = axes[0][col], axes[1][col]
        if analytic is not None:
            _, h_in, h_beta, h_temp = analytic
            ax_h.plot(
                grid, h_beta if group == "beta" else h_temp, "-", label="analytic (fixed labels)"
            )
            ax_h.axhline(h_in, color="grey", ls=":", label="input (plain mean)")
        points = sorted((v, r) for _, (g, v, r) in runs.items() if g == group)
        xs = [v for v, _ in points]
        ax_h.plot(
            xs, [_nanmean(r.sent_entropy) for _, r in points], "o", label="sent, in federation"
        )
        ax_h.axhline(h_max, color="black", ls="--", lw=0.8, label="uniform")
        accs = [100 * r.results.summary()["final_server_accuracy"] for _, r in points]
        ax_acc.plot(xs, accs, "o-", label="final server accuracy")
        ax_h.set_ylabel("mean entropy (bits)")
        ax_acc.set_ylabel("server accuracy (%)")
        for ax in (ax_h, ax_acc):
            ax.set_xlabel(symbol + (" (log)" if group == "temperature" else ""))
            ax.grid(True, which="both", alpha=0.3)
            if group == "temperature":
                ax.set_xscale("log")
        rule = "Enhanced ERA p^β/Σp^β" if group == "beta" else "DS-FL ERA softmax(p/T)"
        ax_h.set_title(f"{rule}: entropy of the global labels")
        ax_acc.set_title(f"{rule}: accuracy after {spec.sharpening_rounds} rounds")
        ax_h.legend(fontsize=8)
    fig.savefig(spec.out / "sensitivity_sharpening.png", dpi=110)
    plt.close(fig)


def _plot_cache(spec: SensitivitySpec, rows: list[CacheRow]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for policy in spec.policies:
        pts = sorted((r for r in rows if r.policy == policy), key=lambda r: r.duration)
        if not pts:
            continue
        ds = [r.duration for r in pts]
        color = "tab:blue" if policy == "fixed" else "tab:orange"
        axes[0].plot(
            ds, [r.paper_ratio for r in pts], "o-", color=color, label=f"{policy}: paper bytes"
        )
        axes[0].plot(
            ds, [r.wire_ratio for r in pts], "s--", color=color, label=f"{policy}: wire bytes"
        )
        axes[1].plot(ds, [100 * r.final_accuracy for r in pts], "o-", color=color, label=policy)
    for r in rows:
        if r.policy == "dsfl":
            axes[1].axhline(100 * r.final_accuracy, color="grey", ls=":", label="DS-FL")
    axes[0].axhline(1.0, color="grey", ls=":")
    axes[0].set_ylabel("total bytes relative to DS-FL f32")
    axes[1].set_ylabel("final server accuracy (%)")
    for ax in axes:
        ax.set_xlabel("cache duration D (rounds)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("communication vs D")
    axes[1].set_title("accuracy vs D")
    fig.savefig(spec.out / "sensitivity_cache.png", dpi=110)
    plt.close(fig)
