"""What the simulator's objective charges for its own change, and for the true disease.

    python benchmarks/truth_cost3d.py --config brain3d_32 --workdir runs/brain3d_32 --n 16

On the first ``n`` controls and ``n`` patients of the config's synthetic cohort (regenerated
from the config: ``data.kind='synth3d'`` only), compare the simulator's first pass (inject on
controls, remove on patients) with the true change (`jaxinterp.synth3d.counterfactual`: each
control given each subtype's disease at each severity, each patient healed). For each row:
the median logit shift towards the other group, and the objective's terms per direction as
`jaxinterp.objective` weighs them: the change term ``change_weight * mean|G(x) - x|`` and the
volume term ``volume_weight * mean|log volume change|`` (the objective charges ``mean|div
u|``, its first-order form, within 10% of it on the cohort's disease), and their sum per
logit of shift. Not counted: the smoothness term (below 2% of the two on `brain3d_32`) and
the cycle term, which the true change, undone exactly, does not pay at all.

If the truth moves the classifier as far as the simulator for a smaller cost, the objective
prefers the truth's map, and what separates the simulator's map from it is training, not
the objective.

    python benchmarks/truth_cost3d.py --config brain3d_32 --workdir runs/brain3d_32 \
        --free-map 0 --steps 400

optimises instead one growth map for every control, without a network (``--free-map S``: from
S times the cohort's group truth; 0 starts from nothing), by Adam on the inject objective's
hinge, change and volume terms (`free_map_objective`, the volume term's square too with
``--set objective.volume_squared_weight=W``) over batches of 8 training controls
(``--batch``), and prints every 50 steps its median shift, cost per logit and NCC with the
group truth on 32 of those controls: where plain descent on the objective goes from each start
(``--coarse F --coarse-steps K``: the first K steps on a grid F times coarser, then a fresh
Adam state at full resolution; ``--restart-at K``: the fresh state alone, on the full grid;
``--b2``: Adam's second-moment decay, 0.999 unless given; ``--optimizer sgd``: SGD with
momentum 0.9 instead of Adam, ``--learning-rate`` its rate; ``--growth-smoothness W``: a
diffusion term on the map itself, left out of the cost per logit and printed apart;
``--direction remove``: one map for every patient instead, on the remove objective, its NCC
and saved map sign-flipped to the disease's direction; ``--subtypes A B``: only those
patients). At the end it prints where the final map puts its change, split by what the
group truth does there (grows, shrinks, about nothing: `truth_level_rows`); ``--save PATH``
writes the map as NIfTI.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp import synth3d
from jaxinterp.data import save_nifti
from jaxinterp.jacobian import divergence, log_volume_change
from jaxinterp.losses import INJECT, REMOVE, smoothness_loss, task_direction
from jaxinterp.metrics import ncc
from jaxinterp.warp import integrate_velocity, poisson_velocity, warp
from train.classifier import make_optimizer
from train.config import OptimConfig


def cost_row(
    name: str,
    shift: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    volume_change: np.ndarray,
    *,
    change_weight: float,
    volume_weight: float,
) -> dict:
    """Medians over scans of the shift, the two terms and their sum per logit of shift.

    Args:
      shift: ``(N,)`` logit shifts towards the other group.
      before, after: ``(N, ...)`` images before and after the change.
      volume_change: ``(N, ...)`` log volume change of the change's warp.
    """
    axes = tuple(range(1, before.ndim))
    change = change_weight * np.mean(np.abs(after - before), axis=axes)
    volume = volume_weight * np.mean(
        np.abs(volume_change), axis=tuple(range(1, volume_change.ndim))
    )
    per_logit = (change + volume) / np.maximum(shift, 1e-3)
    return {
        "map": name,
        "n": int(shift.size),
        "median_shift": float(np.median(shift)),
        "change_term": float(np.median(change)),
        "volume_term": float(np.median(volume)),
        "cost_per_logit": float(np.median(per_logit)),
    }


def growth_field(growth: jax.Array, steps: int) -> jax.Array:
    """The warp ``(1, D, H, W, 3)`` a growth map ``(D, H, W)`` becomes, as an
    ``output='volume'`` simulator's: `poisson_velocity`, ``steps`` of scaling and squaring."""
    return integrate_velocity(poisson_velocity(growth[None], ndim=3), steps=steps)


