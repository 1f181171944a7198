import jax.numpy as jnp
import numpy as np

import jaxinterp as ji
from benchmarks.growth_spread3d import spread_rows


def _setup():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(3, 10, 10, 10, 1)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(1, 10, 10, 10, 1)), jnp.float32)
    logit = lambda x: jnp.sum(weight * x**2, axis=(1, 2, 3, 4))  # any smooth function
    inside = np.zeros((10, 10, 10), bool)
    inside[3:7, 3:7, 3:7] = True
    return images, logit, inside, rng


def test_full_row_is_the_warp_by_the_whole_growth_map():
    images, logit, inside, rng = _setup()
    growth = jnp.asarray(0.2 * rng.normal(size=(3, 10, 10, 10)), jnp.float32)
    rows = spread_rows(logit, images, growth, {"box": inside}, sign=-1.0, steps=4)
    field = ji.integrate_velocity(ji.poisson_velocity(growth, ndim=3), steps=4)
    shift = -(logit(ji.warp(images, field)) - logit(images))
    assert rows[0]["map"] == "full"
    np.testing.assert_allclose(rows[0]["median_shift"], float(np.median(shift)), rtol=1e-5)
    lvc = np.abs(np.asarray(ji.log_volume_change(field))).mean()
    np.testing.assert_allclose(rows[0]["mean_abs_change"], lvc, rtol=1e-5)
    assert [r["map"] for r in rows[1:]] == ["box, cut", "box, same total"]


def test_a_map_already_inside_the_region_is_unchanged_by_the_cut():
    images, logit, inside, rng = _setup()
    growth = jnp.asarray(0.2 * rng.normal(size=(3, 10, 10, 10)) * inside[None], jnp.float32)
    full, cut, same = spread_rows(logit, images, growth, {"box": inside}, sign=1.0, steps=4)
    for row in (cut, same):
        np.testing.assert_allclose(row["median_shift"], full["median_shift"], rtol=1e-5)
        np.testing.assert_allclose(row["mean_abs_change"], full["mean_abs_change"], rtol=1e-5)


def test_cut_keeps_the_region_and_same_total_restores_the_net_growth():
    images, logit, inside, rng = _setup()
    growth = jnp.asarray(0.05 + 0.01 * rng.normal(size=(3, 10, 10, 10)), jnp.float32)
    full, cut, same = spread_rows(logit, images, growth, {"box": inside}, sign=1.0, steps=4)
    kept = growth * inside[None]
    field = ji.integrate_velocity(ji.poisson_velocity(kept, ndim=3), steps=4)
    want = float(np.median(logit(ji.warp(images, field)) - logit(images)))
    np.testing.assert_allclose(cut["median_shift"], want, rtol=1e-5)
    scale = growth.sum(axis=(1, 2, 3)) / kept.sum(axis=(1, 2, 3))
    field = ji.integrate_velocity(
        ji.poisson_velocity(kept * scale[:, None, None, None], ndim=3), steps=4
    )
    want = float(np.median(logit(ji.warp(images, field)) - logit(images)))
    np.testing.assert_allclose(same["median_shift"], want, rtol=1e-5)
    # The same net growth in 64 of 1000 voxels changes each of them far more.
    assert same["mean_abs_change"] > 3 * cut["mean_abs_change"]
