"""Reproducible image augmentation: random shifts (a crop of a zero-padded image) and flips.

Every random choice is drawn per sample from a generator the caller seeds per client
and round (:func:`~shared.distill.sampling.round_generator`), one draw per epoch for the
whole set, indexed by sample: the same sample in the same epoch, round and client gets
the same shift in every process, so services still equal the embedded run.

Shifts are by up to ``pad`` pixels each way, ``pad = max(1, H // 8)`` (4 for 32-pixel
CIFAR images, the usual "pad 4, random crop"; 3 for 28-pixel images, 1 for 8-pixel
digits). Horizontal flips are for colour images only: a flipped digit or letter is
another symbol, a flipped photo is the same scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Augmentation", "EpochDraw", "shift_and_flip"]


@dataclass(frozen=True, slots=True)
class EpochDraw:
    """One epoch's choices for n samples: offsets (n, 2) in [0, 2·pad], flips (n,) bool."""

    offsets: Tensor
    flips: Tensor


@dataclass(frozen=True)
class Augmentation:
    """How to augment one training call's images, and the generator it draws from.

    Args:
        pad: the largest shift in pixels (>= 1).
        flip: whether images may be flipped left to right.
        generator: the only source of randomness (seeded per client and round).
    """

    pad: int
    flip: bool
    generator: torch.Generator

    @classmethod
    def for_images(
        cls, input_shape: tuple[int, int, int], generator: torch.Generator
    ) -> Augmentation:
        """The augmentation for (channels, H, W) images: shifts, and flips for colour."""
        channels, height, _ = input_shape
        return cls(pad=max(1, height // 8), flip=channels == 3, generator=generator)

    def draw(self, n: int) -> EpochDraw:
        """The choices of one epoch for samples 0..n-1 (offsets first, then flips)."""
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=self.generator)
        flips = (
            torch.rand(n, generator=self.generator) < 0.5
            if self.flip
            else torch.zeros(n, dtype=torch.bool)
        )
        return EpochDraw(offsets, flips)

    def apply(self, images: Tensor, draw: EpochDraw, rows: Tensor | slice) -> Tensor:
        """``images`` (the batch of sample positions ``rows``) shifted and flipped."""
        return shift_and_flip(images, draw.offsets[rows], draw.flips[rows], self.pad)


def shift_and_flip(images: Tensor, offsets: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Crop each (ch, H, W) image of the batch from its zero-padded copy, then flip.

    Args:
        images: (B, ch, H, W).
        offsets: (B, 2) int64 top-left corners (row, column) in the padded image, in
            [0, 2·pad]; (pad, pad) leaves an image where it was.
        flips: (B,) bool, True to mirror left to right.
        pad: the padding on each side.

    Returns:
        A new (B, ch, H, W) tensor; pixels shifted in from outside are 0 (the data's
        normalised zero is not black, but the mean: a neutral fill).
    """
    batch, _, height, width = images.shape
    if batch == 0:
        return images.clone()
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(height)  # (B, H)
    columns = torch.arange(width).expand(batch, width)
    columns = torch.where(flips[:, None], columns.flip(1), columns) + offsets[:, 1, None]
    b = torch.arange(batch)[:, None, None]
    # (B, H, W, ch) by advanced indexing, back to (B, ch, H, W)
    picked = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], columns[:, None, :]]
    return picked.permute(0, 3, 1, 2).contiguous()
