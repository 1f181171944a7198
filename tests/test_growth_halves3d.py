"""benchmarks/growth_halves3d.py: finite growth drawn into scans, against SciPy's warp."""

import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from benchmarks.growth_halves3d import drawn_shifts
from jaxinterp.warp import integrate_velocity, poisson_velocity


def test_drawn_shifts_match_a_scipy_warp_of_the_same_field():
    rng = np.random.default_rng(5)
    shape = (10, 10, 10)
    images = scipy.ndimage.gaussian_filter(rng.normal(size=(3, *shape)), (0, 1.5, 1.5, 1.5))
    weight = rng.normal(size=shape)
    logit = lambda x: jnp.sum(jnp.asarray(weight[None], jnp.float32) * x[..., 0], axis=(1, 2, 3))
    growth = np.zeros(shape)
    growth[3:7, 4:7, 3:6] = 0.5
    shrink = np.zeros(shape)
    shrink[5:8, 2:5, 5:8] = -0.4
    scales = [0.0, 1.0, 2.0]
    got = drawn_shifts(logit, jnp.asarray(images[..., None], jnp.float32), [growth, shrink],
                       scales=scales, steps=5, mode="zeros", chunk=2)  # fmt: skip
    assert len(got) == 2 and got[0][0] == 0.0 and got[1][0] == 0.0
    for g, shifts in zip((growth, shrink), got):
        for scale, shift in zip(scales[1:], shifts[1:]):
            field = integrate_velocity(poisson_velocity(jnp.asarray(scale * g), ndim=3), steps=5)
            coords = np.indices(shape) + np.moveaxis(np.asarray(field), -1, 0)
            warped = [
                scipy.ndimage.map_coordinates(x, coords, order=1, mode="grid-constant")
                for x in images
            ]
            want = np.mean([(weight * (w - x)).sum() for w, x in zip(warped, images)])
            np.testing.assert_allclose(shift, want, rtol=2e-3, atol=2e-3)
        assert abs(shifts[2]) > 0.1  # the growth does move this logit
