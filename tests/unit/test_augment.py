"""Augmentation: shifts and flips as hand-checked, drawn reproducibly per sample."""

from __future__ import annotations

import pytest
import torch

from shared.distill.augment import Augmentation, shift_and_flip
from shared.distill.training import train_supervised
from shared.models import build_model


def _image() -> torch.Tensor:
    # one 1-channel 3x3 image with distinct pixels 1..9
    return torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)


def test_the_centre_offset_without_a_flip_leaves_the_image_unchanged():
    image = _image()
    out = shift_and_flip(image, torch.tensor([[1, 1]]), torch.tensor([False]), pad=1)
    assert torch.equal(out, image)


def test_an_offset_shifts_the_image_and_fills_with_zeros():
    # Given offset (0, 2) into the 1-padded 5x5 image: the window starts a row above the
    # image (row 0 is padding) and a column to the right of it
    out = shift_and_flip(_image(), torch.tensor([[0, 2]]), torch.tensor([False]), pad=1)
    assert out[0, 0].tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]


def test_a_flip_mirrors_the_cropped_window_left_to_right():
    image = _image()
    centred = shift_and_flip(image, torch.tensor([[1, 1]]), torch.tensor([True]), pad=1)
    assert torch.equal(centred, image.flip(-1))
    shifted = shift_and_flip(image, torch.tensor([[1, 2]]), torch.tensor([True]), pad=1)
    # the window one column right is [[2, 3, 0], ...]; mirrored:
    assert shifted[0, 0].tolist() == [[0, 3, 2], [0, 6, 5], [0, 9, 8]]


def test_each_sample_of_a_batch_gets_its_own_offset_and_channels_move_together():
    images = torch.stack([_image()[0].expand(3, 3, 3), -_image()[0].expand(3, 3, 3)])
    out = shift_and_flip(images, torch.tensor([[1, 1], [2, 1]]), torch.tensor([False, False]), 1)
    assert torch.equal(out[0], images[0])
    assert out[1, :, 0].tolist() == [[-4, -5, -6]] * 3  # shifted up one row, every channel
    assert out[1, :, 2].tolist() == [[0, 0, 0]] * 3


@pytest.mark.parametrize(
    ("shape", "pad", "flip"),
    [((3, 32, 32), 4, True), ((1, 28, 28), 3, False), ((1, 8, 8), 1, False)],
)
def test_the_padding_is_an_eighth_of_the_height_and_only_colour_images_flip(shape, pad, flip):
    augmentation = Augmentation.for_images(shape, torch.Generator().manual_seed(0))
    assert (augmentation.pad, augmentation.flip) == (pad, flip)
    draw = augmentation.draw(1000)
    assert int(draw.offsets.min()) == 0 and int(draw.offsets.max()) == 2 * pad
    assert bool(draw.flips.any()) is flip


def test_the_same_seed_draws_the_same_choices_and_another_seed_others():
    def draw(seed: int):
        return Augmentation.for_images((3, 32, 32), torch.Generator().manual_seed(seed)).draw(50)

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a.offsets, b.offsets) and torch.equal(a.flips, b.flips)
    assert not torch.equal(a.offsets, c.offsets)


def test_training_with_augmentation_is_reproducible_and_differs_from_training_without():
    images = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 10

    def train(augment: bool) -> torch.Tensor:
        model = build_model("mlp", (1, 8, 8), 10, seed=3)
        aug = Augmentation.for_images((1, 8, 8), torch.Generator().manual_seed(9))
        train_supervised(
            model,
            images,
            labels,
            epochs=2,
            batch_size=10,
            lr=0.1,
            generator=torch.Generator().manual_seed(5),
            augment=aug if augment else None,
        )
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(train(True), train(True))
    assert not torch.equal(train(True), train(False))
