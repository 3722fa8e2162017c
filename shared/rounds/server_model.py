"""The server model: trained only by distillation on the global soft labels.

Its methods take and return numpy arrays (public indices, soft labels), as the round
logic holds them; the tensors stay inside.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shared.arrays import IndexArray, LabelArray
from shared.config import FederationConfig
from shared.data import ImageDataset
from shared.distill.augment import Augmentation
from shared.distill.sampling import round_generator
from shared.distill.training import distill, predict, top_k_accuracies
from shared.models import build_model

__all__ = ["ServerModel"]

_AUGMENT_STREAM = 60_000  # apart from the clients' augmentation streams


class ServerModel:
    """Server-side distillation and evaluation on the full test split.

    Args:
        config: the federation configuration (server model name, epochs, rates, seed).
        public: (|P|, ch, H, W) public images.
        test: the full test split.
        num_classes: C.
    """

    def __init__(
        self, config: FederationConfig, public: Tensor, test: ImageDataset, num_classes: int
    ) -> None:
        self.config = config
        self.public = public
        self.test = test
        name = config.server_model or config.model
        self.model: nn.Module = build_model(
            name, test.input_shape, num_classes, seed=config.seed * 100_003 + 99_991
        )

    def distill(self, indices: IndexArray, targets: LabelArray, *, round_no: int) -> float:
        """Distil on ``targets`` (n, C) for public ``indices`` (n,); returns the last KD loss.

        ``round_no`` seeds the augmentation draws (when ``config.augment``).
        """
        cfg = self.config
        augment = None
        if cfg.augment:
            generator = round_generator(cfg.seed, round_no, _AUGMENT_STREAM)
            augment = Augmentation.for_images(self.test.input_shape, generator)
        return distill(
            self.model,
            self.public[torch.from_numpy(indices)],
            torch.from_numpy(targets),
            epochs=cfg.server_distill_epochs,
            batch_size=cfg.distill_batch_size,
            lr=cfg.distill_lr,
            augment=augment,
        )

    def predict(self, indices: IndexArray) -> LabelArray:
        """The model's soft labels (n, C) on the public samples ``indices`` (n,)."""
        probs: LabelArray = predict(self.model, self.public[torch.from_numpy(indices)]).numpy()
        return probs

    def evaluate(self) -> tuple[float, float]:
        """Top-1 and top-5 accuracy on the full test split."""
        top1, top5 = top_k_accuracies(self.model, self.test.images, self.test.labels, (1, 5))
        return top1, top5
