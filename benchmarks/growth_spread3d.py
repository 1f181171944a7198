"""Does the classifier need a volume simulator's spread? Its growth maps cut down to a region.

    python benchmarks/growth_spread3d.py --config brain3d_32 --workdir runs/b32_volume \
        --table runs/cohort32_s1/cohort.csv --n 24

For a simulator with ``output='volume'`` (it draws the log volume change per voxel, the
warp follows by `jaxinterp.poisson_velocity`), take its growth maps for the first ``n``
controls (inject) and the first ``n`` patients (remove) of a synthetic cohort, keep them
only inside a truth region grown by ``k`` voxels (k = 0 .. 3), and warp the scans by the
result: once as cut (``cut``), once scaled back to the map's whole net growth
(``same total``: the same net volume change, all of it in the region). Each row gives the
median logit shift towards the other class and the mean absolute log volume change of the
warp (what the map shows; the objective's volume term charges about as much). If a
cut-down map moves the logits as far at a smaller cost, the simulator's own map is
broader than its objective asks.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from jaxinterp import synth3d
from jaxinterp.data import load_volume, read_table
from jaxinterp.jacobian import log_volume_change
from jaxinterp.losses import INJECT, REMOVE
from jaxinterp.warp import integrate_velocity, poisson_velocity, warp


def spread_rows(
    logit: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    growth: jax.Array,
    masks: dict[str, np.ndarray],
    *,
    sign: float,
    steps: int,
) -> list[dict]:
    """Median logit shift (times ``sign``) and mean |log volume change| of full and cut maps.

    Args:
      logit: images ``(N, *spatial, 1)`` -> logits ``(N,)``.
      images: ``(N, *spatial, 1)``.
      growth: ``(N, *spatial)`` log-volume-change rate per voxel.
      masks: name -> boolean ``spatial`` mask to keep the growth in.
      sign: +1 for inject (the logit should rise), -1 for remove.
      steps: scaling-and-squaring steps, as the simulator's.
    """
    base = logit(images)

    def row(name: str, g: jax.Array) -> dict:
        field = integrate_velocity(poisson_velocity(g, ndim=3), steps=steps)
        shift = sign * (logit(warp(images, field)) - base)
        return {
            "map": name,
            "median_shift": float(jnp.median(shift)),
            "mean_abs_change": float(jnp.mean(jnp.abs(log_volume_change(field)))),
        }

    rows = [row("full", growth)]
    total = growth.sum(axis=(1, 2, 3))
    for name, mask in masks.items():
        cut = growth * jnp.asarray(mask, growth.dtype)[None]
        inside = cut.sum(axis=(1, 2, 3))
        scale = jnp.where(inside != 0, total / jnp.where(inside != 0, inside, 1.0), 0.0)
        rows.append(row(f"{name}, cut", cut))
        rows.append(row(f"{name}, same total", cut * scale[:, None, None, None]))
    return rows


def main(argv: list[str] | None = None) -> None:
    from train.classifier import load_classifier
    from train.config import load_config
    from train.simulator import load_simulator

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--table", required=True, help="cohort.csv of jaxinterp synth3d")
    parser.add_argument("--region", default="ventricles", help="truth region to cut to")
    parser.add_argument("--n", type=int, default=24, help="scans per direction")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    if config.simulator.output != "volume":
        raise SystemExit("this check needs a simulator with output='volume'")
    shape = tuple(config.data.shape)
    sample = np.zeros((2, *shape, 1), np.float32)
    classifier, clf_variables = load_classifier(config, args.workdir, sample)
    simulator, sim_variables = load_simulator(config, args.workdir, sample)
    growth_of = jax.jit(lambda x, task: simulator.apply(sim_variables, x, task).growth)
    logit = jax.jit(lambda x: classifier.apply(clf_variables, x, train=False))
    regions = {r.name: r for r in synth3d.load_regions(Path(args.table).parent / "regions.json")}
    if args.region not in regions:
        raise SystemExit(f"no region {args.region!r}; the cohort has {sorted(regions)}")
    core = synth3d.region_fraction(regions[args.region], shape) > 0.5
    masks = {
        f"{args.region} + {k} voxels": scipy.ndimage.binary_dilation(core, iterations=k)
        if k else core
        for k in range(4)
    }  # fmt: skip
    scans = read_table(args.table)
    for label, task, sign, what in [(0, INJECT, 1.0, "inject"), (1, REMOVE, -1.0, "remove")]:
        chosen = [s for s in scans if s.label == label][: args.n]
        x = jnp.asarray(np.stack([load_volume(s.path, shape=shape)[0] for s in chosen]))[..., None]
        growth = growth_of(x, jnp.full(len(chosen), task))
        rows = spread_rows(
            logit, x, growth, masks, sign=sign, steps=config.simulator.integration_steps
        )
        print(f"\n{what} ({len(chosen)} scans)\n")
        print("| growth map | voxels kept | median logit shift | mean abs log volume change |")
        print("|---|---|---|---|")
        for r in rows:
            kept = "all" if r["map"] == "full" else int(masks[r["map"].split(",")[0]].sum())
            print(f"| {r['map']} | {kept} | {r['median_shift']:.2f} | {r['mean_abs_change']:.4f} |")


if __name__ == "__main__":
    main()
