import pytest
import torch

from shared.models import MODELS, build_model

INPUT_SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32)]


def _parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("input_shape", INPUT_SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_model_maps_a_batch_of_images_to_logits(name, input_shape):
    # Given
    model = build_model(name, input_shape, num_classes=7, seed=0)
    images = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    # When
    logits = model(images)
    # Then
    assert logits.shape == (4, 7)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_gives_identical_parameters_and_another_seed_different_ones(name):
    # When
    first = _parameters(build_model(name, (1, 28, 28), 10, seed=3))
    again = _parameters(build_model(name, (1, 28, 28), 10, seed=3))
    other = _parameters(build_model(name, (1, 28, 28), 10, seed=4))
    # Then
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_building_a_model_leaves_the_global_rng_alone():
    # Given
    state = torch.get_rng_state()
    # When
    build_model("resnet20", (3, 32, 32), 10, seed=0)
    # Then
    assert torch.equal(torch.get_rng_state(), state)


def test_resnet20_has_about_a_quarter_million_parameters():
    # When
    model = build_model("resnet20", (3, 32, 32), 10, seed=0)
    # Then
    count = sum(p.numel() for p in model.parameters())
    assert 260_000 <= count <= 280_000


def test_resnet32_has_five_blocks_per_stage_and_about_half_a_million_parameters():
    # When (He et al. 2016, table 6: 0.46 M)
    model = build_model("resnet32", (3, 32, 32), 10, seed=0)
    # Then
    count = sum(p.numel() for p in model.parameters())
    assert 455_000 <= count <= 475_000
    assert len(model.blocks) == 15
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="cnn, resnet20, resnet32, mlp"):
        build_model("vgg", (1, 28, 28), 10, seed=0)


def test_cnn_rejects_images_too_small_to_pool_twice():
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("cnn", (1, 3, 3), 10, seed=0)
