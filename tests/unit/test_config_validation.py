"""Config validation rejects every combination the code cannot run, with a clear message.

Budget: under 2 s (pure pydantic, plus one load of the digits data set).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config import FederationConfig
from shared.data.catalog import DATASET_SPLITS, DATASETS

SMALL = {
    "dataset": "digits",
    "clients": 3,
    "samples_per_client": 100,
    "public_size": 200,
    "public_per_round": 50,
    "test_per_client": 20,
}


def _rejected(**fields: object) -> str:
    with pytest.raises(ValidationError) as info:
        FederationConfig(**{**SMALL, **fields})
    return str(info.value)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"cache_policy": "adaptive", "cache_duration": 5, "max_cache_duration": 3},
            "max_cache_duration (3) must be 0",
        ),
        ({"public_per_round": 201}, "public_per_round (201) exceeds public_size"),
        ({"clients": 3, "sample_ratio": 0.1}, "samples no client"),
        ({"downlink_codec": "q9"}, "bits 2..8"),
        ({"uplink_codec": "f16+delta"}, "delta apply to quant only"),
        ({"uplink_codec": "gzip"}, "bad codec spec"),
        ({"uplink_codec": "q8+zstd23"}, "zstd level"),
        ({"clients": 20, "samples_per_client": 100}, "exceeds the 1438 training images"),
        ({"public_size": 1500, "public_per_round": 10}, "exceeds the 1438 training images"),
        ({"test_per_client": 400}, "exceeds the 359 test images"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"algorithm": "dsfl", "cache_policy": "adaptive"}, "has none"),
        ({"algorithm": "cfd", "max_cache_duration": 10}, "has none"),
        ({"algorithm": "comet", "cache_policy": "sliding"}, "has none"),
        ({"algorithm": "comet", "comet_clusters": 0}, "comet_clusters"),
        ({"algorithm": "comet", "comet_clusters": 65}, "comet_clusters"),
        ({"algorithm": "comet", "comet_weight": 0}, "comet_weight"),
        ({"cache_policy": "fixed", "max_cache_duration": 10}, "adaptive' only"),
        ({"public_dataset": "mnist"}, "unknown public_dataset 'mnist'"),
        ({"public_dataset": "mnist-5k"}, "has images of shape (1, 28, 28)"),
        (
            {"dataset": "fashion-mnist", "public_dataset": "mnist-5k", "public_size": 4001},
            "public_size (4001) exceeds the 4000 training images of public_dataset mnist-5k",
        ),
    ],
)
def test_a_combination_the_code_cannot_run_is_rejected_with_a_message_naming_it(fields, words):
    # Given / When
    message = _rejected(**fields)
    # Then
    assert words in message


@pytest.mark.parametrize(
    "fields",
    [
        {"cache_policy": "adaptive", "cache_duration": 5, "max_cache_duration": 0},
        {"cache_policy": "adaptive", "cache_duration": 5, "max_cache_duration": 5},
        {"cache_policy": "adaptive", "cache_duration": 5, "max_cache_duration": 12},
        {"clients": 3, "sample_ratio": 0.17},  # rounds to one client
        {"algorithm": "dsfl", "cache_duration": 7},  # D is part of shared grid configs
        {"public_size": 1138, "clients": 3, "samples_per_client": 100},  # exactly full
        {"downlink_codec": "f16+zstd19", "uplink_codec": "q2+delta+zstd"},
        {"public_dataset": "digits"},  # naming the private data set is the default
    ],
)
def test_combinations_the_code_runs_are_accepted(fields):
    # Given / When
    config = FederationConfig(**{**SMALL, **fields})
    # Then
    assert config.dataset == "digits"
    assert not config.cross_dataset


def test_a_public_set_from_another_data_set_leaves_the_whole_train_split_to_the_clients():
    # Given 60 x 1,000 private images: all of Fashion-MNIST's train split, no room for P
    fields = {"dataset": "fashion-mnist", "clients": 60, "samples_per_client": 1000}
    # When P comes from MNIST, Then it fits; from Fashion-MNIST itself, it does not
    config = FederationConfig(**{**SMALL, **fields, "public_dataset": "mnist-5k"})
    assert config.cross_dataset and config.public_source == "mnist-5k"
    assert "exceeds the 60000 training images" in _rejected(**fields)


def test_the_defaults_are_a_valid_configuration():
    # Given / When / Then
    assert FederationConfig().dataset in DATASETS


def test_every_data_set_has_its_split_sizes_listed():
    # Given / When / Then
    assert set(DATASET_SPLITS) == set(DATASETS)


def test_the_listed_digits_split_sizes_are_what_the_loader_returns():
    # Given
    from shared.data import load_dataset

    # When
    train, test = load_dataset("digits")
    # Then
    assert (len(train), len(test)) == DATASET_SPLITS["digits"]


def test_a_fixed_max_cache_duration_that_failed_its_own_commit_is_now_refused_up_front():
    # Given: the combination of issue 11 (accepted, then RoundStateConflict in round D+1)
    fields = {"cache_policy": "adaptive", "cache_duration": 4, "max_cache_duration": 2}
    # When
    message = _rejected(**fields)
    # Then
    assert "at least cache_duration (4)" in message


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"cache_ratio": 0.5, "cache_policy": "sliding"}, "applies to cache_policy = 'fixed'"),
        ({"cache_ratio": 0.5, "algorithm": "dsfl"}, "has none"),
        ({"cache_ratio": 0.0}, "greater than 0"),
    ],
)
def test_a_cache_ratio_needs_the_fixed_cache(fields, words):
    assert words in _rejected(**fields)
