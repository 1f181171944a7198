"""Losses against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji


def test_logit_shift_hinge_values_and_flat_region():
    original = jnp.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    simulated = jnp.array([2.0, 6.0, 9.0, -1.0, -5.0, 3.0])
    task = jnp.array([0, 0, 0, 1, 1, 1])
    got = ji.logit_shift_loss(original, simulated, task, delta=5.0)
    # inject: max(p - p_sim, -5); remove: max(p_sim - p, -5)
    np.testing.assert_allclose(np.asarray(got), [-2.0, -5.0, -5.0, -2.0, -5.0, 2.0])
    grad = jax.grad(lambda s: jnp.sum(ji.logit_shift_loss(original, s, task, delta=5.0)))(simulated)
    # Flat (no gradient) once the shift reaches delta; -1 / +1 slope before.
    np.testing.assert_allclose(np.asarray(grad), [-1.0, 0.0, 0.0, 1.0, 0.0, 1.0])


def test_logit_shift_no_gradient_into_original_logits():
    g = jax.grad(lambda o: jnp.sum(ji.logit_shift_loss(o, jnp.zeros(3), jnp.zeros(3), delta=1.0)))
    np.testing.assert_array_equal(np.asarray(g(jnp.ones(3))), 0.0)


def test_logit_shift_scalar_task_and_shape_check():
    got = ji.logit_shift_loss(jnp.zeros(2), jnp.array([1.0, 7.0]), ji.INJECT, delta=5.0)
    np.testing.assert_allclose(np.asarray(got), [-1.0, -5.0])
    with pytest.raises(ValueError, match="shapes differ"):
        ji.logit_shift_loss(jnp.zeros(2), jnp.zeros(3), 0, delta=1.0)


def test_bce_shift_loss():
    logits = jnp.array([0.0, 2.0, 2.0])
    task = jnp.array([0, 0, 1])
    got = np.asarray(ji.bce_shift_loss(logits, task))
    sig = lambda z: 1 / (1 + np.exp(-z))
    want = [np.log(2.0), -np.log(sig(2.0)), -np.log(1 - sig(2.0))]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cycle_loss_l1_l2():
    a = jnp.zeros((2, 2, 2, 1))
    b = jnp.array([[1.0, -1.0, 2.0, 0.0], [0.0] * 4]).reshape(2, 2, 2, 1)
    np.testing.assert_allclose(np.asarray(ji.cycle_loss(b, a, norm="l1")), [1.0, 0.0])
    np.testing.assert_allclose(np.asarray(ji.cycle_loss(b, a, norm="l2")), [1.5, 0.0])
    with pytest.raises(ValueError, match="norm"):
        ji.cycle_loss(a, a, norm="l3")


def test_smoothness_loss_hand_computed_2d():
    u = np.zeros((1, 3, 3, 2), np.float32)
    u[0, :, :, 0] = [[0, 1, 3], [0, 0, 0], [2, 2, 2]]
    # Component 0 only. Axis-0 diffs: [[0,-1,-3],[2,2,2]]; axis-1 diffs: [[1,2],[0,0],[0,0]].
    sq0, sq1 = 1 + 9 + 4 * 3, 1 + 4
    ab0, ab1 = 1 + 3 + 2 * 3, 1 + 2
    l2_sum = float(ji.smoothness_loss(jnp.asarray(u), norm="l2", reduction="sum")[0])
    l2_mean = float(ji.smoothness_loss(jnp.asarray(u), norm="l2", reduction="mean")[0])
    l1_sum = float(ji.smoothness_loss(jnp.asarray(u), norm="l1", reduction="sum")[0])
    assert l2_sum == pytest.approx(sq0 + sq1)
    assert l2_mean == pytest.approx(sq0 / 6 + sq1 / 6)
    assert l1_sum == pytest.approx(ab0 + ab1)


def test_smoothness_loss_zero_for_translation_and_affine_value_3d():
    t = jnp.broadcast_to(jnp.array([1.0, 2.0, 3.0]), (2, 4, 4, 4, 3))
    np.testing.assert_allclose(np.asarray(ji.smoothness_loss(t)), 0.0)
    a = 0.1 * np.arange(9).reshape(3, 3)
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3, indexing="ij"), -1)
    u = jnp.asarray((grid @ a.T)[None], jnp.float32)
    # Every forward difference along axis j of component k equals a[k, j].
    assert float(ji.smoothness_loss(u)[0]) == pytest.approx(np.sum(a**2), rel=1e-5)


def test_weighted_smoothness_loss_against_numpy():
    """weight: each neighbour pair counts with the smaller of its two weights, per axis a
    weighted mean; weights of 1 give the plain mean, and the field's values where every
    weight is 0 do not count."""
    rng = np.random.default_rng(3)
    u = rng.normal(size=(2, 6, 7, 2)).astype(np.float32)
    w = rng.uniform(size=(2, 6, 7)).astype(np.float32)
    w[:, :, 4:] = 0.0  # the right part carries no weight
    want = np.zeros(2)
    for axis in (1, 2):
        d2 = (np.diff(u.astype(np.float64), axis=axis) ** 2).sum(-1)
        n = w.shape[axis]
        pair = np.minimum(np.take(w, range(n - 1), axis=axis), np.take(w, range(1, n), axis=axis))
        want += (pair * d2).sum(axis=(1, 2)) / pair.sum(axis=(1, 2))
    got = ji.smoothness_loss(jnp.asarray(u), weight=jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    changed = u.copy()
    changed[:, :, 5:] = 100.0  # only pairs with a zero-weight voxel see this
    got_changed = ji.smoothness_loss(jnp.asarray(changed), weight=jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(got_changed), want, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(ji.smoothness_loss(jnp.asarray(u), weight=jnp.ones(w.shape))),
        np.asarray(ji.smoothness_loss(jnp.asarray(u))),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="weight must have"):
        ji.smoothness_loss(jnp.asarray(u), weight=jnp.asarray(w), reduction="sum")
    with pytest.raises(ValueError, match="weight must have"):
        ji.smoothness_loss(jnp.asarray(u), weight=jnp.asarray(w[:, :5]))


def test_smoothness_loss_of_a_one_channel_image_change():
    """Any channel count: a (N, H, W, 1) image change, against NumPy's forward differences."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 7, 1)).astype(np.float32)
    expected = sum(
        (np.diff(x, axis=a) ** 2).sum(-1).mean(axis=(1, 2)) for a in (1, 2)
    )  # mean over the voxels that have a difference along each axis
    np.testing.assert_allclose(ji.smoothness_loss(jnp.asarray(x)), expected, rtol=1e-5)
    l1 = sum(np.abs(np.diff(x, axis=a)).sum(axis=(1, 2, 3)) for a in (1, 2))
    np.testing.assert_allclose(
        ji.smoothness_loss(jnp.asarray(x), norm="l1", reduction="sum"), l1, rtol=1e-5
    )
    with pytest.raises(ValueError, match="spatial axes"):
        ji.smoothness_loss(jnp.zeros((2, 3, 4, 5, 6, 3)))


def test_losses_jit_equals_eager():
    rng = np.random.default_rng(0)
    u = jnp.asarray(rng.normal(size=(2, 5, 6, 7, 3)), jnp.float32)
    for fn in (ji.smoothness_loss, lambda u: ji.cycle_loss(u, u * 0.5)):
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(u)), np.asarray(fn(u)), rtol=1e-5)
