import pytest
import torch

from shared.data import (
    dirichlet_partition,
    load_dataset,
    split_federation,
    split_public_and_test,
)
from shared.errors import DataError


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mean_max_class_fraction(labels: torch.Tensor, shards: list[torch.Tensor]) -> float:
    histograms = torch.stack([torch.bincount(labels[s], minlength=10) for s in shards])
    return (histograms.max(dim=1).values / histograms.sum(dim=1)).mean().item()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist_5k():
    return load_dataset("mnist-5k")


@pytest.mark.parametrize("alpha", [0.05, 0.5, None])
def test_shards_are_disjoint_and_exactly_sized(digits, alpha):
    # Given
    labels = digits[0].labels
    # When
    shards = dirichlet_partition(labels, 10, alpha, 100, _generator(0))
    # Then
    assert len(shards) == 10
    assert all(s.dtype == torch.int64 and s.shape == (100,) for s in shards)
    everything = torch.cat(shards)
    assert len(everything.unique()) == 1_000
    assert everything.min() >= 0 and everything.max() < len(labels)


def test_using_almost_every_example_still_fills_every_quota(digits):
    # Given 1,430 of 1,438 examples requested: classes run out and draws move on
    labels = digits[0].labels
    # When
    shards = dirichlet_partition(labels, 10, 0.05, 143, _generator(3))
    # Then
    everything = torch.cat(shards)
    assert len(everything.unique()) == 1_430


def test_same_seed_gives_the_same_split_and_another_seed_a_different_one(digits):
    # Given
    labels = digits[0].labels
    # When
    first = dirichlet_partition(labels, 10, 0.3, 100, _generator(7))
    again = dirichlet_partition(labels, 10, 0.3, 100, _generator(7))
    other = dirichlet_partition(labels, 10, 0.3, 100, _generator(8))
    # Then
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_small_alpha_gives_much_more_skewed_shards_than_iid(mnist_5k):
    # Given
    labels = mnist_5k[0].labels
    # When
    skewed = dirichlet_partition(labels, 20, 0.05, 150, _generator(0))
    iid = dirichlet_partition(labels, 20, None, 150, _generator(0))
    # Then
    skewed_fraction = _mean_max_class_fraction(labels, skewed)
    iid_fraction = _mean_max_class_fraction(labels, iid)
    assert iid_fraction < 0.3
    assert skewed_fraction > 0.6
    assert skewed_fraction > 2.5 * iid_fraction


def test_requesting_more_examples_than_exist_gives_data_error(digits):
    with pytest.raises(DataError, match="only 1438 available"):
        dirichlet_partition(digits[0].labels, 10, 0.5, 144, _generator(0))


def test_non_positive_alpha_is_rejected(digits):
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(digits[0].labels, 2, 0.0, 10, _generator(0))


def test_partition_of_fashion_mnist_covers_100_clients_without_overlap():
    # Given
    labels = load_dataset("fashion-mnist")[0].labels
    # When
    shards = dirichlet_partition(labels, 100, 0.05, 500, _generator(0))
    # Then (its speed is a benchmark matter, not a test's)
    assert len(torch.cat(shards).unique()) == 50_000


def test_public_private_and_test_data_never_overlap(mnist_5k):
    # Given
    train, test = mnist_5k
    # When
    fed = split_federation(
        train,
        test,
        num_clients=8,
        alpha=0.1,
        samples_per_client=300,
        public_size=1_000,
        test_per_client=50,
        seed=1,
    )
    # Then
    private = torch.cat(fed.client_indices)
    assert len(private.unique()) == 8 * 300
    assert len(fed.public_indices.unique()) == 1_000
    assert not torch.isin(fed.public_indices, private).any()
    assert torch.equal(fed.public, train.images[fed.public_indices])
    assert torch.equal(fed.public_labels, train.labels[fed.public_indices])
    for shard, indices in zip(fed.clients, fed.client_indices, strict=True):
        assert torch.equal(shard.images, train.images[indices])
        assert torch.equal(shard.labels, train.labels[indices])
    assert fed.test is test
    assert [len(t) for t in fed.client_tests] == [50] * 8
    assert (fed.num_classes, fed.input_shape) == (10, (1, 28, 28))
    assert fed.class_priors.shape == (8, 10)


