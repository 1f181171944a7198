"""Study of simulator settings on the synthetic 2D benchmark (issue 7), one row per variant.

    jaxinterp reproduce synth2d --out runs/reproduce_synth2d --seeds 0 1 2   # first
    python benchmarks/study_synth2d.py --run runs/reproduce_synth2d --seeds 0 \
        --variants paper change_0.3 change_1

Each variant is the synth2d_paper config with a few overrides ("jaxinterp" = the synth2d
config); its simulator is trained against the classifier that `reproduce` trained for the
seed (trained here, with the same settings, where RUN has none; the simulator goes to
`RUN/seed{S}/study_{variant}`) and scored exactly as `reproduce` scores (signed
NCC per direction, absolute NCC), next to the image-as-map reference. Prints a Markdown
table; JSON lines go to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import synth2d
from jaxinterp.metrics import ncc
from jaxinterp.nn import Classifier
from train.classifier import load_classifier, predict_logits, train_classifier
from train.configs import synth2d as synth2d_config
from train.datasets import load_dataset
from train.evaluate import randomisation_passes, spearman
from train.reproduce import (
    saliency_maps,
    score,
    seed_config,
    simulator_patterns,
    training_mean,
)
from train.simulator import load_simulator, train_simulator

# The synth2d config's settings before its smoothness term moved to the log gain (RESULTS.md
# section 4, "The first defaults over three seeds"); the variants built on them keep their
# meaning whatever the config says today.
SMOOTH_CHANGE_SETTINGS = (
    "simulator.output='gain'",
    "simulator.coordinates=True",
    "objective.simulated_batch_norm='running'",
    "objective.change_weight=1.0",
    "objective.lambda_phi=1.0",
    "simulator.zero_init_output=True",
    "simulator_optim.steps=4000",
)

# The synth2d config's settings after that move and before BatchNorm left its simulator
# (RESULTS.md section 4, "Smoothing the log gain").
LOG_GAIN_SETTINGS = (
    *SMOOTH_CHANGE_SETTINGS,
    "objective.image_smoothness='log_gain'",
    "objective.lambda_phi=100.0",
)

# The synth2d config's settings since BatchNorm left its simulator, at 4000 steps (RESULTS.md
# section 4, "BatchNorm out of the 2D simulator"); with 8000 steps they are the config's.
NO_BN_SETTINGS = (*LOG_GAIN_SETTINGS, "simulator.batch_norm=False")

VARIANTS = {
    "paper": (),
    "jaxinterp": synth2d_config.SETTINGS,  # the synth2d config's defaults
    "change_0.3": ("objective.change_weight=0.3",),
    "change_1": ("objective.change_weight=1.0",),
    "change_1_l1cycle": ("objective.change_weight=1.0", "objective.cycle_norm='l1'"),
    "no_batchnorm": ("simulator.batch_norm=False",),
    "long": ("simulator_optim.steps=4000",),
    "delta_15": ("objective.delta=15.0",),
    "residual": ("simulator.output='residual'",),
    "residual_change_0.1": ("simulator.output='residual'", "objective.change_weight=0.1"),
    "residual_wide": ("simulator.output='residual'", "simulator.features=(8, 16, 32, 64)"),
    "coords": ("simulator.coordinates=True",),
    "coords_change_0.1": ("simulator.coordinates=True", "objective.change_weight=0.1"),
    "coords_residual_change_0.1": (
        "simulator.coordinates=True",
        "simulator.output='residual'",
        "objective.change_weight=0.1",
    ),
    "bn_running": ("objective.simulated_batch_norm='running'",),
    "coords_bn_running": ("simulator.coordinates=True", "objective.simulated_batch_norm='running'"),
    "gain_coords_bn_running": (
        "simulator.output='gain'",
        "simulator.coordinates=True",
        "objective.simulated_batch_norm='running'",
    ),
    "gain_coords_bn_running_change_0.3": (
        "simulator.output='gain'",
        "simulator.coordinates=True",
        "objective.simulated_batch_norm='running'",
        "objective.change_weight=0.3",
    ),
    "gain_coords_bn_running_change_1": (
        "simulator.output='gain'",
        "simulator.coordinates=True",
        "objective.simulated_batch_norm='running'",
        "objective.change_weight=1.0",
    ),
    "gain_bn_running_change_0.3": (
        "simulator.output='gain'",
        "objective.simulated_batch_norm='running'",
        "objective.change_weight=0.3",
    ),
    "gain_coords_bn_running_change_3": (
        "simulator.output='gain'",
        "simulator.coordinates=True",
        "objective.simulated_batch_norm='running'",
        "objective.change_weight=3.0",
    ),
    "gain_bn_running_change_1": (
        "simulator.output='gain'",
        "objective.simulated_batch_norm='running'",
        "objective.change_weight=1.0",
    ),
    "gain_coords_bn_running_change_l2_3": (
        "simulator.output='gain'",
        "simulator.coordinates=True",
        "objective.simulated_batch_norm='running'",
        "objective.change_weight=3.0",
        "objective.change_norm='l2'",
    ),
    "gain_coords_bn_running_change_l2_10": (
        "simulator.output='gain'",
        "simulator.coordinates=True",
        "objective.simulated_batch_norm='running'",
        "objective.change_weight=10.0",
        "objective.change_norm='l2'",
    ),
    "gain_coords_bn_running_change_1_smooth_1": (
        "simulator.output='gain'",
        "simulator.coordinates=True",
        "objective.simulated_batch_norm='running'",
        "objective.change_weight=1.0",
        "objective.lambda_phi=1.0",
    ),
    "gain_coords_bn_running_change_1_smooth_1_zero": (  # = jaxinterp_2000
        *SMOOTH_CHANGE_SETTINGS,
        "simulator_optim.steps=2000",
    ),
    "jaxinterp_delta_10": (
        *SMOOTH_CHANGE_SETTINGS,
        "simulator_optim.steps=2000",
        "objective.delta=10.0",
    ),
    "jaxinterp_2000": (*SMOOTH_CHANGE_SETTINGS, "simulator_optim.steps=2000"),
    "jaxinterp_smooth_3": (*SMOOTH_CHANGE_SETTINGS, "objective.lambda_phi=3.0"),
    "jaxinterp_smooth_3_2000": (
        *SMOOTH_CHANGE_SETTINGS,
        "simulator_optim.steps=2000",
        "objective.lambda_phi=3.0",
    ),
    "jaxinterp_long": (*SMOOTH_CHANGE_SETTINGS, "simulator_optim.steps=4000"),
    "jaxinterp_8000": (*SMOOTH_CHANGE_SETTINGS, "simulator_optim.steps=8000"),
    "jaxinterp_lr_3e-4": (*SMOOTH_CHANGE_SETTINGS, "simulator_optim.learning_rate=3e-4"),
    "jaxinterp_delta_2.5": (*SMOOTH_CHANGE_SETTINGS, "objective.delta=2.5"),
    "jaxinterp_change_3": (*SMOOTH_CHANGE_SETTINGS, "objective.change_weight=3.0"),
    "jaxinterp_log_gain_10": (
        *SMOOTH_CHANGE_SETTINGS,
        "objective.image_smoothness='log_gain'",
        "objective.lambda_phi=10.0",
    ),
    "jaxinterp_log_gain_30": (
        *SMOOTH_CHANGE_SETTINGS,
        "objective.image_smoothness='log_gain'",
        "objective.lambda_phi=30.0",
    ),
    "jaxinterp_log_gain_100": LOG_GAIN_SETTINGS,
    # total variation of the log gain (the L1 form of the same term): piecewise-constant
    # gains, one per blob, are cheap where a smooth gain has to spread
    "jaxinterp_tv_3": (
        *LOG_GAIN_SETTINGS,
        "objective.smoothness_norm='l1'",
        "objective.lambda_phi=3.0",
    ),
    # no BatchNorm: batch statistics made the training-mode simulator move seed 2's
    # controls by 7.0 logits and the inference-mode one (running averages) by 2.9; with
    # 8000 steps (jaxinterp_no_bn_8000) it is jaxinterp, the synth2d config, since this round
    "jaxinterp_no_bn": NO_BN_SETTINGS,
    "jaxinterp_no_bn_log_gain_30": (*NO_BN_SETTINGS, "objective.lambda_phi=30.0"),
    "jaxinterp_no_bn_log_gain_300": (*NO_BN_SETTINGS, "objective.lambda_phi=300.0"),
    "jaxinterp_no_bn_8000": (*NO_BN_SETTINGS, "simulator_optim.steps=8000"),
    "jaxinterp_no_bn_16000": (*NO_BN_SETTINGS, "simulator_optim.steps=16000"),
    "jaxinterp_no_bn_change_0.5": (*NO_BN_SETTINGS, "objective.change_weight=0.5"),
    "jaxinterp_no_bn_smooth_change": (*SMOOTH_CHANGE_SETTINGS, "simulator.batch_norm=False"),
    # the learning rate decays to 0 over the run (a constant 1e-3 leaves Adam's noise in
    # the last weights; seed 2's diagonal leak shrank from 4000 to 8000 steps)
    "jaxinterp_no_bn_8000_cosine": (
        *NO_BN_SETTINGS,
        "simulator_optim.steps=8000",
        "simulator_optim.schedule='cosine'",
    ),
    # the issue's "CondConv vs separate networks" on today's settings (section 1 compared
    # them on the paper's): two plain-conv U-Nets, one per task, each twice the work
    "jaxinterp_separate": (*synth2d_config.SETTINGS, "simulator.separate_networks=True"),
    # a stronger "change as little as possible" term (0.5 was worse on seed 2)
    "jaxinterp_change_2": (*synth2d_config.SETTINGS, "objective.change_weight=2.0"),
    # an L1 term on the log gain itself: the diffusion term is blind to a constant gain
    "jaxinterp_gain_1": (*synth2d_config.SETTINGS, "objective.gain_weight=1.0"),
    "jaxinterp_gain_3": (*synth2d_config.SETTINGS, "objective.gain_weight=3.0"),
    # the diffusion term on the log gain only where the image has something to scale
    "jaxinterp_smooth_on_image": (
        *synth2d_config.SETTINGS,
        "objective.image_smoothness='log_gain_on_image'",
    ),
    # a shorter memory for Adam's second moments (3D's free map reaches the cheap end with it)
    "jaxinterp_b2_0.99": (*synth2d_config.SETTINGS, "simulator_optim.b2=0.99"),
    "jaxinterp_b2_0.9": (*synth2d_config.SETTINGS, "simulator_optim.b2=0.9"),
    # total variation of the log gain without BatchNorm (jaxinterp_tv_3 had it): a step of
    # the gain at a blob's edge costs its height, not its square spread over a ramp, so one
    # gain per blob with none between quadrants is cheaper than a smooth gain. Seed 2: 0.65
    # (weight 1) and 0.66 (3) against 0.77, a sharper partial-blob change (RESULTS section 4)
    "jaxinterp_tv_1": (
        *synth2d_config.SETTINGS,
        "objective.smoothness_norm='l1'",
        "objective.lambda_phi=1.0",
    ),
    "jaxinterp_tv_3_no_bn": (
        *synth2d_config.SETTINGS,
        "objective.smoothness_norm='l1'",
        "objective.lambda_phi=3.0",
    ),
    # the synth2d config from other initialisations (and dropout and batch orders) of the
    # simulator, against the same classifier: members of an ensemble (--average)
    "jaxinterp_init_1": (*synth2d_config.SETTINGS, "simulator_seed=1001"),
    "jaxinterp_init_2": (*synth2d_config.SETTINGS, "simulator_seed=1002"),
    # the synth2d config computed in bfloat16 (float32 parameters): does the speed of
    # bfloat16 on accelerators (benchmarks/RESULTS.md section 2) cost explanation quality?
    "jaxinterp_bf16": (*synth2d_config.SETTINGS, "dtype='bfloat16'"),
    # the synth2d config keeping every checkpoint from step 500 on (the same run: what
    # averaging the weights, or the maps, of its last checkpoints does, `--snapshots`)
    "jaxinterp_keep": (*synth2d_config.SETTINGS, "keep_checkpoints=16"),
    # one learned log-gain map shared by every image, added with + to inject's network output
    # and with - to remove's (`brain3d_32`'s tied population map, in 2D)
    "jaxinterp_tied_map": (*synth2d_config.SETTINGS, "simulator.population_map='tied'"),
    "residual_smooth_coords_bn_running": (
        "simulator.output='residual'",
        "objective.lambda_phi=1.0",
        "simulator.coordinates=True",
        "objective.simulated_batch_norm='running'",
    ),
}


def simulator_name(variant: str) -> str:
    """The trained simulator a check uses for a variant in ``RUN/seed{S}``: reproduce's own
    for "paper", else the study's."""
    return "simulator_condconv" if variant == "paper" else f"study_{variant}"


