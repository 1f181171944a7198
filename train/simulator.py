"""Train the simulator G against a frozen classifier, on the paper's one summed objective."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

from jaxinterp.atomic import write_json
from jaxinterp.losses import INJECT, REMOVE
from jaxinterp.nn import Simulator
from jaxinterp.objective import simulator_objective
from train import loop, parallel
from train.classifier import (
    classifier_meta,
    load_classifier,
    make_optimizer,
    optim_meta,
    predict_logits,
    variables_of,
)
from train.config import OptimConfig, TrainConfig, to_dict
from train.datasets import Dataset, batch_indices, load_dataset

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def simulator_meta(config: TrainConfig) -> dict:
    """What a simulator checkpoint must have been trained with to be resumed or used."""
    config_dict = {
        "classifier": classifier_meta(config)["config"],
        "simulator": to_dict(config.simulator),
        "objective": to_dict(config.objective),
        "optim": optim_meta(config.simulator_optim),
        "dtype": config.dtype,
        "seed": config.seed,
        "simulator_seed": simulator_seed(config),
    }
    return {"config": config_dict}


def simulator_seed(config: TrainConfig) -> int:
    """The seed of the simulator's initialisation, dropout and batch order."""
    return config.seed if config.simulator_seed is None else config.simulator_seed


def simulator_folder(config: TrainConfig) -> str:
    """The simulator's folder in its workdir: ``simulator``, or ``simulator_seed{N}`` for a
    ``simulator_seed`` other than ``seed`` (a member of an ensemble beside the first)."""
    seed = simulator_seed(config)
    return "simulator" if seed == config.seed else f"simulator_seed{seed}"


def simulator_module(config: TrainConfig) -> Simulator:
    """The simulator network of ``config``, in its compute dtype."""
    return Simulator(config.simulator, dtype=DTYPES[config.dtype])


def init_state(config: TrainConfig, sample: np.ndarray):
    model = simulator_module(config)
    x = jnp.asarray(sample[:2])
    variables = jax.jit(model.init)(  # one compilation, not one per parameter's initializer
        {"params": jax.random.key(simulator_seed(config) + 2), "dropout": jax.random.key(0)},
        x,
        jnp.array([INJECT, REMOVE]),
    )
    optimizer = simulator_optimizer(config)
    return model, loop.new_state(variables, optimizer), optimizer


def simulator_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """``simulator_optim``'s optimizer for the network; with a population map
    (``simulator.population_map``), SGD with momentum at ``population_learning_rate`` for it."""
    optim = config.simulator_optim
    if not config.simulator.population_map:
        return make_optimizer(optim)
    sgd = OptimConfig(
        optimizer="sgd", learning_rate=optim.population_learning_rate, momentum=optim.momentum
    )
    label = lambda params: {
        name: "map" if name == "population_map" else jax.tree.map(lambda _: "net", tree)
        for name, tree in params.items()
    }
    return optax.multi_transform({"net": make_optimizer(optim), "map": make_optimizer(sgd)}, label)


def make_step(model: Simulator, classifier, optimizer, config: TrainConfig, mesh):
    """The jitted ``step(state, (classifier_variables, controls, patients))``."""

    def step(state, batch):
        classifier_variables, controls, patients = batch
        rng = jax.random.fold_in(jax.random.key(simulator_seed(config) + 3), state["step"])
        grad_fn = jax.value_and_grad(simulator_objective, has_aux=True)
        (_, (metrics, batch_stats)), grads = grad_fn(
            state["params"],
            state["batch_stats"],
            classifier_variables,
            controls,
            patients,
            rng,
            simulator=model,
            classifier=classifier,
            config=config.objective,
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": batch_stats,
            "opt_state": opt_state,
        }
        return new_state, metrics

    data = parallel.batch_sharding(mesh)
    rep = parallel.replicated(mesh)
    return jax.jit(
        step, donate_argnums=0, in_shardings=(rep, (rep, data, data)), out_shardings=(rep, rep)
    )


@functools.partial(jax.jit, static_argnames=("model", "task"))
def _simulate_batch(model: Simulator, variables: dict, images: jax.Array, task: int):
    return model.apply(variables, images, jnp.full((images.shape[0],), task), train=False)


def simulate(
    model: Simulator, variables: dict, images: np.ndarray, task: int, *, batch_size: int = 16
):
    """Inference-mode simulated images and fields of many images (fields None for images)."""
    sims, fields = [], []
    for i in range(0, len(images), batch_size):
        out = _simulate_batch(model, variables, jnp.asarray(images[i : i + batch_size]), task)
        sims.append(np.asarray(out.image))
        fields.append(None if out.displacement is None else np.asarray(out.displacement))
    return np.concatenate(sims), (None if fields[0] is None else np.concatenate(fields))


