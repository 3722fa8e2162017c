"""``scarlet-cache``: the cache service process (composition root).

Subcommands:
  run            serve cache-sync requests until SIGTERM or SIGINT, then close, exit 0
  check-config   validate the configuration and print the effective values

Configuration, lowest precedence first: defaults < ``--config FILE`` (TOML:
:class:`~shared.config.FederationConfig` keys at the top level,
:class:`~shared.config.ServiceSettings` keys under ``[service]``) < ``SCARLET_*``
environment variables < command-line flags (one per key, e.g. ``--run-id``,
``--redis-url``). With ``metrics_port`` set (``--metrics-port N``) it serves Prometheus
metrics on ``http://0.0.0.0:N/metrics`` (``scarlet_cache_sync_requests_total{outcome}``, the
cache-sync bytes and dead letters).

Exit status: 0 done, 1 configuration or runtime error (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence

from services.cache.service import CacheService
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
from shared.errors import ConfigError, ScarletError
from shared.metrics import Metrics
from shared.protocol.codec import DecodeLimits
from shared.state import open_federation_store
from shared.state.base import check_run_id

__all__ = ["dataset_classes", "main", "make_parser"]

logger = logging.getLogger(__name__)


_CLASSES = {"fashion-mnist": 10, "mnist-5k": 10, "digits": 10, "cifar10": 10, "cifar100": 100}


def dataset_classes(name: str) -> int:
    """The number of classes C of a data set, without loading it.

    Raises:
        ConfigError: an unknown data set name.
    """
    try:
        return _CLASSES[name]
    except KeyError:
        raise ConfigError(f"dataset: unknown {name!r}; known: {sorted(_CLASSES)}") from None


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scarlet-cache`` (``python -m services.cache``)."""
    return make_service_parser(
        "scarlet-cache",
        "SCARLET cache service: answers workers' cache-sync requests.",
        {"run": "serve cache-sync requests until SIGTERM/SIGINT"},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scarlet-cache``; returns the process exit status."""
    args = make_parser().parse_args(argv)
    try:
        config, settings = load_service_config(args)
        limits = DecodeLimits(
            public_size=config.public_size,
            num_classes=dataset_classes(config.dataset),
            max_body_bytes=settings.max_message_bytes,
        )
        check_run_id(config.run_id)
        effective = effective_config(config, settings, {"limits": _limits_table(limits)})
        if args.command == "check-config":
            print(effective)
            return EXIT_OK
        setup_logging(settings.log_level, "cache")
    except (ConfigError, ValueError) as e:
        print(f"scarlet-cache: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    logger.info("config: %s", effective.replace("\n", " "))
    try:
        _serve(config, settings, limits)
    except ScarletError as e:
        logger.error("sync: run=%s stopped on error: %s", config.run_id, e)
        print(f"scarlet-cache: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _limits_table(limits: DecodeLimits) -> dict[str, object]:
    return {
        "public_size": limits.public_size,
        "num_classes": limits.num_classes,
        "max_body_bytes": limits.max_body_bytes,
    }


def _serve(config: FederationConfig, settings: ServiceSettings, limits: DecodeLimits) -> None:
    """Serve until SIGTERM/SIGINT; the transport and store are closed on every path."""
    metrics = Metrics.create()
    serve_metrics(settings.metrics_port, metrics.registry)
    with stop_on_signals() as stop, contextlib.ExitStack() as stack:
        transport = open_service_transport(settings, f"scarlet-cache/{config.run_id}")
        stack.callback(transport.close)
        store = open_federation_store(settings.redis_url, config.run_id)
        close_store = getattr(store, "close", None)
        if callable(close_store):
            stack.callback(close_store)
        service = CacheService(transport, store, config.run_id, limits, metrics)
        service.declare()
        service.serve_forever(stop)


if __name__ == "__main__":
    sys.exit(main())
