"""Tests for jaxinterp.saliency against hand-built models with known answers.

References are independent: closed-form gradients of linear / two-layer ReLU nets written
in NumPy, an analytic Grad-CAM, a NumPy half-pixel linear interpolation, and a naive
Python loop for occlusion. Inputs are tiny (2D 8x8..12x12, 3D 8^3) to keep the file fast.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp import saliency

# ---------------------------------------------------------------------------------------
# Small hand-built models
# ---------------------------------------------------------------------------------------


def _spatial_axes(x):
    return tuple(range(1, x.ndim - 1))


def _flat(x):
    return x.reshape(x.shape[0], -1)


def _conv(x, k):
    """'SAME' channels-last convolution in 2D or 3D."""
    ndim = x.ndim - 2
    sp = "DHW"[3 - ndim :]
    dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, (f"N{sp}C", f"{sp}IO", f"N{sp}C"))
    return jax.lax.conv_general_dilated(x, k, (1,) * ndim, "SAME", dimension_numbers=dn)


def _pool2(x):
    """Average pooling by 2 along every spatial axis."""
    n, *sp, c = x.shape
    shape = [n]
    for s in sp:
        shape += [s // 2, 2]
    return x.reshape(*shape, c).mean(axis=tuple(2 + 2 * i for i in range(len(sp))))


class TinyCNN:
    """conv 3^d (C -> K) -> act -> avg-pool 2 | flatten -> dense 4 -> act -> dot v."""

    def __init__(self, image_shape, k=3, hidden=4, seed=0):
        rng = np.random.default_rng(seed)
        *sp, c = image_shape
        ndim = len(sp)
        self.kernel = jnp.asarray(rng.normal(size=(3,) * ndim + (c, k)) / 3, jnp.float32)
        n_feat = int(np.prod([s // 2 for s in sp])) * k
        self.dense = jnp.asarray(rng.normal(size=(n_feat, hidden)) / np.sqrt(n_feat), jnp.float32)
        self.bias = jnp.asarray(rng.normal(size=(hidden,)) * 0.1, jnp.float32)
        self.out = jnp.asarray(rng.normal(size=(hidden,)), jnp.float32)

    def features(self, x, act=jax.nn.relu):
        return _pool2(act(_conv(x, self.kernel)))

    def head(self, a, act=jax.nn.relu):
        h = act(_flat(a) @ self.dense + self.bias[None, :])
        return h @ self.out

    def make_logit_fn(self, act):
        return lambda x: self.head(self.features(x, act), act)


def _images(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


SHAPES = {2: (2, 8, 8, 1), 3: (2, 8, 8, 8, 1)}

# ---------------------------------------------------------------------------------------
# Linear model: exact answers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_linear_model_exact(ndim):
    shape = SHAPES[ndim]
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape[1:]).astype(np.float32)
    x = rng.normal(size=shape).astype(np.float32)
    logit_fn = lambda im: jnp.sum(_flat(im * jnp.asarray(w)[None]), axis=1)

    # Exact: the gradient of sum(w * x) is w bit for bit (one channel, no sum rounding).
    grad = saliency.vanilla_gradient(logit_fn, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(grad), np.broadcast_to(w[..., 0], shape[:-1]))
    gxi = saliency.gradient_times_input(logit_fn, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(gxi), (w[None] * x)[..., 0])

    # IG is exact for a linear model up to float32 rounding of the Riemann weights.
    for rule in ("midpoint", "trapezoid"):
        ig = saliency.integrated_gradients(logit_fn, jnp.asarray(x), steps=5, rule=rule)
        np.testing.assert_allclose(np.asarray(ig), (w[None] * x)[..., 0], rtol=1e-5, atol=1e-6)
    base = rng.normal(size=shape[1:]).astype(np.float32)  # one image, broadcast to all
    ig = saliency.integrated_gradients(logit_fn, jnp.asarray(x), baseline=jnp.asarray(base))
    np.testing.assert_allclose(
        np.asarray(ig), (w[None] * (x - base[None]))[..., 0], rtol=1e-5, atol=1e-6
    )


def test_channels_are_summed():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 5, 3)).astype(np.float32)
    x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    logit_fn = lambda im: jnp.sum(_flat(im * jnp.asarray(w)[None]), axis=1)
    grad = saliency.vanilla_gradient(logit_fn, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(grad), np.broadcast_to(w.sum(-1), (2, 6, 5)), rtol=1e-6)
    gxi = saliency.gradient_times_input(logit_fn, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(gxi), (w[None] * x).sum(-1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Integrated gradients: completeness with a rigorous step-dependent tolerance
# ---------------------------------------------------------------------------------------


def _quad_tanh(xp, x, a, q):
    """f(x) = 2 tanh(sum(a x) + sum(q x^2)) per image, in NumPy or JAX."""
    s = xp.sum((a[None] * x + q[None] * x * x).reshape(x.shape[0], -1), axis=1)
    return 2 * xp.tanh(s)


@pytest.mark.parametrize("rule", ["midpoint", "trapezoid"])
def test_integrated_gradients_completeness(rule):
    rng = np.random.default_rng(4)
    shape = (3, 6, 6, 2)
    a = rng.normal(size=shape[1:]) * 0.15
    q = rng.normal(size=shape[1:]) * 0.1
    x = rng.normal(size=shape)
    b = rng.normal(size=shape) * 0.3  # one baseline per image
    logit_fn = functools.partial(
        _quad_tanh, jnp, a=jnp.asarray(a, jnp.float32), q=jnp.asarray(q, jnp.float32)
    )
    # g(t) = f(b + t (x - b)); sum(IG) is the Riemann sum of g' over [0, 1], whose error
    # is <= M / (24 n^2) (midpoint) or M / (12 n^2) (trapezoid) with M = max |g'''|,
    # estimated by finite differences in float64 on a fine grid.
    t = np.linspace(0, 1, 2001)
    g = np.stack([_quad_tanh(np, b + ti * (x - b), a, q) for ti in t])  # (T, N)
    g3 = np.abs(np.diff(g, 3, axis=0)).max(0) / (t[1] - t[0]) ** 3  # (N,)
    exact = g[-1] - g[0]
    denom = 24 if rule == "midpoint" else 12
    errors = []
    for steps in (4, 16, 64):
        ig = saliency.integrated_gradients(
            logit_fn,
            jnp.asarray(x, jnp.float32),
            baseline=jnp.asarray(b, jnp.float32),
            steps=steps,
            rule=rule,
            chunk_size=5,
        )
        total = np.asarray(ig, np.float64).reshape(3, -1).sum(1)
        err = np.abs(total - exact)
        tol = 1.05 * g3 / (denom * steps**2) + 2e-5  # + float32 rounding
        assert np.all(err <= tol), (steps, err, tol)
        errors.append(err.max())
    assert errors[-1] < errors[0] / 20  # O(1/steps^2): 4 -> 64 steps shrinks by ~256


def test_integrated_gradients_chunking_does_not_change_result():
    model = TinyCNN((8, 8, 1))
    x = _images((2, 8, 8, 1))
    f = model.make_logit_fn(jax.nn.relu)
    ref = saliency.integrated_gradients(f, x, steps=7, chunk_size=1)
    for chunk in (3, 7, 10):
        out = saliency.integrated_gradients(f, x, steps=7, chunk_size=chunk)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Guided backprop
# ---------------------------------------------------------------------------------------


def test_guided_relu_forward_and_backward():
    x = jnp.array([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    g = jnp.array([1.0, -1.0, 2.0, -3.0, 4.0, 0.5])
    y, vjp = jax.vjp(saliency.guided_relu, x)
    np.testing.assert_array_equal(np.asarray(y), np.maximum(np.asarray(x), 0))
    (gx,) = vjp(g)
    np.testing.assert_array_equal(np.asarray(gx), [0.0, 0.0, 0.0, 0.0, 4.0, 0.5])


def test_guided_backprop_two_layer_relu_net():
    rng = np.random.default_rng(5)
    shape = (3, 4, 4, 2)
    d = int(np.prod(shape[1:]))
    w1 = rng.normal(size=(d, 6)).astype(np.float32)
    w2 = rng.normal(size=(6, 5)).astype(np.float32)
    w3 = np.array([1.0, -2.0, 0.5, -1.0, 1.5], np.float32)
    x = rng.normal(size=shape).astype(np.float32)

    def make_logit_fn(act):
        return lambda im: act(act(_flat(im) @ jnp.asarray(w1)) @ jnp.asarray(w2)) @ jnp.asarray(w3)

    z1 = x.reshape(3, -1) @ w1
    z2 = np.maximum(z1, 0) @ w2
    # Vanilla chain rule and the guided rule (keep only positive gradients at active units).
    g2 = w3[None] * (z2 > 0)
    vanilla = ((g2 @ w2.T) * (z1 > 0)) @ w1.T
    g2_guided = np.maximum(w3[None], 0) * (z2 > 0)
    g1_guided = np.maximum(g2_guided @ w2.T, 0) * (z1 > 0)
    guided = g1_guided @ w1.T
    # Precondition: a negative gradient reaches an active unit, so the two must differ.
    assert np.any((w3[None] < 0) & (z2 > 0))

    got_v = saliency.vanilla_gradient(make_logit_fn(jax.nn.relu), jnp.asarray(x))
    got_g = saliency.guided_backprop(make_logit_fn, jnp.asarray(x))
    np.testing.assert_allclose(
        np.asarray(got_v), vanilla.reshape(shape).sum(-1), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(got_g), guided.reshape(shape).sum(-1), rtol=1e-5, atol=1e-5
    )
    assert np.abs(np.asarray(got_v) - np.asarray(got_g)).max() > 1e-2


# ---------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------


def _np_linear_resize(a, out_shape):
    """Separable half-pixel-centre linear interpolation with edge clamping (NumPy)."""
    for axis, (n_in, n_out) in enumerate(zip(a.shape, out_shape, strict=True)):
        if n_in == n_out:
            continue
        coords = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        a = np.apply_along_axis(lambda v, c=coords, n=n_in: np.interp(c, np.arange(n), v), axis, a)
    return a


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("head", ["linear", "quadratic"])
def test_grad_cam_analytic(ndim, head):
    rng = np.random.default_rng(6)
    shape = (2, 8, 8, 3) if ndim == 2 else (2, 8, 8, 8, 3)
    x = rng.normal(size=shape).astype(np.float32)
    v = np.array([1.0, -2.0, 0.7], np.float32)
    sub = (slice(None),) + (slice(None, None, 2),) * ndim  # features: every 2nd voxel
    features_fn = lambda im: im[sub]
    axes = tuple(range(1, ndim + 1))
    if head == "linear":  # logit = sum_k v_k mean_s A_k  =>  w_k = v_k / S
        head_fn = lambda a: jnp.mean(a, axis=_spatial_axes(a)) @ jnp.asarray(v)
    else:  # logit = sum_k v_k mean_s A_k^2  =>  w_k = 2 v_k mean_s(A_k) / S
        head_fn = lambda a: jnp.mean(a * a, axis=_spatial_axes(a)) @ jnp.asarray(v)
    feats = x[sub]
    n_sp = np.prod(feats.shape[1:-1])
    if head == "linear":
        w = np.broadcast_to(v / n_sp, (2, 3))
    else:
        w = 2 * v[None] * feats.mean(axis=axes) / n_sp
    expected = np.einsum("n...k,nk->n...", feats, w)
    assert (expected > 0).any() and (expected < 0).any()  # the ReLU matters

    signed = saliency.grad_cam(features_fn, head_fn, jnp.asarray(x), relu=False, upsample=False)
    np.testing.assert_allclose(np.asarray(signed), expected, rtol=1e-5, atol=1e-7)
    cam = saliency.grad_cam(features_fn, head_fn, jnp.asarray(x), upsample=False)
    np.testing.assert_allclose(np.asarray(cam), np.maximum(expected, 0), rtol=1e-5, atol=1e-7)
    up = saliency.grad_cam(features_fn, head_fn, jnp.asarray(x))
    assert up.shape == shape[:-1]
    np.testing.assert_allclose(
        np.asarray(up),
        _np_linear_resize(np.maximum(expected, 0), shape[:-1]),
        rtol=1e-5,
        atol=1e-7,
    )


def test_guided_grad_cam_is_product():
    model = TinyCNN((8, 8, 1))
    x = _images((2, 8, 8, 1))
    out = saliency.guided_grad_cam(model.make_logit_fn, model.features, model.head, x)
    gb = saliency.guided_backprop(model.make_logit_fn, x)
    cam = saliency.grad_cam(model.features, model.head, x)
    assert out.shape == (2, 8, 8)
    np.testing.assert_allclose(np.asarray(out), np.asarray(gb * cam), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------
# Occlusion against a naive loop
# ---------------------------------------------------------------------------------------


def _score(xp, x, a):
    """Nonlinear per-image score of order 1: tanh(sum(a x)) + 0.5 mean(x^2)."""
    lin = xp.sum((a[None] * x).reshape(x.shape[0], -1), axis=1)
    sq = xp.mean((x * x).reshape(x.shape[0], -1), axis=1)
    return xp.tanh(lin) + 0.5 * sq


def _naive_occlusion(score, x, window, stride, fill):
    """Loop over window positions in NumPy; returns (centre map, spread map)."""
    n, *sp, _ = x.shape
    fill = np.broadcast_to(fill, x.shape)
    ref = score(x)
    centre = np.zeros((n, *sp))
    total = np.zeros((n, *sp))
    count = np.zeros(sp)
    ranges = [range(0, s - w + 1, st) for s, w, st in zip(sp, window, stride, strict=True)]
    for start in np.ndindex(*[len(r) for r in ranges]):
        lo = [r[i] for r, i in zip(ranges, start, strict=True)]
        box = tuple(slice(a, a + w) for a, w in zip(lo, window, strict=True))
        occluded = x.copy()
        occluded[(slice(None), *box)] = fill[(slice(None), *box)]
        drop = ref - score(occluded)
        mid = tuple(a + (w - 1) // 2 for a, w in zip(lo, window, strict=True))
        centre[(slice(None), *mid)] = drop
        total[(slice(None), *box)] += drop.reshape((n,) + (1,) * len(sp))
        count[box] += 1
    spread = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return centre, spread


OCCLUSION_CASES = {
    # 2D, stride not dividing (9 - 4): voxels 7, 8 of axis 2 are covered by no window.
    "2d_image_fill": ((2, 11, 9, 2), (3, 4), (2, 3), "image"),
    "3d_scalar_fill": ((2, 8, 9, 7, 1), (3, 3, 3), (2, 2, 3), 0.5),
    "3d_per_image_fill": ((2, 8, 8, 8, 1), (4, 4, 4), (3, 3, 3), "per_image"),
}


@pytest.mark.parametrize("case", list(OCCLUSION_CASES))
def test_occlusion_matches_naive_loop(case):
    shape, window, stride, fill = OCCLUSION_CASES[case]
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape)
    a = rng.normal(size=shape[1:]) * 0.3
    if fill == "image":
        fill = rng.normal(size=shape[1:])
    elif fill == "per_image":
        fill = rng.normal(size=shape)
    centre, spread = _naive_occlusion(lambda im: _score(np, im, a), x, window, stride, fill)
    score_fn = functools.partial(_score, jnp, a=jnp.asarray(a, jnp.float32))
    fill_j = jnp.asarray(fill, jnp.float32)
    x_j = jnp.asarray(x, jnp.float32)
    for spread_opt, expected in ((False, centre), (True, spread)):
        for chunk in (1, 4, 1000):
            got = saliency.occlusion(
                score_fn,
                x_j,
                window=window,
                stride=stride,
                fill=fill_j,
                spread=spread_opt,
                chunk_size=chunk,
            )
            np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-6)


def test_occlusion_positions_and_errors():
    starts = saliency.occlusion_starts((64, 64, 64), window=8, stride=4)
    assert [s.size for s in starts] == [15, 15, 15]  # 3375 positions, as in the paper
    np.testing.assert_array_equal(starts[0], np.arange(0, 57, 4))
    x = jnp.zeros((1, 6, 6, 1))
    with pytest.raises(ValueError, match="window"):
        saliency.occlusion(lambda im: im.sum((1, 2, 3)), x, window=7, stride=1)
    with pytest.raises(ValueError, match="window"):
        saliency.occlusion(lambda im: im.sum((1, 2, 3)), x, window=(2, 2, 2), stride=1)


def test_errors():
    x = jnp.ones((2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        saliency.vanilla_gradient(lambda im: im.sum((1, 2))[:, :], x)  # (N, 1)
    with pytest.raises(ValueError, match="rule"):
        saliency.integrated_gradients(lambda im: im.sum((1, 2, 3)), x, rule="simpson")


# ---------------------------------------------------------------------------------------
# jit == eager, per-example == loop, 2D and 3D
# ---------------------------------------------------------------------------------------


def _all_methods(model):
    m = model
    return {
        "vanilla_gradient": lambda x: saliency.vanilla_gradient(m.make_logit_fn(jax.nn.relu), x),
        "gradient_times_input": lambda x: saliency.gradient_times_input(
            m.make_logit_fn(jax.nn.relu), x
        ),
        "guided_backprop": lambda x: saliency.guided_backprop(m.make_logit_fn, x),
        "grad_cam": lambda x: saliency.grad_cam(m.features, m.head, x),
        "grad_cam_signed_coarse": lambda x: saliency.grad_cam(
            m.features, m.head, x, relu=False, upsample=False
        ),
        "guided_grad_cam": lambda x: saliency.guided_grad_cam(
            m.make_logit_fn, m.features, m.head, x
        ),
        "integrated_gradients": lambda x: saliency.integrated_gradients(
            m.make_logit_fn(jax.nn.relu), x, baseline=0.1, steps=5, chunk_size=2
        ),
        "occlusion": lambda x: saliency.occlusion(
            m.make_logit_fn(jax.nn.relu), x, window=4, stride=3, chunk_size=3
        ),
        "occlusion_spread": lambda x: saliency.occlusion(
            m.make_logit_fn(jax.nn.relu),
            x,
            window=4,
            stride=3,
            spread=True,
            chunk_size=3,
            fill=jnp.full(x.shape[1:], 0.2),
        ),
    }


@pytest.mark.parametrize("ndim", [2, 3])
def test_jit_equals_eager_and_per_example(ndim):
    shape = SHAPES[ndim]
    model = TinyCNN(shape[1:])
    x = _images(shape)
    for name, fn in _all_methods(model).items():
        eager = fn(x)
        coarse = name == "grad_cam_signed_coarse"
        assert eager.shape == (shape[:1] + (4,) * ndim if coarse else shape[:-1]), name
        assert np.all(np.isfinite(np.asarray(eager))), name
        jitted = jax.jit(fn)(x)
        np.testing.assert_allclose(
            np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-6, err_msg=name
        )
        # Each image's map does not depend on the rest of the batch.
        single = np.concatenate([np.asarray(fn(x[i : i + 1])) for i in range(shape[0])])
        np.testing.assert_allclose(single, np.asarray(eager), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("ndim", [2, 3])
def test_growth_gradient_is_each_images_central_difference(ndim):
    rng = np.random.default_rng(3)
    shape = (3, *(8,) * ndim, 1)
    images = jnp.asarray(rng.normal(size=shape), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(1, *shape[1:])), jnp.float32)
    logit_fn = lambda x: jnp.sum(weight * jnp.tanh(x), axis=tuple(range(1, x.ndim)))
    maps = saliency.growth_gradient(logit_fn, images, steps=3)
    assert maps.shape == images.shape[:-1]

    def logit_of(growth, k):  # image k warped by the growth map, as a volume simulator does
        field = ji.integrate_velocity(ji.poisson_velocity(growth[None], ndim=ndim), steps=3)
        return float(logit_fn(ji.warp(images[k : k + 1], field))[0])

    eps = 1e-2
    for k, voxel in [(0, (3, 4, 2)), (1, (1, 1, 6)), (2, (5, 2, 3))]:
        voxel = voxel[:ndim]
        bump = np.zeros(shape[1:-1], np.float32)
        bump[voxel] = eps
        want = (logit_of(jnp.asarray(bump), k) - logit_of(jnp.asarray(-bump), k)) / (2 * eps)
        np.testing.assert_allclose(maps[k][voxel], want, rtol=2e-2, atol=2e-3)
    # each image's own map: they differ, and a batch of one gives the same map
    assert not np.allclose(maps[0], maps[1])
    np.testing.assert_allclose(
        saliency.growth_gradient(logit_fn, images[1:2], steps=3)[0], maps[1], atol=1e-6
    )
