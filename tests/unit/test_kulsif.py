"""KuLSIF against a hand-solved system, and the selector rules built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.distill.kulsif import KuLSIF, gaussian_kernel
from shared.distill.selective import (
    confident_rows,
    fit_inlier_mask,
    inliers_above_threshold,
    one_hot_l1,
)


def test_the_gaussian_kernel_of_known_distances():
    a = np.array([[0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 0.0]])
    # distances 0 and 5, width 2: exp(0) and exp(-25 / 8)
    assert np.allclose(gaussian_kernel(a, b, 2.0), [[1.0], [math.exp(-25 / 8)]], rtol=1e-12)


def test_two_noise_and_two_private_points_give_the_hand_solved_weights_and_ratio():
    # x (denominator) = {0, 1}, y (numerator) = {0, 2}, width 1, lambda 1, n = m = 2
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    e1, e4 = math.exp(-0.5), math.exp(-2.0)  # k at distance 1 and 2
    # lhs = K_xx / n + lambda I = [[1.5, e1/2], [e1/2, 1.5]]
    # rhs = -K_xy 1 / (n m lambda) = -[k(0,0) + k(0,2), k(1,0) + k(1,2)] / 4
    r0, r1 = -(1 + e4) / 4, -(2 * e1) / 4
    det = 1.5 * 1.5 - (e1 / 2) ** 2
    alpha = [(1.5 * r0 - e1 / 2 * r1) / det, (-e1 / 2 * r0 + 1.5 * r1) / det]
    fitted = KuLSIF.fit(x, y, width=1.0, lam=1.0)
    assert np.allclose(fitted.alpha, alpha, rtol=1e-12)
    # w(z) = k(z, x) alpha + mean_j k(z, y_j) / lambda, at z = 0.5 and z = 2
    ez = math.exp(-0.125)  # k at distance 0.5
    w_half = ez * alpha[0] + ez * alpha[1] + (ez + math.exp(-1.125)) / 2
    w_two = e4 * alpha[0] + e1 * alpha[1] + (e4 + 1.0) / 2
    assert np.allclose(fitted.ratio(np.array([[0.5], [2.0]])), [w_half, w_two], rtol=1e-12)


def test_the_ratio_is_highest_where_private_points_crowd_and_lowest_far_from_them():
    # noise over [-1, 1], private points around 0.5: the ratio orders 0.5 > 0 > -0.9
    x = np.linspace(-1.0, 1.0, 41)[:, None]
    y = np.linspace(0.4, 0.6, 9)[:, None]
    z = np.array([[0.5], [0.0], [-0.9]])
    ratio = KuLSIF.fit(x, y, width=0.2, lam=3.0).ratio(z)  # lambda = sqrt(m), as Selective-FD
    assert ratio[0] > ratio[1] > ratio[2] > 0
    # a small lambda is barely regularised: the unconstrained fit undershoots below 0
    assert KuLSIF.fit(x, y, width=0.2, lam=0.1).ratio(z)[1] < 0


def test_ratios_are_computed_in_blocks_exactly_as_at_once():
    rng = np.random.default_rng(0)
    fitted = KuLSIF.fit(rng.normal(size=(20, 3)), rng.normal(size=(15, 3)), width=1.5, lam=0.5)
    z = rng.normal(size=(2_500, 3)).astype(np.float32)  # over two 1,000-row blocks
    whole = gaussian_kernel(z.astype(np.float64), fitted.x, 1.5) @ fitted.alpha
    whole += gaussian_kernel(z.astype(np.float64), fitted.y, 1.5).mean(axis=1) / 0.5
    assert np.allclose(fitted.ratio(z), whole, rtol=1e-12)


@pytest.mark.parametrize(
    "x, y, width, lam",
    [
        (np.zeros((0, 2)), np.zeros((3, 2)), 1.0, 1.0),
        (np.zeros((3, 2)), np.zeros((3, 3)), 1.0, 1.0),
        (np.zeros((3, 2)), np.zeros((3, 2)), 0.0, 1.0),
        (np.zeros((3, 2)), np.zeros((3, 2)), 1.0, 0.0),
    ],
)
def test_the_estimator_refuses_empty_mismatched_or_non_positive_inputs(x, y, width, lam):
    with pytest.raises(ValueError):
        KuLSIF.fit(x, y, width=width, lam=lam)


def test_a_sample_strictly_below_the_held_out_quantile_is_an_outlier():
    # quantile 0.125 of [1, 2, 3, 4, 5] (linear) sits at position 0.5: 1.5
    mask = inliers_above_threshold([1.4, 1.5, 1.6, 9.0], [5.0, 1.0, 3.0, 2.0, 4.0], 0.125)
    assert mask.tolist() == [False, True, True, True]
    with pytest.raises(ValueError):
        inliers_above_threshold([1.0], [], 0.125)


def test_the_fitted_selector_drops_public_samples_far_from_the_private_ones():
    rng = np.random.default_rng(7)
    private = 0.5 + 0.05 * rng.normal(size=(200, 2))
    near = 0.5 + 0.05 * rng.normal(size=(50, 2))
    far = np.full((50, 2), -0.9)
    public = np.concatenate([near, far]).astype(np.float32)

    def mask(seed: int) -> np.ndarray:
        return fit_inlier_mask(
            private,
            public,
            kernel_width=0.2,
            lambda_exponent=0.5,
            quantile=0.125,
            rng=np.random.default_rng(seed),
        )

    first = mask(3)
    assert first.dtype == np.bool_ and first.shape == (100,)
    assert not first[50:].any()  # every far sample is an outlier
    assert first[:50].mean() > 0.6  # most near ones are kept (about 1 - 0.125)
    assert np.array_equal(mask(3), first)  # the same generator state, the same mask


def test_the_selector_needs_a_sample_to_fit_and_one_to_threshold_on():
    with pytest.raises(ValueError, match="at least 4"):
        fit_inlier_mask(
            np.zeros((3, 2)),
            np.zeros((5, 2)),
            kernel_width=1.0,
            lambda_exponent=0.5,
            quantile=0.125,
            rng=np.random.default_rng(0),
        )


def test_the_server_selector_keeps_rows_close_to_their_one_hot_argmax():
    labels = np.array(
        [[0.75, 0.125, 0.125], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]], dtype=np.float32
    )
    # |1 - 0.75| + 0.125 + 0.125 = 0.5; 0.5 + 0.25 + 0.25 = 1.0; 2/3 + 1/3 + 1/3 = 4/3
    assert np.allclose(one_hot_l1(labels), [0.5, 1.0, 4 / 3], atol=1e-7)
    assert confident_rows(labels, 1.0).tolist() == [True, False, False]  # strictly below
    assert confident_rows(labels, 1.2).tolist() == [True, True, False]
    # the authors' 2.0 keeps every probability row: the distance is 2 (1 - max) < 2
    assert confident_rows(labels, 2.0).all()
    assert one_hot_l1(np.empty((0, 3), dtype=np.float32)).shape == (0,)
