import jax.numpy as jnp
import numpy as np

from benchmarks.growth_sensitivity3d import growth_sensitivity
from jaxinterp.saliency import growth_gradient


def test_sensitivity_is_the_mean_of_the_per_image_maps_whatever_the_chunks():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(size=(5, 8, 8, 8, 1)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(1, 8, 8, 8, 1)), jnp.float32)
    logit = lambda x: jnp.sum(weight * jnp.tanh(x), axis=(1, 2, 3, 4))
    want = np.mean(np.asarray(growth_gradient(logit, images, steps=3)), axis=0)
    for chunk in (2, 5):  # chunks of 2, 2 and 1 image; one of 5
        got = growth_sensitivity(logit, images, steps=3, chunk=chunk)
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(want).max() > 0.01  # the test function does respond to growth
