"""Reproduce the paper's synthetic 2D experiment (section 4.1) with one command.

    jaxinterp reproduce synth2d --out runs/reproduce --seeds 0 1 2
    jaxinterp reproduce synth2d --out /tmp/quick --seeds 0 --quick   # CI-sized

Per seed (the seed drives data, split, classifier and simulators): generate the data,
train the classifier, the CondConv simulator (hinge, delta = 5, logit + cycle losses) and
its two ablations (two separate plain-conv networks; BCE instead of the hinge), then score
every explanation of every held-out image by its NCC with the image's ground truth.

Maps and truth share one sign convention: a map is positive where the image carries
disease. For the simulator that is the disease pattern "diseased version minus healthy
version": ``G(x, inject) - x`` for a control, ``y - G(y, remove)`` for a patient (the
paper's ``X - X^`` with the sign fixed per direction). The truth is the image of the
image's own two off-diagonal blobs (``jaxinterp.synth2d``), where the groups differ.
Saliency maps are signed derivatives of the logit (positive = diseased), compared signed
and as absolute maps. Two references that use no explanation method at all are scored
the same way: the input image itself, and the group difference of the training means.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxinterp import saliency
from jaxinterp import synth2d as synth2d_data
from jaxinterp.atomic import atomic_path, write_json, write_text
from jaxinterp.losses import INJECT, REMOVE
from jaxinterp.metrics import ncc
from jaxinterp.nn import Classifier
from train.classifier import load_classifier, predict_logits, train_classifier
from train.config import TrainConfig, load_config
from train.datasets import load_dataset
from train.simulator import load_simulator, simulate, train_simulator

# Simulators trained per seed: folder name -> config changes.
SIMULATORS = {
    "condconv": (),
    "separate": ("simulator.separate_networks=True",),
    "bce": ("objective.shift_loss='bce'",),
}
QUICK = (
    "data.n_per_group=64",
    "classifier_optim.steps=300",
    "classifier_optim.batch_size=32",
    "simulator_optim.steps=100",
    "simulator_optim.batch_size=8",
    "simulator_optim.log_every=50",
)


def seed_config(seed: int, *, quick: bool, extra: tuple[str, ...] = ()) -> TrainConfig:
    overrides = (*(QUICK if quick else ()), f"seed={seed}", *extra)
    return load_config("synth2d_paper", list(overrides))


def training_mean(dataset, label: int) -> np.ndarray:
    """The mean training image of one group (0 = controls, 1 = patients), ``(H, W, 1)``."""
    train_images, train_labels = dataset.images[dataset.train], dataset.labels[dataset.train]
    return train_images[train_labels == label].mean(0)


def saliency_maps(
    config: TrainConfig,
    variables: dict,
    images: np.ndarray,
    *,
    steps: int = 32,
    control_mean: np.ndarray | None = None,
):
    """Every saliency baseline's signed map of ``images`` ``(N, H, W, 1)`` -> ``(N, H, W)``.
    Integrated gradients start from a black image (0); with ``control_mean`` ``(H, W, 1)``
    also from the mean control image (``integrated_gradients_control_mean``)."""
    classifier = Classifier(config.classifier)
    logit_fn = lambda x: classifier.apply(variables, x)
    make_logit_fn = lambda act: (
        lambda x: Classifier(config.classifier, activation=act).apply(variables, x)
    )
    features_fn = lambda x: classifier.apply(variables, x, method=Classifier.features)
    head_fn = lambda f: classifier.apply(variables, f, method=Classifier.head)
    x = jnp.asarray(images)
    maps = {
        "gradient": saliency.vanilla_gradient(logit_fn, x),
        "guided_backprop": saliency.guided_backprop(make_logit_fn, x),
        "grad_cam": saliency.grad_cam(features_fn, head_fn, x),
        "guided_grad_cam": saliency.guided_grad_cam(make_logit_fn, features_fn, head_fn, x),
        "integrated_gradients": saliency.integrated_gradients(logit_fn, x, steps=steps),
        "gradient_x_input": saliency.gradient_times_input(logit_fn, x),
    }
    if control_mean is not None:
        maps["integrated_gradients_control_mean"] = saliency.integrated_gradients(
            logit_fn, x, baseline=jnp.asarray(control_mean), steps=steps
        )
    return {k: np.asarray(v) for k, v in maps.items()}


def simulator_patterns(model, variables, images: np.ndarray, labels: np.ndarray):
    """Disease pattern, simulated and cycled images of each test image (by its label)."""
    pattern = np.zeros(images.shape[:-1], np.float32)
    simulated = np.zeros_like(images)
    cycled = np.zeros_like(images)
    for task, label in ((INJECT, 0), (REMOVE, 1)):
        idx = np.flatnonzero(labels == label)
        sim, _ = simulate(model, variables, images[idx], task)
        cyc, _ = simulate(model, variables, sim, 1 - task)
        simulated[idx], cycled[idx] = sim, cyc
        diff = (sim - images[idx]) if task == INJECT else (images[idx] - sim)
        pattern[idx] = diff[..., 0]
    return pattern, simulated, cycled


def _stats(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    return {
        "mean": float(np.nanmean(values)),
        "std": float(np.nanstd(values)),
        "n": int(values.size),
    }


def score(maps: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> dict:
    """Signed and absolute NCC of per-image maps with the truth, overall and per group."""
    signed = np.asarray(ncc(jnp.asarray(maps), jnp.asarray(truth), batch_dims=1))
    absolute = np.asarray(ncc(jnp.abs(jnp.asarray(maps)), jnp.asarray(truth), batch_dims=1))
    return {
        "signed": _stats(signed),
        "absolute": _stats(absolute),
        "signed_controls": _stats(signed[labels == 0]),
        "signed_patients": _stats(signed[labels == 1]),
    }


def run_seed(out: Path, seed: int, *, quick: bool) -> dict:
    """Train everything for one seed in ``out/seed{seed}`` and score every method."""
    workdir = out / f"seed{seed}"
    config = seed_config(seed, quick=quick)
    dataset = load_dataset(config.data, seed=seed)
    truth_all = synth2d_data.make_synth2d(n_per_group=config.data.n_per_group, seed=seed)["offdiag"]
    classifier_summary = train_classifier(config, workdir, dataset=dataset)
    _, clf_vars = load_classifier(config, workdir, dataset.images)

    test = dataset.test
    images, labels, truth = dataset.images[test], dataset.labels[test], truth_all[test]
    result = {"seed": seed, "classifier": classifier_summary, "methods": {}, "logits": {}}
    classifier = Classifier(config.classifier)
    raw_logits = predict_logits(classifier, clf_vars, images)
    control = int(np.flatnonzero(labels == 0)[0])  # the image shown in Fig. 3
    panels = [("image", images[control, ..., 0]), ("ground truth", truth[control])]
    logits = {}
    for name, changes in SIMULATORS.items():
        sim_config = seed_config(seed, quick=quick, extra=changes)
        folder = f"simulator_{name}"
        summary = train_simulator(sim_config, workdir, dataset=dataset, name=folder)
        model, variables = load_simulator(sim_config, workdir, dataset.images, name=folder)
        pattern, simulated, cycled = simulator_patterns(model, variables, images, labels)
        result["methods"][folder] = score(pattern, truth, labels)
        result["logits"][name] = summary["test"]
        sim_logits = predict_logits(classifier, clf_vars, simulated)
        cyc_logits = predict_logits(classifier, clf_vars, cycled)
        logits[name] = {
            direction: (
                raw_logits[labels == lab],
                sim_logits[labels == lab],
                cyc_logits[labels == lab],
            )
            for direction, lab in (("inject", 0), ("remove", 1))
        }
        if name == "condconv":
            panels[1:1] = [("simulated", simulated[control, ..., 0]),
                           ("cycled back", cycled[control, ..., 0])]  # fmt: skip
        panels.append((folder, pattern[control]))

    steps = 16 if quick else 32
    controls_mean = training_mean(dataset, 0)
    baselines = saliency_maps(config, clf_vars, images, steps=steps, control_mean=controls_mean)
    for name, maps in baselines.items():
        result["methods"][name] = score(maps, truth, labels)
        panels.append((name, maps[control]))
    group_difference = (training_mean(dataset, 1) - controls_mean)[..., 0]
    references = {
        "reference_image": images[..., 0],
        "reference_group_difference": np.broadcast_to(group_difference, images.shape[:-1]),
    }
    for name, maps in references.items():
        result["methods"][name] = score(maps, truth, labels)
        panels.append((name, maps[control]))

    write_figures(workdir, panels, logits)
    write_json(workdir / "results.json", result)
    return result


def aggregate(per_seed: list[dict]) -> dict:
    """Mean, spread and worst seed of each method's mean NCC."""
    methods = per_seed[0]["methods"]
    table = {}
    for method in methods:
        row = {}
        for key in ("signed", "absolute", "signed_controls", "signed_patients"):
            means = [r["methods"][method][key]["mean"] for r in per_seed]
            row[key] = {"mean": float(np.mean(means)), "std": float(np.std(means)),
                        "worst": float(np.min(means)), "per_seed": means}  # fmt: skip
        table[method] = row
    accuracy = [r["classifier"]["test"]["accuracy"] for r in per_seed]
    spearman = {
        name: {
            direction: [r["logits"][name][direction]["spearman_raw_simulated"] for r in per_seed]
            for direction in ("inject", "remove")
        }
        for name in SIMULATORS
    }
    return {"seeds": [r["seed"] for r in per_seed], "ncc": table,
            "classifier_test_accuracy": accuracy, "spearman_raw_simulated": spearman}  # fmt: skip


