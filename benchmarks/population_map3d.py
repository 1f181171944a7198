"""What a simulator's population map draws, and what its network adds, on a synthetic cohort.

    python benchmarks/population_map3d.py --config brain3d_32 --workdir runs/b32_pm \
        --set simulator.population_map=True --table runs/cohort32/cohort.csv

A simulator with ``simulator.population_map`` draws, per direction, a learned map shared
by every scan plus the network's output for that scan. For each direction that has a map
(inject on controls, remove on patients; the remove map's sign flipped so that both show
the disease's direction; with ``population_map='tied'`` remove's map is inject's,
negated) this prints: the map alone's log volume change (its growth turned into a warp as
the simulator does: `jaxinterp.poisson_velocity`, scaling and squaring) against the
cohort's group truth, as NCC over the brain and as its mean in each truth region beside
the truth's; over the first ``n`` scans of the group, the median NCC of the whole
simulator's map with the group truth, the network's share of the drawn growth (``sum
|growth - map| / sum |growth|`` over the brain, per scan), and the NCC of their mean map
with the group truth twice: each map on the simulated scan's grid (``explain
--map-frame simulated``), and located on the input scan instead (`input_frame_change`:
the value where each bit of tissue starts, not where it ends, through the exact inverse
warp; `explain` reads the map at a fixed-point inverse instead,
`jaxinterp.log_volume_change_on_input`). The truth lies on the diseased anatomy: the
simulated scan for inject, the input scan for remove (``explain``'s default frame).
``--step N`` reads the checkpoint of step N instead of the last; ``--save FOLDER`` writes
the map alone's log volume change per direction as NIfTI (for `map_profile3d.py --map`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

if not __package__:  # run as a file: find the packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.map_profile3d import brain_ncc, read_map  # noqa: E402
from jaxinterp.data import load_volume, read_table, save_nifti  # noqa: E402
from jaxinterp.jacobian import log_volume_change  # noqa: E402
from jaxinterp.nn.simulator import task_maps  # noqa: E402
from jaxinterp.warp import integrate_velocity, poisson_velocity  # noqa: E402

DIRECTIONS = ((0, "inject", 1.0), (1, "remove", -1.0))  # task, name, sign of the truth


@functools.partial(jax.jit, static_argnames="steps")
def _change(growth: jax.Array, steps: int) -> jax.Array:
    field = integrate_velocity(poisson_velocity(growth, ndim=3), steps=steps)
    return log_volume_change(field)


def map_change(growth: np.ndarray, steps: int) -> np.ndarray:
    """The log volume change ``(D, H, W)`` of the warp a drawn growth ``(D, H, W)`` makes."""
    return np.asarray(_change(jnp.asarray(growth)[None], steps))[0]


def input_frame_change(growth: np.ndarray, steps: int) -> np.ndarray:
    """The same change located on the input scan ``(N, D, H, W)`` from drawn growths
    ``(N, D, H, W)``: the value at input voxel ``y`` is the map's at ``phi^-1(y)``, where that
    tissue ends up. The warp's inverse is the flow of the negated velocity, whose log volume
    change is the map's at ``phi^-1(y)``, negated."""
    return -np.asarray(_change(-jnp.asarray(growth), steps))


def network_share(growth: np.ndarray, map_growth: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Per scan of ``growth`` ``(N, D, H, W)``: the part the network drew (``growth -
    map_growth``) as a share of the whole, in summed ``|.|`` over the brain."""
    whole = np.abs(growth[:, brain]).sum(axis=1)
    return np.abs((growth - map_growth)[:, brain]).sum(axis=1) / np.maximum(whole, 1e-12)


def main(argv: list[str] | None = None) -> None:
    from train.config import load_config
    from train.simulator import load_simulator

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True, help="holds the simulator")
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--table", required=True, help="cohort.csv of jaxinterp synth3d")
    parser.add_argument("--n", type=int, default=16, help="scans per group")
    parser.add_argument("--step", type=int, help="the checkpoint of this step (default: last)")
    parser.add_argument("--save", help="write the maps alone into this new folder")
    args = parser.parse_args(argv)
    if args.save and Path(args.save).exists():
        raise SystemExit(f"--save {args.save}: exists; give a new folder")
    config = load_config(args.config, args.set)
    if not config.simulator.population_map:
        raise SystemExit("the config's simulator has no population map (simulator.population_map)")
    shape = tuple(config.data.shape)
    cohort = Path(args.table).parent
    truth = read_map(cohort / "group_truth.nii.gz")  # the cohort's grid is the model's
    if truth.shape != shape:
        raise SystemExit(f"{args.table}: cohort grid {truth.shape}, config grid {shape}")
    masks = {p.name.split(".")[0]: p for p in sorted((cohort / "masks").glob("*.nii.gz"))}
    brain = read_map(masks.pop("brain")) > 0.5
    regions = {name: read_map(path) > 0.5 for name, path in masks.items()}
    sample = np.zeros((2, *shape, 1), np.float32)
    model, variables = load_simulator(config, args.workdir, sample, step=args.step)
    maps = np.asarray(task_maps(variables["params"]["population_map"], config.simulator))[..., 0]
    apply = jax.jit(lambda x, t: model.apply(variables, x, t))
    steps = config.simulator.integration_steps
    scans = read_table(args.table)
    if args.save:
        Path(args.save).mkdir(parents=True)
        affine = nib.load(cohort / "group_truth.nii.gz").affine
    print(f"Simulator {args.workdir}; {args.n} scans per group of {args.table}")
    for task, name, sign in DIRECTIONS:
        if task not in config.simulator.population_tasks:
            print(json.dumps({"direction": name, "map_alone": "none (the network alone)"}))
            continue
        alone = map_change(maps[task], steps)
        chosen = [s for s in scans if s.label == task][: args.n]
        x = np.stack([load_volume(s.path, shape=shape)[0] for s in chosen])
        out = apply(jnp.asarray(x[..., None]), jnp.full((len(chosen),), task))
        whole = np.asarray(log_volume_change(out.displacement))
        on_input = input_frame_change(np.asarray(out.growth), steps)
        row = {
            "direction": name,
            "map_alone_ncc": brain_ncc(sign * alone, truth, brain),
            "whole_ncc_median": float(
                np.median([brain_ncc(sign * m, truth, brain) for m in whole])
            ),
            "group_ncc": brain_ncc(sign * whole.mean(0), truth, brain),
            "group_ncc_on_input": brain_ncc(sign * on_input.mean(0), truth, brain),
            "network_share_median": float(
                np.median(network_share(np.asarray(out.growth), maps[task], brain))
            ),
            "regions_map_alone_vs_truth": {
                r: [round(float(sign * alone[m].mean()), 4), round(float(truth[m].mean()), 4)]
                for r, m in regions.items()
            },
        }
        print(json.dumps(row))
        if args.save:
            save_nifti(
                Path(args.save) / f"population_map_{name}.nii.gz",
                sign * alone,
                affine,
                description=f"population map alone, {name}: log volume change",
            )


if __name__ == "__main__":
    main()
