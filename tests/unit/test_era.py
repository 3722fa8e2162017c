import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.distill.era import enhanced_era, era, sharpen


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.to(torch.float64)
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


def _simplex(seed: int, n: int, c: int, peak: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, generator=g) * 3 * peak, dim=-1)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(2, 200), beta=st.floats(0.5, 50))
def test_enhanced_era_rows_sum_to_one_and_keep_the_argmax(seed, c, beta):
    # Given
    p = _simplex(seed, 16, c)
    # When
    q = enhanced_era(p, beta)
    # Then
    assert torch.allclose(q.sum(-1), torch.ones(16), atol=1e-5)
    assert torch.equal(q.argmax(-1), p.argmax(-1))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(2, 100))
def test_enhanced_era_is_the_identity_at_beta_one(seed, c):
    p = _simplex(seed, 8, c)
    assert torch.allclose(enhanced_era(p, 1.0), p, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(2, 100))
def test_enhanced_era_entropy_falls_monotonically_as_beta_grows(seed, c):
    p = _simplex(seed, 8, c)
    entropies = [_entropy(enhanced_era(p, b)) for b in (1.0, 1.5, 2.0, 3.0, 5.0, 10.0)]
    for lower, higher in zip(entropies[1:], entropies[:-1], strict=True):
        assert bool((lower <= higher + 1e-5).all())


def test_enhanced_era_stays_finite_for_tiny_probabilities_and_huge_beta():
    # Given: 0.5**2000 underflows to 0 even in float64, and exact zeros are present
    p = torch.tensor([[0.6, 0.4 - 1e-30, 1e-30, 0.0], [1e-38, 1e-38, 1.0 - 2e-38, 0.0]])
    # When
    q = enhanced_era(p, 2000.0)
    # Then
    assert bool(torch.isfinite(q).all())
    assert torch.allclose(q.sum(-1), torch.ones(2))
    assert q[0, 0] == pytest.approx(1.0) and q[1, 2] == pytest.approx(1.0)
    assert q[0, 3] == 0.0


def test_enhanced_era_is_unchanged_by_permuting_classes():
    p = _simplex(3, 10, 7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(enhanced_era(p[:, perm], 2.5), enhanced_era(p, 2.5)[:, perm])


def test_enhanced_era_matches_the_power_formula_where_it_is_safe():
    p = _simplex(5, 32, 10).to(torch.float64)
    expected = p**2.0 / (p**2.0).sum(-1, keepdim=True)
    assert torch.allclose(enhanced_era(p, 2.0).to(torch.float64), expected, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(2, 200), t=st.floats(0.01, 5))
def test_era_rows_sum_to_one_and_keep_the_argmax(seed, c, t):
    p = _simplex(seed, 16, c)
    q = era(p, t)
    assert torch.allclose(q.sum(-1), torch.ones(16), atol=1e-5)
    assert bool(torch.isfinite(q).all())
    assert torch.equal(q.argmax(-1), p.argmax(-1))


def test_era_entropy_falls_as_temperature_falls():
    p = _simplex(7, 8, 10)
    entropies = [_entropy(era(p, t)) for t in (5.0, 1.0, 0.5, 0.1, 0.05, 0.01)]
    for lower, higher in zip(entropies[1:], entropies[:-1], strict=True):
        assert bool((lower <= higher + 1e-6).all())


def test_era_at_temperature_one_flattens_instead_of_being_the_identity():
    # PAPER.md §3: softmax over probabilities, C=10, p_max=0.5 -> 0.1477 at T=1
    p = torch.full((1, 10), 0.5 / 9)
    p[0, 0] = 0.5
    assert era(p, 1.0)[0, 0].item() == pytest.approx(0.1477, abs=1e-4)
    assert enhanced_era(p, 2.0)[0, 0].item() == pytest.approx(0.9, abs=1e-4)


def test_era_stays_finite_for_tiny_temperatures():
    p = _simplex(1, 4, 10)
    assert bool(torch.isfinite(era(p, 1e-6)).all())


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_invalid_parameters_are_rejected_with_a_clear_error(bad):
    p = _simplex(0, 2, 3)
    with pytest.raises(ValueError, match="beta"):
        enhanced_era(p, bad)
    with pytest.raises(ValueError, match="temperature"):
        era(p, bad)


def test_sharpen_dispatches_by_method_name():
    p = _simplex(2, 4, 5)
    assert torch.allclose(sharpen(p, method="era", temperature=0.1, beta=9), era(p, 0.1))
    assert torch.allclose(
        sharpen(p, method="enhanced_era", temperature=9, beta=2.0), enhanced_era(p, 2.0)
    )
    assert torch.allclose(sharpen(p, method="none", temperature=1, beta=1), p, atol=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        sharpen(p, method="bogus", temperature=1, beta=1)
