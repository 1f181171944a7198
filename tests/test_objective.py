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
