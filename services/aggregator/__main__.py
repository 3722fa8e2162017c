"""``scarlet-aggregator``: the aggregator process (composition root).

Subcommands:
  run                drive the federation's rounds, resuming from the store if it holds state
  declare-topology   declare the exchange and queues, then exit
  check-config       validate the configuration and print the effective values
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from services.aggregator.service import AggregatorService
from shared.cli import (
    EXIT_ERROR,
    EXIT_OK,
    effective_config,
    load_service_config,
    make_service_parser,
    open_service_transport,
    serve_metrics,
    setup_logging,
    stop_on_signals,
)
from shared.config import FederationConfig, ServiceSettings
from shared.errors import ScarletError
from shared.metrics import Metrics
from shared.results import RoundRecord, RunResults, format_round_line
from shared.rounds.setup import apply_threads, prepare_data
from shared.state import open_federation_store
from shared.transport.topology import declare_topology

__all__ = ["main", "make_parser"]

logger = logging.getLogger(__name__)


def _flags(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "run":
        parser.add_argument("--out", type=Path, help="write the results file (JSON) here")


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scarlet-aggregator`` (``python -m services.aggregator``)."""
    return make_service_parser(
        "scarlet-aggregator",
        "SCARLET aggregator: drives rounds, aggregates soft labels, trains the server model.",
        {
            "run": "drive the federation until its last round",
            "declare-topology": "declare the exchange and queues, then exit",
        },
        _flags,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scarlet-aggregator``; returns the process exit status."""
    args = make_parser().parse_args(argv)
    try:
        config, settings = load_service_config(args)
        if args.command == "check-config":
            print(effective_config(config, settings))
            return EXIT_OK
        setup_logging(settings.log_level, "aggregator")
        logger.info("config: %s", effective_config(config, settings).replace("\n", " "))
        if args.command == "declare-topology":
            transport = open_service_transport(settings, f"scarlet-aggregator/{config.run_id}")
            declare_topology(transport, config, settings.worker_mode)
            transport.close()
            return EXIT_OK
        _run(config, settings, args.out)
    except ScarletError as e:
        logger.error("aggregator: stopped on error: %s", e)
        print(f"scarlet-aggregator: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _run(config: FederationConfig, settings: ServiceSettings, out: Path | None) -> None:
    apply_threads(config)
    data = prepare_data(config)
    metrics = Metrics.create()
    serve_metrics(settings.metrics_port, metrics.registry)
    with stop_on_signals() as stop, contextlib.ExitStack() as stack:
        transport = open_service_transport(settings, f"scarlet-aggregator/{config.run_id}")
        stack.callback(transport.close)
        store = open_federation_store(settings.redis_url, config.run_id)
        service = AggregatorService(config, settings, data, transport, store, metrics)
        service.start()

        def on_round(record: RoundRecord) -> None:
            logger.info("round: %s", format_round_line(record))

        service.run(on_round=on_round, stop=stop.is_set)
        if service.finished:
            logger.info(
                "aggregator: federation %s finished after %s rounds", config.run_id, config.rounds
            )
        if out is not None:
            results = RunResults(config=config.model_dump())
            results.rounds = [RoundRecord.from_json(json.loads(r)) for r in store.results()]
            results.write(out)
        if service.finished and settings.linger_s:
            # final values stay scrapeable; SIGTERM still ends the process at once
            stop.wait(None if settings.linger_s < 0 else settings.linger_s)


if __name__ == "__main__":
    sys.exit(main())
