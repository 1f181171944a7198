"""warp / compose / integrate_velocity against SciPy and analytic answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from jax.test_util import check_grads

import jaxinterp as ji


def _random_case(rng, spatial, channels=2, scale=2.0):
    image = rng.normal(size=(*spatial, channels)).astype(np.float32)
    field = (scale * rng.normal(size=(*spatial, len(spatial)))).astype(np.float32)
    return image, field


def _scipy_warp(image, field, mode):
    spatial = field.shape[:-1]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in spatial], indexing="ij"), -1)
    coords = np.moveaxis(grid + field, -1, 0).astype(np.float64)
    return np.stack(
        [
            scipy.ndimage.map_coordinates(
                image[..., c].astype(np.float64), coords, order=1, mode=mode
            )
            for c in range(image.shape[-1])
        ],
        -1,
    )


@pytest.mark.parametrize("spatial", [(12, 16), (8, 10, 12)])
@pytest.mark.parametrize("mode,scipy_mode", [("zeros", "grid-constant"), ("edge", "nearest")])
def test_warp_matches_scipy(spatial, mode, scipy_mode):
    image, field = _random_case(np.random.default_rng(0), spatial)
    got = np.asarray(ji.warp(jnp.asarray(image), jnp.asarray(field), mode=mode))
    want = _scipy_warp(image, field, scipy_mode)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial", [(9, 7), (6, 5, 4)])
def test_zero_field_is_identity(spatial):
    image, _ = _random_case(np.random.default_rng(1), spatial)
    zero = jnp.zeros((*spatial, len(spatial)))
    np.testing.assert_array_equal(np.asarray(ji.warp(jnp.asarray(image), zero)), image)


def test_integer_translation_is_exact_shift():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(10, 11, 12, 1)).astype(np.float32)
    shift = np.array([2, -1, 3], np.float32)
    field = jnp.broadcast_to(jnp.asarray(shift), (10, 11, 12, 3))
    got = np.asarray(ji.warp(jnp.asarray(image), field))
    # Pull-back: warped[x] = image[x + s]; voxels reading outside are 0.
    want = np.zeros_like(image)
    want[:8, 1:, :9] = image[2:, :10, 3:]
    np.testing.assert_array_equal(got, want)


def test_batched_equals_loop_and_vmap():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(3, 8, 9, 10, 1)).astype(np.float32)
    fields = rng.normal(size=(3, 8, 9, 10, 3)).astype(np.float32)
    batched = np.asarray(ji.warp(jnp.asarray(images), jnp.asarray(fields)))
    loop = np.stack(
        [np.asarray(ji.warp(jnp.asarray(i), jnp.asarray(f))) for i, f in zip(images, fields)]
    )
    vmapped = np.asarray(jax.vmap(ji.warp)(jnp.asarray(images), jnp.asarray(fields)))
    np.testing.assert_allclose(batched, loop, atol=1e-6)
    np.testing.assert_allclose(vmapped, loop, atol=1e-6)


def test_jit_equals_eager():
    image, field = _random_case(np.random.default_rng(4), (7, 8, 9))
    eager = ji.warp(jnp.asarray(image), jnp.asarray(field), mode="edge")
    jitted = jax.jit(ji.warp, static_argnames="mode")(
        jnp.asarray(image), jnp.asarray(field), mode="edge"
    )
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)


@pytest.mark.parametrize("spatial", [(6, 7), (5, 6, 4)])
def test_gradients(spatial):
    rng = np.random.default_rng(5)
    image, field = _random_case(rng, spatial, channels=1, scale=1.3)
    # Keep sample points away from voxel centres, where the linear interpolant has kinks.
    field = np.floor(field) + rng.uniform(0.2, 0.8, size=field.shape).astype(np.float32)
    image64 = jnp.asarray(image, jnp.float64) if jax.config.jax_enable_x64 else jnp.asarray(image)
    fn = lambda im, u: jnp.sum(jnp.sin(ji.warp(im, u)))
    check_grads(
        fn,
        (image64, jnp.asarray(field)),
        order=1,
        modes=["rev", "fwd"],
        eps=1e-2,
        atol=2e-2,
        rtol=2e-2,
    )


def test_shape_errors():
    with pytest.raises(ValueError, match="does not match displacement"):
        ji.warp(jnp.zeros((4, 4, 4, 1)), jnp.zeros((4, 4, 5, 3)))
    with pytest.raises(ValueError, match="size 2 or 3"):
        ji.warp(jnp.zeros((4, 4, 4, 1)), jnp.zeros((4, 4, 4, 4)))
    with pytest.raises(ValueError, match="mode"):
        ji.warp(jnp.zeros((4, 4, 1)), jnp.zeros((4, 4, 2)), mode="reflect")


def test_compose_of_translations_adds():
    a = jnp.broadcast_to(jnp.array([1.0, 0.0]), (8, 8, 2))
    b = jnp.broadcast_to(jnp.array([0.0, 2.0]), (8, 8, 2))
    np.testing.assert_allclose(np.asarray(ji.compose(a, b)), np.broadcast_to([1.0, 2.0], (8, 8, 2)))


def test_compose_matches_sequential_warps():
    rng = np.random.default_rng(6)
    image = scipy.ndimage.gaussian_filter(rng.normal(size=(24, 24)), 3)[..., None].astype(
        np.float32
    )
    smooth = lambda: np.stack(
        [scipy.ndimage.gaussian_filter(rng.normal(size=(24, 24)), 5) * 20 for _ in range(2)], -1
    )
    f, s = jnp.asarray(smooth(), jnp.float32), jnp.asarray(smooth(), jnp.float32)
    twice = ji.warp(ji.warp(jnp.asarray(image), f, mode="edge"), s, mode="edge")
    once = ji.warp(jnp.asarray(image), ji.compose(f, s), mode="edge")
    inner = (slice(4, -4), slice(4, -4))
    # Resampling twice blurs once more than resampling once: equal up to interpolation error.
    np.testing.assert_allclose(
        np.asarray(twice)[inner], np.asarray(once)[inner], atol=0.05 * np.abs(image).max()
    )


def test_integrate_velocity_constant_field_is_translation():
    v = jnp.broadcast_to(jnp.array([1.5, -0.5, 2.0]), (6, 6, 6, 3))
    u = ji.integrate_velocity(v, steps=5)
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-5)


def test_integrate_velocity_zero_steps_is_identity_map():
    v = jnp.asarray(np.random.default_rng(7).normal(size=(5, 5, 2)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(ji.integrate_velocity(v, steps=0)), np.asarray(v))


# ---------------------------------------------------------------- poisson_velocity


def _dst_poisson_velocity(growth: np.ndarray) -> np.ndarray:
    """2D reference in NumPy/SciPy: psi by type-I DSTs, v = -central grad psi."""
    import scipy.fft

    eigen = 0.0
    for axis, n in enumerate(growth.shape):
        lam = 2.0 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1)) - 2.0
        eigen = eigen + lam.reshape([n if a == axis else 1 for a in range(growth.ndim)])
    psi = np.pad(scipy.fft.idstn(scipy.fft.dstn(growth, type=1) / eigen, type=1), 1)
    return np.stack(
        [-np.gradient(psi, axis=a)[(slice(1, -1),) * growth.ndim] for a in range(growth.ndim)],
        axis=-1,
    )


def test_poisson_velocity_matches_scipy_sine_transform_2d():
    growth = np.random.default_rng(3).normal(size=(2, 9, 14))
    got = np.asarray(ji.poisson_velocity(jnp.asarray(growth), ndim=2))
    assert got.shape == (2, 9, 14, 2)
    want = np.stack([_dst_poisson_velocity(g) for g in growth])
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


def test_poisson_velocity_matches_the_cohort_generator_3d():
    # jaxinterp.synth3d builds its disease fields in NumPy (scipy's type-I DST, mm spacing).
    from jaxinterp import synth3d

    growth = np.random.default_rng(4).normal(size=(3, 10, 12, 8)).astype(np.float32)
    want = np.stack([synth3d.poisson_velocity(g, (1.0, 1.0, 1.0)) for g in growth])
    got = np.asarray(jax.jit(lambda g: ji.poisson_velocity(g, ndim=3))(growth))
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_poisson_velocity_is_curl_free_and_changes_volume_where_told():
    n = 32
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), axis=-1)
    # A smooth ball of growth in the middle, log volume change 0.1 at its centre.
    growth = 0.1 * np.exp(-((grid - 15.5) ** 2).sum(-1) / (2 * 2.5**2))
    v = np.asarray(ji.poisson_velocity(jnp.asarray(growth), ndim=3))
    # Curl-free: central differences commute, so d v_x / dy = d v_y / dx (away from the
    # border, where np.gradient turns one-sided).
    d = lambda f, a: np.gradient(f, axis=a)[(slice(1, -1),) * 3]
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        np.testing.assert_allclose(d(v[..., a], b), d(v[..., b], a), atol=1e-4 * np.abs(v).max())
    # Its flow's log volume change follows the growth map, and is ~0 away from it.
    lvc = np.asarray(ji.log_volume_change(ji.integrate_velocity(jnp.asarray(v)[None])))[0]
    inner = (slice(3, -3),) * 3
    np.testing.assert_allclose(lvc[inner], growth[inner], atol=0.1 * growth.max())
    assert np.corrcoef(lvc[inner].ravel(), growth[inner].ravel())[0, 1] > 0.95
    far = ((grid - 15.5) ** 2).sum(-1) > 10**2
    assert np.abs(lvc[far & (lvc != 0)]).max() < 0.05 * growth.max()


def test_poisson_velocity_rejects_too_few_axes():
    with pytest.raises(ValueError, match="spatial axes"):
        ji.poisson_velocity(jnp.zeros((4, 4)), ndim=3)


def _sine_field(spatial, amplitude, period):
    """A field along axis 0 only: ``u_0(x) = amplitude * sin(2 pi x_0 / period)``."""
    x0 = np.arange(spatial[0], dtype=np.float64)
    u0 = amplitude * np.sin(2 * np.pi * x0 / period)
    field = np.zeros((*spatial, len(spatial)), np.float32)
    field[..., 0] = u0.reshape(-1, *(1,) * (len(spatial) - 1))
    return field


def test_invert_displacement_matches_root_finding():
    """Along axis 0 the inverse of ``x -> x + u_0(x)`` is found point by point with SciPy's
    bracketing root finder on the same linear interpolant; the other axes stay 0."""
    import scipy.optimize

    spatial, amplitude, period = (32, 5, 4), 1.5, 16.0
    field = _sine_field(spatial, amplitude, period)
    u0 = field[:, 0, 0, 0].astype(np.float64)
    forward = lambda x: x + np.interp(x, np.arange(spatial[0]), u0)
    want = np.array(
        [
            scipy.optimize.brentq(
                lambda x, y: forward(x) - y, y - 2 * amplitude, y + 2 * amplitude, args=(y,)
            )
            - y
            for y in np.arange(spatial[0], dtype=np.float64)
        ]
    )
    got = np.asarray(ji.invert_displacement(jnp.asarray(field), iterations=30))
    inner = slice(4, spatial[0] - 4)  # away from the edge, where the field is replicated
    want = np.broadcast_to(want[:, None, None], spatial)
    np.testing.assert_allclose(got[inner, ..., 0], want[inner], atol=1e-3)
    np.testing.assert_array_equal(got[..., 1:], 0.0)
    assert np.abs(want[inner]).max() > 1.0  # a real displacement, not a near-identity


def test_invert_displacement_undoes_the_warp_from_both_sides():
    """For a smooth 3D flow, ``w`` inverts ``u`` composed on either side (``u o w`` is the
    fixed point's equation; ``w o u`` is not) and agrees with the flow of ``-v``."""
    rng = np.random.default_rng(3)
    spatial = (16, 16, 16)
    comps = [scipy.ndimage.gaussian_filter(rng.normal(size=spatial), 3.0) for _ in spatial]
    velocity = np.stack(comps, -1)
    velocity = jnp.asarray(5.0 * velocity / np.abs(velocity).max(), jnp.float32)
    u = ji.integrate_velocity(velocity, steps=7)
    w = ji.invert_displacement(u, iterations=20)
    inner = (slice(3, -3),) * 3
    assert float(jnp.abs(u[inner]).max()) > 1.5
    assert float(ji.jacobian_determinant(u).min()) < 0.3  # a strong warp, yet no folding
    assert float(jnp.abs(ji.compose(u, w)[inner]).max()) < 5e-3
    # The other side and the flow of -v differ by interpolation error (a tenth of a voxel)
    # where the start -u is a whole voxel off.
    exact = ji.integrate_velocity(-velocity, steps=7)
    assert float(jnp.abs(ji.compose(w, u)[inner]).max()) < 0.15
    assert float(jnp.abs(w - exact)[inner].max()) < 0.1
    assert float(jnp.abs(ji.invert_displacement(u, iterations=0) - exact)[inner].max()) > 1.0


def test_invert_displacement_rejects_negative_iterations():
    with pytest.raises(ValueError, match="iterations"):
        ji.invert_displacement(jnp.zeros((4, 4, 2)), iterations=-1)