def seed_data(seed: int, variant: str):
    """``(config, dataset, images, labels, truth)``: the variant's config for the seed, the
    dataset, and the held-out images, labels and ground truth (``offdiag``)."""
    config = seed_config(seed, quick=False, extra=VARIANTS[variant])
    dataset = load_dataset(config.data, seed=seed)
    truth = synth2d.make_synth2d(n_per_group=config.data.n_per_group, seed=seed)["offdiag"]
    test = dataset.test
    return config, dataset, dataset.images[test], dataset.labels[test], truth[test]


def run_variant(run: Path, seed: int, name: str) -> dict:
    config, dataset, images, labels, truth = seed_data(seed, name)
    workdir = run / f"seed{seed}"
    # Without a reproduce run, the seed's classifier is trained here as reproduce trains it
    # (resumed, if an earlier study was stopped before it finished and wrote its summary).
    if not (workdir / "classifier" / "summary.json").exists():
        train_classifier(seed_config(seed, quick=False), workdir, dataset=dataset)
    summary = train_simulator(config, workdir, dataset=dataset, name=f"study_{name}")
    model, variables = load_simulator(config, workdir, dataset.images, name=f"study_{name}")
    pattern, _, _ = simulator_patterns(model, variables, images, labels)
    scores = score(pattern, truth, labels)
    reference = score(images[..., 0], truth, labels)
    return {"variant": name, "seed": seed, "overrides": list(VARIANTS[name]),
            "ncc": scores, "reference_image": reference, "logits": summary["test"]}  # fmt: skip


