"""simulator_objective: its terms against the loss functions they are built from."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji
from jaxinterp.nn import Classifier, ClassifierConfig, Simulator, SimulatorConfig


@pytest.fixture(scope="module")
def models():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    sim = Simulator(SimulatorConfig(features=(4, 8, 8), bottleneck=16, routing_dropout=0.0))
    clf = Classifier(ClassifierConfig(features=(4, 8)))
    sv = sim.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    cv = clf.init(jax.random.key(1), x)
    return sim, clf, sv, cv, x, x[::-1] + 0.5


def _run(models, config):
    sim, clf, sv, cv, x, y = models
    return ji.simulator_objective(
        sv["params"], sv["batch_stats"], cv, x, y, jax.random.key(2),
        simulator=sim, classifier=clf, config=config, train=False,
    )  # fmt: skip


def test_terms_equal_the_loss_functions(models):
    sim, clf, sv, cv, x, y = models
    config = ji.ObjectiveConfig(delta=3.0, lambda_phi=0.5, change_weight=0.25)
    loss, (m, _) = _run(models, config)
    images = jnp.concatenate([x, y])
    task = jnp.array([0, 0, 1, 1])
    first = sim.apply(sv, images, task)
    second = sim.apply(sv, first.image, 1 - task)
    raw, simulated = clf.apply(cv, images), clf.apply(cv, first.image)
    halves = lambda v: jnp.mean(v[:2]) + jnp.mean(v[2:])
    want_logit = halves(ji.logit_shift_loss(raw, simulated, task, delta=3.0))
    want_cycle = halves(ji.cycle_loss(second.image, images))
    want_smooth = 0.5 * (halves(ji.smoothness_loss(first.displacement))
                         + halves(ji.smoothness_loss(second.displacement)))  # fmt: skip
    want_change = 0.25 * halves(jnp.mean(jnp.abs(first.image - images), axis=(1, 2, 3, 4)))
    np.testing.assert_allclose(float(m["logit"]), float(want_logit), rtol=1e-5)
    np.testing.assert_allclose(float(m["cycle"]), float(want_cycle), rtol=1e-5)
    np.testing.assert_allclose(float(m["smooth"]), float(want_smooth), rtol=1e-5)
    np.testing.assert_allclose(float(m["change"]), float(want_change), rtol=1e-5)
    np.testing.assert_allclose(
        float(loss), float(want_logit + want_cycle + want_smooth + want_change), rtol=1e-5
    )


def test_squared_change_option(models):
    sim, clf, sv, cv, x, y = models
    _, (m, _) = _run(models, ji.ObjectiveConfig(change_weight=2.0, change_norm="l2"))
    images = jnp.concatenate([x, y])
    first = np.asarray(sim.apply(sv, images, jnp.array([0, 0, 1, 1])).image, np.float64)
    per_image = ((first - np.asarray(images)) ** 2).mean(axis=(1, 2, 3, 4))
    want = 2.0 * (per_image[:2].mean() + per_image[2:].mean())
    assert want > 0
    np.testing.assert_allclose(float(m["change"]), want, rtol=1e-4)


@pytest.mark.parametrize("absolute, squared", [(3.0, 0.0), (0.0, 2.0), (3.0, 2.0)])
def test_volume_term_is_mean_absolute_and_squared_divergence_of_the_first_field(
    models, absolute, squared
):
    sim, clf, sv, cv, x, y = models
    loss0, (m0, _) = _run(models, ji.ObjectiveConfig())
    config = ji.ObjectiveConfig(volume_weight=absolute, volume_squared_weight=squared)
    loss, (m, _) = _run(models, config)
    images = jnp.concatenate([x, y])
    u = np.asarray(sim.apply(sv, images, jnp.array([0, 0, 1, 1])).displacement, np.float64)
    # numpy.gradient's central differences, the border replicated as jaxinterp's convention
    padded = np.pad(u, [(0, 0), (1, 1), (1, 1), (1, 1), (0, 0)], mode="edge")
    div = sum(np.gradient(padded[..., k], axis=1 + k) for k in range(3))[:, 1:-1, 1:-1, 1:-1]
    per_image = (absolute * np.abs(div) + squared * div**2).mean(axis=(1, 2, 3))
    want = per_image[:2].mean() + per_image[2:].mean()
    assert want > 0 and float(m0["volume"]) == 0.0
    np.testing.assert_allclose(float(m["volume"]), want, rtol=1e-4)
    np.testing.assert_allclose(float(loss - loss0), want, rtol=1e-3)


def test_unknown_change_norm_is_refused_by_name(models):
    with pytest.raises(ValueError, match="change_norm must be 'l1' or 'l2', got 'abs'"):
        _run(models, ji.ObjectiveConfig(change_weight=1.0, change_norm="abs"))


def test_classifier_gets_no_gradient_and_bce_option(models):
    sim, clf, sv, cv, x, y = models
    config = ji.ObjectiveConfig()

    def loss_of_classifier(clf_vars):
        return ji.simulator_objective(
            sv["params"], sv["batch_stats"], clf_vars, x, y, jax.random.key(2),
            simulator=sim, classifier=clf, config=config, train=False,
        )[0]  # fmt: skip

    grads = jax.grad(loss_of_classifier)(cv)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    bce = dataclasses.replace(config, shift_loss="bce")
    _, (m, _) = _run(models, bce)
    assert np.isfinite(float(m["logit"])) and float(m["logit"]) > 0


def test_running_batch_norm_for_simulated_inputs(models):
    """ "running": only the first pass (real images) updates the BatchNorm statistics and
    the second pass uses them; "batch" (paper) lets both passes update them."""
    sim, clf, sv, cv, x, y = models
    images = jnp.concatenate([x, y])
    task = jnp.array([0, 0, 1, 1])

    def objective(mode):
        config = ji.ObjectiveConfig(simulated_batch_norm=mode)
        return ji.simulator_objective(
            sv["params"], sv["batch_stats"], cv, x, y, jax.random.key(2),
            simulator=sim, classifier=clf, config=config, train=True,
        )  # fmt: skip

    no_dropout = {"dropout": jax.random.key(0)}
    first, updates = sim.apply(
        sv, images, task, train=True, mutable=["batch_stats"], rngs=no_dropout
    )
    _, (m, stats) = objective("running")
    for got, want in zip(jax.tree.leaves(stats), jax.tree.leaves(updates["batch_stats"])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    second = sim.apply({**sv, **updates}, first.image, 1 - task, train=False)
    halves = lambda v: jnp.mean(v[:2]) + jnp.mean(v[2:])
    want_cycle = halves(ji.cycle_loss(second.image, images))
    np.testing.assert_allclose(float(m["cycle"]), float(want_cycle), rtol=1e-4)
    _, (_, both) = objective("batch")
    assert any(
        not np.allclose(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(stats))
    )


def _numpy_smoothness(field):  # mean over pixels of squared forward differences, per image
    c = field[..., 0].astype(np.float64)
    return (np.diff(c, axis=1) ** 2).mean(axis=(1, 2)) + (np.diff(c, axis=2) ** 2).mean(axis=(1, 2))


def _case_2d(output):
    """A small 2D simulator and classifier: ``run(config)`` of the objective, and both passes
    (the inputs, then each pass's `SimulatorOutput`) in inference mode."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 1)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(2, 16, 16, 1)), jnp.float32)
    sim = Simulator(SimulatorConfig(ndim=2, features=(2, 4), bottleneck=8, output=output,
                                    routing_dropout=0.0))  # fmt: skip
    clf = Classifier(ClassifierConfig(ndim=2, features=(2, 4)))
    sv = sim.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    cv = clf.init(jax.random.key(1), x)
    run = lambda cfg: ji.simulator_objective(
        sv["params"], sv["batch_stats"], cv, x, y, jax.random.key(2),
        simulator=sim, classifier=clf, config=cfg, train=False,
    )  # fmt: skip
    images = jnp.concatenate([x, y])
    task = jnp.array([0, 0, 1, 1])
    first = sim.apply(sv, images, task)
    second = sim.apply(sv, first.image, 1 - task)
    return run, np.asarray(images), first, second


def _image_case(output, config):
    """A 2D simulator with an image output: the objective's metrics and both passes."""
    run, images, first, second = _case_2d(output)
    _, (m, _) = run(config)
    return m, images, np.asarray(first.image), np.asarray(second.image), run


def _halves(v):
    return v[:2].mean() + v[2:].mean()


def test_image_outputs_get_a_smooth_change():
    """For image outputs lambda_phi weighs the forward differences of the change G(x) - x."""
    m, images, first, second, run = _image_case("residual", ji.ObjectiveConfig(lambda_phi=0.7))
    want = 0.7 * (_halves(_numpy_smoothness(first - images))
                  + _halves(_numpy_smoothness(second - first)))  # fmt: skip
    assert want > 0
    np.testing.assert_allclose(float(m["smooth"]), want, rtol=1e-4)
    with pytest.raises(ValueError, match="image_smoothness='log_gain' needs .* output='gain'"):
        run(ji.ObjectiveConfig(lambda_phi=0.7, image_smoothness="log_gain"))


def test_volume_weight_needs_a_field():
    *_, run = _image_case("residual", ji.ObjectiveConfig())
    with pytest.raises(ValueError, match="volume_weight.*no field"):
        run(ji.ObjectiveConfig(volume_weight=1.0))
    with pytest.raises(ValueError, match="volume_squared_weight.*no field.*squared_weight=0"):
        run(ji.ObjectiveConfig(volume_squared_weight=1.0))


def test_gain_output_can_smooth_its_log_gain():
    """image_smoothness="log_gain": the diffusion term on log(G(x) / x) of both passes (the
    log gain, recovered here from the images), not on the change G(x) - x."""
    config = ji.ObjectiveConfig(lambda_phi=0.7, image_smoothness="log_gain")
    m, images, first, second, run = _image_case("gain", config)
    want = 0.7 * (_halves(_numpy_smoothness(np.log(first / images)))
                  + _halves(_numpy_smoothness(np.log(second / first))))  # fmt: skip
    assert want > 0
    np.testing.assert_allclose(float(m["smooth"]), want, rtol=1e-3)
    on_change = float(run(ji.ObjectiveConfig(lambda_phi=0.7))[1][0]["smooth"])
    assert abs(on_change - float(m["smooth"])) > 0.1 * on_change


def test_log_gain_smoothed_on_the_image():
    """image_smoothness="log_gain_on_image": the diffusion term on the log gain weighted by
    each pass's input magnitude (NumPy: a pair counts with the smaller of its two)."""
    config = ji.ObjectiveConfig(lambda_phi=0.7, image_smoothness="log_gain_on_image")
    m, images, first, second, run = _image_case("gain", config)

    def weighted(field, image):
        field, w = field[..., 0].astype(np.float64), np.abs(image[..., 0]).astype(np.float64)
        total = 0.0
        for axis in (1, 2):
            n = w.shape[axis]
            pair = np.minimum(np.take(w, range(n - 1), axis=axis),
                              np.take(w, range(1, n), axis=axis))  # fmt: skip
            total = total + (pair * np.diff(field, axis=axis) ** 2).sum((1, 2)) / pair.sum((1, 2))
        return total

    want = 0.7 * (_halves(weighted(np.log(first / images), images))
                  + _halves(weighted(np.log(second / first), first)))  # fmt: skip
    assert want > 0
    np.testing.assert_allclose(float(m["smooth"]), want, rtol=1e-3)
    plain = float(
        run(ji.ObjectiveConfig(lambda_phi=0.7, image_smoothness="log_gain"))[1][0]["smooth"]
    )
    assert abs(plain - want) > 5e-3 * want  # the unweighted term is outside the tolerance
    *_, residual = _image_case("residual", ji.ObjectiveConfig())
    with pytest.raises(ValueError, match="log_gain_on_image.*needs .* output='gain'"):
        residual(config)


def test_gain_weight_is_mean_absolute_log_gain_of_the_first_pass():
    """gain_weight: mean |log(G(x) / x)| over the first pass's voxels, per direction, added
    to the loss; an output without a gain refuses it."""
    m, images, first, _, run = _image_case("gain", ji.ObjectiveConfig(gain_weight=1.5))
    want = 1.5 * _halves(np.abs(np.log(first.astype(np.float64) / images)).mean(axis=(1, 2, 3)))
    assert want > 0
    np.testing.assert_allclose(float(m["gain"]), want, rtol=1e-3)
    without = run(ji.ObjectiveConfig())
    assert float(without[1][0]["gain"]) == 0.0
    loss = float(run(ji.ObjectiveConfig(gain_weight=1.5))[0])
    np.testing.assert_allclose(loss - float(without[0]), want, rtol=1e-3)
    *_, residual = _image_case("residual", ji.ObjectiveConfig())
    with pytest.raises(ValueError, match="gain_weight.*no gain output"):
        residual(ji.ObjectiveConfig(gain_weight=1.0))


def test_growth_smoothness_is_the_diffusion_term_of_both_passes_drawn_growth():
    """growth_smoothness: the forward-difference term of a volume output's drawn growth
    (first pass on the inputs, second on the first pass's images), per direction, added to
    the loss; an output that draws no growth refuses it."""
    run, _, first, second = _case_2d("volume")
    g1, g2 = (np.asarray(o.growth, np.float64) for o in (first, second))
    for norm, power in (("l2", 2), ("l1", 1)):
        per_image = lambda g, p=power: sum((np.abs(np.diff(g, axis=a)) ** p).mean(axis=(1, 2))
                                           for a in (1, 2))  # fmt: skip
        want = 0.3 * (_halves(per_image(g1)) + _halves(per_image(g2)))
        config = ji.ObjectiveConfig(growth_smoothness=0.3, growth_smoothness_norm=norm)
        loss, (m, _) = run(config)
        assert want > 0
        np.testing.assert_allclose(float(m["growth_smooth"]), want, rtol=1e-4)
        np.testing.assert_allclose(float(loss - run(ji.ObjectiveConfig())[0]), want, rtol=1e-3)
    *_, residual = _image_case("residual", ji.ObjectiveConfig())
    with pytest.raises(ValueError, match="growth_smoothness.*output='volume'"):
        residual(ji.ObjectiveConfig(growth_smoothness=1.0))


def test_field_barrier_changes_neither_loss_nor_gradient(models):
    """``field_barrier`` only stops XLA fusing the warp's backward into the output layer's
    reductions: the jitted loss and gradient equal those without it, and the barrier is
    in the compiled step only when asked for."""
    _, clf, sv, cv, x, y = models
    base = SimulatorConfig(features=(4, 8, 8), bottleneck=16, routing_dropout=0.0)
    results, texts = {}, {}
    for barrier in (False, True):
        sim = Simulator(dataclasses.replace(base, field_barrier=barrier))

        def loss(params, sim=sim):
            return ji.simulator_objective(
                params, sv["batch_stats"], cv, x, y, jax.random.key(2),
                simulator=sim, classifier=clf, config=ji.ObjectiveConfig(), train=True,
            )[0]  # fmt: skip

        step = jax.jit(jax.value_and_grad(loss))
        results[barrier] = step(sv["params"])
        texts[barrier] = step.lower(sv["params"]).as_text()
    (loss0, grad0), (loss1, grad1) = results[False], results[True]
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
    for g1, g0 in zip(jax.tree.leaves(grad1), jax.tree.leaves(grad0)):
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=1e-4, atol=1e-7)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grad1))
    assert "optimization_barrier" in texts[True] and "optimization_barrier" not in texts[False]
