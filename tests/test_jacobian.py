"""Jacobian determinant and log volume change against analytic fields and NumPy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

import jaxinterp as ji


def _grid(spatial):
    return np.stack(
        np.meshgrid(*[np.arange(n, dtype=np.float64) for n in spatial], indexing="ij"), -1
    )


def _smooth_field(rng, spatial, sigma, amplitude):
    comps = [scipy.ndimage.gaussian_filter(rng.normal(size=spatial), sigma) for _ in spatial]
    field = np.stack(comps, -1)
    return (amplitude * field / np.abs(field).max()).astype(np.float32)


def _numpy_det(field):
    """det(I + du/dx) with numpy.gradient's central differences."""
    nd = field.shape[-1]
    jac = np.empty(field.shape[:-1] + (nd, nd))
    for i in range(nd):
        grads = np.gradient(field[..., i].astype(np.float64))
        for j in range(nd):
            jac[..., i, j] = grads[j] + (i == j)
    return np.linalg.det(jac)


@pytest.mark.parametrize("scheme", ["central", "forward"])
@pytest.mark.parametrize("spatial", [(9, 10), (7, 8, 9)])
def test_affine_field_gives_det_of_i_plus_a(spatial, scheme):
    rng = np.random.default_rng(0)
    nd = len(spatial)
    a = 0.2 * rng.normal(size=(nd, nd))
    field = (_grid(spatial) @ a.T).astype(np.float32)  # u(x) = A x
    det = np.asarray(ji.jacobian_determinant(jnp.asarray(field), scheme=scheme))
    interior = tuple(slice(1, -1) for _ in spatial)
    np.testing.assert_allclose(det[interior], np.linalg.det(np.eye(nd) + a), rtol=1e-4)
    jac = np.asarray(ji.displacement_jacobian(jnp.asarray(field), scheme=scheme))
    np.testing.assert_allclose(
        jac[interior], np.broadcast_to(np.eye(nd) + a, jac[interior].shape), atol=1e-4
    )


@pytest.mark.parametrize("spatial", [(20, 22), (12, 14, 16)])
def test_central_scheme_matches_numpy_gradient(spatial):
    field = _smooth_field(np.random.default_rng(1), spatial, sigma=2.0, amplitude=2.0)
    det = np.asarray(ji.jacobian_determinant(jnp.asarray(field)))
    interior = tuple(slice(1, -1) for _ in spatial)
    np.testing.assert_allclose(det[interior], _numpy_det(field)[interior], atol=1e-4)


@pytest.mark.parametrize("spatial", [(20, 22), (12, 14, 16)])
def test_divergence_is_the_jacobian_trace_and_first_order_log_volume_change(spatial):
    field = _smooth_field(np.random.default_rng(3), spatial, sigma=2.0, amplitude=2.0)
    div = np.asarray(ji.divergence(jnp.asarray(field[None])))[0]
    interior = tuple(slice(1, -1) for _ in spatial)
    numpy_div = sum(
        np.gradient(field[..., k].astype(np.float64), axis=k) for k in range(len(spatial))
    )
    np.testing.assert_allclose(div[interior], numpy_div[interior], atol=1e-5)
    jac = np.asarray(ji.displacement_jacobian(jnp.asarray(field)), np.float64)
    np.testing.assert_allclose(div, np.trace(jac, axis1=-2, axis2=-1) - len(spatial), atol=1e-5)
    small = jnp.asarray(0.03 * field)  # det(I + J) = 1 + tr J + O(|J|^2)
    lvc = np.asarray(ji.log_volume_change(small))
    np.testing.assert_allclose(-np.asarray(ji.divergence(small)), lvc, atol=1e-3)
    assert np.abs(lvc).max() > 0.015


