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
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from services.cache.service import CacheService
from shared.cli import serve_metrics
from shared.config import (
    FederationConfig,
    ServiceSettings,
    add_model_flags,
    flag_overrides,
    load_config,
    redacted,
)
from shared.errors import ConfigError, ScarletError
from shared.metrics import Metrics
from shared.protocol.codec import DecodeLimits
from shared.state import open_federation_store
from shared.state.base import check_run_id
from shared.transport import open_transport

__all__ = ["dataset_classes", "main", "make_parser"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR = 0, 1
SERVICE_SECTION = "service"

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
    parser = argparse.ArgumentParser(
        prog="scarlet-cache",
        description="SCARLET cache service: answers workers' cache-sync requests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "serve cache-sync requests until SIGTERM/SIGINT"),
        ("check-config", "validate and print the effective configuration"),
    ):
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument("--config", type=Path, help="TOML configuration file")
        add_model_flags(command, FederationConfig)
        add_model_flags(command, ServiceSettings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scarlet-cache``; returns the process exit status."""
    args = make_parser().parse_args(argv)
    try:
        config, settings = _load(args)
        limits = DecodeLimits(
            public_size=config.public_size,
            num_classes=dataset_classes(config.dataset),
            max_body_bytes=settings.max_message_bytes,
        )
        level = _log_level(settings.log_level)
        check_run_id(config.run_id)
    except (ConfigError, ValueError) as e:
        print(f"scarlet-cache: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    effective = _effective(config, settings, limits)
    if args.command == "check-config":
        print(json.dumps(effective, indent=2))
        return EXIT_OK
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logger.info("config: %s", json.dumps(effective))
    try:
        _serve(config, settings, limits)
    except ScarletError as e:
        logger.error("sync: run=%s stopped on error: %s", config.run_id, e)
        print(f"scarlet-cache: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _load(args: argparse.Namespace) -> tuple[FederationConfig, ServiceSettings]:
    config = load_config(
        FederationConfig, path=args.config, overrides=flag_overrides(args, FederationConfig)
    )
    settings = load_config(
        ServiceSettings,
        path=args.config,
        overrides=flag_overrides(args, ServiceSettings),
        section=SERVICE_SECTION,
    )
    return config, settings


def _log_level(name: str) -> int:
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise ConfigError(f"log_level: unknown level {name!r} (DEBUG, INFO, WARNING, ERROR)")
    return level


def _effective(
    config: FederationConfig, settings: ServiceSettings, limits: DecodeLimits
) -> dict[str, object]:
    return {
        "federation": config.model_dump(),
        SERVICE_SECTION: redacted(settings.model_dump()),
        "limits": {
            "public_size": limits.public_size,
            "num_classes": limits.num_classes,
            "max_body_bytes": limits.max_body_bytes,
        },
    }


def _serve(config: FederationConfig, settings: ServiceSettings, limits: DecodeLimits) -> None:
    """Serve until SIGTERM/SIGINT; the transport and store are closed on every path."""
    metrics = Metrics.create()
    serve_metrics(settings.metrics_port, metrics.registry)
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_stop_on_signals(stop))
        transport = open_transport(
            settings.broker_url,
            heartbeat_s=settings.heartbeat_s,
            max_message_bytes=settings.max_message_bytes,
            connection_name=f"scarlet-cache/{config.run_id}",
        )
        stack.callback(transport.close)
        store = open_federation_store(settings.redis_url, config.run_id)
        close_store = getattr(store, "close", None)
        if callable(close_store):
            stack.callback(close_store)
        service = CacheService(transport, store, config.run_id, limits, metrics)
        service.declare()
        service.serve_forever(stop)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM and SIGINT (main thread only); restore the handlers after."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()  # no logging here: the handler may interrupt a log call

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


if __name__ == "__main__":
    sys.exit(main())
