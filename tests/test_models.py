"""Simulator and classifier: shapes, parameter counts, the original layout, ablations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

import jaxinterp as ji
from jaxinterp.nn import Classifier, ClassifierConfig, Simulator, SimulatorConfig
from jaxinterp.nn.simulator import GAIN_LIMIT


def _count(tree):
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(tree)))


def _init_shapes(model, *args):
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda *a: model.init(rngs, *a), *args)


def test_original_parameter_counts():
    x = jax.ShapeDtypeStruct((1, 64, 64, 64, 1), jnp.float32)
    sim = _init_shapes(Simulator(SimulatorConfig.original()), x, jnp.zeros(1))
    clf = _init_shapes(Classifier(ClassifierConfig.original()), x)
    assert _count(sim["params"]) == 1_680_066
    assert _count(clf["params"]) == 163_249


def test_original_simulator_layer_names():
    x = jax.ShapeDtypeStruct((1, 64, 64, 64, 1), jnp.float32)
    params = _init_shapes(Simulator(SimulatorConfig.original()), x, jnp.zeros(1))["params"]["net"]
    # enc0 = input.conv; enc{i}_bn, enc{i} = down{i}; dec4 = up_input; dec3_bn = up1_noconv
    # (no conv: 16 -> 16 channels); dec{2,1,0} = up{2,3,4}; output.
    assert set(params) == {
        "enc0", "enc1", "enc2", "enc3", "enc4", "enc1_bn", "enc2_bn", "enc3_bn", "enc4_bn",
        "bottleneck_in", "bottleneck_out", "dec4", "dec3_bn", "dec2", "dec2_bn", "dec1",
        "dec1_bn", "dec0", "dec0_bn", "output",
    }  # fmt: skip
    assert params["enc2"]["kernel"].shape == (3, 3, 3, 3, 32, 64)
    assert params["enc2"]["bias"].shape == (64,)
    assert params["enc2"]["routing"]["kernel"].shape == (33, 3)
    assert params["bottleneck_out"]["kernel"].shape == (513, 1024)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_3d_shapes(size):
    x = jnp.zeros((2, size, size, size, 1))
    cfg = (
        SimulatorConfig(features=(4, 8, 8), bottleneck=16)
        if size < 64
        else SimulatorConfig.paper_3d()
    )
    out = jax.eval_shape(
        lambda: Simulator(cfg).init_with_output({"params": jax.random.key(0)}, x, jnp.zeros(2))
    )[0]
    assert out.image.shape == x.shape
    assert out.displacement.shape == (2, size, size, size, 3)
    logits = jax.eval_shape(
        lambda: Classifier(ClassifierConfig.original()).init_with_output(jax.random.key(0), x)
    )[0]
    assert logits.shape == (2,)


def test_2d_paper_shapes_and_image_output():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 1)), jnp.float32)
    sim = Simulator(SimulatorConfig.paper_2d())
    v = sim.init({"params": jax.random.key(0)}, x, jnp.zeros(3))
    out = sim.apply(v, x, jnp.array([0, 1, 0]))
    assert out.image.shape == x.shape and out.displacement is None
    clf = Classifier(ClassifierConfig.paper_2d())
    cv = clf.init(jax.random.key(1), x)
    assert clf.apply(cv, x).shape == (3,)
    assert clf.apply(cv, x, method=Classifier.features).shape == (3, 8, 8, 8)


def test_residual_and_gain_outputs_are_built_on_the_image_output():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 1)), jnp.float32)
    make = lambda output: Simulator(
        SimulatorConfig(ndim=2, features=(2, 4), bottleneck=8, output=output)
    )
    v = make("image").init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    task = jnp.array([0, 1])
    net = np.asarray(make("image").apply(v, x, task).image)  # same params: the raw output
    residual = make("residual").apply(v, x, task)
    gain = make("gain").apply(v, x, task)
    assert residual.displacement is None and gain.displacement is None
    np.testing.assert_allclose(np.asarray(residual.image), np.asarray(x) + net, atol=1e-6)
    log_gain = GAIN_LIMIT * np.tanh(net / GAIN_LIMIT)
    np.testing.assert_allclose(np.asarray(gain.image), np.asarray(x) * np.exp(log_gain), rtol=1e-5)


def test_coordinate_channels():
    from jaxinterp.nn.simulator import _with_coordinates

    x = jnp.ones((2, 4, 3, 1))
    got = np.asarray(_with_coordinates(x))
    assert got.shape == (2, 4, 3, 3)
    np.testing.assert_array_equal(got[..., 0], 1.0)
    rows, cols = np.meshgrid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 3), indexing="ij")
    np.testing.assert_allclose(got[1, ..., 1], rows, atol=1e-7)
    np.testing.assert_allclose(got[1, ..., 2], cols, atol=1e-7)
    # With coordinates the first convolution reads ndim more channels.
    img = jnp.asarray(np.random.default_rng(4).normal(size=(1, 16, 16, 1)), jnp.float32)
    cfg = SimulatorConfig(ndim=2, features=(2, 4), bottleneck=8, output="residual")
    for coords, channels in ((False, 1), (True, 3)):
        sim = Simulator(dataclasses.replace(cfg, coordinates=coords))
        v = sim.init({"params": jax.random.key(0)}, img, jnp.zeros(1))
        kernels = v["params"]["net"]["enc0"]["kernel"]
        assert kernels.shape[-2] == channels


@pytest.mark.parametrize("output", ["gain", "residual", "displacement", "velocity", "volume"])
def test_zero_initialised_output_starts_at_the_identity_and_learns(output):
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 8, 8, 8, 1)), jnp.float32)
    cfg = SimulatorConfig(features=(2, 4), bottleneck=8, output=output, zero_init_output=True)
    sim = Simulator(cfg)
    v = sim.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    kernel = v["params"]["net"]["output"]["kernel"]
    assert float(jnp.abs(kernel).max()) == 0.0
    task = jnp.array([0, 1])
    np.testing.assert_allclose(np.asarray(sim.apply(v, x, task).image), np.asarray(x), atol=1e-6)
    # ... and the output layer still gets a gradient, so training moves it off zero.
    target = jnp.roll(x, 1, axis=1)
    loss = lambda p: jnp.mean((sim.apply({**v, "params": p}, x, task).image - target) ** 2)
    grad = jax.grad(loss)(v["params"])["net"]["output"]["kernel"]
    assert float(jnp.abs(grad).max()) > 0.0
    default = Simulator(dataclasses.replace(cfg, zero_init_output=False))
    v0 = default.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    assert float(jnp.abs(v0["params"]["net"]["output"]["kernel"]).max()) > 0.0


def _small_3d(**kw):
    return SimulatorConfig(features=(4, 8, 8), bottleneck=16, **kw)


def test_displacement_output_is_warp_of_input():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    sim = Simulator(_small_3d())
    v = sim.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    out = sim.apply(v, x, jnp.array([0, 1]))
    np.testing.assert_allclose(
        np.asarray(out.image), np.asarray(ji.warp(x, out.displacement)), atol=1e-6
    )


def test_velocity_output_is_integrated():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 16, 16, 16, 1)), jnp.float32)
    vel = Simulator(_small_3d(output="velocity", integration_steps=4))
    raw = Simulator(_small_3d(output="displacement"))
    v = vel.init({"params": jax.random.key(0)}, x, jnp.zeros(1))
    field = raw.apply(v, x, jnp.zeros(1)).displacement  # same params: the raw velocity
    out = vel.apply(v, x, jnp.zeros(1))
    np.testing.assert_allclose(
        np.asarray(out.displacement), np.asarray(ji.integrate_velocity(field, steps=4)), atol=1e-5
    )


def test_volume_output_is_the_flow_of_the_poisson_velocity():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    vol = Simulator(_small_3d(output="volume", integration_steps=4))
    raw = Simulator(_small_3d(output="residual"))  # one output channel too: x + raw map
    v = vol.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    task = jnp.array([0, 1])
    growth = (raw.apply(v, x, task).image - x)[..., 0]
    out = vol.apply(v, x, task)
    np.testing.assert_allclose(np.asarray(out.growth), np.asarray(growth), atol=1e-6)
    assert out.displacement.shape == (2, 16, 16, 16, 3)
    want = ji.integrate_velocity(ji.poisson_velocity(growth, ndim=3), steps=4)
    np.testing.assert_allclose(np.asarray(out.displacement), np.asarray(want), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.image), np.asarray(ji.warp(x, want)), atol=1e-5)


def test_task_routes_the_one_network():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    sim = Simulator(_small_3d())
    v = sim.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    a = sim.apply(v, x, jnp.zeros(2)).displacement
    b = sim.apply(v, x, jnp.ones(2)).displacement
    assert float(jnp.abs(a - b).max()) > 1e-4
    mixed = sim.apply(v, x, jnp.array([0, 1])).displacement
    # Routing is per example; BatchNorm in inference mode does not mix examples.
    np.testing.assert_allclose(np.asarray(mixed[0]), np.asarray(a[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(mixed[1]), np.asarray(b[1]), atol=1e-5)


def test_separate_networks_ablation():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    sim = Simulator(_small_3d(separate_networks=True))
    v = sim.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    assert set(v["params"]) == {"inject_net", "remove_net"}
    assert "routing" not in v["params"]["inject_net"]["enc0"]  # plain convolutions
    out = sim.apply(v, x, jnp.array([0, 1])).displacement
    only_inject = sim.apply(v, x, jnp.zeros(2)).displacement
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(only_inject[0]), atol=1e-6)
    assert float(jnp.abs(out[1] - only_inject[1]).max()) > 1e-4


def test_train_mode_updates_batch_stats_and_jit_matches_eager():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    sim = Simulator(_small_3d())
    v = sim.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    out, new = sim.apply(
        v, x, jnp.zeros(2), train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
    )
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], new["batch_stats"])
    assert any(jax.tree.leaves(changed))
    eager = sim.apply(v, x, jnp.zeros(2)).displacement
    jitted = jax.jit(lambda v, x: sim.apply(v, x, jnp.zeros(2)).displacement)(v, x)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)


def test_classifier_activation_swap_and_feature_split():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    clf = Classifier(ClassifierConfig.original())
    v = clf.init(jax.random.key(0), x)
    logits = clf.apply(v, x)
    feats = clf.apply(v, x, method=Classifier.features)
    assert feats.shape == (2, 2, 2, 2, 16)
    np.testing.assert_allclose(
        np.asarray(clf.apply(v, feats, method=Classifier.head)), np.asarray(logits), atol=1e-6
    )
    swapped = Classifier(ClassifierConfig.original(), activation=jnp.tanh).apply(v, x)
    assert float(jnp.abs(swapped - logits).max()) > 0


def test_clear_shape_errors():
    with pytest.raises(ValueError, match="divisible by 16"):
        Simulator(SimulatorConfig()).init(
            {"params": jax.random.key(0)}, jnp.zeros((1, 24, 24, 24, 1)), jnp.zeros(1)
        )
    with pytest.raises(ValueError, match="3 spatial axes"):
        Classifier(ClassifierConfig()).init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))


def test_head_layers_are_residual_full_resolution_convs():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    task = jnp.array([0, 1])
    plain = Simulator(_small_3d(output="volume"))
    headed = Simulator(_small_3d(output="volume", head_layers=2))
    v = headed.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    net = v["params"]["net"]
    for j in range(2):  # width f_0 at full resolution, with its own BatchNorm
        assert net[f"head{j}"]["kernel"].shape[-2:] == (4, 4)
        assert f"head{j}_bn" in v["batch_stats"]["net"]
    # With the head's convolutions at zero the network is the one without a head ...
    zeroed = {
        k: jax.tree.map(jnp.zeros_like, w) if k.startswith("head") else w for k, w in net.items()
    }
    without = {k: w for k, w in net.items() if not k.startswith("head")}
    stats = {k: w for k, w in v["batch_stats"]["net"].items() if not k.startswith("head")}
    want = plain.apply({"params": {"net": without}, "batch_stats": {"net": stats}}, x, task)
    got = headed.apply({**v, "params": {"net": zeroed}}, x, task)
    np.testing.assert_allclose(np.asarray(got.growth), np.asarray(want.growth), atol=1e-6)
    # ... and with them as initialised the map changes.
    moved = headed.apply(v, x, task).growth
    assert float(jnp.abs(moved - want.growth).max()) > 1e-3


def test_population_map_adds_each_tasks_learned_map_to_the_network_output():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    task = jnp.array([0, 1])
    plain = Simulator(_small_3d(output="volume"))
    mapped = Simulator(_small_3d(output="volume", population_map=True))
    v = mapped.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    maps = v["params"]["population_map"]
    assert maps.shape == (2, 16, 16, 16, 1) and float(jnp.abs(maps).max()) == 0.0
    net_only = {**v, "params": {"net": v["params"]["net"]}}
    base = plain.apply(net_only, x, task).growth
    np.testing.assert_allclose(np.asarray(mapped.apply(v, x, task).growth), np.asarray(base))
    drawn = np.random.default_rng(6).normal(size=maps.shape).astype(np.float32)
    params = {**v["params"], "population_map": jnp.asarray(drawn)}
    growth = mapped.apply({**v, "params": params}, x, task).growth
    for i, t in enumerate([0, 1]):  # each example gets its own task's map
        np.testing.assert_allclose(
            np.asarray(growth[i]), np.asarray(base[i]) + drawn[t, ..., 0], atol=1e-5
        )


def test_population_map_for_one_task_leaves_the_other_to_the_network():
    """``population_map="inject"``: the inject example gets its map, the remove example the
    network's output alone, and the remove map gets no gradient (it stays at zero)."""
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    task = jnp.array([0, 1])
    assert SimulatorConfig(population_map="inject").population_tasks == (0,)
    assert SimulatorConfig(population_map=True).population_tasks == (0, 1)
    assert SimulatorConfig().population_tasks == ()
    with pytest.raises(ValueError, match="population_map='both'"):
        SimulatorConfig(population_map="both")
    one = Simulator(_small_3d(output="volume", population_map="inject"))
    both = Simulator(_small_3d(output="volume", population_map=True))
    v = one.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    drawn = np.random.default_rng(8).normal(size=(2, 16, 16, 16, 1)).astype(np.float32)
    params = {**v["params"], "population_map": jnp.asarray(drawn)}
    growth = one.apply({**v, "params": params}, x, task).growth
    with_both = both.apply({**v, "params": params}, x, task).growth
    net_only = both.apply({**v, "params": {**params, "population_map": jnp.zeros_like(drawn)}},
                          x, task).growth  # fmt: skip
    np.testing.assert_allclose(np.asarray(growth[0]), np.asarray(with_both[0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(growth[1]), np.asarray(net_only[1]), atol=1e-6)
    assert float(jnp.abs(with_both[1] - net_only[1]).max()) > 0.1  # the remove map would show

    def loss(maps):
        return jnp.sum(
            one.apply({**v, "params": {**params, "population_map": maps}}, x, task).growth ** 2
        )

    grad = np.asarray(jax.grad(loss)(jnp.asarray(drawn)))
    assert np.abs(grad[0]).max() > 0 and np.abs(grad[1]).max() == 0.0


def test_tied_population_map_is_drawn_by_inject_and_undone_by_remove():
    """``population_map="tied"``: one map, added by inject and subtracted by remove; both
    directions' gradients reach that one row, none the other; with the network's output at
    zero the remove warp of the negated map inverts the inject warp (velocity integration)."""
    x = jnp.asarray(np.random.default_rng(9).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    task = jnp.array([0, 1])
    assert SimulatorConfig(population_map="tied").population_tasks == (0, 1)
    tied = Simulator(_small_3d(output="volume", population_map="tied"))
    both = Simulator(_small_3d(output="volume", population_map=True))
    v = tied.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    drawn = np.random.default_rng(10).normal(size=(2, 16, 16, 16, 1)).astype(np.float32)
    params = {**v["params"], "population_map": jnp.asarray(drawn)}
    # the map for both tasks, given inject's row and its negative, draws the same growth
    mirrored = np.stack([drawn[0], -drawn[0]])
    want = both.apply({**v, "params": {**params, "population_map": mirrored}}, x, task).growth
    got = tied.apply({**v, "params": params}, x, task).growth
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)

    def loss(maps, t):
        out = tied.apply({**v, "params": {**params, "population_map": maps}}, x, t)
        return jnp.sum(out.growth**2)

    for t in (jnp.array([0, 0]), jnp.array([1, 1])):  # each direction alone trains row 0
        grad = np.asarray(jax.grad(loss)(jnp.asarray(drawn), t))
        assert np.abs(grad[0]).max() > 0 and np.abs(grad[1]).max() == 0.0

    # Network output zeroed: remove's warp undoes inject's (a smooth map, so the inverse
    # of scaling and squaring is close).
    net = jax.tree.map(jnp.zeros_like, v["params"]["net"])
    smooth = 0.05 * np.sin(np.linspace(0, np.pi, 16))[:, None, None] * np.ones((16, 16, 16))
    maps = jnp.asarray(np.stack([smooth, np.zeros_like(smooth)])[..., None], jnp.float32)
    zeroed = {**v, "params": {"net": net, "population_map": maps}}
    fields = tied.apply(zeroed, x, task).displacement
    grid = np.stack(np.meshgrid(*(np.arange(16.0),) * 3, indexing="ij"), -1)
    there = grid + np.asarray(fields[0])  # inject pulls from x + u_inject(x)
    back = np.stack(
        [
            scipy.ndimage.map_coordinates(
                np.asarray(fields[1][..., c]), there.reshape(-1, 3).T, order=1
            )
            for c in range(3)
        ],
        -1,
    ).reshape(there.shape)
    inner = (slice(3, 13),) * 3
    assert float(np.abs(fields[0]).max()) > 0.1  # the warp moves
    np.testing.assert_allclose((there + back)[inner], grid[inner], atol=0.02)
