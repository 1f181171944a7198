"""jaxinterp.interop: the authors' PyTorch weights give the same numbers in jaxinterp.

The PyTorch side is ``benchmarks/torch_reference`` (the original models, written from SPEC
section 5). Weights are random, with BatchNorm statistics and biases perturbed so that no
term is trivially zero; they go through ``torch.save`` and ``load_torch_state_dict``.
Layouts: PyTorch ``(N, C, D, H, W)``, JAX ``(N, D, H, W, C)``; field channel k = axis k in
both. Tolerances are per test, relative to the scale of what is compared; float32 differs
between the two libraries only by rounding (measured below 1e-5 relative).
"""

import dataclasses
import functools
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import jaxinterp  # noqa: E402
from benchmarks.torch_reference import (  # noqa: E402
    Classifier3D,
    ConvnetSkipConnection,
    training_step,
    warp,
)
from jaxinterp.interop import (  # noqa: E402
    classifier_variables_from_torch,
    load_torch_state_dict,
    simulator_variables_from_torch,
)
from jaxinterp.nn import Classifier, ClassifierConfig, Simulator, SimulatorConfig  # noqa: E402

INJECT_CODE, REMOVE_CODE = -1.0, 1.0  # the original's codes; jaxinterp's API: 0, 1


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _perturb(model, seed):
    """Non-trivial BatchNorm statistics and affine parameters, non-zero CondConv biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                c = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
                module.weight.copy_(1.0 + 0.2 * torch.randn(c, generator=g))
                module.bias.copy_(0.2 * torch.randn(c, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("conv.bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _torch_simulator(size, seed=0):
    torch.manual_seed(seed)
    # At sizes other than 64 the bottleneck is resized (the original's widths otherwise).
    return _perturb(ConvnetSkipConnection(condconv_impl="batched", size=size), seed)


def _smooth_volumes(n, size, seed):
    """Unit-variance sums of low-frequency cosines, ``(n, 1, size, size, size)``.

    Smooth, because gradients of a trilinear warp jump where a sample point crosses a voxel
    boundary by the image's finite difference there: on white noise, one sample point within
    1e-6 of an integer (rounding puts it on different sides in the two libraries) moved a
    whole gradient leaf by ~1%; on smooth images such a jump is negligible.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij")) / size
    out = np.zeros((n, 1, size, size, size))
    for i in range(n):
        for _ in range(8):
            freq = rng.integers(-3, 4, size=3)
            phase = 2 * np.pi * np.tensordot(freq, grid, 1) + rng.uniform(0, 2 * np.pi)
            out[i, 0] += rng.normal() * np.cos(phase)
        out[i] = (out[i] - out[i].mean()) / out[i].std()
    return torch.from_numpy(out.astype(np.float32))