def test_forward_scheme_is_forward_difference():
    field = _smooth_field(np.random.default_rng(2), (10, 11), sigma=1.5, amplitude=1.0)
    jac = np.asarray(ji.displacement_jacobian(jnp.asarray(field), scheme="forward"))
    fwd = field[1:, :, 0] - field[:-1, :, 0]  # d u_0 / d x_0
    np.testing.assert_allclose(jac[:-1, :, 0, 0], 1 + fwd, atol=1e-5)
    np.testing.assert_allclose(jac[-1, :, 0, 0], 1.0, atol=1e-6)  # edge replicated outside


def _radial_shrink_field(n, radius, factor):
    """Pull-back field whose warp shrinks the content of a ball by `factor` (< 1) radially.

    warped(x) = image(c + (x - c) / factor) inside the ball, so what was at radius r appears
    at radius factor * r: u(x) = (x - c)(1/factor - 1) inside, blended smoothly to 0 outside.
    """
    centre = (n - 1) / 2
    x = _grid((n, n, n)) - centre
    r = np.linalg.norm(x, axis=-1, keepdims=True)
    weight = np.clip((2 * radius - r) / radius, 0, 1)  # 1 inside radius, 0 beyond 2 radius
    return (x * (1 / factor - 1) * weight).astype(np.float32), r[..., 0]


def test_log_volume_change_negative_inside_shrunk_ball():
    field, r = _radial_shrink_field(24, radius=5.0, factor=0.8)
    lvc = np.asarray(ji.log_volume_change(jnp.asarray(field)))
    inside = r < 4
    # Tissue volume ratio factor**3: log = 3 log 0.8 = -0.669 (exact for this linear field).
    np.testing.assert_allclose(lvc[inside], 3 * np.log(0.8), atol=1e-4)
    assert np.all(lvc[r > 11] == 0)
    # The sign is what a viewer sees: a blob shrunk by the warp covers fewer voxels.
    blob = (r < 6).astype(np.float32)[..., None]
    warped = np.asarray(ji.warp(jnp.asarray(blob), jnp.asarray(field)))
    assert (warped > 0.5).sum() < blob.sum()


def test_log_volume_change_positive_for_expansion():
    field, r = _radial_shrink_field(24, radius=5.0, factor=1.25)
    lvc = np.asarray(ji.log_volume_change(jnp.asarray(field)))
    np.testing.assert_allclose(lvc[r < 4], 3 * np.log(1.25), atol=1e-4)


def test_folding_policy_and_fraction():
    # u_0 = -2 x_0 on a 1D-like slab: d phi_0/dx_0 = -1, the map folds everywhere inside.
    field = np.zeros((8, 8, 2), np.float32)
    field[..., 0] = -2 * np.arange(8)[:, None]
    lvc = np.asarray(ji.log_volume_change(jnp.asarray(field), eps=1e-2))
    np.testing.assert_allclose(lvc[1:-1], -np.log(1e-2), rtol=1e-6)
    frac = float(ji.folding_fraction(jnp.asarray(field)))
    # Rows 1..6 have det -1; the edge rows det 1 + (-2)/2 = 0 (half an inner difference),
    # which counts as folding too.
    assert frac == 1.0
    half = field.copy()
    half[..., 0] = np.where(np.arange(8)[:, None] < 4, 0.0, field[..., 0])
    assert 0 < float(ji.folding_fraction(jnp.asarray(half))) < 1
    assert np.isfinite(lvc).all()
    with pytest.raises(ValueError, match="eps"):
        ji.log_volume_change(jnp.asarray(field), eps=0.0)


def test_integrate_velocity_is_fold_free_where_plain_field_folds():
    rng = np.random.default_rng(3)
    v = _smooth_field(rng, (32, 32), sigma=3.0, amplitude=12.0)
    assert float(ji.folding_fraction(jnp.asarray(v))) > 0.02  # the plain field folds
    u = ji.integrate_velocity(jnp.asarray(v), steps=8)
    det = np.asarray(ji.jacobian_determinant(u))
    assert det[2:-2, 2:-2].min() > 0
    assert float(ji.folding_fraction(u)) == 0.0


