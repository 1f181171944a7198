"""Where a 3D classifier responds to growth: the gradient of its logit in a growth map.

    python benchmarks/growth_sensitivity3d.py --config brain3d_32 --workdir runs/b32 \
        --table runs/cohort32/cohort.csv --n 32

The first-order question behind every simulator of ``output='volume'``: if a growth map
``g`` (log volume change per voxel) is drawn into a scan the way the simulator draws it
(`jaxinterp.warp.poisson_velocity`, scaling and squaring, the warp), how does the
classifier's logit change? Its gradient in ``g`` at ``g = 0`` (`jaxinterp.saliency.
growth_gradient`, also an `explain` baseline), averaged over the first ``n``
controls (``inject``) and the first ``n`` patients (``remove``) of a `jaxinterp synth3d`
cohort, is a map of where growth moves the classifier towards the patients (positive) and
where shrinkage does (negative). The simulator's objective buys logit shift at a cost per
voxel, and a first step of growth buys little where this map is small. The table gives,
for the cohort's group truth and each map, the mean by distance from a truth region (as
`map_profile3d.py`, each row divided by its inside mean), the far band's share of the
map's |value| and spread, and the NCC with the group truth over the brain, also with the
far band set to 0. ``--explain`` adds a simulator's group maps and the correlation of their
far band with this map's: how much of the simulator's ripple over the brain is the
classifier's own response. ``--save DIR`` writes the two maps as NIfTI (a new folder).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import SimpleNamespace

if not __package__:  # run as a file: find the packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.map_profile3d import (  # noqa: E402
    band_masks,
    distance_profile,
    group_maps,
    read_map,
)
from jaxinterp.data import load_volume, read_table, save_nifti  # noqa: E402
from jaxinterp.saliency import growth_gradient  # noqa: E402


def growth_sensitivity(logit, images: jax.Array, *, steps: int, chunk: int = 8) -> np.ndarray:
    """The mean over ``images`` of their `jaxinterp.saliency.growth_gradient` maps.

    Args:
      logit: images ``(N, *spatial, 1)`` -> logits ``(N,)``.
      images: ``(N, *spatial, 1)``.
      steps: scaling-and-squaring steps, as the simulator's.
      chunk: images per gradient evaluation (memory).
    """
    maps = jax.jit(lambda x: jnp.sum(growth_gradient(logit, x, steps=steps), axis=0))
    parts = [np.asarray(maps(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    return np.sum(parts, axis=0) / len(images)


def add_cohort_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that name a classifier and a `jaxinterp synth3d` cohort (`load_cohort`)."""
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True, help="holds the classifier")
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--table", required=True, help="cohort.csv of jaxinterp synth3d")
    parser.add_argument("--region", default="ventricles", help="mask name in the cohort's masks")


def load_cohort(args: argparse.Namespace) -> SimpleNamespace:
    """From `add_cohort_arguments`' arguments: ``config``, its grid ``shape``, the cohort
    folder, its group ``truth``, ``brain`` and ``region`` masks (boolean), and the trained
    classifier as ``logit`` (images ``(N, *spatial, 1)`` -> ``(N,)``). Exits with a message
    when the cohort's grid is not the config's."""
    from train.classifier import load_classifier
    from train.config import load_config

    config = load_config(args.config, args.set)
    shape = tuple(config.data.shape)
    cohort = Path(args.table).parent
    truth = read_map(cohort / "group_truth.nii.gz")
    if truth.shape != shape:
        raise SystemExit(f"{args.table}: cohort grid {truth.shape}, config grid {shape}")
    classifier, variables = load_classifier(config, args.workdir, np.zeros((2, *shape, 1)))
    return SimpleNamespace(
        config=config,
        shape=shape,
        cohort=cohort,
        truth=truth,
        brain=read_map(cohort / "masks" / "brain.nii.gz") > 0.5,
        region=read_map(cohort / "masks" / f"{args.region}.nii.gz") > 0.5,
        logit=lambda x: classifier.apply(variables, x, train=False),
    )


def first_scans(table: str | Path, label: int, n: int, shape: tuple[int, ...]) -> jax.Array:
    """The first ``n`` scans of ``label`` in a cohort table, ``(N, *shape, 1)``."""
    chosen = [s for s in read_table(table) if s.label == label][:n]
    return jnp.asarray(np.stack([load_volume(s.path, shape=shape)[0] for s in chosen]))[..., None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cohort_arguments(parser)
    parser.add_argument("--n", type=int, default=32, help="scans per group")
    parser.add_argument("--explain", help="a `jaxinterp explain` output to compare")
    parser.add_argument("--save", help="write the maps into this new folder")
    args = parser.parse_args(argv)
    if args.save and Path(args.save).exists():
        raise SystemExit(f"--save {args.save}: exists; give a new folder")
    setup = load_cohort(args)
    config, cohort, truth, brain, region = (
        setup.config, setup.cohort, setup.truth, setup.brain, setup.region
    )  # fmt: skip
    maps = {"group truth": truth}
    for label, name in ((0, "inject (controls)"), (1, "remove (patients)")):
        x = first_scans(args.table, label, args.n, setup.shape)
        maps[name] = growth_sensitivity(setup.logit, x, steps=config.simulator.integration_steps)
    if args.explain:
        for direction, map_ in group_maps(args.explain).items():
            maps[f"simulator, {direction}"] = map_
    names = ["inside", "1 voxel", "2 voxels", "3 voxels", "far"]
    print(f"Classifier {args.workdir}; {args.n} scans per group of {args.table}")
    print(f"Distance from {args.region} ({region.sum()} voxels), over {brain.sum()} brain voxels")
    print(
        "| map | "
        + " | ".join(f"{n} / inside" for n in names[1:])
        + " | far share of abs | far std / inside | NCC with truth | NCC, far band 0 |"
    )
    print("|---" * (len(names) + 4) + "|")
    for name, map_ in maps.items():
        p = distance_profile(map_, truth, brain, region)
        inside = p["bands"][0]["mean"]
        cells = [f"{b['mean'] / inside:+.2f}" for b in p["bands"][1:]]
        cells += [f"{p['bands'][-1]['share']:.2f}", f"{p['far_std'] / abs(inside):.3f}"]
        cells += [f"{p['ncc']:.3f}", f"{p['ncc_far_zeroed']:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.explain:
        far = band_masks(brain, region)[-1]
        for direction, source in (("inject", "inject (controls)"), ("remove", "remove (patients)")):
            r = np.corrcoef(maps[f"simulator, {direction}"][far], maps[source][far])[0, 1]
            print(f"far band: simulator {direction} against the classifier's map: r = {r:.2f}")
    if args.save:
        Path(args.save).mkdir(parents=True)
        affine = nib.load(cohort / "group_truth.nii.gz").affine
        for name, stem in (("inject (controls)", "inject"), ("remove (patients)", "remove")):
            save_nifti(
                Path(args.save, f"growth_sensitivity_{stem}.nii.gz"),
                maps[name].astype(np.float32),
                affine,
                description=f"d logit / d growth, {stem}",
            )


if __name__ == "__main__":
    main()