def markdown_table(summary: dict) -> str:
    seeds = summary["seeds"]
    lines = [
        f"NCC with the ground truth on held-out images, seeds {seeds} "
        "(mean over seeds of each seed's mean over images; ± std over seeds; worst seed).",
        "",
        "| method | signed | absolute | signed, controls (inject) | signed, patients (remove) |",
        "|---|---|---|---|---|",
    ]
    for method, row in summary["ncc"].items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f} (worst {row[k]['worst']:.3f})"
                 for k in ("signed", "absolute", "signed_controls", "signed_patients")]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    acc = summary["classifier_test_accuracy"]
    lines += ["", f"Classifier test accuracy per seed: {', '.join(f'{a:.3f}' for a in acc)}", ""]
    lines.append("Spearman correlation of raw and simulated test logits per seed:")
    lines.append("")
    for name, per_direction in summary["spearman_raw_simulated"].items():
        parts = [f"{d} {', '.join(f'{v:.3f}' for v in vals)}" for d, vals in per_direction.items()]
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def reproduce_synth2d(
    out: str | Path, *, seeds: tuple[int, ...] = (0, 1, 2), quick: bool = False
) -> dict:
    """Run every seed and write ``results.json`` and ``results.md`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = [run_seed(out, seed, quick=quick) for seed in seeds]
    summary = aggregate(per_seed)
    summary["quick"] = quick
    write_json(out / "results.json", {"summary": summary, "per_seed": per_seed})
    write_text(out / "results.md", markdown_table(summary))
    return summary


def _save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:  # the temporary name keeps the .png suffix
        fig.savefig(tmp, dpi=120)


def write_figures(workdir: Path, panels: list[tuple[str, np.ndarray]], logits: dict) -> None:
    """Fig. 3 (one control: image, simulated, cycled, truth, every map) and Fig. 4 (logits of
    the held-out images, raw / simulated / cycled back, sorted by raw, hinge vs BCE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows))
    for ax, (title, image) in zip(axes.ravel(), panels):
        if title in ("image", "simulated", "cycled back"):
            ax.imshow(image, cmap="gray")
        else:
            limit = float(np.abs(image).max()) or 1.0
            ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(title.replace("_", " "), fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    _save_figure(fig, workdir / "figure3_maps.png")
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    for col, name in enumerate(("condconv", "bce")):
        for row, direction in enumerate(("inject", "remove")):
            raw, simulated, cycled = logits[name][direction]
            order = np.argsort(raw)
            ax = axes[row, col]
            for values, label in ((raw, "raw"), (simulated, "simulated"), (cycled, "cycled back")):
                ax.plot(values[order], ".", markersize=3, label=label)
            ax.set_title(f"{name} simulator: {direction}", fontsize=9)
            ax.set_ylabel("logit")
            ax.set_xlabel("held-out image, sorted by raw logit")
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, workdir / "figure4_logits.png")
    plt.close(fig)


__all__ = [
    "reproduce_synth2d",
    "run_seed",
    "saliency_maps",
    "score",
    "simulator_patterns",
    "training_mean",
]