def logit_report(
    raw: np.ndarray, simulated: np.ndarray, cycled: np.ndarray, task: int, delta: float
) -> dict:
    """How far simulation moved the frozen classifier's logits, and whether order was kept."""
    shift = (simulated - raw) * (1 - 2 * task)
    return {
        "n": int(raw.size),
        "mean_shift": float(np.mean(shift)),
        "fraction_shift_at_least_delta": float(np.mean(shift >= delta)),
        "spearman_raw_simulated": float(scipy.stats.spearmanr(raw, simulated).statistic),
        "spearman_raw_cycled": float(scipy.stats.spearmanr(raw, cycled).statistic),
        "mean_abs_cycle_logit_error": float(np.mean(np.abs(cycled - raw))),
    }


def evaluate(
    config: TrainConfig, model, variables, classifier, classifier_variables, dataset: Dataset
) -> dict:
    """Raw, simulated and cycled-back logits of the held-out images, per direction."""
    report = {}
    for task, label, name in ((INJECT, 0, "inject"), (REMOVE, 1, "remove")):
        idx = dataset.subset("test", label)
        if idx.size < 2:
            continue
        images = dataset.images[idx]
        simulated, _ = simulate(model, variables, images, task)
        cycled, _ = simulate(model, variables, simulated, 1 - task)
        logits = [
            predict_logits(classifier, classifier_variables, im)
            for im in (images, simulated, cycled)
        ]
        report[name] = logit_report(*logits, task=task, delta=config.objective.delta)
    return report


def train_simulator(
    config: TrainConfig,
    workdir: str | Path,
    *,
    dataset: Dataset | None = None,
    mesh=None,
    name: str | None = None,
    change_objective: bool = False,
) -> dict:
    """Train (or resume) the simulator in ``workdir/simulator`` against the classifier
    trained in ``workdir/classifier``, which stays frozen (inference mode, no gradient).
    ``name`` is the simulator's folder in ``workdir`` (several simulators, e.g. ablations,
    can explain one classifier); by default `simulator_folder`. ``change_objective``
    resumes a checkpoint written under other ``objective`` settings (a schedule, e.g. delta
    25 for 200 steps, then 20): training goes on with the parameters and optimizer state
    as they were, under ``config.objective``, which the checkpoints from then on record.

    Each step takes ``batch_size`` training controls (disease injected) and as many
    training patients (disease removed). Writes ``checkpoints/``, ``metrics.jsonl`` and
    ``summary.json`` (the held-out images' logit shifts) and returns the summary.
    """
    parallel.initialize_distributed()
    root = Path(workdir)
    workdir = root / (name or simulator_folder(config))
    dataset = dataset if dataset is not None else load_dataset(config.data, seed=config.seed)
    classifier, classifier_variables = load_classifier(config, root, dataset.images)
    mesh = mesh if mesh is not None else parallel.make_mesh()
    optim = config.simulator_optim
    parallel.check_batch(optim.batch_size, mesh, "simulator batch size (per direction)")
    model, state, optimizer = init_state(config, dataset.images)
    controls = dataset.subset("train", 0)
    patients = dataset.subset("train", 1)
    rows = parallel.local_rows(optim.batch_size)
    classifier_variables = parallel.put_replicated(classifier_variables, mesh)

    def batch_fn(step):
        pick = lambda pool, stream: batch_indices(
            pool, optim.batch_size, step, seed=simulator_seed(config), stream=stream
        )[rows]
        put = lambda idx: parallel.put_batch(dataset.images[idx], mesh, optim.batch_size)
        return classifier_variables, put(pick(controls, 1)), put(pick(patients, 2))

    state = loop.run(
        workdir=workdir,
        state=state,
        step_fn=make_step(model, classifier, optimizer, config, mesh),
        batch_fn=batch_fn,
        optim=optim,
        meta=simulator_meta(config),
        keep=config.keep_checkpoints,
        desc="simulator",
        examples_per_step=2 * optim.batch_size,
        mesh=mesh,
        may_differ=("objective.",) if change_objective else (),
    )
    variables = jax.device_get(variables_of(state))
    summary = {"step": int(state["step"]),
               "test": evaluate(config, model, variables, classifier,
                                jax.device_get(classifier_variables), dataset)}  # fmt: skip
    if jax.process_index() == 0:
        write_json(workdir / "summary.json", summary)
    return summary


def load_simulator(
    config: TrainConfig,
    workdir: str | Path,
    sample: np.ndarray,
    *,
    name: str | None = None,
    step: int | None = None,
):
    """The trained simulator of ``workdir/NAME`` (by default `simulator_folder`) as
    ``(module, variables)``: its latest checkpoint, or the one at ``step``."""
    model = simulator_module(config)
    template = loop.state_shapes(lambda: init_state(config, sample)[1])
    directory = Path(workdir) / (name or simulator_folder(config))
    state = loop.restore_final(
        directory, template, simulator_meta(config), command="train-simulator", step=step
    )
    return model, variables_of(state)


__all__ = ["load_simulator", "simulate", "simulator_folder", "train_simulator"]
