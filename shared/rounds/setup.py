"""Building a federation's pieces from its configuration (data split, client runtimes).

Every process derives the same split from the same configuration and seed: the
aggregator, each pinned worker (which keeps only its own shard) and the simulation.
"""

from __future__ import annotations

import torch

from shared.config import FederationConfig
from shared.data import FederatedData, load_dataset, split_federation
from shared.rounds.client import ClientRuntime

__all__ = ["apply_threads", "build_runtime", "prepare_data"]


def apply_threads(config: FederationConfig) -> None:
    """Set torch's intra-op threads from ``config.threads`` (0 leaves torch's default).

    Float reductions depend on the thread count, so processes that must agree bit for bit
    (the embedded run and the services) use the same value.
    """
    if config.threads:
        torch.set_num_threads(config.threads)


def prepare_data(config: FederationConfig) -> FederatedData:
    """Load the configured data set and split it into public, private and test parts.

    Raises:
        DataError: the data set is missing or too small for the requested split.
    """
    train, test = load_dataset(config.dataset, config.data_root)
    return split_federation(
        train,
        test,
        num_clients=config.clients,
        alpha=None if config.iid else config.alpha,
        samples_per_client=config.samples_per_client,
        public_size=config.public_size,
        test_per_client=config.test_per_client,
        seed=config.seed,
    )


def build_runtime(config: FederationConfig, data: FederatedData, client_id: int) -> ClientRuntime:
    """The runtime of one client over its shard of ``data``."""
    return ClientRuntime(
        client_id,
        config,
        data.clients[client_id],
        data.client_tests[client_id],
        data.public,
        data.num_classes,
    )