def average_of_variants(run: Path, seed: int, names: list[str]) -> dict:
    """Score the mean of several variants' patterns (an ensemble of simulators): does
    averaging remove what one simulator gets wrong? Trains the variants that are missing.

    Returns the ensemble's scores (``ncc``), the image-as-map reference's
    (``reference_image``), and per direction the Spearman correlation of the raw logits with
    the mean of the members' simulated logits (``spearman_raw_simulated``): an ensemble
    keeps the classifier's order when its members' mean shift does."""
    workdir = run / f"seed{seed}"
    config, dataset, images, labels, truth = seed_data(seed, names[0])
    _, clf_vars = load_classifier(config, workdir, dataset.images)  # every member's classifier
    logits = lambda x: np.asarray(predict_logits(Classifier(config.classifier), clf_vars, x))
    patterns, simulated_logits = [], []
    for name in names:
        config = seed_config(seed, quick=False, extra=VARIANTS[name])  # seed_data's config
        sim_name = simulator_name(name)
        train_simulator(config, workdir, dataset=dataset, name=sim_name)
        model, variables = load_simulator(config, workdir, dataset.images, name=sim_name)
        pattern, simulated, _ = simulator_patterns(model, variables, images, labels)
        patterns.append(pattern)
        simulated_logits.append(logits(simulated))
    raw, mean_simulated = logits(images), np.mean(simulated_logits, axis=0)
    return {
        "ncc": score(np.mean(patterns, axis=0), truth, labels),
        "reference_image": score(images[..., 0], truth, labels),
        "spearman_raw_simulated": spearman_by_direction(raw, mean_simulated, labels),
    }


