"""Tests of the PyTorch reference (benchmarks.torch_reference) against SPEC section 5,
SciPy and NumPy formulas. Volumes are 64^3 only where the original architecture needs it."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ndimage = pytest.importorskip("scipy.ndimage")

from benchmarks.torch_reference import (  # noqa: E402
    CONDCONV_IMPLS,
    ORIGINAL_OPTIMIZER_NAMES,
    Classifier3D,
    CondConv3d,
    ConvnetSkipConnection,
    count_parameters,
    cycle_loss,
    l1_smoothness_loss,
    logit_shift_loss,
    make_original_optimizers,
    original_training_iteration,
    smoothness_loss,
    training_step,
    warp,
)

SIM_CONVS = {  # state-dict prefix -> (Cin, Cout), SPEC section 5
    "input.conv": (1, 16),
    "down1.conv": (16, 32),
    "down2.conv": (32, 64),
    "down3.conv": (64, 16),
    "down4.conv": (16, 16),
    "up_input.conv": (16, 16),
    "up2.conv": (16, 64),
    "up3.conv": (64, 32),
    "up4.conv": (32, 16),
    "output.conv": (16, 3),
}
SIM_BATCHNORMS = {
    "down1.feed.0": 16,
    "down2.feed.0": 32,
    "down3.feed.0": 64,
    "down4.feed.0": 16,
    "up1_noconv.act_bn_mp.0": 16,
    "up2.feed.0": 64,
    "up3.feed.0": 32,
    "up4.feed.0": 16,
}
SIM_LINEARS = {"in_Linear1": (512, 1024), "in_Linear2": (1024, 1024), "out_Linear1": (1024, 513)}
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------- parameter accounting


def test_classifier_parameter_count_and_names():
    clf = Classifier3D()
    assert count_parameters(clf) == 163_249
    expected = {}
    for conv, bn, (cin, cout) in zip(
        (0, 4, 8, 12), (1, 5, 9, 13), ((1, 16), (16, 32), (32, 64), (64, 16)), strict=True
    ):
        expected[f"net.{conv}.weight"] = (cout, cin, 3, 3, 3)
        expected[f"net.{conv}.bias"] = (cout,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            expected[f"net.{bn}.{name}"] = (cout,)
        expected[f"net.{bn}.num_batches_tracked"] = ()
    expected.update({"Linear1.weight": (64, 1024), "Linear1.bias": (64,)})
    expected.update({"Linear2.weight": (1, 64), "Linear2.bias": (1,)})
    got = {k: tuple(v.shape) for k, v in clf.state_dict().items()}
    assert got == expected


def test_simulator_parameter_count_and_names():
    sim = ConvnetSkipConnection()
    assert count_parameters(sim, exclude_prefixes=("in_Linear2",)) == 1_680_066
    assert count_parameters(sim) == 1_680_066 + 1024 * 1024 + 1024
    expected = {}
    for prefix, (cin, cout) in SIM_CONVS.items():
        expected[f"{prefix}.weight"] = (3, cout, cin, 3, 3, 3)
        expected[f"{prefix}.bias"] = (cout,)
        expected[f"{prefix}._routing_fn.fc.weight"] = (3, cin + 1)
        expected[f"{prefix}._routing_fn.fc.bias"] = (3,)
    for prefix, channels in SIM_BATCHNORMS.items():
        for name in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{prefix}.{name}"] = (channels,)
        expected[f"{prefix}.num_batches_tracked"] = ()
    for prefix, shape in SIM_LINEARS.items():
        expected[f"{prefix}.weight"] = shape
        expected[f"{prefix}.bias"] = (shape[0],)
    got = {k: tuple(v.shape) for k, v in sim.state_dict().items()}
    assert got == expected


def test_condconv_init_xavier_normal_per_expert_zero_bias():
    torch.manual_seed(0)
    conv = CondConv3d(64, 32)
    std = np.sqrt(2.0 / (64 * 27 + 32 * 27))
    for k in range(3):  # 55,296 draws per expert: the std is within 2%
        assert float(conv.weight[k].detach().std()) == pytest.approx(std, rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0


# ---------------------------------------------------------------- CondConv


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("impl", [i for i in CONDCONV_IMPLS if i != "loop"])
def test_condconv_impls_match_loop_forward_and_backward(impl, dtype, tol):
    """Same output and gradients as the per-example loop, in train mode (shared dropout)."""
    torch.manual_seed(0)
    ref = CondConv3d(4, 5, impl="loop").to(dtype)
    torch.nn.init.normal_(ref.bias)
    other = CondConv3d(4, 5, impl=impl).to(dtype)
    other.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 8, 10, 6, dtype=dtype)
    code = torch.tensor([0.0, 1.0, -1.0], dtype=dtype)
    outs, grads = [], []
    for module in (ref, other):
        module.train()
        torch.manual_seed(1)  # the same routing-dropout draw for both
        xi = x.clone().requires_grad_(True)
        out = module(xi, code)
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append(
            [xi.grad, module.weight.grad, module.bias.grad, module._routing_fn.fc.weight.grad]
        )
    assert outs[0].shape == (3, 5, 8, 10, 6)
    torch.testing.assert_close(outs[1], outs[0], atol=tol, rtol=tol)
    for g_other, g_ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(g_other, g_ref, atol=tol * 10, rtol=tol * 10)


def test_condconv_matches_manual_formula():
    """out = conv(x, sum_k alpha_k W_k) + b with alpha = sigmoid(fc([mean x, code])) (eval)."""
    torch.manual_seed(0)
    conv = CondConv3d(2, 3).double().eval()
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 2, 5, 6, 7, dtype=torch.float64)
    code = torch.tensor([0.0, 1.0], dtype=torch.float64)
    fc = conv._routing_fn.fc
    alpha = torch.sigmoid(torch.cat([x.mean((2, 3, 4)), code[:, None]], 1) @ fc.weight.T + fc.bias)
    expected = torch.stack(
        [
            torch.nn.functional.conv3d(
                x[n : n + 1],
                (alpha[n, :, None, None, None, None, None] * conv.weight).sum(0),
                padding=1,
            )[0]
            + conv.bias[:, None, None, None]
            for n in range(2)
        ]
    )
    for impl in CONDCONV_IMPLS:
        conv.impl = impl
        with torch.no_grad():
            torch.testing.assert_close(conv(x, code), expected, atol=1e-12, rtol=1e-12)


def test_condconv_bias_is_shared_not_mixed():
    conv = CondConv3d(2, 3).eval()
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([1.0, -2.0, 3.0]))
        out = conv(torch.randn(2, 2, 4, 4, 4), 1.0)
    torch.testing.assert_close(out, conv.bias[None, :, None, None, None].expand_as(out).detach())


def test_condconv_rejects_unknown_impl():
    with pytest.raises(ValueError, match="impl"):
        CondConv3d(1, 1, impl="fft")


# ---------------------------------------------------------------- models at 64^3


def test_simulator_shape_and_impls_agree():
    """Eval mode, batch 2: the loop and batched simulators give the same field."""
    torch.manual_seed(0)
    sim = ConvnetSkipConnection(condconv_impl="loop").eval()
    batched = ConvnetSkipConnection(condconv_impl="batched").eval()
    batched.load_state_dict(sim.state_dict())
    x = torch.randn(2, 1, 64, 64, 64)
    code = torch.tensor([-1.0, 1.0])
    with torch.no_grad():
        u_loop = sim(x, code)
        u_batched = batched(x, code)
    assert u_loop.shape == (2, 3, 64, 64, 64)
    torch.testing.assert_close(u_batched, u_loop, atol=1e-4, rtol=1e-4)
    assert batched.set_condconv_impl("loop").condconv_impl == "loop"


def test_simulator_rejects_other_sizes():
    with pytest.raises(ValueError, match="64"):
        ConvnetSkipConnection()(torch.zeros(1, 1, 32, 32, 32), 0.0)


def test_classifier_output_shape():
    clf = Classifier3D().eval()
    with torch.no_grad():
        assert clf(torch.randn(2, 1, 64, 64, 64)).shape == (2,)


# ---------------------------------------------------------------- warp


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_warp_integer_translation_is_exact_shift(dtype, tol):
    """Pull-back: u = (1, 0, -2) reads image[i + 1, j, k - 2], zero outside."""
    image = torch.randn(1, 2, 6, 7, 8, dtype=dtype)
    u = torch.zeros(1, 3, 6, 7, 8, dtype=dtype)
    u[:, 0], u[:, 2] = 1.0, -2.0
    expected = torch.zeros_like(image)
    expected[:, :, :-1, :, 2:] = image[:, :, 1:, :, :-2]
    torch.testing.assert_close(warp(image, u), expected, atol=tol, rtol=0)
    torch.testing.assert_close(warp(image, torch.zeros_like(u)), image, atol=tol, rtol=0)


@pytest.mark.parametrize("shape", [(16, 16, 16), (12, 16, 10)])
def test_warp_matches_scipy_map_coordinates(shape):
    """Random field reaching outside the volume vs map_coordinates(order=1, grid-constant)."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 2, *shape)).astype(np.float32)
    u = (3.0 * rng.normal(size=(2, 3, *shape))).astype(np.float32)
    got = warp(torch.from_numpy(image), torch.from_numpy(u)).numpy()
    identity = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    for n in range(2):
        coords = (identity + u[n]).astype(np.float64)
        for c in range(2):
            expected = ndimage.map_coordinates(
                image[n, c].astype(np.float64), coords, order=1, mode="grid-constant", cval=0.0
            )
            np.testing.assert_allclose(got[n, c], expected, atol=1e-5, rtol=0)