def test_batched_vmap_and_jit_agree():
    rng = np.random.default_rng(4)
    fields = np.stack([_smooth_field(rng, (8, 9, 10), 1.5, 1.5) for _ in range(3)])
    batched = np.asarray(ji.log_volume_change(jnp.asarray(fields)))
    loop = np.stack([np.asarray(ji.log_volume_change(jnp.asarray(f))) for f in fields])
    vmapped = np.asarray(jax.vmap(ji.log_volume_change)(jnp.asarray(fields)))
    jitted = np.asarray(jax.jit(ji.log_volume_change)(jnp.asarray(fields)))
    np.testing.assert_allclose(batched, loop, atol=1e-6)
    np.testing.assert_allclose(vmapped, loop, atol=1e-6)
    np.testing.assert_allclose(jitted, loop, atol=1e-5)
    assert ji.folding_fraction(jnp.asarray(fields)).shape == (3,)


def test_log_volume_change_is_differentiable():
    rng = np.random.default_rng(5)
    field = jnp.asarray(_smooth_field(rng, (8, 8, 8), 1.5, 0.5))
    grad = jax.grad(lambda u: jnp.sum(ji.log_volume_change(u) ** 2))(field)
    assert grad.shape == field.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).max()) > 0


def test_log_volume_change_on_input_is_the_change_of_the_tissue_that_starts_there():
    """``phi(x) = x + a sin(2 pi x_0 / P)`` along axis 0: the tissue at input voxel ``y``
    ends up at ``x* = phi^-1(y)`` (SciPy's root finder) and its log volume change is
    ``-log(1 + a (2 pi / P) cos(2 pi x* / P))``; on the warped grid the same formula holds
    at ``x = y`` itself, a different map."""
    import scipy.optimize

    spatial, a, period = (48, 4, 3), 1.5, 24.0
    k = 2 * np.pi / period
    x0 = np.arange(spatial[0], dtype=np.float64)
    field = np.zeros((*spatial, 3), np.float32)
    field[..., 0] = (a * np.sin(k * x0))[:, None, None]
    forward = lambda x: x + a * np.sin(k * x)
    start = np.array(
        [
            scipy.optimize.brentq(lambda x, y: forward(x) - y, y - 2 * a, y + 2 * a, args=(y,))
            for y in x0
        ]
    )
    want_input = -np.log1p(a * k * np.cos(k * start))
    want_output = -np.log1p(a * k * np.cos(k * x0))
    got_input = np.asarray(ji.log_volume_change_on_input(jnp.asarray(field)))[:, 1, 1]
    got_output = np.asarray(ji.log_volume_change(jnp.asarray(field)))[:, 1, 1]
    inner = slice(4, -4)
    np.testing.assert_allclose(got_output[inner], want_output[inner], atol=0.03)
    np.testing.assert_allclose(got_input[inner], want_input[inner], atol=0.03)
    assert np.abs(want_input - want_output)[inner].max() > 0.15  # the frames differ


def test_log_volume_change_on_input_is_minus_the_inverse_flows_map():
    """For the flow of ``v`` the inverse is the flow of ``-v``, and the tissue starting at
    ``y`` changes volume by the inverse of that flow's change at ``y``: the two routes
    agree inside the volume."""
    rng = np.random.default_rng(5)
    velocity = jnp.asarray(_smooth_field(rng, (16, 16, 16), sigma=3.0, amplitude=3.0))
    u = ji.integrate_velocity(velocity, steps=7)
    got = np.asarray(ji.log_volume_change_on_input(u))
    want = -np.asarray(ji.log_volume_change(ji.integrate_velocity(-velocity, steps=7)))
    output = np.asarray(ji.log_volume_change(u))
    inner = (slice(3, -3),) * 3
    assert np.abs(want[inner]).max() > 0.3
    assert np.abs(got - want)[inner].max() < 0.05 * np.abs(want[inner]).max()
    assert np.abs(output - want)[inner].max() > 0.2 * np.abs(want[inner]).max()
