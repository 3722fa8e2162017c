"""The split summary names the private task, the public set's origin and the test data."""

from __future__ import annotations

import numpy as np
import pytest

from shared.config import FederationConfig
from shared.data.summary import describe_split, effective_classes
from shared.rounds.setup import prepare_data, prepare_server_data

SMALL = {
    "dataset": "digits",
    "model": "mlp",
    "clients": 3,
    "samples_per_client": 100,
    "public_size": 200,
    "public_per_round": 50,
    "test_per_client": 20,
    "alpha": 0.5,
}


def test_effective_classes_are_c_for_a_uniform_prior_and_one_for_a_single_class():
    priors = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0, 0]])
    assert effective_classes(priors).tolist() == pytest.approx([4.0, 1.0, 2.0])


def test_the_summary_says_the_public_set_is_disjoint_from_the_shards_of_the_same_data_set():
    config = FederationConfig(**SMALL)
    lines = describe_split(config, prepare_data(config))
    assert lines[0].startswith("private: digits train, 3 clients x 100 images, Dirichlet")
    assert "public:  digits train, disjoint from the private shards, 200 images" in lines[1]
    assert lines[2] == "test:    digits test, 359 images (server); 3 client shards of 20"


def test_the_summary_names_another_data_set_as_the_public_set():
    config = FederationConfig(**{**SMALL, "dataset": "fashion-mnist", "public_dataset": "mnist-5k"})
    # the aggregator's split (no shards): no private line
    lines = describe_split(config, prepare_server_data(config))
    assert len(lines) == 2
    assert lines[0].startswith("public:  mnist-5k train (another data set than the private task)")
    assert lines[1] == "test:    fashion-mnist test, 10,000 images (server)"
