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

Exit status (:func:`shared.cli.run_service`): 0 done, 1 configuration or runtime error
(message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

from services.cache.service import CacheService
from shared import cli
from shared.config import FederationConfig, ServiceSettings
from shared.data.catalog import dataset_classes
from shared.protocol.codec import DecodeLimits
from shared.security.roles import sender_identities
from shared.state import open_federation_store
from shared.state.base import check_run_id
from shared.transport.base import batch_size

__all__ = ["main", "make_parser"]


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scarlet-cache`` (``python -m services.cache``)."""
    return cli.make_service_parser(
        "scarlet-cache",
        "SCARLET cache service: answers workers' cache-sync requests.",
        {"run": "serve cache-sync requests until SIGTERM/SIGINT"},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scarlet-cache``; returns the process exit status."""
    return cli.run_service(make_parser(), argv, _serve, extra_config=_limits_table)


def _limits(config: FederationConfig, settings: ServiceSettings) -> DecodeLimits:
    """The decode limits of the run's messages, from the config alone (no data loaded).

    Raises:
        ValueError: an unknown data set or an invalid run id.
    """
    limits = DecodeLimits(
        public_size=config.public_size,
        num_classes=dataset_classes(config.dataset),
        max_body_bytes=settings.max_message_bytes,
    )
    check_run_id(config.run_id)
    return limits


def _limits_table(config: FederationConfig, settings: ServiceSettings) -> dict[str, object]:
    limits = _limits(config, settings)
    return {
        "limits": {
            "public_size": limits.public_size,
            "num_classes": limits.num_classes,
            "max_body_bytes": limits.max_body_bytes,
        }
    }


def _serve(args: argparse.Namespace, config: FederationConfig, settings: ServiceSettings) -> None:
    """Serve until SIGTERM/SIGINT; the transport and store are closed on every path."""
    limits = _limits(config, settings)
    name = f"scarlet-cache/{config.run_id}"
    with cli.serving(settings, name, settings.ingest_prefetch) as serving:
        store = open_federation_store(
            settings.redis_url, config.run_id, retry_s=settings.store_retry_s
        )
        close_store = getattr(store, "close", None)
        if callable(close_store):
            serving.cleanup.callback(close_store)
        ids = sender_identities(settings)
        requesters = (
            None
            if ids is None
            else functools.partial(
                ids.requester_ok, clients=config.clients, worker_mode=settings.worker_mode
            )
        )
        service = CacheService(
            serving.transport,
            store,
            config.run_id,
            limits,
            serving.metrics,
            requesters,
            max_batch=batch_size(settings.ingest_prefetch),
        )
        service.declare()
        service.serve_forever(serving.stop)


if __name__ == "__main__":
    sys.exit(main())