def test_warp_rejects_bad_shapes():
    with pytest.raises(ValueError):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 5))


# ---------------------------------------------------------------- losses


def test_smoothness_losses_match_numpy():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(2, 3, 4, 5, 6))
    sq = sum((np.diff(u, axis=a) ** 2).reshape(2, -1).sum(1) for a in (2, 3, 4)).mean()
    l1 = sum(np.abs(np.diff(u, axis=a)).mean() for a in (2, 3, 4))
    assert float(smoothness_loss(torch.from_numpy(u))) == pytest.approx(sq, rel=1e-12)
    assert float(l1_smoothness_loss(torch.from_numpy(u))) == pytest.approx(l1, rel=1e-12)
    linear_in_w = torch.arange(6.0).expand(1, 3, 4, 5, 6)  # forward differences all 1 along W
    assert float(smoothness_loss(linear_in_w)) == 3 * 4 * 5 * 5


def test_logit_shift_and_cycle_losses():
    p_orig, p_sim = torch.tensor([0.0, 0.0]), torch.tensor([20.0, 1.0])
    # Inject (direction +1): max(0 - 20, -5) = -5 and max(0 - 1, -5) = -1.
    assert float(logit_shift_loss(p_orig, p_sim, direction=1.0, delta=5.0)) == -3.0
    assert float(logit_shift_loss(p_orig, p_sim, direction=-1.0, delta=5.0)) == 10.5
    a, b = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])
    assert float(cycle_loss(a, b, kind="l1")) == 1.5
    assert float(cycle_loss(a, b, kind="mse")) == 2.5
    with pytest.raises(ValueError):
        cycle_loss(a, b, kind="huber")


