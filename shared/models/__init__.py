"""Model zoo: the models a client or the server can train, built deterministically."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import torch
from torch import nn

from shared.models.cnn import MLP, SmallCNN
from shared.models.resnet import ResNet20

__all__ = ["MLP", "MODELS", "ResNet20", "SmallCNN", "build_model"]

MODELS: tuple[str, ...] = ("cnn", "resnet20", "resnet32", "mlp")

_GLOBAL_RNG = threading.Lock()


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, seed: int
) -> nn.Module:
    """Build a freshly initialized model that outputs logits.

    The initial weights depend only on ``seed``; the global RNG is left untouched, so
    building a model never shifts anybody else's random stream, and concurrent calls from
    several threads are serialized.

    Args:
        name: one of :data:`MODELS`.
        input_shape: (channels, H, W) of one input image.
        num_classes: C, the number of logits.
        seed: the initialization seed.

    Returns:
        A CPU model in train mode mapping (B, channels, H, W) float32 to (B, C) logits.

    Raises:
        ValueError: for an unknown name, or an input too small for the model.
    """
    factories: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
        "cnn": SmallCNN,
        "resnet20": ResNet20,
        "resnet32": functools.partial(ResNet20, blocks_per_stage=5),
        "mlp": MLP,
    }
    if name not in factories:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    # layers initialize from the process-global RNG: serialize construction, or two threads
    # building models at once (in-process workers) would draw from each other's seed
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = factories[name](input_shape, num_classes)
    return model
