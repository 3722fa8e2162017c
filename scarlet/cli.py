"""``scarlet``: the project's command line.

Subcommands:
  simulate       run a whole federation (K clients + server) in one process
  compare        run it and DS-FL with the same codec on one split; print rounds and bytes to target
  up             run it as real services (cache, aggregator, workers) on RabbitMQ and Redis
  report         plot results files as PNGs (accuracy vs bytes, bytes per round)
  down           remove a run's queues, exchanges and Redis keys
  check-config   validate a configuration and print the effective values
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from shared.config import FederationConfig, ServiceSettings
from shared.config_loading import add_model_flags, flag_overrides, load_config
from shared.errors import ScarletError
from shared.results import RoundRecord, format_round_line

__all__ = ["main", "make_parser"]

logger = logging.getLogger("scarlet")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``scarlet`` command."""
    parser = argparse.ArgumentParser(
        prog="scarlet",
        description="Communication-efficient federated distillation (SCARLET and DS-FL).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run a federation in one process")
    _common(sim)
    sim.add_argument("--out", default="runs/latest.json", help="results file (JSON)")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_flags(sim, FederationConfig)

    comp = sub.add_parser(
        "compare",
        help="run the federation and DS-FL with the same codec; print rounds and bytes to target",
        description="Run the configured federation and DS-FL with the same codecs, sizes and "
        "seed on one split, then print, for 90/95/99 %% of DS-FL's final accuracy, the first "
        "round each reaches it and the wire bytes spent by then. Writes both results files "
        "and the report's PNGs to --out.",
    )
    _common(comp)
    comp.add_argument("--out", type=Path, default=Path("runs/compare"), help="results folder")
    comp.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_flags(comp, FederationConfig)

    up = sub.add_parser("up", help="run the real services as local processes")
    _common(up, log_level=False)
    up.add_argument("--out", default="runs/latest-up.json", help="results file (JSON)")
    up.add_argument("--workers", type=int, default=2, help="pool mode: worker processes")
    up.add_argument("--run-dir", default=None, help="service logs (default runs/<run_id>/)")
    up.add_argument("--resume", action="store_true", help="keep the run's earlier state")
    up.add_argument("--no-progress", action="store_true", help="no progress bar")
    up.add_argument(
        "--no-provision",
        action="store_true",
        help="every service shares the admin broker user (no per-role users, no sender checks)",
    )
    add_model_flags(up, FederationConfig)
    add_model_flags(up, ServiceSettings)

    prov = sub.add_parser(
        "provision",
        help="create per-role broker and Redis users and one config file per role",
        description="Create the federation's users (least-privilege broker permissions, "
        "Redis ACL users), declare its topology and write <out>/<role>.toml (mode 0600). "
        "broker_url and redis_url are the operator's admin URLs.",
    )
    _common(prov, log_level=False)
    prov.add_argument("--out", type=Path, help="folder for the role files (runs/<run>/secrets)")
    prov.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="only print the rabbitmqctl and redis-cli commands (broker password hashes, Redis "
        "passwords)",
    )
    prov.add_argument("--delete", metavar="RUN", help="delete the users of run RUN and exit")
    add_model_flags(prov, FederationConfig)
    add_model_flags(prov, ServiceSettings)

    report = sub.add_parser(
        "report",
        help="plot results files (PNG)",
        description="Write accuracy_vs_bytes.png, bytes_per_round.png and accuracy_vs_rounds.png "
        "for the runs given.",
    )
    report.add_argument("results", nargs="+", type=Path, metavar="RESULTS", help="results files")
    report.add_argument("--out", type=Path, default=Path("runs/report"), help="folder for PNGs")

    down = sub.add_parser(
        "down",
        help="remove a run's queues, exchanges and Redis keys",
        description="Delete the run's task, upload and cache-RPC queues, its four exchanges "
        "and its Redis keys scarlet:RUN_ID:* (nothing of any other run, nor the shared "
        "dead-letter queue). --clients must cover the run's client count (pinned queues).",
    )
    down.add_argument("run", metavar="RUN_ID", help="the run to remove")
    down.add_argument(
        "--reply-worker",
        action="append",
        default=[],
        metavar="WORKER_ID",
        help="also delete this worker's reply queue (others expire after an idle hour)",
    )
    _common(down, log_level=False)
    add_model_flags(down, FederationConfig)
    add_model_flags(down, ServiceSettings)

    check = sub.add_parser("check-config", help="validate and print the effective config")
    _common(check)
    add_model_flags(check, FederationConfig)
    return parser


