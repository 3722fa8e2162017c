"""What the three service commands share: flags, configuration, logging, signals, metrics.

Each service's ``__main__`` builds its parser with :func:`make_service_parser` and hands
it to :func:`run_service` with the function that serves; everything up to that call
(config, ``check-config``, logging, the error-to-exit-status mapping) is the same for
all three. That function serves inside :func:`serving` (metrics, signals, broker).

Exit status: 0 done, 1 configuration or runtime error (``PROG: error: ...`` on stderr),
2 usage (argparse's own).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from shared.config import FederationConfig, ServiceSettings
from shared.config_loading import add_model_flags, flag_overrides, load_config, redacted
from shared.errors import ConfigError, ScarletError
from shared.metrics import Metrics
from shared.transport import Transport, open_transport

__all__ = [
    "CHECK_CONFIG",
    "EXIT_ERROR",
    "EXIT_OK",
    "SERVICE_SECTION",
    "ExtraConfig",
    "Serve",
    "Serving",
    "effective_config",
    "load_service_config",
    "make_service_parser",
    "open_service_transport",
    "run_service",
    "serve_metrics",
    "serving",
    "setup_logging",
    "stop_on_signals",
]

EXIT_OK, EXIT_ERROR = 0, 1
SERVICE_SECTION = "service"
CHECK_CONFIG = "check-config"

logger = logging.getLogger(__name__)

Serve = Callable[[argparse.Namespace, FederationConfig, ServiceSettings], None]
"""``serve(args, config, settings)``: run the chosen subcommand; raises ScarletError."""

ExtraConfig = Callable[[FederationConfig, ServiceSettings], dict[str, object]]
"""Values a service derives from the config (extra tables of the effective config).

It runs before ``check-config`` prints, so ``check-config`` validates them too; it may
raise ConfigError or ValueError.
"""


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
    all_commands = {**commands, CHECK_CONFIG: "validate and print the effective configuration"}
    for name, text in all_commands.items():
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument("--config", type=Path, help="TOML configuration file")
        if extra is not None:
            extra(name, command)
        add_model_flags(command, FederationConfig)
        add_model_flags(command, ServiceSettings)
    return parser


def run_service(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    serve: Serve,
    *,
    extra_config: ExtraConfig | None = None,
) -> int:
    """Parse, configure, then serve: the body of every service's ``main``.

    ``check-config`` prints :func:`effective_config` and returns. Any other subcommand
    sets up logging (service name: ``parser.prog`` without ``scarlet-``), logs the
    effective config once and calls ``serve(args, config, settings)``.

    Args:
        parser: from :func:`make_service_parser`.
        argv: the arguments (None: ``sys.argv[1:]``).
        serve: runs every subcommand but ``check-config``.
        extra_config: derives and validates service-specific values.

    Returns:
        EXIT_OK, or EXIT_ERROR after a ScarletError (or a ValueError while configuring)
        with ``PROG: error: ...`` on stderr, and a log line when logging was set up.
        A usage error exits 2 inside argparse.
    """
    prog = parser.prog
    service = prog.removeprefix("scarlet-")
    args = parser.parse_args(argv)
    try:
        config, settings = load_service_config(args)
        extra = extra_config(config, settings) if extra_config is not None else None
        effective = effective_config(config, settings, extra)
        if args.command == CHECK_CONFIG:
            print(effective)
            return EXIT_OK
        setup_logging(settings.log_level, service)
    except (ScarletError, ValueError) as e:
        # no logging yet: stderr is the only channel
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    logger.info("config: %s", effective.replace("\n", " "))
    try:
        serve(args, config, settings)
    except ScarletError as e:
        logger.error("%s: run=%s stopped on error: %s", service, config.run_id, e)
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def load_service_config(args: argparse.Namespace) -> tuple[FederationConfig, ServiceSettings]:
    """Federation keys at the TOML top level, service keys under ``[service]``.

    Raises:
        ConfigError: as :func:`shared.config_loading.load_config`.
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


def serve_metrics(port: int, registry: CollectorRegistry, host: str = "127.0.0.1") -> None:
    """Expose ``registry`` on ``http://host:port/metrics`` (port 0: do nothing).

    Loopback by default (``metrics_host``): a deployment opens it to every interface
    (``0.0.0.0``) where a network policy says who may scrape.
    """
    if port:
        start_http_server(port, addr=host, registry=registry)


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


def open_service_transport(
    settings: ServiceSettings, connection_name: str, prefetch: int = 1
) -> Transport:
    """The broker connection of a service process, with the configured heartbeat and limit.

    ``prefetch``: the consumer window; the aggregator and the cache service pass
    ``settings.ingest_prefetch``, workers keep 1 (a task waits for the next free worker).

    Raises:
        TransportUnavailable: the broker cannot be reached within the reconnect budget.
    """
    return open_transport(
        settings.broker_url,
        prefetch=prefetch,
        heartbeat_s=settings.heartbeat_s,
        max_message_bytes=settings.max_message_bytes,
        connection_name=connection_name,
    )


@dataclass(frozen=True, slots=True)
class Serving:
    """What a service holds while it serves (see :func:`serving`).

    Attributes:
        stop: set on SIGTERM or SIGINT.
        transport: the process's broker connection.
        metrics: the process's metric catalogue, served on ``metrics_port``.
        cleanup: callbacks run when serving ends, last added first, before the
            transport closes.
    """

    stop: threading.Event
    transport: Transport
    metrics: Metrics
    cleanup: contextlib.ExitStack


@contextlib.contextmanager
def serving(
    settings: ServiceSettings, connection_name: str, prefetch: int = 1
) -> Iterator[Serving]:
    """Serve metrics, catch SIGTERM/SIGINT and connect to the broker for one service run.

    On exit the ``cleanup`` callbacks run, the transport closes and the signal handlers
    are restored; the metrics endpoint lives as long as the process.

    Raises:
        TransportUnavailable: the broker cannot be reached within the reconnect budget.
    """
    metrics = Metrics.create()
    serve_metrics(settings.metrics_port, metrics.registry, settings.metrics_host)
    with stop_on_signals() as stop, contextlib.ExitStack() as cleanup:
        transport = open_service_transport(settings, connection_name, prefetch)
        cleanup.callback(transport.close)
        yield Serving(stop, transport, metrics, cleanup)
