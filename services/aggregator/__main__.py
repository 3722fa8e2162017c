"""``scarlet-aggregator``: the aggregator process (composition root).

Subcommands (parsing, config, logging and exit status: :func:`shared.cli.run_service`):
  run                drive the federation's rounds, resuming from the store if it holds state
  declare-topology   declare the exchange and queues, then exit
  check-config       print the effective configuration
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from services.aggregator.coordinator import RoundCoordinator
from shared import cli
from shared.config import FederationConfig, ServiceSettings
from shared.data.summary import describe_split
from shared.results import RoundRecord, RunResults, format_round_line
from shared.rounds.setup import apply_threads, prepare_server_data
from shared.security.roles import sender_identities
from shared.state import open_federation_store
from shared.transport.topology import declare_topology

__all__ = ["main", "make_parser"]

logger = logging.getLogger(__name__)


def _flags(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "run":
        parser.add_argument("--out", type=Path, help="write the results file (JSON) here")


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scarlet-aggregator`` (``python -m services.aggregator``)."""
    return cli.make_service_parser(
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
    return cli.run_service(make_parser(), argv, _serve)


def _serve(args: argparse.Namespace, config: FederationConfig, settings: ServiceSettings) -> None:
    if args.command == "declare-topology":
        transport = cli.open_service_transport(settings, f"scarlet-aggregator/{config.run_id}")
        declare_topology(transport, config, settings.worker_mode)
        transport.close()
    else:
        _run(config, settings, args.out)


def _run(config: FederationConfig, settings: ServiceSettings, out: Path | None) -> None:
    apply_threads(config)
    data = prepare_server_data(config)  # the public set and the test split only
    for line in describe_split(config, data):
        logger.info("data: %s", line)
    name = f"scarlet-aggregator/{config.run_id}"
    with cli.serving(settings, name, settings.ingest_prefetch) as serving:
        store = open_federation_store(
            settings.redis_url, config.run_id, retry_s=settings.store_retry_s
        )
        coordinator = RoundCoordinator(
            config,
            settings,
            data,
            serving.transport,
            store,
            serving.metrics,
            senders=sender_identities(settings),
        )
        coordinator.start()

        def on_round(record: RoundRecord) -> None:
            logger.info("round: %s", format_round_line(record))

        coordinator.run(on_round=on_round, stop=serving.stop.is_set)
        if coordinator.finished:
            logger.info(
                "aggregator: federation %s finished after %s rounds", config.run_id, config.rounds
            )
        if out is not None:
            results = RunResults(config=config.model_dump())
            results.rounds = [RoundRecord.from_json(json.loads(r)) for r in store.results()]
            results.write(out)
        if coordinator.finished and settings.linger_s:
            # final values stay scrapeable; SIGTERM still ends the process at once
            serving.stop.wait(None if settings.linger_s < 0 else settings.linger_s)


if __name__ == "__main__":
    sys.exit(main())