def _common(p: argparse.ArgumentParser, *, log_level: bool = True) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file")
    if log_level:  # `up` takes --log-level from the service settings
        p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scarlet`` command; returns the process exit status."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        if args.command == "report":
            return _report(args.results, args.out)
        config = load_config(
            FederationConfig,
            path=args.config,
            overrides=flag_overrides(args, FederationConfig),
        )
        if args.command == "check-config":
            print(json.dumps(config.model_dump(), indent=2))
            return EXIT_OK
        if args.command == "down":
            config = config.model_copy(update={"run_id": args.run})
        if args.command in ("up", "provision", "down"):
            settings = load_config(
                ServiceSettings,
                path=args.config,
                section="service",
                overrides=flag_overrides(args, ServiceSettings),
            )
            if args.command == "provision":
                return _provision(config, settings, args)
            if args.command == "down":
                return _down(config, settings, tuple(args.reply_worker))
            return _up(config, settings, args)
        if args.command == "compare":
            return _compare(config, args.out, progress=not args.no_progress)
        return _simulate(config, Path(args.out), progress=not args.no_progress)
    except ScarletError as e:
        print(f"scarlet: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("scarlet: interrupted", file=sys.stderr)
        return 130


def _simulate(config: FederationConfig, out: Path, *, progress: bool) -> int:
    # imported here so that `scarlet check-config` answers without loading torch
    from scarlet.simulate import EmbeddedFederation, prepare_data
    from shared.data.summary import describe_split

    logger.info("simulate: effective config %s", config.model_dump())
    start = time.perf_counter()
    source = f" (public set: {config.public_source})" if config.cross_dataset else ""
    print(
        f"scarlet: loading {config.dataset}{source} and splitting it over {config.clients} clients"
    )
    data = prepare_data(config)
    for line in describe_split(config, data):
        print(f"scarlet: {line}")
    federation = EmbeddedFederation(config, data)
    print(
        f"scarlet: {config.algorithm} on {config.dataset}: {config.clients} clients, "
        f"{config.rounds} rounds, |P|={config.public_size}, {config.public_per_round}/round"
    )
    bar = tqdm(total=config.rounds, unit="round", disable=not progress, file=sys.stderr)

    def on_round(record: RoundRecord) -> None:
        bar.write(format_round_line(record))
        bar.set_postfix(acc=f"{record.server_accuracy:.3f}")
        bar.update(1)

    try:
        results = federation.run(on_round)
    finally:
        bar.close()
    results.wall_seconds = time.perf_counter() - start
    path = results.write(out)
    s = results.summary()
    print(
        f"scarlet: done in {s['wall_seconds']:.0f}s: final server accuracy "
        f"{s['final_server_accuracy']:.2%} (best {s['best_server_accuracy']:.2%}); "
        f"soft labels up {s['labels_up']} down {s['labels_down']}; "
        f"paper bytes {s['paper_bytes_total'] / 2**20:.1f} MiB vs DS-FL f32 "
        f"{s['baseline_bytes_total'] / 2**20:.1f} MiB; wire {s['wire_bytes_total'] / 2**20:.1f} MiB"
    )
    print(f"scarlet: results written to {path}")
    return EXIT_OK


def _compare(config: FederationConfig, out: Path, *, progress: bool) -> int:
    from scarlet.compare import baseline_config, compare, format_comparison

    if config.algorithm == "dsfl":
        print(
            "scarlet: error: compare runs DS-FL itself as the baseline; configure "
            "another algorithm",
            file=sys.stderr,
        )
        return EXIT_USAGE
    baseline = baseline_config(config)
    print(
        f"scarlet: comparing {config.algorithm} ({config.cache_policy} cache) with DS-FL, "
        f"codecs {config.uplink_codec} up / {config.downlink_codec} down, on {config.dataset}: "
        f"{config.clients} clients, {config.rounds} rounds each"
    )
    bar = tqdm(total=2 * config.rounds, unit="round", disable=not progress, file=sys.stderr)

    def on_round(name: str, record: RoundRecord) -> None:
        bar.write(f"{name[:28]:<28} {format_round_line(record)}")
        bar.update(1)

    try:
        runs, written = compare(config, out, on_round)
    finally:
        bar.close()
    print()
    print(format_comparison(runs))
    print()
    print(
        f"scarlet: targets are shares of DS-FL's final accuracy; wire ratios are against "
        f"DS-FL ({baseline.uplink_codec}) at its own crossing"
    )
    for path in written:
        print(f"scarlet: wrote {path}")
    return EXIT_OK


def _report(results: list[Path], out: Path) -> int:
    # imported here so that the other commands never load matplotlib
    from scarlet.report import write_report

    for path in write_report(results, out):
        print(f"scarlet: wrote {path}")
    return EXIT_OK


def _up(config: FederationConfig, settings: ServiceSettings, args: argparse.Namespace) -> int:
    from scarlet.up import Launcher

    if args.workers < 1:
        print("scarlet: error: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path(args.run_dir or f"runs/{config.run_id}")
    mode = settings.worker_mode
    count = args.workers if mode == "pool" else config.clients
    print(
        f"scarlet: starting the cache service, the aggregator and {count} {mode} workers "
        f"({config.algorithm} on {config.dataset}, {config.rounds} rounds); logs in {run_dir}"
    )
    if args.no_provision:
        print("scarlet: --no-provision: every service runs as the admin user", file=sys.stderr)
    launcher = Launcher(
        config,
        settings,
        args.workers,
        run_dir,
        fresh=not args.resume,
        provision=not args.no_provision,
    )
    return launcher.run(Path(args.out), progress=not args.no_progress)


def _down(config: FederationConfig, settings: ServiceSettings, workers: tuple[str, ...]) -> int:
    from scarlet.down import tear_down

    try:
        removed = tear_down(config, settings, workers)
    except ValueError as e:
        print(f"scarlet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"scarlet: removed run {config.run_id}: {len(removed.queues)} queues, "
        f"{len(removed.exchanges)} exchanges, Redis keys {removed.key_pattern}"
    )
    return EXIT_OK


def _provision(
    config: FederationConfig, settings: ServiceSettings, args: argparse.Namespace
) -> int:
    from scarlet.provision import delete_users, provision

    if args.delete:
        for name in delete_users(args.delete, settings):
            print(f"scarlet: deleted {name}")
        return EXIT_OK
    out = args.out or Path(f"runs/{config.run_id}/secrets")
    made = provision(config, settings, out, apply=not args.print_only)
    for line in made.commands:
        print(line)
    for name, path in made.files.items():
        print(f"scarlet: {name}: {path}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