def spearman_by_direction(raw: np.ndarray, simulated: np.ndarray, labels: np.ndarray) -> dict:
    """Spearman correlation of raw and simulated logits: inject on the controls (label 0),
    remove on the patients (label 1)."""
    return {
        direction: spearman(raw[labels == label], simulated[labels == label])
        for label, direction in ((0, "inject"), (1, "remove"))
    }


def snapshot_averages(run: Path, seed: int, variant: str, last: int) -> list[dict]:
    """One run's last checkpoints combined two ways, for K = 1 .. ``last`` of them: the
    simulator with their parameters averaged (one network, as a running average of the
    weights would give) and the mean of their maps (K networks). The variant must keep that
    many checkpoints (``keep_checkpoints``); returns one row per K and way, scored as
    `run_variant` scores, with the Spearman correlation of raw and simulated logits."""
    workdir = run / f"seed{seed}"
    config, dataset, images, labels, truth = seed_data(seed, variant)
    _, clf_vars = load_classifier(config, workdir, dataset.images)
    logits = lambda x: np.asarray(predict_logits(Classifier(config.classifier), clf_vars, x))
    folder = workdir / simulator_name(variant) / "checkpoints"
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())[-last:][::-1]
    if len(steps) < last:
        raise SystemExit(f"{folder}: {len(steps)} checkpoints, not {last} (keep_checkpoints?)")
    members = []
    for step in steps:  # the last first
        model, variables = load_simulator(
            config, workdir, dataset.images, name=simulator_name(variant), step=step
        )
        pattern, simulated, _ = simulator_patterns(model, variables, images, labels)
        members.append((variables, pattern, logits(simulated)))
    raw = logits(images)
    rho = lambda simulated: spearman_by_direction(raw, simulated, labels)
    rows = []
    for k in range(1, last + 1):
        weights = jax.tree.map(lambda *v: np.mean(v, axis=0), *[m[0] for m in members[:k]])
        one_pattern, one_simulated, _ = simulator_patterns(model, weights, images, labels)
        for way, pattern, simulated in (
            ("weights", one_pattern, logits(one_simulated)),
            ("maps", np.mean([m[1] for m in members[:k]], axis=0),
             np.mean([m[2] for m in members[:k]], axis=0)),
        ):  # fmt: skip
            rows.append({"seed": seed, "variant": variant, "last": k, "steps": steps[:k],
                         "average_of": way, "ncc": score(pattern, truth, labels),
                         "spearman_raw_simulated": rho(simulated)})  # fmt: skip
    return rows


