"""Reference points without federated traffic: centralized and individual training.

Both use the federation's model, optimizer (plain SGD), batch size, learning rate and
private-training budget: ``rounds x local_epochs`` epochs, evaluated after every
"round" of ``local_epochs`` epochs, so their curves line up with the federated ones.
Neither sees the public set (the federated methods additionally distil on it).

* **centralized** (upper bound): one model trained on the union of all clients'
  private shards (so K times the steps of one client per epoch). "Server accuracy" is
  that model on the full test split; "client accuracy" is the mean of that model's
  accuracies on the clients' own test shards.
* **individual** (lower bound): every client trains alone on its own shard, starting from
  the same initial weights as in the federated runs. "Client accuracy" is the mean over
  clients of each model on its own test shard (the paper's individual baseline). There
  is no server: the "server accuracy" column holds the mean over clients of each model
  on the full test split, i.e. how far a model trained alone generalizes.

Both send nothing: every byte counter of their records is 0, and the report prints
"n/a" for their traffic.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from shared.config import FederationConfig
from shared.data import FederatedData, ImageDataset
from shared.distill.augment import Augmentation
from shared.distill.training import evaluate, train_supervised
from shared.models import build_model
from shared.results import RoundRecord, RunResults

__all__ = ["run_centralized", "run_individual"]

# Streams of the training generators, apart from everything the federation draws.
_CENTRAL_STREAM = 7_000_001
_INDIVIDUAL_STREAM = 7_100_000


def _client_seed(config: FederationConfig, client_id: int) -> int:
    # the seed the federated clients use (shared.rounds.client.ClientRuntime)
    return config.seed * 100_003 + client_id


def _record(t: int, server: float, client: float, clients: int, seconds: float) -> RoundRecord:
    return RoundRecord(
        round=t,
        server_accuracy=server,
        client_accuracy=client,
        clients=clients,
        requested=0,
        reused=0,
        labels_up=0,
        labels_down=0,
        wire_bytes_up=0,
        wire_bytes_down=0,
        paper_bytes_up=0,
        paper_bytes_down=0,
        baseline_bytes_up=0,
        baseline_bytes_down=0,
        uploads={},
        cache_version=0,
        seconds=seconds,
    )


def _mean_shard_accuracy(models: list[nn.Module], shards: Sequence[ImageDataset]) -> float:
    accs = [
        evaluate(m, s.images, s.labels, batch_size=100)
        for m, s in zip(models, shards, strict=True)
        if len(s)
    ]
    return sum(accs) / len(accs) if accs else float("nan")


def run_centralized(config: FederationConfig, data: FederatedData) -> RunResults:
    """Train one model on the union of the private shards (the upper bound).

    Args:
        config: sizes, model, epochs, batch size, learning rate and seed.
        data: the federation's split; only the private shards and test sets are used.

    Returns:
        ``config.rounds`` records of ``local_epochs`` epochs each, with zero traffic.
    """
    start = time.perf_counter()
    images = torch.cat([shard.images for shard in data.clients])
    labels = torch.cat([shard.labels for shard in data.clients])
    model = build_model(
        config.model, data.input_shape, data.num_classes, seed=config.seed * 100_003 + 99_991
    )
    generator = torch.Generator().manual_seed(config.seed * 100_003 + _CENTRAL_STREAM)
    augment = _augmentation(config, data, _CENTRAL_STREAM + 1)
    results = RunResults(config={**config.model_dump(), "algorithm": "centralized"})
    for t in range(config.rounds):
        round_start = time.perf_counter()
        train_supervised(
            model,
            images,
            labels,
            epochs=config.local_epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            generator=generator,
            augment=augment,
        )
        server = evaluate(model, data.test.images, data.test.labels)
        client = _mean_shard_accuracy([model] * len(data.client_tests), data.client_tests)
        results.rounds.append(
            _record(t, server, client, len(data.clients), time.perf_counter() - round_start)
        )
    results.wall_seconds = time.perf_counter() - start
    return results


def _augmentation(
    config: FederationConfig, data: FederatedData, stream: int
) -> Augmentation | None:
    """The same augmentation as the federated runs get (``config.augment``), or None."""
    if not config.augment:
        return None
    generator = torch.Generator().manual_seed(config.seed * 100_003 + stream)
    return Augmentation.for_images(data.input_shape, generator)


def run_individual(config: FederationConfig, data: FederatedData) -> RunResults:
    """Train every client alone on its own shard (the lower bound).

    Args:
        config: sizes, model, epochs, batch size, learning rate and seed.
        data: the federation's split; only the private shards and test sets are used.

    Returns:
        ``config.rounds`` records of ``local_epochs`` epochs each, with zero traffic.
    """
    start = time.perf_counter()
    models = [
        build_model(config.model, data.input_shape, data.num_classes, _client_seed(config, k))
        for k in range(len(data.clients))
    ]
    generators = [
        torch.Generator().manual_seed(config.seed * 100_003 + _INDIVIDUAL_STREAM + k)
        for k in range(len(data.clients))
    ]
    augments = [
        _augmentation(config, data, _INDIVIDUAL_STREAM + 50_000 + k)
        for k in range(len(data.clients))
    ]
    results = RunResults(config={**config.model_dump(), "algorithm": "individual"})
    for t in range(config.rounds):
        round_start = time.perf_counter()
        runs = zip(models, data.clients, generators, augments, strict=True)
        for model, shard, generator, augment in runs:
            train_supervised(
                model,
                shard.images,
                shard.labels,
                epochs=config.local_epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                generator=generator,
                augment=augment,
            )
        server = sum(evaluate(m, data.test.images, data.test.labels) for m in models) / len(models)
        client = _mean_shard_accuracy(models, data.client_tests)
        results.rounds.append(
            _record(t, server, client, len(models), time.perf_counter() - round_start)
        )
    results.wall_seconds = time.perf_counter() - start
    return results
