"""Randomisation check (Adebayo et al., 2018) for the 3D pipeline: two explain runs compared.

    # a classifier that never learned: one Adam step at learning rate 0 (sets BatchNorm
    # statistics only), and a simulator trained against it with the same settings
    jaxinterp train --config brain3d_32 --workdir runs/brain3d_32_random \
        --set classifier_optim.steps=1 --set classifier_optim.learning_rate=0.0
    jaxinterp explain --config brain3d_32 --workdir runs/brain3d_32_random \
        --set classifier_optim.learning_rate=0.0 \
        --table runs/cohort32/cohort.csv --out runs/brain3d_32_random/explain --ig-steps 16
    python benchmarks/randomisation3d.py --trained runs/brain3d_32/explain \
        --untrained runs/brain3d_32_random/explain --out runs/randomisation3d.json

For every scan both runs explained and every per-scan map both wrote (the simulator's
log-volume-change map and each saliency map), the NCC of the two maps inside the brain
mask, signed and of their absolute values; then the same for the group maps. A method
whose maps for the untrained classifier resemble those for the trained one explains the
image, not what the classifier learned. A method passes when its mean per-scan NCC is
below ``PASS_BELOW`` in absolute value (the two maps share less than 10% of their
variance) for the scans of each task (inject: controls, remove: patients) alike: a mean
over both can hide one direction that fails.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import jax.numpy as jnp
import nibabel as nib
import numpy as np

from jaxinterp.atomic import write_json
from jaxinterp.metrics import ncc
from train.evaluate import RANDOMISATION_PASS_BELOW as PASS_BELOW
from train.evaluate import randomisation_passes, spread


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> float:
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    m = None if mask is None or mask.shape != a.shape else jnp.asarray(mask)
    return float(ncc(jnp.asarray(a), jnp.asarray(b), mask=m))


def _scan_ids(explain_dir: Path) -> dict[str, str]:
    """``scan_id -> task`` from an explain run's scans.csv."""
    table = explain_dir / "scans.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: not found; is {explain_dir} an explain output?")
    with open(table, newline="") as f:
        return {row["scan_id"]: row["task"] for row in csv.DictReader(f)}


def compare_runs(trained: str | os.PathLike, untrained: str | os.PathLike) -> dict:
    """Per-scan and group NCC between the maps of two explain runs of the same scans.

    Returns ``{"scans": {method: spread of NCC}, "by_task": {task: {method: spread}},
    "scans_abs": {method: spread of the absolute maps' NCC}, "group": {file: NCC},
    "n_scans": int, "passes": {method: bool}}``; methods are the per-scan file stems
    (``log_volume_change``, ``saliency_gradient``, ...).
    """
    trained, untrained = Path(trained), Path(untrained)
    tasks_a, tasks_b = _scan_ids(trained), _scan_ids(untrained)
    common = sorted(set(tasks_a) & set(tasks_b))
    if not common:
        raise ValueError(f"{trained} and {untrained} explained no scan in common")
    for scan in common:
        if tasks_a[scan] != tasks_b[scan]:
            raise ValueError(
                f"scan {scan!r}: task {tasks_a[scan]!r} in {trained}, "
                f"{tasks_b[scan]!r} in {untrained}"
            )
    mask_file = trained / "group" / "brain_mask.nii.gz"
    mask = _load(mask_file) > 0 if mask_file.is_file() else None
    per_method: dict[str, list[float]] = {}
    per_task: dict[str, dict[str, list[float]]] = {}
    per_method_abs: dict[str, list[float]] = {}
    for scan in common:
        folder_a, folder_b = trained / "scans" / scan, untrained / "scans" / scan
        names = sorted(
            p.name for p in folder_a.glob("*.nii.gz")
            if (p.name == "log_volume_change.nii.gz" or p.name.startswith("saliency_"))
            and (folder_b / p.name).is_file()
        )  # fmt: skip
        for name in names:
            a, b = _load(folder_a / name), _load(folder_b / name)
            value = _ncc(a, b, mask)
            method = name.removesuffix(".nii.gz")
            per_method.setdefault(method, []).append(value)
            per_task.setdefault(tasks_a[scan], {}).setdefault(method, []).append(value)
            per_method_abs.setdefault(method, []).append(_ncc(np.abs(a), np.abs(b), mask))
    group = {}
    for path in sorted((trained / "group").glob("*.nii.gz")):
        other = untrained / "group" / path.name
        if other.is_file() and ("log_volume_change" in path.name or "saliency" in path.name):
            group[path.name.removesuffix(".nii.gz")] = _ncc(_load(path), _load(other), mask)
    scans = {method: spread(values) for method, values in per_method.items()}
    by_task = {
        task: {method: spread(values) for method, values in methods.items()}
        for task, methods in sorted(per_task.items())
    }
    passes = {
        method: randomisation_passes(t[method]["mean"] for t in by_task.values() if method in t)
        for method in scans
    }
    return {
        "trained": str(trained),
        "untrained": str(untrained),
        "n_scans": len(common),
        "scans": scans,
        "by_task": by_task,
        "scans_abs": {method: spread(values) for method, values in per_method_abs.items()},
        "group": group,
        "pass_below": PASS_BELOW,
        "passes": passes,
    }


def table(result: dict) -> str:
    tasks = list(result["by_task"])
    lines = [
        "| method | per-scan NCC, trained vs untrained (mean ± sd) | "
        + " | ".join(f"{task} scans" for task in tasks)
        + " | absolute maps | passes |",
        "|---|---|" + "---|" * len(tasks) + "---|---|",
    ]
    for method, s in result["scans"].items():
        mark = "yes" if result["passes"][method] else "no"
        cells = [
            f"{result['by_task'][task][method]['mean']:.3f}"
            if method in result["by_task"][task] else "–"
            for task in tasks
        ]  # fmt: skip
        absolute = result["scans_abs"][method]["mean"]
        lines.append(
            f"| {method} | {s['mean']:.3f} ± {s['std']:.3f} | {' | '.join(cells)} | "
            f"{absolute:.3f} | {mark} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trained", required=True, help="explain output, trained classifier")
    parser.add_argument("--untrained", required=True, help="explain output, untrained one")
    parser.add_argument("--out", help="write the result as JSON here (a new file)")
    args = parser.parse_args(argv)
    result = compare_runs(args.trained, args.untrained)
    print(table(result))
    if args.out:
        out = Path(args.out)
        if out.exists():
            raise SystemExit(f"{out}: exists; give another --out")
        write_json(out, result)


if __name__ == "__main__":
    main()