def randomisation_check(run: Path, seed: int, variant: str = "paper") -> dict:
    """Adebayo et al. (2018): explain a classifier whose weights were never trained (its
    initialisation: one Adam step at learning rate 0, which only sets BatchNorm statistics)
    and compare each method's maps with those of the trained classifier. A method whose
    maps barely change (NCC near 1) does not explain the classifier. The simulator has the
    settings of ``variant`` ("paper": reproduce's simulator_condconv).

    Per direction (inject on the held-out controls, remove on the patients; for saliency,
    the same two groups of images): the mean NCC of the two maps, signed and absolute, and
    the mean NCC of the untrained classifier's maps with the truth. A method passes when
    the signed NCC is small in both directions (`train.evaluate.randomisation_passes`, the
    rule of the 3D check): a mean over both directions can hide one that fails."""
    base, dataset, images, labels, truth = seed_data(seed, variant)
    untrained = seed_config(seed, quick=False, extra=(
        *VARIANTS[variant], "classifier_optim.steps=1", "classifier_optim.learning_rate=0.0"
    ))  # fmt: skip
    workdir, random_dir = run / f"seed{seed}", run / f"seed{seed}" / "randomised"
    train_classifier(untrained, random_dir, dataset=dataset)
    trained_name = simulator_name(variant)
    random_name = "simulator" if variant == "paper" else f"simulator_{variant}"
    if variant != "paper":
        train_simulator(base, workdir, dataset=dataset, name=trained_name)
    train_simulator(untrained, random_dir, dataset=dataset, name=random_name)
    maps = {}
    for name, config, folder, sim_name in (
        ("trained", base, workdir, trained_name),
        ("untrained", untrained, random_dir, random_name),
    ):
        _, clf_vars = load_classifier(config, folder, dataset.images)
        model, variables = load_simulator(config, folder, dataset.images, name=sim_name)
        maps[name] = {"simulator": simulator_patterns(model, variables, images, labels)[0],
                      **saliency_maps(config, clf_vars, images)}  # fmt: skip
    mean_ncc = lambda a, b: float(np.nanmean(np.asarray(ncc(a, b, batch_dims=1))))
    out = {}
    for method in maps["trained"]:
        a, b = jnp.asarray(maps["trained"][method]), jnp.asarray(maps["untrained"][method])
        row = {"ncc_trained_vs_untrained": mean_ncc(a, b)}
        for label, direction in ((0, "inject"), (1, "remove")):
            m = labels == label
            row[direction] = {
                "ncc": mean_ncc(a[m], b[m]),
                "ncc_abs": mean_ncc(jnp.abs(a[m]), jnp.abs(b[m])),
                "untrained_vs_truth": mean_ncc(b[m], jnp.asarray(truth[m])),
                "trained_vs_truth": mean_ncc(a[m], jnp.asarray(truth[m])),
            }
        row["passes"] = randomisation_passes(row[d]["ncc"] for d in ("inject", "remove"))
        out[method] = row
    return {"seed": seed, "variant": variant, "randomisation": out}


