"""Building a federation's pieces from its configuration (data split, client runtimes).

Every process derives the same split from the same configuration and seed: the
aggregator, each worker and the simulation. The pixels stay decoded bytes until a shard
is read (:class:`~shared.data.RawImages`), so a pinned worker converts only its own
shard and a pool worker only the shards of the clients it is serving; the aggregator
draws only the public set and keeps the test split (:func:`prepare_server_data`).
"""

from __future__ import annotations

import torch

from shared.config import FederationConfig
from shared.data import FederatedData, read_dataset, split_federation, split_public_and_test
from shared.rounds.client import ClientRuntime

__all__ = ["apply_threads", "build_runtime", "prepare_data", "prepare_server_data"]


def apply_threads(config: FederationConfig) -> None:
    """Set torch's intra-op threads from ``config.threads`` (0 leaves torch's default).

    Float reductions depend on the thread count, so processes that must agree bit for bit
    (the embedded run and the services) use the same value.
    """
    if config.threads:
        torch.set_num_threads(config.threads)


def prepare_data(config: FederationConfig) -> FederatedData:
    """Load the configured data set and split it into public, private and test parts.

    The public part comes from ``config.public_source`` (another data set's train split
    when ``public_dataset`` names one).

    Raises:
        DataError: the data set is missing or too small for the requested split.
    """
    train, test = read_dataset(config.dataset, config.data_root)
    public = None
    if config.cross_dataset:
        public, _ = read_dataset(config.public_source, config.data_root)
    return split_federation(
        train,
        test,
        num_clients=config.clients,
        alpha=None if config.iid else config.alpha,
        samples_per_client=config.samples_per_client,
        public_size=config.public_size,
        test_per_client=config.test_per_client,
        seed=config.seed,
        public_source=public,
    )


def prepare_server_data(config: FederationConfig) -> FederatedData:
    """The aggregator's part of :func:`prepare_data`: the public set and the test split.

    Bit for bit the ``public`` and ``test`` of :func:`prepare_data` (the same seeded
    draw); no shard is drawn, and the decoded train split is freed once the public rows
    are converted.

    Raises:
        DataError: the data set is missing or smaller than the public set.
    """
    train, test = read_dataset(config.dataset, config.data_root, cache=False)
    public = None
    if config.cross_dataset:
        public, _ = read_dataset(config.public_source, config.data_root, cache=False)
    return split_public_and_test(
        train, test, public_size=config.public_size, seed=config.seed, public_source=public
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
