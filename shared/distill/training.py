"""Plain training loops: supervised SGD, distillation, prediction and evaluation.

Loops slice tensors into batches (no DataLoader), as in nanoGPT: the data already sit in
memory, and explicit indexing keeps the batch order reproducible from one generator.

Optimizers are plain SGD (no momentum, no weight decay), as in the paper's code. Plain SGD
keeps no state between steps, so an optimizer created inside each call is exactly
equivalent to one kept across calls and rounds; nothing needs to be saved with a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.distill.augment import Augmentation

__all__ = [
    "distill",
    "evaluate",
    "kd_loss",
    "predict",
    "top_k_accuracies",
    "train_supervised",
]


def kd_loss(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """KL(teacher ‖ softmax(student)), averaged over the batch, at temperature 1.

    Args:
        student_logits: (B, C) raw model outputs.
        teacher_probs: (B, C) target distributions (rows sum to 1; zeros allowed).

    Returns:
        A scalar tensor (the paper's ``F.kl_div(log_softmax(out), z, 'batchmean')``).
    """
    return F.kl_div(F.log_softmax(student_logits, dim=1), teacher_probs, reduction="batchmean")


def train_supervised(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    augment: Augmentation | None = None,
) -> float:
    """Train with cross-entropy and plain SGD, reshuffling every epoch.

    The reshuffle matters: a Dirichlet shard is stored class by class, and SGD on batches
    of a single class diverges.

    Args:
        model: trained in place and left in train mode.
        images: (N, channels, H, W) float32.
        labels: (N,) int64 class ids.
        epochs: passes over the data (0 trains nothing).
        batch_size: examples per step; the last batch of an epoch may be smaller.
        lr: the SGD learning rate.
        generator: a CPU generator; it alone decides the batch order.
        augment: when given, each epoch shifts (and may flip) every image, with choices
            drawn per sample from its own generator (the batch order stays the same).

    Returns:
        The mean cross-entropy (nats per example) over the last epoch; 0.0 when nothing
        was trained (the model is then left untouched).

    Raises:
        ValueError: on mismatched lengths, epochs < 0 or batch_size < 1.
    """
    _check_batches(images, labels, epochs, batch_size)
    if len(images) == 0:
        return 0.0
    device = _device_of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    mean_loss = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        draw = augment.draw(len(images)) if augment is not None else None
        total = 0.0
        for start in range(0, len(images), batch_size):
            batch = order[start : start + batch_size]
            inputs = images[batch]
            if augment is not None and draw is not None:
                inputs = augment.apply(inputs, draw, batch)
            logits = model(inputs.to(device))
            loss = F.cross_entropy(logits, labels[batch].to(device))
            _sgd_step(optimizer, loss)
            total += loss.item() * len(batch)
        mean_loss = total / len(images)
    return mean_loss


def distill(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    augment: Augmentation | None = None,
    weight: float = 1.0,
) -> float:
    """Distil soft labels into ``model`` with :func:`kd_loss` and plain SGD.

    Batches follow the given order, unshuffled, as the paper's public loaders do.

    Args:
        model: trained in place and left in train mode (untouched for empty input).
        images: (N, channels, H, W) float32 public images.
        targets: (N, C) float32 soft labels, row i belonging to image i.
        epochs: passes over the data.
        batch_size: examples per step.
        lr: the SGD learning rate.
        augment: as :func:`train_supervised` (each image keeps its target).
        weight: factor on the loss that is minimised (COMET's regularization weight,
            as the authors' code applies it); 1.0 leaves the computation unchanged.

    Returns:
        The mean KD loss (nats per example, unweighted) over the last epoch; 0.0 for
        empty input.

    Raises:
        ValueError: on mismatched lengths, targets that are not 2-D, epochs < 0 or
            batch_size < 1.
    """
    _check_batches(images, targets, epochs, batch_size)
    if targets.dim() != 2:
        raise ValueError(f"targets must be (N, C) soft labels, got shape {tuple(targets.shape)}")
    if len(images) == 0:
        return 0.0
    device = _device_of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    mean_loss = 0.0
    for _ in range(epochs):
        draw = augment.draw(len(images)) if augment is not None else None
        total = 0.0
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            inputs = images[start:stop]
            if augment is not None and draw is not None:
                inputs = augment.apply(inputs, draw, slice(start, stop))
            loss = kd_loss(model(inputs.to(device)), targets[start:stop].to(device))
            _sgd_step(optimizer, loss if weight == 1.0 else loss * weight)
            total += loss.item() * len(images[start:stop])
        mean_loss = total / len(images)
    return mean_loss


def predict(model: nn.Module, images: Tensor, *, batch_size: int = 500) -> Tensor:
    """Soft labels: the model's softmax probabilities, in eval mode, without gradients.

    The model's train/eval mode is restored afterwards.

    Args:
        model: any model producing (B, C) logits.
        images: (N, channels, H, W) float32.
        batch_size: examples per forward pass (memory only; results do not depend on it
            beyond float rounding in batch-dependent kernels).

    Returns:
        (N, C) float32 on the CPU, rows summing to 1 ((0, C) for empty input).

    Raises:
        ValueError: when batch_size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # at least one (maybe empty) batch, so empty input still yields (0, C)
            batches = [
                F.softmax(model(images[start : start + batch_size].to(device)).float(), dim=1).cpu()
                for start in range(0, max(len(images), 1), batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(batches)


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 500) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on (images, labels), in eval mode.

    Args:
        model: any model producing (B, C) logits; its mode is restored afterwards.
        images: (N, channels, H, W) float32.
        labels: (N,) int64.
        batch_size: examples per forward pass.

    Raises:
        ValueError: for empty or mismatched inputs (accuracy of nothing is undefined).
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(
            f"need matching non-empty inputs, got {len(images)} images, {len(labels)} labels"
        )
    return top_k_accuracies(model, images, labels, (1,), batch_size=batch_size)[0]


def top_k_accuracies(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    ks: tuple[int, ...] = (1, 5),
    *,
    batch_size: int = 500,
) -> tuple[float, ...]:
    """Top-k accuracies in [0, 1], one per k, from one forward pass (see :func:`evaluate`).

    Top-1 is ``argmax == label`` (ties go to the lower class, as always); a larger k
    asks whether the label is among ``torch.topk``'s k classes (k is capped at C).

    Raises:
        ValueError: as :func:`evaluate`, or a k < 1.
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(
            f"need matching non-empty inputs, got {len(images)} images, {len(labels)} labels"
        )
    if any(k < 1 for k in ks):
        raise ValueError(f"top-k needs k >= 1, got {ks}")
    probs, truth = predict(model, images, batch_size=batch_size), labels.cpu()
    found = []
    for k in ks:
        if k == 1:
            hits = probs.argmax(dim=1) == truth
        else:
            top = probs.topk(min(k, probs.shape[1]), dim=1).indices
            hits = (top == truth[:, None]).any(dim=1)
        found.append(hits.double().mean().item())
    return tuple(found)


def _check_batches(images: Tensor, targets: Tensor, epochs: int, batch_size: int) -> None:
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs=} {batch_size=}")


def _sgd_step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    # the typed spelling of loss.backward(), which torch leaves unannotated
    torch.autograd.backward(loss)
    optimizer.step()


def _device_of(model: nn.Module) -> torch.device:
    # Batches are sliced on the data's device and moved to the model's, so callers may
    # keep a data set on the CPU and the model on an accelerator.
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
