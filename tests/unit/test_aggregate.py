import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.distill.aggregate import mean_by_index
from shared.distill.sampling import round_generator, sample_clients, sample_public_indices


def _naive(labels, index):
    out = {}
    for row, i in zip(labels.tolist(), index.tolist(), strict=True):
        out.setdefault(i, []).append(row)
    keys = sorted(out)
    return torch.tensor(
        [
            [sum(col) / len(rows) for col in zip(*rows, strict=True)]
            for rows in (out[k] for k in keys)
        ]
    ), torch.tensor(keys)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(1, 60), c=st.integers(1, 12))
def test_mean_by_index_equals_a_naive_loop(seed, m, c):
    g = torch.Generator().manual_seed(seed)
    labels = torch.softmax(torch.randn(m, c, generator=g), -1)
    index = torch.randint(0, 20, (m,), generator=g)
    means, uniq = mean_by_index(labels, index, 20)
    expected, keys = _naive(labels, index)
    assert torch.equal(uniq, keys)
    assert torch.allclose(means, expected.to(torch.float32), atol=1e-6)


def test_mean_by_index_does_not_depend_on_row_order_bitwise():
    g = torch.Generator().manual_seed(1)
    labels = torch.softmax(torch.randn(300, 10, generator=g), -1)
    index = torch.arange(100).repeat(3)
    perm = torch.randperm(300, generator=g)
    a, _ = mean_by_index(labels, index, 100)
    b, _ = mean_by_index(labels[perm], index[perm], 100)
    assert torch.allclose(a, b, atol=1e-7)


def test_mean_by_index_rejects_bad_shapes_and_ranges():
    with pytest.raises(ValueError):
        mean_by_index(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="outside"):
        mean_by_index(torch.zeros(1, 2), torch.tensor([5]), 5)


def test_sampling_depends_only_on_seed_round_and_stream():
    a = sample_public_indices(1000, 100, round_generator(7, 3, 2))
    b = sample_public_indices(1000, 100, round_generator(7, 3, 2))
    c = sample_public_indices(1000, 100, round_generator(7, 4, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.unique(a).numel() == 100


@pytest.mark.parametrize(("k", "ratio", "expected"), [(10, 1.0, 10), (10, 0.3, 3), (3, 0.01, 1)])
def test_sample_clients_picks_the_configured_share(k, ratio, expected):
    picked = sample_clients(k, ratio, round_generator(0, 0, 1))
    assert len(picked) == expected and picked == sorted(set(picked))
    assert all(0 <= x < k for x in picked)


def test_sampling_rejects_invalid_sizes():
    with pytest.raises(ValueError):
        sample_clients(10, 0.0, round_generator(0, 0, 1))
    with pytest.raises(ValueError):
        sample_public_indices(10, 11, round_generator(0, 0, 2))