def test_client_test_shards_follow_the_client_class_prior(mnist_5k):
    # Given
    train, test = mnist_5k
    # When
    fed = split_federation(
        train,
        test,
        num_clients=20,
        alpha=0.05,
        samples_per_client=100,
        public_size=500,
        test_per_client=40,
        seed=2,
    )
    # Then the dominant class of a client's test shard is that of its private shard
    agree = sum(
        torch.bincount(shard.labels, minlength=10).argmax()
        == torch.bincount(shard_test.labels, minlength=10).argmax()
        for shard, shard_test in zip(fed.clients, fed.client_tests, strict=True)
    )
    assert agree >= 17


def test_split_federation_is_reproducible_from_its_seed(digits):
    # Given
    train, test = digits
    settings = dict(
        num_clients=4, alpha=0.3, samples_per_client=50, public_size=200, test_per_client=30
    )
    # When
    first = split_federation(train, test, seed=5, **settings)
    again = split_federation(train, test, seed=5, **settings)
    # Then
    assert torch.equal(first.public_indices, again.public_indices)
    assert all(
        torch.equal(a.labels, b.labels) for a, b in zip(first.clients, again.clients, strict=True)
    )
    assert all(
        torch.equal(a.labels, b.labels)
        for a, b in zip(first.client_tests, again.client_tests, strict=True)
    )


def test_split_federation_refuses_a_train_split_too_small(digits):
    train, test = digits
    with pytest.raises(DataError, match="train split has 1438"):
        split_federation(
            train,
            test,
            num_clients=10,
            alpha=None,
            samples_per_client=100,
            public_size=500,
            test_per_client=10,
            seed=0,
        )


def test_a_draw_from_an_exhausted_class_moves_to_the_classes_left():
    # Given one client that only wants class 0, which has 5 examples
    from shared.data.partition import _fill_quotas

    labels = torch.tensor([0] * 5 + [1] * 50 + [2] * 50)
    priors = torch.tensor([[0.98, 0.02, 0.0]], dtype=torch.float64)
    # When
    (shard,) = _fill_quotas(labels, priors, 30, _generator(0))
    # Then all of class 0 is taken and the rest comes from the renormalized prior
    histogram = torch.bincount(labels[shard], minlength=3)
    assert histogram.tolist() == [5, 25, 0]


def test_a_public_set_from_another_data_set_comes_from_it_and_leaves_the_train_split_whole(
    mnist_5k,
):
    # Given two 28x28 splits: the private task's (MNIST's first 2,000 train images) and
    # another one the public set comes from (the whole MNIST-5k train split)
    train, test = mnist_5k
    private = train.subset(torch.arange(2000))
    # When P (1,500 images) comes from the other set and the shards take 2 x 1,000
    data = split_federation(
        private,
        test,
        num_clients=2,
        alpha=None,
        samples_per_client=1000,
        public_size=1500,
        test_per_client=10,
        seed=5,
        public_source=train,
    )
    # Then the shards cover the whole private train split (no image went to P) ...
    everything = torch.cat(data.client_indices)
    assert sorted(everything.tolist()) == list(range(2000))
    # ... and P holds the public source's images at its drawn positions
    assert torch.equal(data.public, train.images[data.public_indices])
    assert len(data.public_indices.unique()) == 1500
    # and the aggregator's split draws the same P
    server = split_public_and_test(private, test, public_size=1500, seed=5, public_source=train)
    assert torch.equal(server.public, data.public)


def test_a_public_set_of_another_image_shape_or_too_small_is_refused(digits, mnist_5k):
    train, test = mnist_5k
    with pytest.raises(DataError, match="shape"):
        split_public_and_test(train, test, public_size=10, seed=0, public_source=digits[0])
    with pytest.raises(DataError, match="1439 public examples requested"):
        split_public_and_test(train, test, public_size=1439, seed=0, public_source=digits[0])
