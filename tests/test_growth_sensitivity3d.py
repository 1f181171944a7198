import jax.numpy as jnp
import numpy as np

import jaxinterp as ji
from benchmarks.growth_sensitivity3d import growth_sensitivity


def _setup():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(size=(5, 8, 8, 8, 1)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(1, 8, 8, 8, 1)), jnp.float32)
    logit = lambda x: jnp.sum(weight * jnp.tanh(x), axis=(1, 2, 3, 4))  # any smooth function
    return images, logit


def _mean_logit(logit, images, growth):
    field = ji.integrate_velocity(ji.poisson_velocity(growth[None], ndim=3), steps=3)
    field = jnp.broadcast_to(field, (images.shape[0], *field.shape[1:]))
    return float(jnp.mean(logit(ji.warp(images, field))))


def test_sensitivity_is_the_finite_difference_of_the_mean_logit():
    images, logit = _setup()
    s = growth_sensitivity(logit, images, steps=3, chunk=2)  # chunks of 2, 2 and 1 image
    assert s.shape == (8, 8, 8)
    eps = 1e-2
    for voxel in [(3, 4, 2), (1, 1, 6), (5, 2, 3)]:
        bump = np.zeros((8, 8, 8), np.float32)
        bump[voxel] = eps
        up = _mean_logit(logit, images, jnp.asarray(bump))
        down = _mean_logit(logit, images, jnp.asarray(-bump))
        np.testing.assert_allclose(s[voxel], (up - down) / (2 * eps), rtol=2e-2, atol=2e-3)
    assert np.abs(s).max() > 0.01  # the test function does respond to growth


def test_chunking_does_not_change_the_map():
    images, logit = _setup()
    whole = growth_sensitivity(logit, images, steps=3, chunk=5)
    np.testing.assert_allclose(
        growth_sensitivity(logit, images, steps=3, chunk=3), whole, atol=1e-5
    )