def baseline_scores(run: Path, seed: int) -> dict:
    """Every saliency baseline of reproduce (integrated gradients from 0 and from the mean
    control image included) for the seed's trained classifier, scored as the variants."""
    config, dataset, images, labels, truth = seed_data(seed, "paper")
    _, clf_vars = load_classifier(config, run / f"seed{seed}", dataset.images)
    maps = saliency_maps(config, clf_vars, images, control_mean=training_mean(dataset, 0))
    return {name: score(m, truth, labels) for name, m in maps.items()}


def blob_regression(patterns, off, diag):
    """Each pattern regressed by least squares on its image's off-diagonal and diagonal
    blobs: ``(coefficients (N, 2), fraction of each pattern's energy neither explains)``."""
    coefs, rest = [], []
    for p, o, d in zip(patterns, off, diag):
        design = np.stack([o.ravel(), d.ravel()], axis=1)
        c, *_ = np.linalg.lstsq(design, p.ravel(), rcond=None)
        coefs.append(c)
        rest.append(np.sum((p.ravel() - design @ c) ** 2) / np.sum(p**2))
    return np.array(coefs), np.array(rest)


def diagnose(run: Path, seed: int, variant: str) -> dict:
    """Where the classifier looks and what a simulator changes, in terms of the blobs.

    Classifier: mean logit change of the held-out images when their off-diagonal blobs, or
    their diagonal blobs (image minus off-diagonal blobs), are made 25% stronger.
    Simulator: each image's pattern regressed by least squares on its off-diagonal and its
    diagonal blobs; the median coefficients per group and the median fraction of the
    pattern's energy neither explains."""
    config, dataset, images, labels, truth = seed_data(seed, variant)
    off = truth[..., None]
    diag = images - off
    _, clf_vars = load_classifier(config, run / f"seed{seed}", dataset.images)
    logits = lambda x: predict_logits(Classifier(config.classifier), clf_vars, x)
    raw = logits(images)
    out = {"logit_change_offdiag_25%": float((logits(images + 0.25 * off) - raw).mean()),
           "logit_change_diag_25%": float((logits(images + 0.25 * diag) - raw).mean())}  # fmt: skip
    model, variables = load_simulator(
        config, run / f"seed{seed}", dataset.images, name=simulator_name(variant)
    )
    pattern = simulator_patterns(model, variables, images, labels)[0]
    for label, group in ((0, "controls"), (1, "patients")):
        pick = labels == label
        coefs, rest = blob_regression(pattern[pick], off[pick], diag[pick])
        out[f"{group}_coef_offdiag"], out[f"{group}_coef_diag"] = np.median(coefs, axis=0)
        out[f"{group}_unexplained"] = float(np.median(rest))
    return {k: float(v) for k, v in out.items()}


def blob_scaling_cost(logits, x, off, diag, target, sign, ratio, *, iterations=30):
    """Per image, the smallest ``a`` in [0, 1] with which ``x + sign a (off + ratio diag)``
    moves ``logits`` by ``target`` in the direction ``sign`` (bisection; the logit is taken
    to move monotonically with ``a``), and that change's L1 cost ``mean |a (off + ratio
    diag)|``. Returns ``(a, cost, reached)``; where ``a = 1`` does not reach the target,
    ``reached`` is False and ``a`` is 1."""
    p = off + ratio * diag
    raw = logits(x)
    shift = lambda a: sign * (logits(x + sign * a[:, None, None, None] * p) - raw)
    lo, hi = np.zeros(len(x)), np.ones(len(x))  # at most double / remove the blobs
    reached = shift(hi) >= target
    for _ in range(iterations):
        mid = (lo + hi) / 2
        ok = shift(mid) >= target
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return hi, hi * np.abs(p).mean(axis=(1, 2, 3)), reached