# ---------------------------------------------------------------- training steps (64^3, batch 1)


def _models_and_data():
    torch.manual_seed(0)
    sim = ConvnetSkipConnection(condconv_impl="batched")
    clf = Classifier3D()
    x, y = torch.randn(1, 1, 64, 64, 64), torch.randn(1, 1, 64, 64, 64)
    return sim, clf, x, y


def _assert_only_simulator_changed(sim, clf, sim_before, clf_before):
    for k, v in clf.state_dict().items():
        torch.testing.assert_close(v, clf_before[k], atol=0, rtol=0)
    assert all(p.grad is None for p in clf.parameters())
    assert all(p.requires_grad for p in clf.parameters())
    assert clf.training  # restored
    changed = [k for k, v in sim.state_dict().items() if not torch.equal(v, sim_before[k])]
    assert "input.conv.weight" in changed and "out_Linear1.weight" in changed
    assert not any(k.startswith("in_Linear2") for k in changed)


def test_training_step_updates_simulator_only():
    """One fused step (MSE cycle; both reductions are unit-tested above)."""
    sim, clf, x, y = _models_and_data()
    opt = torch.optim.Adam(sim.parameters(), lr=1e-4)
    sim_before, clf_before = _snapshot(sim), _snapshot(clf)
    loss = training_step(
        sim,
        clf,
        opt,
        x,
        y,
        delta=12.5,
        lambda_phi=0.02,
        inject_code=0.0,
        remove_code=1.0,
        cycle="mse",
    )
    assert isinstance(loss, float) and np.isfinite(loss)
    _assert_only_simulator_changed(sim, clf, sim_before, clf_before)


def test_original_training_iteration_updates_simulator_only():
    sim, clf, x, y = _models_and_data()
    optimizers = make_original_optimizers(sim)
    sim_before, clf_before = _snapshot(sim), _snapshot(clf)
    losses = original_training_iteration(sim, clf, optimizers, x, y)
    assert set(losses) == {
        name + suffix for name in ORIGINAL_OPTIMIZER_NAMES for suffix in ("", "_smooth")
    }
    assert all(np.isfinite(v) for v in losses.values())
    for name, opt in optimizers.items():
        steps = [s["step"] for s in opt.state.values()]
        assert steps and all(int(s) == 1 for s in steps), name
        assert opt.param_groups[0]["lr"] == (2e-4 if name.startswith("shift") else 1e-4)
    _assert_only_simulator_changed(sim, clf, sim_before, clf_before)
