"""How a 3D classifier answers finite growth in each half of a region, against its gradient.

    python benchmarks/growth_halves3d.py --config brain3d_32 --workdir runs/b32 \
        --table runs/cohort32/cohort.csv --n 32 --axis 1 \
        --map runs/b32/explain/group/log_volume_change_inject_mean.nii.gz

A growth map (the cohort's group truth, and each ``--map``: e.g. a simulator's group map)
is cut to the voxels near a truth region (bands 0-3 of `map_profile3d.py`), then to the
half of lower and of higher index along ``--axis`` (split at the region's centre), scaled
by each of ``--scales`` and drawn into the first ``n`` controls as an ``output='volume'``
simulator draws it (`jaxinterp.warp.poisson_velocity`, scaling and squaring, the warp).
The table gives the mean logit shift of each part at each scale, the drawn volume (the
part's summed log volume change at scale 1), and the first-order prediction of the shift
at scale 1 from the classifier's growth gradient (`growth_sensitivity3d.py`), so one can
read whether the classifier moves more per unit of growth in one half than the other, and
whether that is in its first-order response or only in what finite growth does to it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if not __package__:  # run as a file: find the packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.growth_sensitivity3d import (  # noqa: E402
    add_cohort_arguments,
    first_scans,
    growth_sensitivity,
    load_cohort,
)
from benchmarks.map_profile3d import read_map, region_parts  # noqa: E402
from jaxinterp.warp import integrate_velocity, poisson_velocity, warp  # noqa: E402


def drawn_shifts(
    logit, images: jax.Array, growths, *, scales, steps: int, mode: str, chunk: int = 8
) -> list[list[float]]:
    """For each growth map of ``growths`` and each ``s`` in ``scales``, the mean over
    ``images`` ``(N, *spatial, 1)`` of ``logit(warp(x, field(s * growth))) - logit(x)``, the
    field as an ``output='volume'`` simulator's."""
    ndim = images.ndim - 2

    @jax.jit
    def shift(x, g):
        field = integrate_velocity(poisson_velocity(g[None], ndim=ndim), steps=steps)
        field = jnp.broadcast_to(field, (x.shape[0], *field.shape[1:]))
        return jnp.sum(logit(warp(x, field, mode=mode)) - logit(x))

    def mean_shift(g):
        parts = [float(shift(images[i : i + chunk], g)) for i in range(0, len(images), chunk)]
        return sum(parts) / len(images)

    return [[mean_shift(jnp.asarray(s * g, jnp.float32)) for s in scales] for g in growths]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cohort_arguments(parser)
    parser.add_argument("--axis", type=int, default=1, help="the axis to cut the region along")
    parser.add_argument("--n", type=int, default=32, help="controls to draw into")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--map", action="append", default=[], help="a growth map (NIfTI) too")
    args = parser.parse_args(argv)
    setup = load_cohort(args)
    config, shape, logit = setup.config, setup.shape, setup.logit
    if not 0 <= args.axis < len(shape):
        raise SystemExit(f"--axis {args.axis}: the grid has axes 0-{len(shape) - 1}")
    maps = {"group truth": setup.truth}
    for path in args.map:
        map_ = maps[Path(path).name] = read_map(path)
        if map_.shape != shape:
            raise SystemExit(f"{path}: shape {map_.shape}, the grid {shape}")
    x = first_scans(args.table, 0, args.n, shape)
    steps = config.simulator.integration_steps
    gradient = growth_sensitivity(logit, x, steps=steps)
    parts = region_parts(setup.brain, setup.region, args.axis)
    print(f"Classifier {args.workdir}; {len(x)} controls of {args.table}")
    print(f"Near {args.region} (bands 0-3), halves along axis {args.axis} at its centre")
    print("| map | part | drawn volume | " + " | ".join(f"shift at x{s:g}" for s in args.scales)
          + " | shift per volume at x1 | first-order shift at x1 |")  # fmt: skip
    print("|---" * (len(args.scales) + 5) + "|")
    growths = [np.where(mask, map_, 0.0) for map_ in maps.values() for mask in parts.values()]
    shifts = drawn_shifts(
        logit, x, growths, scales=[1.0, *args.scales], steps=steps, mode=config.simulator.warp_mode
    )
    rows = [(name, part) for name in maps for part in parts]
    for (name, part), growth, (at_one, *scaled) in zip(rows, growths, shifts):
        volume = float(growth.sum())
        cells = [f"{volume:.1f}", *(f"{v:+.2f}" for v in scaled)]
        cells += [f"{at_one / volume:+.3f}", f"{float((gradient * growth).sum()):+.2f}"]
        print(f"| {name} | {part} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