def cheapest_blob_change(run: Path, seed: int, variant: str, ratios=None) -> dict:
    """What the objective asks for, among changes that scale blobs. For each held-out image,
    the simulator of VARIANT moves the logit by some shift s at an L1 change c (mean
    |G(x) - x|, the change term). For each ratio r, `blob_scaling_cost` finds the cheapest
    ``x + a (off + r diag)`` (inject, controls) or ``x - a (off + r diag)`` (remove,
    patients) that moves the logit by s too. If the cheapest r is near 0, a simulator that
    also scales the diagonal blobs pays more than it must; if it is near the simulator's own
    share, the classifier itself asks for it. Returns per direction and r: the median of
    cost / c over the images that reach s, the fraction that do, and the NCC of ``off + r
    diag`` with the truth; and the simulator's median c, median s and its share (diagonal /
    off-diagonal regression coefficient)."""
    ratios = np.round(np.linspace(0.0, 1.0, 11), 2) if ratios is None else np.asarray(ratios)
    config, dataset, images, labels, truth = seed_data(seed, variant)
    off = truth[..., None]
    diag = images - off
    _, clf_vars = load_classifier(config, run / f"seed{seed}", dataset.images)
    logits = lambda x: np.asarray(predict_logits(Classifier(config.classifier), clf_vars, x))
    model, variables = load_simulator(
        config, run / f"seed{seed}", dataset.images, name=simulator_name(variant)
    )
    pattern, simulated, _ = simulator_patterns(model, variables, images, labels)
    out = {}
    for label, sign, direction in ((0, 1.0, "inject"), (1, -1.0, "remove")):
        pick = labels == label
        x, o, d = images[pick], off[pick], diag[pick]
        target = sign * (logits(simulated[pick]) - logits(x))
        change = np.abs(simulated[pick] - x).mean(axis=(1, 2, 3))
        rows = []
        for r in ratios:
            _, cost, reached = blob_scaling_cost(logits, x, o, d, target, sign, r)
            reached &= target > 0
            p = o + r * d
            scores = [ncc(jnp.asarray(q[..., 0]), jnp.asarray(t)) for q, t in zip(p, truth[pick])]
            rows.append({"ratio": float(r), "reached": float(reached.mean()),
                         "median_cost_over_simulator": float(np.median(cost[reached] /
                                                                       change[reached]))
                         if reached.any() else None,
                         "ncc": float(np.mean(scores))})  # fmt: skip
        c = np.median(blob_regression(pattern[pick], o, d)[0], axis=0)
        out[direction] = {
            "by_ratio": rows,
            "simulator_median_change": float(np.median(change)),
            "simulator_median_shift": float(np.median(target)),
            "simulator_share": float(c[1] / c[0]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="output folder of `jaxinterp reproduce`")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", help="append JSON lines here")
    parser.add_argument(
        "--randomisation", nargs="?", const="paper", choices=list(VARIANTS), metavar="VARIANT",
        help="run the randomisation check instead, for the simulator of VARIANT (paper)",
    )  # fmt: skip
    parser.add_argument(
        "--baselines", action="store_true", help="score the saliency baselines instead"
    )
    parser.add_argument(
        "--diagnose", choices=list(VARIANTS), metavar="VARIANT",
        help="where the classifier looks and what VARIANT's simulator changes, instead",
    )  # fmt: skip
    parser.add_argument(
        "--average", action="store_true",
        help="score the mean of the --variants' maps (an ensemble), instead of each",
    )  # fmt: skip
    parser.add_argument(
        "--cheapest", choices=list(VARIANTS), metavar="VARIANT",
        help="what whole-blob scalings cost to move the classifier as far as VARIANT's "
        "simulator does, against that simulator's change, instead",
    )  # fmt: skip
    parser.add_argument(
        "--snapshots", nargs=2, metavar=("VARIANT", "K"),
        help="average the weights, and the maps, of VARIANT's last 1 .. K checkpoints, instead",
    )  # fmt: skip
    args = parser.parse_args()
    if args.snapshots:
        variant, last = args.snapshots[0], int(args.snapshots[1])
        print("| seed | last checkpoints | average of | signed | inject | remove | Spearman |")
        print("|---|---|---|---|---|---|---|")
        for seed in args.seeds:
            for row in snapshot_averages(Path(args.run), seed, variant, last):
                n, rho = row["ncc"], row["spearman_raw_simulated"]
                print(f"| {seed} | {row['last']} ({row['steps'][-1]}-{row['steps'][0]}) | "
                      f"{row['average_of']} | {n['signed']['mean']:.3f} | "
                      f"{n['signed_controls']['mean']:.3f} | {n['signed_patients']['mean']:.3f} "
                      f"| {rho['inject']:.3f} / {rho['remove']:.3f} |", flush=True)  # fmt: skip
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
        return
    if args.cheapest:
        for seed in args.seeds:
            result = {"seed": seed, "variant": args.cheapest,
                      **cheapest_blob_change(Path(args.run), seed, args.cheapest)}  # fmt: skip
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")
        return
    if args.average:
        print("| seed | mean of | signed | absolute | inject (controls) | remove (patients) "
              "| image reference | above it | Spearman inject / remove |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for seed in args.seeds:
            result = average_of_variants(Path(args.run), seed, args.variants)
            n, ref, rho = result["ncc"], result["reference_image"], result["spearman_raw_simulated"]
            gap = n["signed"]["mean"] - ref["signed"]["mean"]
            print(f"| {seed} | {', '.join(args.variants)} | {n['signed']['mean']:.3f} | "
                  f"{n['absolute']['mean']:.3f} | {n['signed_controls']['mean']:.3f} | "
                  f"{n['signed_patients']['mean']:.3f} | {ref['signed']['mean']:.3f} | "
                  f"{gap:+.3f} | {rho['inject']:.3f} / {rho['remove']:.3f} |")  # fmt: skip
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({"seed": seed, "average_of": args.variants, **result}))
                    f.write("\n")
        return
    if args.diagnose:
        for seed in args.seeds:
            print(json.dumps({"seed": seed, "variant": args.diagnose,
                              **diagnose(Path(args.run), seed, args.diagnose)}))  # fmt: skip
        return
    if args.baselines:
        print("| seed | method | signed | absolute | inject (controls) | remove (patients) |")
        print("|---|---|---|---|---|---|")
        for seed in args.seeds:
            for method, n in baseline_scores(Path(args.run), seed).items():
                print(f"| {seed} | {method} | {n['signed']['mean']:.3f} | "
                      f"{n['absolute']['mean']:.3f} | {n['signed_controls']['mean']:.3f} | "
                      f"{n['signed_patients']['mean']:.3f} |")  # fmt: skip
        return
    if args.randomisation:
        print("| seed | method | NCC trained vs untrained, inject / remove | absolute maps | "
              "untrained maps vs truth | passes |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for seed in args.seeds:
            result = randomisation_check(Path(args.run), seed, args.randomisation)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")
            for method, row in result["randomisation"].items():
                pair = lambda key, row=row: " / ".join(
                    f"{row[d][key]:.3f}" for d in ("inject", "remove")
                )
                print(
                    f"| {seed} | {method} | {pair('ncc')} | {pair('ncc_abs')} | "
                    f"{pair('untrained_vs_truth')} | {'yes' if row['passes'] else 'no'} |"
                )
        return
    rows = []
    for seed in args.seeds:
        for name in args.variants:
            row = run_variant(Path(args.run), seed, name)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| variant | seed | signed | absolute | inject (controls) | remove (patients) "
          "| image reference | Spearman inject / remove |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["ncc"]
        sp = [r["logits"][d]["spearman_raw_simulated"] for d in ("inject", "remove")]
        print(f"| {r['variant']} | {r['seed']} | {n['signed']['mean']:.3f} | "
              f"{n['absolute']['mean']:.3f} | {n['signed_controls']['mean']:.3f} | "
              f"{n['signed_patients']['mean']:.3f} | "
              f"{r['reference_image']['signed']['mean']:.3f} | "
              f"{np.round(sp, 3).tolist()} |")  # fmt: skip


if __name__ == "__main__":
    main()
