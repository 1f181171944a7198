"""Non-rigid registration: recovery of known smooth warps, identity, batching, resampling."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from jaxinterp.register import RegistrationConfig, register, to_template
from jaxinterp.warp import compose, integrate_velocity, warp

FAST = RegistrationConfig(steps=60, learning_rate=0.3, smoothness=0.01)


def _smooth(rng, shape, sigma):
    x = ndi.gaussian_filter(rng.normal(size=shape), sigma)
    return (x - x.mean()) / x.std()


def _warped_pair(seed, shape=(20, 20, 20), amplitude=2.5):
    """A smooth template and the template moved by a known diffeomorphism ``d``:
    ``moving(x) = fixed(x + d(x))``."""
    rng = np.random.default_rng(seed)
    fixed = _smooth(rng, shape, 1.5)
    v = np.stack([_smooth(rng, shape, 4.0) for _ in shape], -1)
    d = integrate_velocity(jnp.asarray(amplitude * v / np.abs(v).max())[None])[0]
    moving = warp(jnp.asarray(fixed, jnp.float32)[..., None], d, mode="edge")
    return jnp.asarray(fixed, jnp.float32)[..., None], moving, d


def test_recovers_the_inverse_of_a_known_warp():
    fixed, moving, d = _warped_pair(0)
    u, info = register(moving, fixed, config=FAST)
    assert u.shape == (*fixed.shape[:-1], 3)
    before, after = float(info["mismatch_before"][0]), float(info["mismatch_after"][0])
    assert after < 0.2 * before
    # moving(x + u(x)) = fixed(x + u(x) + d(x + u(x))): u undoes d where compose(d, u) ~ 0.
    inner = (slice(4, -4),) * 3
    residual = float(jnp.abs(compose(d[None], u[None])[0][inner]).mean())
    assert residual < 0.4 * float(jnp.abs(d[inner]).mean())
    corr = np.corrcoef(
        np.asarray(warp(moving[None], u[None], mode="edge"))[0][inner].ravel(),
        np.asarray(fixed)[inner].ravel(),
    )[0, 1]
    assert corr > 0.99
    assert np.all(np.diff(np.asarray(info["history"][:, 0]))[:10] < 0)  # it descends


def test_an_image_registered_to_itself_does_not_move():
    fixed, _, _ = _warped_pair(1)
    u, info = register(fixed, fixed, config=FAST)
    assert float(jnp.abs(u).max()) < 1e-5
    assert float(info["mismatch_after"][0]) < 1e-10


def test_batch_members_are_registered_independently():
    fixed, m1, _ = _warped_pair(2)
    _, m2, _ = _warped_pair(3)
    m2 = warp(fixed[None], jnp.zeros((1, *fixed.shape[:-1], 3)) + 0.7)[0]  # a shift instead
    both, _ = register(jnp.stack([m1, m2]), fixed, config=FAST)
    alone = [register(m, fixed, config=FAST)[0] for m in (m1, m2)]
    np.testing.assert_allclose(both, jnp.stack(alone), atol=2e-4)


def test_mask_restricts_the_mismatch():
    fixed, moving, _ = _warped_pair(4)
    mask = np.zeros(fixed.shape[:-1])
    mask[:10] = 1.0  # only the first half counts
    _, info = register(moving, fixed, mask=mask, config=RegistrationConfig(steps=0))
    expected = np.mean(np.sum((np.asarray(moving) - np.asarray(fixed)) ** 2, -1)[:10])
    np.testing.assert_allclose(info["mismatch_before"][0], expected, rtol=1e-5)
    np.testing.assert_allclose(info["mismatch_after"][0], expected, rtol=1e-5)  # 0 steps


def test_two_dimensional_images():
    rng = np.random.default_rng(5)
    fixed = jnp.asarray(_smooth(rng, (32, 32), 1.5), jnp.float32)[..., None]
    shift = jnp.zeros((1, 32, 32, 2)).at[..., 1].set(1.0)
    moving = warp(fixed[None], shift, mode="edge")[0]  # moving(x) = fixed(x + e_1)
    u, info = register(moving, fixed, config=FAST)
    assert float(info["mismatch_after"][0]) < 0.1 * float(info["mismatch_before"][0])
    inner = (slice(6, -6),) * 2
    np.testing.assert_allclose(np.asarray(u[inner]).mean((0, 1)), [0.0, -1.0], atol=0.15)


def test_to_template_samples_maps_at_the_matched_points():
    maps = np.random.default_rng(6).normal(size=(2, 8, 9, 10)).astype(np.float32)
    u = np.zeros((2, 8, 9, 10, 3), np.float32)
    u[0, ..., 2] = 1.0  # sample one voxel further along the last axis
    out = np.asarray(to_template(jnp.asarray(maps), jnp.asarray(u)))
    np.testing.assert_allclose(out[0, :, :, :-1], maps[0, :, :, 1:], atol=1e-6)
    np.testing.assert_allclose(out[0, :, :, -1], maps[0, :, :, -1], atol=1e-6)  # edge
    np.testing.assert_allclose(out[1], maps[1], atol=1e-6)


def test_bad_inputs_are_clear_errors():
    fixed, moving, _ = _warped_pair(7, shape=(8, 8, 8))
    with pytest.raises(ValueError, match="same spatial shape"):
        register(moving[:, :4], fixed)
    with pytest.raises(ValueError, match="mask"):
        register(moving, fixed, mask=np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match="invalid registration"):
        RegistrationConfig(coarse=0)
