"""What the three service commands share: flags, configuration, logging, signals, metrics.

Each service's ``__main__`` builds its parser with :func:`make_service_parser`, loads
``(FederationConfig, ServiceSettings)`` with :func:`load_service_config` and serves inside
:func:`stop_on_signals`. Exit status: 0 done, 1 configuration or runtime error, 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from shared.config import (
    FederationConfig,
    ServiceSettings,
    add_model_flags,
    flag_overrides,
    load_config,
    redacted,
)
from shared.errors import ConfigError
from shared.transport import Transport, open_transport

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "SERVICE_SECTION",
    "effective_config",
    "load_service_config",
    "make_service_parser",
    "open_service_transport",
    "serve_metrics",
    "setup_logging",
    "stop_on_signals",
]

EXIT_OK, EXIT_ERROR = 0, 1
SERVICE_SECTION = "service"


def make_service_parser(
    prog: str,
    description: str,
    commands: dict[str, str],
    extra: Callable[[str, argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """A parser with one subcommand per ``commands`` entry, each with every config flag.

    Args:
        prog: program name.
        description: one line on what the service does.
        commands: subcommand name → help text (``check-config`` is always added).
        extra: called as ``extra(name, subparser)`` to add service-specific flags.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    all_commands = {**commands, "check-config": "validate and print the effective configuration"}
    for name, text in all_commands.items():
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument("--config", type=Path, help="TOML configuration file")
        if extra is not None:
            extra(name, command)
        add_model_flags(command, FederationConfig)
        add_model_flags(command, ServiceSettings)
    return parser


def load_service_config(args: argparse.Namespace) -> tuple[FederationConfig, ServiceSettings]:
    """Federation keys at the TOML top level, service keys under ``[service]``.

    Raises:
        ConfigError: as :func:`shared.config.load_config`.
    """
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


def effective_config(
    config: FederationConfig,
    settings: ServiceSettings,
    extra: dict[str, object] | None = None,
) -> str:
    """The effective configuration as JSON, credentials redacted (plus ``extra`` tables)."""
    doc = {
        "federation": config.model_dump(),
        SERVICE_SECTION: redacted(settings.model_dump()),
        **(extra or {}),
    }
    return json.dumps(doc, indent=2)


def setup_logging(level_name: str, service: str) -> None:
    """One structured line per event: time, level, service, logger, message.

    Raises:
        ConfigError: an unknown level name.
    """
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise ConfigError(f"log_level: unknown level {level_name!r} (DEBUG, INFO, WARNING, ERROR)")
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s service={service} %(name)s %(message)s",
        force=True,
    )
    # pika narrates every connection step at INFO
    logging.getLogger("pika").setLevel(max(level, logging.WARNING))


def serve_metrics(port: int, registry: CollectorRegistry) -> None:
    """Expose ``registry`` on ``http://0.0.0.0:port/metrics`` (port 0: do nothing)."""
    if port:
        start_http_server(port, registry=registry)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set on SIGTERM or SIGINT (main thread only); handlers restored after."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()  # no logging here: the handler may interrupt a log call

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def open_service_transport(settings: ServiceSettings, connection_name: str) -> Transport:
    """The broker connection of a service process, with the configured heartbeat and limit.

    Raises:
        TransportUnavailable: the broker cannot be reached within the reconnect budget.
    """
    return open_transport(
        settings.broker_url,
        heartbeat_s=settings.heartbeat_s,
        max_message_bytes=settings.max_message_bytes,
        connection_name=connection_name,
    )