def free_map_objective(
    growth: jax.Array,
    images: jax.Array,
    logit: Callable[[jax.Array], jax.Array],
    *,
    delta: float,
    change_weight: float,
    volume_weight: float,
    volume_squared_weight: float = 0.0,
    steps: int = 7,
    growth_smoothness: float = 0.0,
    growth_smoothness_norm: str = "l2",
    task: int = INJECT,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    """The inject objective of one growth map ``(D, H, W)`` applied to every image, or with
    ``task=REMOVE`` the remove objective (the logit is to fall: the shift is counted
    downwards, `task_direction`).

    The map becomes a warp (`growth_field`, ``steps`` of scaling and squaring); the loss is
    the hinge of `jaxinterp.objective` plus ``change_weight * mean|warped - x|`` plus
    ``volume_weight * mean|div u|`` plus ``volume_squared_weight * mean (div u)^2`` plus
    ``growth_smoothness`` times the diffusion term (`smoothness_loss`, its
    ``growth_smoothness_norm``) of the growth map itself.

    Returns:
      ``(loss, (shift, change_term, volume_term, smoothness_term))``, ``shift`` per image
      ``(N,)``.
    """
    field = growth_field(growth, steps)
    warped = warp(images, jnp.broadcast_to(field, (images.shape[0], *field.shape[1:])))
    shift = task_direction(task) * (logit(warped) - jax.lax.stop_gradient(logit(images)))
    hinge = jnp.mean(jnp.maximum(-shift, -delta))
    change = change_weight * jnp.mean(jnp.abs(warped - images))
    div = divergence(field)
    volume = volume_weight * jnp.mean(jnp.abs(div)) + volume_squared_weight * jnp.mean(div**2)
    diffusion = smoothness_loss(growth[None, ..., None], norm=growth_smoothness_norm)[0]
    smooth = growth_smoothness * diffusion
    return hinge + change + volume + smooth, (shift, change, volume, smooth)


def free_map_run(
    config,
    cohort,
    logit,
    train_images,
    start: float,
    steps: int,
    rate: float,
    *,
    coarse: int = 1,
    coarse_steps: int = 0,
    batch_size: int = 8,
    restart_at: int = 0,
    b2: float = 0.999,
    growth_smoothness: float = 0.0,
    growth_smoothness_norm: str = "l2",
    optimizer_name: str = "adam",
    task: int = INJECT,
):
    """Adam (or SGD) on `free_map_objective` from ``start`` times the group truth; prints progress.

    With ``coarse > 1`` the map is first a grid ``coarse`` times coarser, trilinearly
    upsampled, for ``coarse_steps`` steps; then the upsampled map goes on at full resolution
    (a fresh Adam state). ``restart_at > 0`` gives the map a fresh Adam state at that step
    without a change of grid: the control that tells a coarse start from a restart. ``b2``
    is Adam's second-moment decay; ``growth_smoothness`` (``_norm``) as in
    `free_map_objective`. ``optimizer_name="sgd"``: SGD with momentum 0.9 instead, whose
    steps follow the gradient's profile over the voxels where Adam's are about the same size
    at every voxel the gradient reaches. ``task=REMOVE``: the remove objective on
    ``train_images`` (patients), starting from ``-start`` times the group truth; the NCC
    printed and the map returned are then sign-flipped, so that they show the disease's
    direction as the truth does. Returns the final map's log volume change ``(D, H, W)``.
    """
    terms = {
        "delta": config.objective.delta,
        "change_weight": config.objective.change_weight,
        "volume_weight": config.objective.volume_weight,
        "volume_squared_weight": config.objective.volume_squared_weight,
        "steps": config.simulator.integration_steps,
        "growth_smoothness": growth_smoothness,
        "growth_smoothness_norm": growth_smoothness_norm,
        "task": task,
    }
    sign = task_direction(task)  # the remove map is shown in the disease's direction
    shape = cohort.group_truth.shape
    full = lambda p: p if p.shape == shape else jax.image.resize(p, shape, "trilinear")
    objective = lambda p, x: free_map_objective(full(p), x, logit, **terms)
    optimizer = make_optimizer(OptimConfig(learning_rate=rate, b2=b2, optimizer=optimizer_name))
    params = jnp.asarray(cohort.group_truth) * start * sign
    if coarse > 1:
        params = jax.image.resize(params, tuple(n // coarse for n in shape), "trilinear")
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, x):
        grads, _ = jax.grad(objective, has_aux=True)(params, x)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    probe = jnp.asarray(cohort.images[train_images[:32], ..., None])
    truth, brain = jnp.asarray(cohort.group_truth), jnp.asarray(cohort.brain_mask)
    rng = np.random.default_rng(config.seed)
    evaluate = jax.jit(objective)
    for k in range(steps + 1):
        if k == coarse_steps and params.shape != shape:
            params = full(params)
            state = optimizer.init(params)
        if k == restart_at > 0:
            state = optimizer.init(params)
        if k % 50 == 0 or k == steps:
            _, (shift, change, volume, smooth) = evaluate(params, probe)
            change_map = sign * log_volume_change(growth_field(full(params), terms["steps"]))[0]
            median = float(jnp.median(shift))
            print(
                json.dumps(
                    {
                        "step": k,
                        "grid": list(params.shape),
                        "median_shift": median,
                        "cost_per_logit": float(change + volume) / max(median, 1e-3),
                        "smoothness_term": float(smooth),
                        "ncc_signed": float(ncc(change_map, truth, mask=brain)),
                        "ncc_abs": float(ncc(jnp.abs(change_map), jnp.abs(truth), mask=brain)),
                    }
                ),
                flush=True,
            )
        if k < steps:
            batch = rng.choice(train_images, batch_size, replace=False)
            params, state = step(params, state, jnp.asarray(cohort.images[batch, ..., None]))
    return np.asarray(change_map)


def truth_level_rows(
    change_map: np.ndarray, truth: np.ndarray, brain: np.ndarray, fraction: float = 0.1
) -> list[dict]:
    """Where a log volume change map puts its change, split by what the truth does there:
    the brain voxels where the truth grows (``truth > t``), shrinks (``truth < -t``) or has
    about nothing (``|truth| <= t``), ``t = fraction * max|truth|``; each place's voxel count,
    the truth's and the map's mean, and each one's share of its summed ``|change|`` over the
    brain."""
    brain = np.asarray(brain, bool)
    truth = np.asarray(truth)
    t = fraction * np.abs(truth[brain]).max()
    places = {
        f"truth grows (> {t:.3f})": brain & (truth > t),
        f"truth shrinks (< -{t:.3f})": brain & (truth < -t),
        "truth about 0": brain & (np.abs(truth) <= t),
    }
    rows = []
    for name, where in places.items():
        share = lambda m, where=where: float(np.abs(m[where]).sum() / np.abs(m[brain]).sum())
        rows.append(
            {
                "place": name,
                "voxels": int(where.sum()),
                "truth_mean": float(truth[where].mean()),
                "map_mean": float(change_map[where].mean()),
                "truth_share": share(truth),
                "map_share": share(change_map),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    from train.classifier import load_classifier, predict_logits
    from train.config import load_config
    from train.simulator import load_simulator

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--n", type=int, default=16, help="scans per direction")
    parser.add_argument("--severities", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    parser.add_argument("--free-map", type=float, metavar="S", help="optimise one map instead")
    parser.add_argument("--steps", type=int, default=400, help="free map: Adam steps")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="free map: Adam rate")
    parser.add_argument(
        "--coarse", type=int, default=1, help="free map: start on a grid this much coarser"
    )
    parser.add_argument("--coarse-steps", type=int, default=0, help="free map: steps on that grid")
    parser.add_argument("--batch", type=int, default=8, help="free map: scans per step")
    parser.add_argument("--b2", type=float, default=0.999, help="free map: Adam's b2")
    parser.add_argument(
        "--optimizer", choices=("adam", "sgd"), default="adam", help="free map: Adam or SGD"
    )
    parser.add_argument("--save", help="free map: write its log volume change here (.nii.gz)")
    parser.add_argument(
        "--restart-at", type=int, default=0, help="free map: a fresh Adam state at this step"
    )
    parser.add_argument(
        "--growth-smoothness",
        type=float,
        default=0.0,
        help="free map: weight of a diffusion term on the growth map itself",
    )
    parser.add_argument("--growth-smoothness-norm", choices=("l1", "l2"), default="l2")
    parser.add_argument(
        "--direction",
        choices=("inject", "remove"),
        default="inject",
        help="free map: inject on the controls, or remove on the patients",
    )
    parser.add_argument(
        "--subtypes", nargs="+", help="free map, remove: only the patients of these subtypes"
    )
    args = parser.parse_args(argv)
    if args.save and Path(args.save).exists():  # refused before the run, not after it
        raise SystemExit(f"--save {args.save}: the file exists; give a new path")
    config = load_config(args.config, args.set)
    if config.data.kind != "synth3d":
        raise SystemExit("this check regenerates a synthetic cohort: data.kind must be 'synth3d'")
    cohort = synth3d.make_cohort(
        n_controls=config.data.n_per_group,
        n_patients=config.data.n_per_group,
        shape=tuple(config.data.shape),
        regions=config.data.regions,
        seed=config.seed,
    )
    sample = cohort.images[:2, ..., None]
    classifier, clf_variables = load_classifier(config, args.workdir, sample)
    if args.free_map is not None:  # on the scans the classifier trained on
        split = json.loads((Path(args.workdir) / "classifier" / "split.json").read_text())
        trained = set(split["train"])
        label = 0 if args.direction == "inject" else 1
        chosen = [
            i for i, s in enumerate(cohort.subjects) if s in trained and cohort.labels[i] == label
        ]
        if args.subtypes:
            if args.direction == "inject":
                raise SystemExit("--subtypes chooses patients: it needs --direction remove")
            unknown = set(args.subtypes) - set(cohort.subtypes)
            if unknown:
                raise SystemExit(f"--subtypes: {sorted(unknown)} not in the cohort's subtypes")
            chosen = [i for i in chosen if cohort.subtypes[i] in args.subtypes]
        if len(chosen) < args.batch:
            raise SystemExit(
                f"--free-map: {len(chosen)} training scans to choose from, fewer than --batch "
                f"{args.batch}"
            )
        logit = lambda x: classifier.apply(clf_variables, x, train=False)
        change_map = free_map_run(
            config,
            cohort,
            logit,
            np.array(chosen),
            args.free_map,
            args.steps,
            args.learning_rate,
            coarse=args.coarse,
            coarse_steps=args.coarse_steps,
            batch_size=args.batch,
            restart_at=args.restart_at,
            b2=args.b2,
            growth_smoothness=args.growth_smoothness,
            growth_smoothness_norm=args.growth_smoothness_norm,
            optimizer_name=args.optimizer,
            task=INJECT if args.direction == "inject" else REMOVE,
        )
        print(
            "\n| place | voxels | truth mean | map mean | share of the truth's abs | of the map's |"
        )
        print("|---|---|---|---|---|---|")
        for r in truth_level_rows(change_map, cohort.group_truth, cohort.brain_mask):
            print(
                f"| {r['place']} | {r['voxels']} | {r['truth_mean']:.3f} | {r['map_mean']:.3f} "
                f"| {r['truth_share']:.2f} | {r['map_share']:.2f} |"
            )
        if args.save:
            save_nifti(
                args.save, change_map, cohort.affine, description="free map: log volume change"
            )
        return
    simulator, sim_variables = load_simulator(config, args.workdir, sample)
    simulate = jax.jit(lambda x, task: simulator.apply(sim_variables, x, task))
    logits = lambda images: predict_logits(classifier, clf_variables, images[..., None])
    weights = {
        "change_weight": config.objective.change_weight,
        "volume_weight": config.objective.volume_weight,
    }
    n_controls = config.data.n_per_group
    for label, task, sign, what in [(0, INJECT, 1.0, "inject"), (1, REMOVE, -1.0, "remove")]:
        index = np.arange(args.n) + (0 if label == 0 else n_controls)
        x = cohort.images[index]
        raw = logits(x)
        out = simulate(jnp.asarray(x)[..., None], jnp.full(args.n, task))
        simulated = np.asarray(out.image)[..., 0]
        change = np.asarray(log_volume_change(out.displacement))
        shift = sign * (logits(simulated) - raw)
        rows = [cost_row("simulator", shift, x, simulated, change, **weights)]
        if label == 0:
            for subtype in cohort.targets:
                for severity in args.severities:
                    pairs = [
                        synth3d.counterfactual(cohort, int(i), subtype=subtype, severity=severity)
                        for i in index
                    ]
                    true = np.stack([p[0] for p in pairs])
                    rows.append(
                        cost_row(
                            f"truth: {subtype}, severity {severity}",
                            sign * (logits(true) - raw),
                            x,
                            true,
                            np.stack([p[1] for p in pairs]),
                            **weights,
                        )
                    )
        else:
            # Healing undoes each patient's own disease: its log volume change, negated.
            healed = np.stack(
                [synth3d.counterfactual(cohort, int(i), subtype=None)[0] for i in index]
            )
            healed_shift = sign * (logits(healed) - raw)
            subtypes = np.array([cohort.subtypes[i] for i in index])
            for subtype in dict.fromkeys(subtypes):
                k = subtypes == subtype
                rows.append(
                    cost_row(
                        f"simulator, {subtype}", shift[k], x[k], simulated[k], change[k], **weights
                    )
                )
                rows.append(
                    cost_row(
                        f"truth: {subtype} healed",
                        healed_shift[k],
                        x[k],
                        healed[k],
                        cohort.truth[index[k]],
                        **weights,
                    )
                )
        print(f"\n{what} ({args.n} scans; medians)\n")
        print(
            "| change | median logit shift | change term | volume term "
            "| (change + volume) per logit"
            " |"
        )
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['map']} | {r['median_shift']:.2f} | {r['change_term']:.4f} | "
                f"{r['volume_term']:.4f} | {r['cost_per_logit']:.5f} |"
            )


if __name__ == "__main__":
    main()
