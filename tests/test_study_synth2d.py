"""benchmarks/study_synth2d.py: the blob regression against the least-squares normal
equations, the blob-scaling cost against its closed form for a linear classifier."""

import numpy as np

from benchmarks.study_synth2d import blob_regression, blob_scaling_cost


def test_blob_scaling_cost_of_a_linear_classifier():
    """For logit(x) = <w, x> the shift of x + sign a p is a <w, p> (sign for sign), so the
    smallest a is target / <w, p> where that is at most 1."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8, 8, 1))
    off = np.abs(rng.normal(size=(5, 8, 8, 1)))
    diag = np.abs(rng.normal(size=(5, 8, 8, 1)))
    w = np.abs(rng.normal(size=(8, 8, 1)))
    logits = lambda im: (im * w).sum(axis=(1, 2, 3))
    for sign, ratio in ((1.0, 0.0), (-1.0, 0.5)):
        p = off + ratio * diag
        per_unit = (p * w).sum(axis=(1, 2, 3))
        target = per_unit * np.array([0.1, 0.5, 0.9, 1.5, 3.0])  # the last two are out of reach
        a, cost, reached = blob_scaling_cost(logits, x, off, diag, target, sign, ratio)
        want = target / per_unit
        np.testing.assert_array_equal(reached, want <= 1.0)
        np.testing.assert_allclose(a[reached], want[reached], rtol=1e-6)
        np.testing.assert_allclose(
            cost[reached], want[reached] * np.abs(p[reached]).mean(axis=(1, 2, 3)), rtol=1e-6
        )
        assert np.all(a[~reached] == 1.0)


def test_blob_regression_recovers_the_coefficients_and_the_rest():
    rng = np.random.default_rng(1)
    off = rng.normal(size=(3, 6, 6, 1))
    diag = rng.normal(size=(3, 6, 6, 1))
    exact = 2.0 * off + 0.5 * diag
    coefs, rest = blob_regression(exact[..., 0], off, diag)
    np.testing.assert_allclose(coefs, np.tile([2.0, 0.5], (3, 1)), atol=1e-10)
    np.testing.assert_allclose(rest, 0.0, atol=1e-12)
    noisy = exact[..., 0] + rng.normal(size=(3, 6, 6))
    coefs, rest = blob_regression(noisy, off, diag)
    for i in range(3):
        design = np.stack([off[i].ravel(), diag[i].ravel()], axis=1)
        residual = noisy[i].ravel() - design @ coefs[i]
        assert np.allclose(design.T @ residual, 0.0, atol=1e-9)  # least-squares normal equations
        np.testing.assert_allclose(rest[i], residual @ residual / np.sum(noisy[i] ** 2))
