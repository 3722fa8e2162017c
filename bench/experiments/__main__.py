"""``python -m bench.experiments {grid,report,acceptance,sensitivity}``: see docs/EXPERIMENTS.md."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.experiments.grid import (
    FULL_SIZES,
    METHODS,
    QUICK_SIZES,
    GridSpec,
    parse_alphas,
    parse_sets,
    run_grid,
)
from bench.experiments.report import load_runs, write_report
from bench.experiments.sensitivity import SensitivitySpec, run_sensitivity
from bench.experiments.targets import acceptance, format_acceptance

DEFAULT_OUT = "results/experiments"


def make_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bench.experiments``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.experiments",
        description="Experiment harness: method grid, report, sensitivity sweeps.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    grid = sub.add_parser("grid", help="run methods x alphas x seeds, then write the report")
    _sizes(grid)
    grid.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    grid.add_argument(
        "--alphas", nargs="+", default=["0.05", "0.5", "iid"], help="Dirichlet alphas; iid = 0"
    )
    grid.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    grid.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    grid.add_argument("--threads", type=int, default=None, help="torch threads per run")
    grid.add_argument("--no-estimate", action="store_true", help="skip the timing probe")
    grid.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    grid.add_argument("--no-progress", action="store_true", help="no progress bar")
    grid.add_argument("--no-report", action="store_true", help="do not write results.md")

    report = sub.add_parser("report", help="write results.md and the plots of a results folder")
    report.add_argument("--out", default=DEFAULT_OUT, help="results folder")

    accept = sub.add_parser(
        "acceptance",
        help="print issue 13's acceptance table (ours vs DS-FL and DS-FL + codec) of a "
        "results folder; exit 1 when a goal is not met",
    )
    accept.add_argument("--out", default=DEFAULT_OUT, help="results folder")

    sens = sub.add_parser("sensitivity", help="beta vs T and cache-duration sweeps")
    _sizes(sens)
    sens.add_argument("--alpha", default="0.5", help="Dirichlet alpha of the sweeps; iid = 0")
    sens.add_argument("--seed", type=int, default=0)
    sens.add_argument("--betas", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0, 5.0])
    sens.add_argument(
        "--temperatures", nargs="+", type=float, default=[1.0, 0.5, 0.2, 0.1, 0.05, 0.01]
    )
    sens.add_argument("--durations", nargs="+", type=int, default=[0, 2, 5, 10, 20, 40])
    sens.add_argument(
        "--policies", nargs="+", default=["fixed", "adaptive"], choices=["fixed", "adaptive"]
    )
    sens.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    sens.add_argument("--threads", type=int, default=1, help="torch threads per run")
    sens.add_argument(
        "--sharpening-rounds",
        type=int,
        default=None,
        help="rounds of each beta / T federation (default: half the grid rounds)",
    )
    sens.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _sizes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--dataset", default=None, help="fashion-mnist (default), mnist-5k, digits")
    parser.add_argument("--model", default=None, help="client and server model (default mlp)")
    parser.add_argument("--rounds", type=int, default=None, help="federation rounds")
    parser.add_argument(
        "--set",
        dest="sets",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="any other FederationConfig key, for every run; it wins over a method's own keys, "
        "e.g. --set cache_duration=20 clients=20",
    )


def _sizes_from(args: argparse.Namespace) -> dict[str, object]:
    sizes: dict[str, object] = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    for key in ("dataset", "model", "rounds"):
        value = getattr(args, key)
        if value is not None:
            sizes[key] = value
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = make_parser().parse_args(argv)
    start = time.perf_counter()
    if args.command == "report":
        print(f"wrote {write_report(args.out)}")
        return 0
    if args.command == "acceptance":
        verdicts = acceptance(load_runs(args.out))
        print(format_acceptance(verdicts))
        return 0 if verdicts and all(v.met for v in verdicts) else 1
    try:
        sizes, overrides = _sizes_from(args), parse_sets(args.sets)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "grid":
        grid = GridSpec(
            methods=tuple(args.methods),
            alphas=parse_alphas(args.alphas),
            seeds=tuple(args.seeds),
            sizes=sizes,
            out=Path(args.out),
            overrides=overrides,
        )
        run_grid(
            grid,
            jobs=args.jobs,
            threads=args.threads,
            estimate=not args.no_estimate,
            dry_run=args.dry_run,
            progress=not args.no_progress,
        )
        if not args.no_report and not args.dry_run:
            print(f"wrote {write_report(args.out)}")
            verdicts = acceptance(load_runs(args.out))
            if verdicts:
                print(format_acceptance(verdicts))
    else:
        rounds = int(sizes["rounds"])  # type: ignore[call-overload]
        spec = SensitivitySpec(
            sizes={**sizes, **overrides},
            alpha=parse_alphas([args.alpha])[0],
            seed=args.seed,
            betas=tuple(args.betas),
            temperatures=tuple(args.temperatures),
            durations=tuple(args.durations),
            sharpening_rounds=args.sharpening_rounds or max(2, rounds // 2),
            out=Path(args.out) / "sensitivity",
            policies=tuple(args.policies),
        )
        path = run_sensitivity(
            spec, jobs=args.jobs, threads=args.threads, progress=not args.no_progress
        )
        print(f"wrote {path}")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
