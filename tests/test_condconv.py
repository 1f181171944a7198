"""CondConv against plain convolutions (linearity in the kernel) and its routing formula."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.nn import CondConv, conv_nd


def _routing(params, x, task):
    """Hand-written routing: sigmoid([mean over space, t] @ W + b) in NumPy."""
    x = np.asarray(x, np.float64)
    pooled = x.mean(axis=tuple(range(1, x.ndim - 1)))
    inp = np.concatenate([pooled, np.asarray(task, np.float64)[:, None]], -1)
    r = params["routing"]
    return 1 / (1 + np.exp(-(inp @ np.asarray(r["kernel"]) + np.asarray(r["bias"]))))


def _init(layer, x, task, seed=0):
    variables = layer.init(jax.random.key(seed), x, task)
    # Non-zero routing bias and conv bias so the test sees them.
    params = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(seed + 1), p.shape),
        variables["params"],
    )
    return {"params": params}


@pytest.mark.parametrize("spatial", [(10, 12), (6, 7, 8)])
@pytest.mark.parametrize("implementation", ["experts", "per_example"])
@pytest.mark.parametrize("bias", ["shared", "mixed"])
def test_equals_routing_weighted_sum_of_expert_convs(spatial, implementation, bias):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, *spatial, 4)), jnp.float32)
    task = jnp.array([0.0, 1.0, 1.0])
    layer = CondConv(5, num_experts=3, bias=bias, implementation=implementation)
    variables = _init(layer, x, task)
    got = np.asarray(layer.apply(variables, x, task))

    p = variables["params"]
    alpha = _routing(p, x, task)  # (N, K)
    # Reference: the K experts as separate plain convolutions, mixed per example.
    expert_out = np.stack([np.asarray(conv_nd(x, p["kernel"][k])) for k in range(3)], 1)
    want = np.einsum("nk...,nk->n...", expert_out, alpha)
    b = np.asarray(p["bias"])
    want = want + (
        b
        if bias == "shared"
        else (alpha @ b)[:, None, None]
        if len(spatial) == 2
        else (alpha @ b)[:, None, None, None]
    )
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)


def test_conv_nd_matches_flax_conv():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 6, 7, 8, 3)), jnp.float32)
    conv = nn.Conv(4, (3, 3, 3), padding="SAME", use_bias=False)
    v = conv.init(jax.random.key(0), x)
    np.testing.assert_allclose(
        np.asarray(conv_nd(x, v["params"]["kernel"])), np.asarray(conv.apply(v, x)), atol=1e-5
    )


def test_one_expert_constant_routing_is_plain_conv():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 2)), jnp.float32)
    layer = CondConv(3, num_experts=1)
    v = layer.init(jax.random.key(0), x, jnp.zeros(2))
    params = dict(v["params"])
    # Routing weight 0 and a huge bias: alpha = sigmoid(50) = 1 for every input.
    params["routing"] = {
        "kernel": jnp.zeros_like(params["routing"]["kernel"]),
        "bias": jnp.full((1,), 50.0),
    }
    params["bias"] = jnp.array([0.5, -1.0, 2.0])
    got = layer.apply({"params": params}, x, jnp.zeros(2))
    plain = nn.Conv(3, (3, 3), padding="SAME")
    want = plain.apply({"params": {"kernel": params["kernel"][0], "bias": params["bias"]}}, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_task_changes_output_and_implementations_agree():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 6, 2)), jnp.float32)
    a = CondConv(4, implementation="experts")
    b = CondConv(4, implementation="per_example")
    v = _init(a, x, jnp.zeros(2))
    out0 = a.apply(v, x, jnp.zeros(2))
    out1 = a.apply(v, x, jnp.ones(2))
    assert float(jnp.abs(out0 - out1).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(b.apply(v, x, jnp.ones(2))), np.asarray(out1), atol=1e-5)


def test_auto_implementation_follows_the_backend(monkeypatch):
    """``"auto"`` computes experts on CPUs and per-example elsewhere: the same function."""
    from jaxinterp.nn import condconv

    assert condconv.resolve_implementation("auto") == "experts"  # the tests run on CPUs
    monkeypatch.setattr(condconv.jax, "default_backend", lambda: "gpu")
    assert condconv.resolve_implementation("auto") == "per_example"
    assert condconv.resolve_implementation("experts") == "experts"
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 6, 6, 6, 2)), jnp.float32)
    v = _init(CondConv(4), x, jnp.zeros(2))
    on_gpu_path = CondConv(4).apply(v, x, jnp.array([0.0, 1.0]))  # per-example now
    monkeypatch.undo()
    experts = CondConv(4, implementation="experts").apply(v, x, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(on_gpu_path), np.asarray(experts), atol=1e-5)


def test_jit_equals_eager_and_dropout_needs_rng():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    layer = CondConv(2)
    v = _init(layer, x, jnp.zeros(2))
    eager = layer.apply(v, x, jnp.array([0.0, 1.0]))
    jitted = jax.jit(layer.apply)(v, x, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)
    train = layer.apply(
        v, x, jnp.zeros(2), deterministic=False, rngs={"dropout": jax.random.key(0)}
    )
    assert train.shape == eager.shape


def test_bfloat16_compute_close_to_float32():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 8, 4)), jnp.float32)
    v = _init(CondConv(4), x, jnp.zeros(2))
    full = CondConv(4).apply(v, x, jnp.zeros(2))
    half = CondConv(4, dtype=jnp.bfloat16).apply(v, x, jnp.zeros(2))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(full), atol=0.1, rtol=0.05)


def test_bad_rank_is_a_clear_error():
    with pytest.raises(ValueError, match="CondConv expects"):
        CondConv(2).init(jax.random.key(0), jnp.zeros((4, 4, 1)), jnp.zeros(4))