def _channels_last(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """Original models at 64^3, saved (the simulator wrapped in a checkpoint dict) and loaded."""
    sim = _torch_simulator(64).eval()
    clf = _perturb(Classifier3D(), 1).eval()
    path = tmp_path_factory.mktemp("weights")
    torch.save({"epoch": 3, "state_dict": sim.state_dict()}, path / "simulator.pt")
    torch.save(clf.state_dict(), path / "classifier.pt")
    sim_state = load_torch_state_dict(path / "simulator.pt")
    clf_state = load_torch_state_dict(path / "classifier.pt")
    return {
        "sim": sim,
        "clf": clf,
        "sim_state": sim_state,
        "clf_state": clf_state,
        "sim_variables": simulator_variables_from_torch(sim_state),
        "clf_variables": classifier_variables_from_torch(clf_state),
    }


# ---------------------------------------------------------------- inference parity, 64^3


def test_simulator_field_and_warp_match_torch(original):
    """Eval mode, batch 2: example 0 inject (torch code -1), example 1 remove (+1)."""
    x = torch.randn(2, 1, 64, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        field_t = original["sim"](x, torch.tensor([INJECT_CODE, REMOVE_CODE]))
        image_t = warp(x, field_t)
    sim = Simulator(SimulatorConfig.original())
    task = jnp.array([jaxinterp.INJECT, jaxinterp.REMOVE])
    out = jax.jit(sim.apply)(original["sim_variables"], jnp.asarray(_channels_last(x)), task)
    field_t, image_t = _channels_last(field_t), _channels_last(image_t)
    assert out.displacement.shape == field_t.shape == (2, 64, 64, 64, 3)
    # Measured: max difference 2e-6 for fields of max |u| ~ 2.4 (float32 rounding).
    scale = np.abs(field_t).max()
    assert scale > 0.1  # a real field, not a trivially zero one
    np.testing.assert_allclose(out.displacement, field_t, atol=1e-4 * scale, rtol=0)
    # The two tasks' fields differ (the task code reaches the network) and each matches.
    assert np.abs(field_t[0] - field_t[1]).max() > 0.1 * scale
    # Warped unit-variance noise: the field's rounding times the image's gradient (~5).
    np.testing.assert_allclose(out.image, image_t, atol=1e-4 * np.abs(image_t).max(), rtol=0)


def test_classifier_logits_match_torch(original):
    x = torch.randn(2, 1, 64, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits_t = original["clf"](x).numpy()
    clf = Classifier(ClassifierConfig.original())
    logits = jax.jit(clf.apply)(original["clf_variables"], jnp.asarray(_channels_last(x)))
    assert logits.shape == (2,)
    # Measured: differences ~1e-7 on logits of magnitude ~0.1-1.
    np.testing.assert_allclose(logits, logits_t, atol=1e-5 * max(1.0, np.abs(logits_t).max()))


# ---------------------------------------------------------------- one training step


@pytest.mark.parametrize(
    "size",
    [
        32,  # same layers and widths, bottleneck resized: 8x cheaper than 64^3
        pytest.param(64, marks=pytest.mark.slow),  # the original itself (~1.5 min on 2 cores)
    ],
)
def test_training_step_matches_torch(size):
    """jaxinterp.simulator_objective == the reference's fused step with the same options.

    Both: simulator in training mode (batch statistics), routing dropout off, one batch of
    controls and one of patients (1 each) simulated together as [x; y] and cycled back
    together, hinge delta 12.5, MSE cycle, L2 smoothness mean-reduced, lambda 0.02, frozen
    classifier in inference mode. Compared: the loss, its gradient, the BatchNorm running
    averages after the step, and the loss after one Adam step on each side.
    """
    sim_t = _torch_simulator(size, seed=4)
    for module in sim_t.modules():  # routing dropout off, for a deterministic comparison
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    clf_t = _perturb(Classifier3D(flat_features=16 * (size // 16) ** 3), 5)
    spatial = (size,) * 3
    state0 = {k: v.clone() for k, v in sim_t.state_dict().items()}
    variables = simulator_variables_from_torch(state0, spatial_shape=spatial)
    clf_variables = classifier_variables_from_torch(clf_t.state_dict(), spatial_shape=spatial)
    x, y = _smooth_volumes(2, size, seed=6).split(1)

    opt = torch.optim.Adam(sim_t.parameters(), lr=1e-4)
    options = dict(delta=12.5, lambda_phi=0.02, inject_code=INJECT_CODE, remove_code=REMOVE_CODE)
    options.update(cycle="mse", smoothness_reduction="mean", fused_directions=True)
    loss_t = training_step(sim_t, clf_t, opt, x, y, **options)
    grads_t = {k: p.grad.clone() for k, p in sim_t.named_parameters() if p.grad is not None}
    state1 = {k: v.clone() for k, v in sim_t.state_dict().items()}
    loss_t_after = training_step(sim_t, clf_t, opt, x, y, **options)

    sim = Simulator(dataclasses.replace(SimulatorConfig.original(), routing_dropout=0.0))
    config = jaxinterp.ObjectiveConfig(
        delta=12.5, cycle_norm="l2", lambda_phi=0.02, smoothness_norm="l2"
    )
    assert config.smoothness_reduction == "mean"

    objective = functools.partial(
        jaxinterp.simulator_objective,
        simulator=sim,
        classifier=Classifier(ClassifierConfig.original()),
        config=config,
    )
    value_and_grad = jax.jit(jax.value_and_grad(objective, has_aux=True))
    data = (clf_variables, jnp.asarray(_channels_last(x)), jnp.asarray(_channels_last(y)))
    data = (*data, jax.random.key(0))
    (loss, (_, batch_stats)), grads = value_and_grad(
        variables["params"], variables["batch_stats"], *data
    )
    # Measured: relative differences ~1e-6 (loss ~2.4: cycle 2.1, smoothness 0.3).
    np.testing.assert_allclose(float(loss), loss_t, rtol=2e-5)

    # The gradient, leaf by leaf, relative to the leaf's norm. The loss is only piecewise
    # smooth (LeakyReLU/ReLU at 0, max-pool near-ties, warp cells): wherever float32 rounding
    # puts a value on another piece in one library, the upstream gradient changes, and with
    # it every leaf. Measured here: median 2e-3, max 6e-3; against PyTorch in float64,
    # jaxinterp is 2e-3 off and PyTorch float32 3e-6 (with other weights it was the other way
    # round: each library hits such a piece at random). A wrong term or layout gives O(1).
    buffers = {k: v for k, v in state0.items() if "running" in k}
    grads_t = simulator_variables_from_torch({**grads_t, **buffers}, spatial_shape=spatial)
    errors = {}
    for (path, got), want in zip(
        jax.tree_util.tree_flatten_with_path(grads)[0],
        jax.tree.leaves(grads_t["params"]),
        strict=True,
    ):
        norm = np.linalg.norm(want)
        if norm > 1e-5:  # not the biases before a BatchNorm (gradient 0 up to rounding)
            errors[jax.tree_util.keystr(path)] = np.linalg.norm(got - want) / norm
    assert len(errors) > 40
    assert max(errors.values()) < 2e-2, errors

    # Running averages after the two training-mode passes. Means: equal. Variances: PyTorch
    # updates with the unbiased batch variance, Flax with the biased one, so the new part of
    # each update differs by m / (m - 1), m = values per channel: here an exact check.
    after = simulator_variables_from_torch(state1, spatial_shape=spatial)["batch_stats"]["net"]
    before = variables["batch_stats"]["net"]
    levels = dict(enc1_bn=0, enc2_bn=1, enc3_bn=2, enc4_bn=3, dec3_bn=4, dec2_bn=3)
    levels.update(dec1_bn=2, dec0_bn=1)  # BatchNorm input at size / 2**level
    for name, level in levels.items():
        ours, theirs, old = batch_stats["net"][name], after[name], before[name]
        np.testing.assert_allclose(ours["mean"], theirs["mean"], atol=1e-5, err_msg=name)
        m = 2 * (size // 2**level) ** 3
        new_ours = ours["var"] - 0.81 * old["var"]  # 0.9 * (0.9 v + 0.1 b1) + 0.1 b2
        new_theirs = theirs["var"] - 0.81 * old["var"]
        np.testing.assert_allclose(new_ours * m / (m - 1), new_theirs, rtol=1e-4, err_msg=name)

    # One Adam step each (optax.adam == torch.optim.Adam, lr 1e-4, eps 1e-8), then the loss.
    # Adam's first step is ~lr * sign(gradient), so entries whose gradient is at rounding
    # level may step differently: looser tolerance.
    tx = optax.adam(1e-4)
    updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
    params = jax.tree.map(jnp.add, variables["params"], updates)
    (loss_after, _), _ = value_and_grad(params, batch_stats, *data)
    np.testing.assert_allclose(float(loss_after), loss_t_after, rtol=1e-4)
    assert abs(loss_t_after - loss_t) > 1e-4 * abs(loss_t)  # the step changed something


# ---------------------------------------------------------------- loading and errors


def test_conversion_copies_the_tensors():
    """An optimizer step on the PyTorch model after import must not change the JAX arrays
    (on the CPU, Tensor.numpy() and jnp.asarray can both share memory)."""
    clf = Classifier3D()
    variables = classifier_variables_from_torch(clf.state_dict())
    before = np.asarray(variables["params"]["hidden"]["bias"]).copy()
    with torch.no_grad():
        clf.Linear1.bias.add_(1.0)
    np.testing.assert_array_equal(variables["params"]["hidden"]["bias"], before)


def test_layouts_of_a_condconv_and_a_dense_layer(original):
    state, params = original["sim_state"], original["sim_variables"]["params"]["net"]
    w = state["down2.conv.weight"].numpy()  # (K, Cout, Cin, kd, kh, kw) = (3, 64, 32, 3, 3, 3)
    kernel = np.asarray(params["enc2"]["kernel"])  # (K, kd, kh, kw, Cin, Cout)
    assert kernel[1, 0, 2, 1, 5, 7] == w[1, 7, 5, 0, 2, 1]
    routing = state["down2.conv._routing_fn.fc.weight"].numpy()  # (K, Cin + 1)
    np.testing.assert_array_equal(params["enc2"]["routing"]["kernel"], routing.T)
    np.testing.assert_array_equal(
        params["bottleneck_out"]["kernel"], state["out_Linear1.weight"].numpy().T
    )
    stats = original["sim_variables"]["batch_stats"]["net"]["dec1_bn"]
    np.testing.assert_array_equal(stats["var"], state["up3.feed.0.running_var"].numpy())


def test_checkpoint_wrappers_and_data_parallel_prefix(tmp_path):
    state = Classifier3D().state_dict()
    expected = classifier_variables_from_torch(state)
    for i, wrapped in enumerate(
        [
            {"model_state_dict": state, "optimizer_state_dict": {}, "epoch": 7},
            {"model": {f"module.{k}": v for k, v in state.items()}},  # nn.DataParallel
        ]
    ):
        torch.save(wrapped, tmp_path / f"{i}.pt")
        got = classifier_variables_from_torch(load_torch_state_dict(tmp_path / f"{i}.pt"))
        jax.tree.map(np.testing.assert_array_equal, got, expected)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("Linear1.bias"), r"lacks tensor\(s\) \['Linear1.bias'\]"),
        (
            lambda s: s.__setitem__("extra.weight", torch.zeros(2)),
            r"unexpected tensor\(s\) \['extra.weight'\]",
        ),
        (
            lambda s: s.__setitem__("Linear1.weight", torch.zeros(64, 512)),
            r"'Linear1.weight' has shape \(64, 512\), expected \(64, 1024\)",
        ),
        (
            lambda s: s.__setitem__("net.4.weight", torch.zeros(32, 16, 3, 3, 5)),
            r"'net.4.weight' has shape \(32, 16, 3, 3, 5\), expected \(32, 16, 3, 3, 3\)",
        ),
    ],
    ids=["missing", "unexpected", "linear-shape", "conv-shape"],
)
def test_classifier_state_dict_errors_name_the_tensor(edit, message):
    state = Classifier3D().state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        classifier_variables_from_torch(state)


def test_simulator_state_dict_errors(original):
    state = dict(original["sim_state"])
    state["up3.conv.weight"] = torch.zeros(3, 32, 64, 3, 3, 1)
    with pytest.raises(ValueError, match=r"expected \(3, 32, 64, 3, 3, 3\)"):
        simulator_variables_from_torch(state)
    with pytest.raises(ValueError, match="bottleneck"):  # weights for another input size
        simulator_variables_from_torch(original["sim_state"], spatial_shape=(32, 32, 32))
    with pytest.raises(ValueError, match=r"simulator: state dict lacks tensor\(s\) .* more"):
        simulator_variables_from_torch(original["clf_state"])  # the wrong model's weights
    with pytest.raises(TypeError, match="state dict"):
        simulator_variables_from_torch([1, 2, 3])


def test_load_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as a PyTorch checkpoint"):
        load_torch_state_dict(text)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_torch_state_dict(tmp_path / "missing.pt")
    torch.save({"epoch": 3, "losses": [1.0, 2.0]}, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match=r"holds no state dict.*keys \['epoch', 'losses'\]"):
        load_torch_state_dict(tmp_path / "no_weights.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state dict.*got list"):
        load_torch_state_dict(tmp_path / "list.pt")


def test_load_without_torch_says_which_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"jaxinterp\[torch\]"):
        load_torch_state_dict(tmp_path / "any.pt")
