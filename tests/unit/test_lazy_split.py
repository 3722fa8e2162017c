"""Splits that scale with K: shards as indices, rows converted on demand, the server's part alone.

A process reads a split from decoded bytes (:class:`RawImages`); whatever it converts must
be bit for bit what converting the whole split would give, so that the aggregator, the
workers and the embedded run agree on every image.
"""

from __future__ import annotations

import pytest
import torch

from shared.data import (
    RawImages,
    Shards,
    load_dataset,
    read_dataset,
    split_federation,
    split_public_and_test,
)
from shared.rounds.setup import prepare_data, prepare_server_data
from tests.conftest import tiny_config

SETTINGS = dict(
    num_clients=6, alpha=0.3, samples_per_client=70, public_size=300, test_per_client=25, seed=4
)


@pytest.mark.parametrize("name", ["digits", "mnist-5k"])
def test_converting_some_rows_gives_exactly_those_rows_of_the_whole_split(name):
    # Given
    raw_train, raw_test = read_dataset(name)
    train, test = load_dataset(name)
    rows = torch.tensor([7, 0, 3, len(train) - 1, 7])
    # When
    part = raw_train.subset(rows)
    # Then
    assert torch.equal(part.images, train.images[rows])
    assert torch.equal(part.labels, train.labels[rows])
    assert torch.equal(raw_test.to_dataset().images, test.images)
    assert raw_train.input_shape == train.input_shape
    assert (part.name, part.num_classes) == (train.name, train.num_classes)


def test_a_split_of_decoded_bytes_equals_the_split_of_converted_images():
    # Given the same data set, decoded only and fully converted
    raw_train, raw_test = read_dataset("digits")
    train, test = load_dataset("digits")
    # When
    lazy = split_federation(raw_train, raw_test, **SETTINGS)
    eager = split_federation(train, test, **SETTINGS)
    # Then every image and index is the same
    assert torch.equal(lazy.public, eager.public)
    assert torch.equal(lazy.public_labels, eager.public_labels)
    assert torch.equal(lazy.test.images, eager.test.images)
    assert torch.equal(lazy.class_priors, eager.class_priors)
    assert len(lazy.clients) == len(lazy.client_tests) == 6
    for ours, theirs in zip(lazy.clients, eager.clients, strict=True):
        assert torch.equal(ours.images, theirs.images)
        assert torch.equal(ours.labels, theirs.labels)
    for ours, theirs in zip(lazy.client_tests, eager.client_tests, strict=True):
        assert torch.equal(ours.images, theirs.images)
        assert torch.equal(ours.labels, theirs.labels)


def test_shards_are_made_when_read_and_a_slice_is_shards_again():
    # Given
    raw_train, raw_test = read_dataset("digits")
    fed = split_federation(raw_train, raw_test, **SETTINGS)
    # When
    first, again = fed.clients[2], fed.clients[2]
    tail = fed.clients[4:]
    # Then each read is a fresh copy of the same rows
    assert isinstance(fed.clients, Shards)
    assert first is not again and torch.equal(first.images, again.images)
    assert torch.equal(first.labels, raw_train.labels[fed.client_indices[2]])
    assert isinstance(tail, Shards) and len(tail) == 2
    assert torch.equal(tail[0].images, fed.clients[4].images)


def test_the_public_and_test_split_alone_equals_that_of_the_whole_split():
    # Given
    raw_train, raw_test = read_dataset("mnist-5k")
    whole = split_federation(raw_train, raw_test, **SETTINGS)
    # When
    server = split_public_and_test(raw_train, raw_test, public_size=300, seed=4)
    # Then
    assert torch.equal(server.public_indices, whole.public_indices)
    assert torch.equal(server.public, whole.public)
    assert torch.equal(server.public_labels, whole.public_labels)
    assert torch.equal(server.test.images, whole.test.images)
    assert torch.equal(server.test.labels, whole.test.labels)
    assert (len(server.clients), len(server.client_tests)) == (0, 0)
    assert server.client_indices == [] and server.class_priors.numel() == 0
    assert (server.num_classes, server.input_shape) == (whole.num_classes, whole.input_shape)


def test_the_aggregator_data_holds_only_the_public_set_and_the_test_split():
    # Given
    config = tiny_config(clients=5, public_size=200, public_per_round=50, seed=9)
    # When
    full = prepare_data(config)
    server = prepare_server_data(config)
    # Then the same public and test arrays, and no client's data at all
    assert torch.equal(server.public, full.public)
    assert torch.equal(server.test.images, full.test.images)
    assert torch.equal(server.test.labels, full.test.labels)
    assert len(server.clients) == 0 and len(server.client_tests) == 0
    tensors = [server.public, server.public_labels, server.test.images, server.test.labels]
    held = sum(t.numel() * t.element_size() for t in tensors)
    public_and_test = (len(server.public) + len(server.test)) * (8 * 8 * 4 + 8)
    assert held == public_and_test


def test_the_public_and_test_split_refuses_a_public_set_larger_than_the_train_split():
    raw_train, raw_test = read_dataset("digits")
    with pytest.raises(Exception, match="train split has 1438"):
        split_public_and_test(raw_train, raw_test, public_size=1_439, seed=0)


def test_uncached_reads_decode_again_and_give_the_same_bytes():
    # Given
    cached, _ = read_dataset("digits")
    # When
    fresh, _ = read_dataset("digits", cache=False)
    # Then
    assert fresh.pixels is not cached.pixels
    assert (fresh.pixels == cached.pixels).all()
    assert isinstance(fresh, RawImages)


def test_partition_of_ten_thousand_clients_is_deterministic_and_uses_every_image_once():
    # Given 10,000 public + 10,000 clients x 5 = the whole 60,000 of Fashion-MNIST
    raw_train, raw_test = read_dataset("fashion-mnist")
    settings = dict(
        num_clients=10_000,
        alpha=0.5,
        samples_per_client=5,
        public_size=10_000,
        test_per_client=2,
        seed=3,
    )
    # When
    first = split_federation(raw_train, raw_test, **settings)
    again = split_federation(raw_train, raw_test, **settings)
    # Then
    private = torch.stack(first.client_indices)
    assert private.shape == (10_000, 5)
    everything = torch.cat([first.public_indices, private.flatten()])
    assert torch.equal(torch.sort(everything).values, torch.arange(60_000))
    assert torch.equal(private, torch.stack(again.client_indices))
    assert torch.equal(first.public_indices, again.public_indices)
    assert len(first.client_tests) == 10_000
    assert torch.equal(first.client_tests[9_999].labels, again.client_tests[9_999].labels)
    assert torch.equal(first.clients[1234].images, raw_train.subset(private[1234]).images)


def test_the_class_order_of_a_shuffle_equals_sorting_its_keys():
    from shared.data.partition import _shuffled_by_class

    # Given labels with empty and crowded classes and a random permutation
    g = torch.Generator().manual_seed(11)
    labels = torch.randint(0, 7, (5_000,), generator=g) * 2  # even classes only
    perm = torch.randperm(5_000, generator=g)
    # When / Then
    assert torch.equal(_shuffled_by_class(labels, perm), torch.argsort(labels * 5_000 + perm))
