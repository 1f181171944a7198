"""Train the classifier P: Adam on binary cross-entropy with logits (1 = patient)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.atomic import write_json
from jaxinterp.nn import Classifier
from train import loop, parallel
from train.config import OptimConfig, TrainConfig, to_dict
from train.datasets import Dataset, batch_indices, load_dataset, save_split


def classifier_meta(config: TrainConfig) -> dict:
    """What a classifier checkpoint must have been trained with to be resumed or used."""
    return {
        "config": {
            "data": to_dict(config.data),
            "classifier": to_dict(config.classifier),
            "optim": optim_meta(config.classifier_optim),
            "seed": config.seed,
        }
    }


def optim_meta(optim: OptimConfig) -> dict:
    """The optimisation settings a checkpoint must match to be resumed.

    The step count, logging and checkpoint intervals may change on resume (a run continues
    to its new ``steps``), except under a cosine schedule, whose every step depends on it.
    """
    meta = to_dict(optim)
    resumable = ["log_every", "checkpoint_every"]
    if optim.schedule == "constant":
        resumable.append("steps")
    for key in resumable:
        meta.pop(key)
    return meta


def make_optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    """Adam (AdamW when ``weight_decay > 0``) or SGD with momentum, at a fixed rate or a
    cosine decay to 0, after clipping the gradient's global norm when ``clip_norm > 0``."""
    if optim.schedule == "cosine":
        rate = optax.cosine_decay_schedule(optim.learning_rate, optim.steps)
    elif optim.schedule == "constant":
        rate = optim.learning_rate
    else:
        raise ValueError(f"unknown schedule {optim.schedule!r}: use 'constant' or 'cosine'")
    if optim.optimizer == "sgd":
        steps = [optax.sgd(rate, momentum=optim.momentum)]
        if optim.weight_decay > 0:  # the decay joins the gradient (for SGD, AdamW's decay)
            steps.insert(0, optax.add_decayed_weights(optim.weight_decay))
    elif optim.optimizer == "adam" and optim.weight_decay > 0:
        steps = [optax.adamw(rate, b2=optim.b2, weight_decay=optim.weight_decay)]
    elif optim.optimizer == "adam":
        steps = [optax.adam(rate, b2=optim.b2)]
    else:
        raise ValueError(f"unknown optimizer {optim.optimizer!r}: use 'adam' or 'sgd'")
    if optim.clip_norm > 0:
        steps.insert(0, optax.clip_by_global_norm(optim.clip_norm))
    return steps[0] if len(steps) == 1 else optax.chain(*steps)


def init_state(
    config: TrainConfig, sample: np.ndarray
) -> tuple[Classifier, dict, optax.GradientTransformation]:
    model = Classifier(config.classifier)
    # jitted: one compilation, not one per parameter's initializer (seconds each on a CPU)
    variables = jax.jit(model.init)(jax.random.key(config.seed), jnp.asarray(sample[:1]))
    optimizer = make_optimizer(config.classifier_optim)
    return model, loop.new_state(variables, optimizer), optimizer


def make_step(model: Classifier, optimizer, seed: int, mesh):
    def step(state, batch):
        images, labels = batch
        rng = jax.random.fold_in(jax.random.key(seed + 1), state["step"])

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state["batch_stats"]}
            logits, updates = model.apply(
                variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
            )
            loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))
            accuracy = jnp.mean((logits > 0) == (labels == 1))
            return loss, (updates.get("batch_stats", {}), accuracy)

        (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"]
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": batch_stats,
            "opt_state": opt_state,
        }
        return new_state, {"loss": loss, "accuracy": accuracy}

    data = parallel.batch_sharding(mesh)
    rep = parallel.replicated(mesh)
    return jax.jit(
        step, donate_argnums=0, in_shardings=(rep, (data, data)), out_shardings=(rep, rep)
    )


@functools.partial(jax.jit, static_argnames="model")
def _logits_batch(model: Classifier, variables: dict, images: jax.Array) -> jax.Array:
    return model.apply(variables, images, train=False)


def predict_logits(
    model: Classifier, variables: dict, images: np.ndarray, *, batch_size: int = 64
) -> np.ndarray:
    """Inference-mode logits of many images, in batches."""
    out = [
        np.asarray(_logits_batch(model, variables, jnp.asarray(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def accuracy_report(logits: np.ndarray, labels: np.ndarray) -> dict:
    predicted = (logits > 0).astype(np.int32)
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in (0, 1) if np.any(labels == c)]
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": float(np.mean(recalls)),
        "n": int(labels.size),
    }


def variables_of(state: dict) -> dict:
    out = {"params": state["params"]}
    if state["batch_stats"]:
        out["batch_stats"] = state["batch_stats"]
    return out


def train_classifier(
    config: TrainConfig, workdir: str | Path, *, dataset: Dataset | None = None, mesh=None
) -> dict:
    """Train (or resume training) the classifier in ``workdir/classifier``.

    Writes ``checkpoints/``, ``metrics.jsonl``, ``split.json`` and ``summary.json`` (train
    and test accuracy and balanced accuracy) there, and returns the summary.
    """
    parallel.initialize_distributed()
    workdir = Path(workdir) / "classifier"
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = dataset if dataset is not None else load_dataset(config.data, seed=config.seed)
    if jax.process_index() == 0:
        save_split(workdir / "split.json", dataset)
    mesh = mesh if mesh is not None else parallel.make_mesh()
    optim = config.classifier_optim
    parallel.check_batch(optim.batch_size, mesh, "classifier batch size")
    model, state, optimizer = init_state(config, dataset.images)
    rows = parallel.local_rows(optim.batch_size)

    def batch_fn(step):
        idx = batch_indices(dataset.train, optim.batch_size, step, seed=config.seed)[rows]
        return (parallel.put_batch(dataset.images[idx], mesh, optim.batch_size),
                parallel.put_batch(dataset.labels[idx], mesh, optim.batch_size))  # fmt: skip

    state = loop.run(
        workdir=workdir,
        state=state,
        step_fn=make_step(model, optimizer, config.seed, mesh),
        batch_fn=batch_fn,
        optim=optim,
        meta=classifier_meta(config),
        keep=config.keep_checkpoints,
        desc="classifier",
        examples_per_step=optim.batch_size,
        mesh=mesh,
    )
    variables = jax.device_get(variables_of(state))
    summary = {"step": int(state["step"])}
    for split in ("train", "test"):
        idx = dataset.subset(split)
        logits = predict_logits(model, variables, dataset.images[idx])
        summary[split] = accuracy_report(logits, dataset.labels[idx])
    if jax.process_index() == 0:
        write_json(workdir / "summary.json", summary)
    return summary


def load_classifier(
    config: TrainConfig, workdir: str | Path, sample: np.ndarray, *, step: int | None = None
) -> tuple[Classifier, dict]:
    """The trained classifier of ``workdir/classifier``, its latest checkpoint or the one at
    ``step`` (clear error if absent or mismatched)."""
    model = Classifier(config.classifier)
    template = loop.state_shapes(lambda: init_state(config, sample)[1])
    directory = Path(workdir) / "classifier"
    state = loop.restore_final(
        directory, template, classifier_meta(config), command="train-classifier", step=step
    )
    return model, variables_of(state)
