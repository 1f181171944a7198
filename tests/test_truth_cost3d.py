import jax.numpy as jnp
import numpy as np

import jaxinterp as ji
from benchmarks.truth_cost3d import cost_row, free_map_objective, truth_level_rows
from jaxinterp.losses import REMOVE


def test_cost_row_is_the_objective_terms_median_over_scans():
    rng = np.random.default_rng(0)
    before = rng.normal(size=(5, 6, 6, 6))
    after = before + 0.1 * rng.normal(size=before.shape)
    volume_change = 0.05 * rng.normal(size=before.shape)
    shift = np.array([10.0, 12.0, 14.0, 0.0, 20.0])
    row = cost_row("x", shift, before, after, volume_change, change_weight=2.0, volume_weight=5.0)
    change = 2.0 * np.abs(after - before).reshape(5, -1).mean(axis=1)
    volume = 5.0 * np.abs(volume_change).reshape(5, -1).mean(axis=1)
    assert row["n"] == 5 and row["map"] == "x"
    assert row["median_shift"] == 12.0
    np.testing.assert_allclose(row["change_term"], np.median(change))
    np.testing.assert_allclose(row["volume_term"], np.median(volume))
    # A scan that does not move counts as very expensive (its shift is floored at 1e-3).
    per_logit = (change + volume) / np.array([10.0, 12.0, 14.0, 1e-3, 20.0])
    np.testing.assert_allclose(row["cost_per_logit"], np.median(per_logit))


def test_no_change_costs_nothing():
    x = np.ones((2, 4, 4, 4))
    row = cost_row(
        "same", np.array([1.0, 2.0]), x, x, np.zeros_like(x), change_weight=1.0, volume_weight=1.0
    )
    assert row["change_term"] == row["volume_term"] == row["cost_per_logit"] == 0.0


def test_free_map_objective_is_the_inject_or_remove_objective_of_one_map():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(size=(3, 10, 10, 10, 1)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(1, 10, 10, 10, 1)), jnp.float32)
    logit = lambda x: jnp.sum(weight * x, axis=(1, 2, 3, 4))
    kwargs = dict(delta=2.0, change_weight=1.5, volume_weight=5.0, steps=4)
    loss, terms = free_map_objective(jnp.zeros((10, 10, 10)), images, logit, **kwargs)
    assert float(loss) == 0.0 and not np.any(np.asarray(terms[0]))
    growth = jnp.asarray(0.3 * rng.normal(size=(10, 10, 10)), jnp.float32)
    loss, (shift, change, volume, smooth) = free_map_objective(growth, images, logit, **kwargs)
    assert float(smooth) == 0.0
    field = ji.integrate_velocity(ji.poisson_velocity(growth, ndim=3), steps=4)
    warped = np.stack([np.asarray(ji.warp(x[None], field[None]))[0] for x in images])
    np.testing.assert_allclose(shift, logit(warped) - logit(images), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(change, 1.5 * np.abs(warped - np.asarray(images)).mean(), rtol=1e-5)
    div = np.asarray(ji.divergence(field[None]))
    np.testing.assert_allclose(volume, 5.0 * np.abs(div).mean(), rtol=1e-5)
    _, (_, _, both, _) = free_map_objective(
        growth, images, logit, volume_squared_weight=2.0, **kwargs
    )
    np.testing.assert_allclose(both, 5.0 * np.abs(div).mean() + 2.0 * (div**2).mean(), rtol=1e-5)
    hinge = np.maximum(-np.asarray(shift), -2.0).mean()
    np.testing.assert_allclose(loss, hinge + change + volume, rtol=1e-5)
    # The remove objective of the same map: the same warp and terms, the shift counted
    # downwards, so the hinge rewards a falling logit.
    loss_r, (shift_r, change_r, volume_r, _) = free_map_objective(
        growth, images, logit, task=REMOVE, **kwargs
    )
    np.testing.assert_allclose(shift_r, logit(images) - logit(warped), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([change_r, volume_r], [change, volume], rtol=1e-6)
    hinge_r = np.maximum(-np.asarray(shift_r), -2.0).mean()
    np.testing.assert_allclose(loss_r, hinge_r + change + volume, rtol=1e-5)
    # A diffusion term on the map itself: its forward differences, per axis averaged over
    # the pairs that have them and summed over the axes (squared, or absolute for "l1").
    g = np.asarray(growth, np.float64)
    for norm, power in (("l2", 2), ("l1", 1)):
        smooth_loss, terms = free_map_objective(
            growth, images, logit, growth_smoothness=0.7, growth_smoothness_norm=norm, **kwargs
        )
        want = 0.7 * sum((np.abs(np.diff(g, axis=a)) ** power).mean() for a in range(3))
        np.testing.assert_allclose(terms[3], want, rtol=1e-5)
        np.testing.assert_allclose(smooth_loss - loss, want, rtol=1e-4)


def test_truth_level_rows_split_a_map_by_what_the_truth_does_there():
    brain = np.zeros((4, 4, 4), bool)
    brain[:, :, :3] = True  # 48 voxels; the last column is outside the brain
    truth = np.zeros(brain.shape)
    truth[0] = 1.0  # grows in 12 brain voxels (and 4 outside)
    truth[1, :2] = -0.5  # shrinks in 6
    truth[2, 0] = 0.05  # at 5% of the largest change: counted as about nothing
    change = np.full(brain.shape, 0.25)
    change[~brain] = 100.0  # outside the brain: counted nowhere
    rows = truth_level_rows(change, truth, brain, fraction=0.1)
    assert [r["place"] for r in rows] == [
        "truth grows (> 0.100)",
        "truth shrinks (< -0.100)",
        "truth about 0",
    ]
    assert [r["voxels"] for r in rows] == [12, 6, 30]
    np.testing.assert_allclose([r["truth_mean"] for r in rows], [1.0, -0.5, 3 * 0.05 / 30])
    total = 12 * 1.0 + 6 * 0.5 + 3 * 0.05
    np.testing.assert_allclose(
        [r["truth_share"] for r in rows], [12 / total, 3 / total, 0.15 / total]
    )
    # An even map puts its change where the voxels are: 12, 6 and 30 of the brain's 48.
    np.testing.assert_allclose([r["map_share"] for r in rows], [12 / 48, 6 / 48, 30 / 48])
    np.testing.assert_allclose([r["map_mean"] for r in rows], 0.25)
