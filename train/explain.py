"""Explain a trained classifier on a scan table: per-scan warps, group maps, baselines, regions.

    jaxinterp explain --config brain3d_32 --workdir runs/brain3d_32 \\
        --table data/cohort.csv --out runs/brain3d_32/explain --atlas atlas.nii.gz

Every scan of the table (`jaxinterp.data.read_table`) is loaded onto the config's model
grid (`jaxinterp.data.load_volume`, ``config.data.shape``, RAS+ axis order, z-scored) and
given to the trained simulator with the task of its group: controls (label 0) get the
disease injected (task 0), patients (label 1) get it removed (task 1). What comes out:

- the simulated image, ``simulated(x) = image(x + u(x))`` (pull-back, trilinear; outside
  the volume as ``config.simulator.warp_mode`` says);
- the displacement field ``u`` as a 4D NIfTI ``(X, Y, Z, 3)``: component ``k`` is the
  displacement along model-grid array axis ``k`` (R, A, S after reorientation), in MODEL
  VOXELS, pull-back convention (stated in the header's ``descrip``);
- the explanation map, the log volume change ``-log det(I + du/dx)``
  (`jaxinterp.log_volume_change`): positive = the tissue grew, negative = it shrank. It is
  located on the DISEASED anatomy (``map_frame="diseased"``, ``--map-frame``): for a
  control, on the simulated image (where the tissue ends up); for a patient, on the
  patient's own scan (where the tissue starts: the map read at the inverse warp,
  `jaxinterp.log_volume_change_on_input`), so that both directions are read, averaged and
  scored where the disease is and where a synthetic cohort's truth lies. ``"simulated"``
  puts both on the simulated image (the paper's reading), ``"input"`` both on the scan
  given; ``scans.csv`` says per scan (``map_on``);
- the classifier's logits of the scan, of its simulation and of the simulation sent back
  (cycled), and the fraction of voxels where the warp folds, in ``scans.csv``.

All maps lie on the model grid and carry the model-grid affine of `load_volume`, so they
overlay the input in world space whatever the scan's on-disk orientation. With
``native=True`` each scan also gets its maps resampled onto its own native grid
(`jaxinterp.data.resample_to_native`); there the displacement is stored in world mm along
the world (R, A, S) axes, since native voxel axes may be permuted or flipped.

Group maps. The mean and the one-sample t map of the log-volume-change maps, per
direction (controls: inject; patients: remove), are taken VOXEL BY VOXEL ON THE MODEL
GRID: the scans are assumed to be in one template space already (affinely aligned, as the
synthetic cohort of `jaxinterp.synth3d` is). Scans whose model grids differ are averaged
anyway, with a warning. With ``register_to_template=True`` (``--register``; as the paper
did) every scan is first registered non-rigidly to a template (`jaxinterp.register`; the
MNI152 T1 shipped with nilearn unless ``template`` names another NIfTI), loaded onto the
model grid like the scans; each scan's maps (log volume change and saliency alike) are
brought to the template, ``map(x + u(x))``, before they are averaged, and the field ``u``
is written as ``to_template.nii.gz``.

Baselines. Per scan and per group (mean of the signed maps and mean of the absolute maps)
with the same writer: the saliency methods of `jaxinterp.saliency` (`METHODS`, a choice;
``growth_gradient`` draws its growth with the simulator's ``integration_steps``),
and optionally the paper's group-level occlusion: an 8^3 window with stride 4 at 64^3,
scaled with the grid, filled with the mean control image (0 after z-scoring would light up
the brain's edge), scored by the drop in the classifier's accuracy over the table's scans.

Ensembles. With ``ensemble`` (``--ensemble SEED ...``), the simulators trained against the
same classifier with those ``simulator_seed`` values (`train.simulator.simulator_folder`:
``simulator_seed{N}`` in the workdir) join the config's own simulator: each scan's
``log_volume_change`` map is the mean of the members' maps, and so are its logits
(simulated and cycled) and folding fraction; ``max_displacement`` is the largest of the
members'; the simulated image and the displacement field written are the first member's.

Smoothing. With ``smooth_fwhm`` (mm, ``--smooth-fwhm``) every scan's maps (log volume
change and saliency) are smoothed with a Gaussian kernel of that full width at half
maximum (`nilearn.image.smooth_img`, the kernel in mm along each axis of the scan's
model grid) before they are averaged into group maps and scored against a truth, as
tensor-based and voxel-based morphometry smooth Jacobian and tissue maps before group
statistics; the occlusion map and the intensity-difference reference are smoothed alike,
the truth is not. The per-scan files and the regional means stay unsmoothed.

Regions. Given an atlas (a NIfTI label image, resampled nearest-neighbour onto the model
grid), the mean log volume change per region and scan (``regions.csv``) and, per region,
an ordinary-least-squares test ``value ~ 1 + group + covariates`` (``region_stats.csv``).
Since controls are warped towards disease and patients away from it, a region the
classifier relies on shows opposite signs in the two groups.

Truth. When the table is a synthetic cohort written by `jaxinterp.synth3d.write_cohort`,
every map is scored against the known answer (`train.evaluate.evaluate_maps`) in
``evaluation.json``, which also says which truth regions the classifier uses
(`train.evaluate.region_use`: the region filled with the mean control image in the
patients that carry it; a region the classifier ignores is no fair target for a map).

Output layout (``out_dir``; written into a temporary folder beside it and renamed, so
``out_dir`` is complete or absent; ``COMPLETE`` is its last file)::

    explain.json                 settings, summary, conventions, the checkpoint steps used
    scans.csv                    one row per scan: ids, logits, folding, covariates
    scans/<id>/simulated.nii.gz, displacement.nii.gz, log_volume_change.nii.gz,
              saliency_<method>.nii.gz, native/...   (native=True),
              to_template.nii.gz                     (--register)
    group/log_volume_change_{inject,remove}_{mean,t}.nii.gz
    group/saliency_<method>_{control,patient}_{mean,absmean}.nii.gz
    group/occlusion_accuracy_drop.nii.gz, mean_image{,_control,_patient}.nii.gz,
          template.nii.gz (--register),
          intensity_difference.nii.gz, brain_mask.nii.gz, truth.nii.gz (synthetic)
    regions.csv, region_stats.csv   (with an atlas)
    evaluation.json                 (synthetic cohort)
    COMPLETE
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import math
import os
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import nibabel as nib
import nibabel.processing
import numpy as np
from tqdm import tqdm

from jaxinterp import saliency
from jaxinterp.atomic import jsonable, new_folder_beside, publish, write_json, write_text
from jaxinterp.data import DataError, Scan, VolumeInfo, load_volume, read_table, save_nifti
from jaxinterp.data import resample_to_native as _resample_to_native
from jaxinterp.jacobian import folding_fraction, log_volume_change, log_volume_change_on_input
from jaxinterp.losses import INJECT, REMOVE
from jaxinterp.nn import Classifier
from jaxinterp.nn.simulator import IMAGE_OUTPUTS
from jaxinterp.register import RegistrationConfig, register, to_template
from jaxinterp.stats import benjamini_hochberg, ols_group_test, one_sample_t
from jaxinterp.synth3d import template_paths
from train import loop
from train.classifier import load_classifier
from train.config import TrainConfig, add_config_arguments, to_dict
from train.evaluate import evaluate_maps, region_use, score_map, spearman
from train.simulator import load_simulator, simulator_folder, simulator_seed

__all__ = [
    "DEFAULT_METHODS",
    "HELP",
    "METHODS",
    "add_arguments",
    "explain",
    "occlusion_geometry",
    "read_atlas_names",
    "run",
    "scan_ids",
]

METHODS = (
    "gradient",
    "gradient_times_input",
    "guided_backprop",
    "grad_cam",
    "guided_grad_cam",
    "integrated_gradients",
    "growth_gradient",  # the logit's gradient in a growth map (the simulator's language)
)
DEFAULT_METHODS = METHODS
# (label, group name, task name, task code): controls get the disease injected.
GROUPS = ((0, "control", "inject", INJECT), (1, "patient", "remove", REMOVE))
MANIFEST = "explain.json"
MARKER = "COMPLETE"
KIND = "jaxinterp-explain"

# NIfTI descrip fields (at most 80 ASCII bytes each).
FIELD_DESCRIP = "u in model voxels, comp k = array axis k; pull-back sim(x)=img(x+u(x))"
NATIVE_FIELD_DESCRIP = "u in world mm along R,A,S; pull-back sim(x)=img(x+u(x))"
LVC_DESCRIP = {  # per frame of the map (MAP_FRAMES)
    "simulated": "log volume change -log det(I+du/dx) on the simulated image; + = grew",
    "input": "log volume change on the input scan (map at the inverse warp); + = grew",
}
# Where each direction's map lies: (inject, remove), each "simulated" or "input".
MAP_FRAMES = {
    "diseased": ("simulated", "input"),
    "simulated": ("simulated", "simulated"),
    "input": ("input", "input"),
}
TEMPLATE_FIELD_DESCRIP = "template->scan, model voxels; scan(x+u(x)) ~ template(x)"
SIMULATED_DESCRIP = "simulated image (z-scored units), {task} by jaxinterp simulator"

_CONVENTIONS = {
    "grid": "maps on the model grid of load_volume (RAS+ axes, affine voxel -> world mm)",
    "displacement": "(X, Y, Z, 3), model voxels, component k along array axis k; pull-back: "
    "simulated(x) = image(x + u(x)); native/ fields: world mm along R, A, S",
    "log_volume_change": "-log det(I + du/dx): positive = tissue grew, negative = shrank; "
    "located per map_frame: on the simulated image (where the tissue ends up) or on the "
    "input scan (where it starts: the map read at y + w(y), w the inverse warp)",
    "tasks": "controls (label 0): inject disease (task 0); patients (label 1): remove (task 1)",
    "logits": "positive = diseased; logit_shift = (simulated - raw) * (+1 inject, -1 remove)",
    "group_maps": "voxel-wise mean and one-sample t (t = 0 where the std is 0) on the model "
    "grid; without registration the scans are assumed affinely aligned to one template; with "
    "it each scan's maps are sampled at x + u(x) of its to_template field first",
    "saliency": "signed maps, positive raises the logit (jaxinterp.saliency); absmean = mean "
    "of absolute maps; integrated gradients from the mean control image",
    "occlusion": "drop in accuracy over the table's scans when a window is filled with the "
    "mean control image; each voxel: mean drop over the windows covering it",
}


def occlusion_geometry(shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The paper's occlusion window (8^3) and stride (4) at 64^3, scaled to ``shape``.

    Per axis ``window = max(1, round(8 * s / 64))`` and ``stride = max(1, round(4 * s /
    64))``: 4 and 2 at 32^3, 2 and 1 at 16^3.
    """
    window = tuple(max(1, round(8 * s / 64)) for s in shape)
    stride = tuple(max(1, round(4 * s / 64)) for s in shape)
    return window, stride


def _occlusion_geometry(shape, window, stride) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`occlusion_geometry` with optional overrides, checked."""
    defaults = occlusion_geometry(shape)
    out = []
    for value, default, name in zip((window, stride), defaults, ("window", "stride")):
        if value is None:
            out.append(default)
            continue
        value = (int(value),) * len(shape) if isinstance(value, int) else tuple(map(int, value))
        if len(value) != len(shape) or min(value) < 1:
            raise ValueError(
                f"occlusion {name} must be a positive int or {len(shape)} of them, got {value}"
            )
        out.append(value)
    if any(w > s for w, s in zip(out[0], shape)):
        raise ValueError(f"occlusion window {out[0]} is larger than the grid {tuple(shape)}")
    return out[0], out[1]


class _Moments:
    """Running voxel-wise sums of maps (float64), for means and t maps."""

    def __init__(self, shape: Sequence[int]):
        self.n = 0
        self.total = np.zeros(shape, np.float64)
        self.total_sq = np.zeros(shape, np.float64)

    def add(self, value: np.ndarray) -> None:
        value = np.asarray(value, np.float64)
        self.n += 1
        self.total += value
        self.total_sq += value * value

    def mean_t(self) -> tuple[np.ndarray, np.ndarray]:
        return one_sample_t(self.total, self.total_sq, self.n)


# ------------------------------------------------------------------------------ inference


def _simulate_fn(simulator, classifier, map_frame: str):
    """Jitted ``(sim_vars, clf_vars, images (N, D, H, W), tasks (N,)) -> dict of arrays``;
    each task's map located as `MAP_FRAMES` ``[map_frame]`` says."""
    on_input = [frame == "input" for frame in MAP_FRAMES[map_frame]]  # per task code

    def fn(sim_variables, clf_variables, images, tasks):
        x = images[..., None]
        out = simulator.apply(sim_variables, x, tasks, train=False)
        field = out.displacement.astype(jnp.float32)
        change = log_volume_change(field)
        if any(on_input):
            select = jnp.asarray(on_input)[tasks].reshape(-1, 1, 1, 1)
            change = jnp.where(select, log_volume_change_on_input(field), change)
        simulated = out.image.astype(jnp.float32)
        back = simulator.apply(sim_variables, simulated, 1 - tasks, train=False)
        n = images.shape[0]
        stacked = jnp.concatenate([x, simulated, back.image.astype(jnp.float32)])
        logits = classifier.apply(clf_variables, stacked, train=False)
        return {
            "simulated": simulated[..., 0],
            "displacement": field,
            "log_volume_change": change,
            "folding_fraction": folding_fraction(field),
            "max_displacement": jnp.max(jnp.linalg.norm(field, axis=-1), axis=(1, 2, 3)),
            "logit_raw": logits[:n],
            "logit_simulated": logits[n : 2 * n],
            "logit_cycled": logits[2 * n :],
        }

    return jax.jit(fn)


def _ensemble_mean(results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One `_simulate_fn` result from an ensemble's (see the module docstring)."""
    out = dict(results[0])
    if len(results) > 1:
        for key in ("log_volume_change", "folding_fraction", "logit_simulated", "logit_cycled"):
            out[key] = np.mean([r[key] for r in results], axis=0)
        out["max_displacement"] = np.max([r["max_displacement"] for r in results], axis=0)
    return out


def _saliency_fn(classifier, methods: tuple[str, ...], ig_steps: int, growth_steps: int):
    """Jitted ``(clf_vars, images (N, D, H, W), baseline (D, H, W)) -> {method: maps}``;
    ``growth_steps``: the scaling-and-squaring steps of ``growth_gradient``."""
    cfg, dtype = classifier.config, classifier.dtype

    def fn(variables, images, baseline):
        x = images[..., None]
        logit_fn = lambda z: classifier.apply(variables, z)
        make_logit_fn = lambda act: (
            lambda z: Classifier(cfg, activation=act, dtype=dtype).apply(variables, z)
        )
        features_fn = lambda z: classifier.apply(variables, z, method=Classifier.features)
        head_fn = lambda f: classifier.apply(variables, f, method=Classifier.head)
        maps = {}
        for method in methods:
            if method == "gradient":
                maps[method] = saliency.vanilla_gradient(logit_fn, x)
            elif method == "gradient_times_input":
                maps[method] = saliency.gradient_times_input(logit_fn, x)
            elif method == "guided_backprop":
                maps[method] = saliency.guided_backprop(make_logit_fn, x)
            elif method == "grad_cam":
                maps[method] = saliency.grad_cam(features_fn, head_fn, x)
            elif method == "guided_grad_cam":
                maps[method] = saliency.guided_grad_cam(make_logit_fn, features_fn, head_fn, x)
            elif method == "integrated_gradients":
                maps[method] = saliency.integrated_gradients(
                    logit_fn, x, baseline=baseline[..., None], steps=ig_steps
                )
            elif method == "growth_gradient":
                maps[method] = saliency.growth_gradient(logit_fn, x, steps=growth_steps)
        return {k: v.astype(jnp.float32) for k, v in maps.items()}

    return jax.jit(fn)


def _occlusion_fn(classifier, window, stride):
    """Jitted ``(clf_vars, images, labels, fill) -> (N, D, H, W)`` accuracy drops."""

    def fn(variables, images, labels, fill):
        def correct(z):
            return ((classifier.apply(variables, z) > 0) == (labels == 1)).astype(jnp.float32)

        return saliency.occlusion(
            correct,
            images[..., None],
            window=window,
            stride=stride,
            fill=fill[..., None],
            spread=True,
        )

    return jax.jit(fn)


def _batches(n: int, batch_size: int):
    """``(indices, padded)``: each batch's scans and its indices padded to ``batch_size``
    by repeating the last, so every call of a jitted function has one shape."""
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        yield idx, np.concatenate([idx, np.full(batch_size - idx.size, idx[-1])])


# ------------------------------------------------------------------------------ inputs


def scan_ids(scans: Sequence[Scan]) -> list[str]:
    """A file-safe, unique folder name per scan: the subject (sanitised), plus ``_scanK``
    when the subject has several scans (K-th in table order), plus ``_lineL`` if names
    still collide."""
    counts = Counter(s.subject for s in scans)
    seen: Counter[str] = Counter()
    ids: list[str] = []
    taken: set[str] = set()
    for scan in scans:
        name = re.sub(r"[^A-Za-z0-9_.+-]", "_", scan.subject)
        if not name or name.startswith("."):
            name = "_" + name
        if counts[scan.subject] > 1:
            seen[scan.subject] += 1
            name += f"_scan{seen[scan.subject]}"
        if name in taken:
            name += f"_line{scan.line}"
        taken.add(name)
        ids.append(name)
    return ids


@dataclasses.dataclass(frozen=True)
class _TruthSource:
    """Files of a synthetic cohort (`jaxinterp.synth3d.write_cohort`)."""

    root: Path
    group_truth: Path
    brain_mask: Path | None
    regions: dict[str, Path]


def _find_truth(table: Path, scans: Sequence[Scan]) -> _TruthSource | None:
    root = table.parent
    try:
        recipe = json.loads((root / "recipe.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recipe, dict) or recipe.get("dataset") != "synth3d":
        return None
    if not (root / "group_truth.nii.gz").is_file():
        return None
    if not all(isinstance(s.covariates.get("truth"), str) and s.covariates["truth"] for s in scans):
        return None
    regions = {}
    for entry in recipe.get("regions", []):
        path = root / "masks" / f"{entry.get('name')}.nii.gz"
        if path.is_file():
            regions[str(entry["name"])] = path
    brain = root / "masks" / "brain.nii.gz"
    return _TruthSource(
        root, root / "group_truth.nii.gz", brain if brain.is_file() else None, regions
    )


def _on_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray, *, order: int) -> np.ndarray:
    """A NIfTI image sampled on the model grid (as is when it already lies on it)."""
    try:
        img = nib.funcs.squeeze_image(nib.load(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc
    if len(img.shape) != 3:
        raise DataError(f"{path}: expected a 3D image, shape {img.shape}")
    if tuple(img.shape) == tuple(shape) and np.allclose(img.affine, affine, atol=1e-5):
        return np.asarray(img.get_fdata(dtype=np.float32))
    out = nibabel.processing.resample_from_to(
        img, (tuple(shape), affine), order=order, mode="constant", cval=0.0
    )
    return np.asarray(out.dataobj, np.float32)


def _read_split(model_workdir: Path) -> dict[str, str]:
    """scan path -> "train"/"test", from the classifier's ``split.json`` (if any)."""
    try:
        split = json.loads((model_workdir / "classifier" / "split.json").read_text())
    except (OSError, ValueError):
        return {}
    return {name: side for side in ("train", "test") for name in split.get(side, [])}


def read_atlas_names(path: str | os.PathLike) -> dict[int, str]:
    """Region names of an atlas from a CSV/TSV with columns ``label`` and ``name``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the atlas names ({exc})") from exc
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    rows = list(csv.DictReader(io.StringIO(text), delimiter=delimiter))
    if not rows or not {"label", "name"} <= {k.strip() for k in rows[0]}:
        raise DataError(f"{path}: the atlas names need columns 'label' and 'name'")
    names = {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items()}
        try:
            label = int(float(row["label"]))
        except ValueError as exc:
            raise DataError(f"{path}: line {line}: label {row['label']!r} is not a number") from exc
        names[label] = row["name"] or f"label_{label}"
    return names


def _design(scans: Sequence[Scan], names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Covariate columns for OLS: numeric as is, text dummy-coded (first level dropped)."""
    available = sorted({k for s in scans for k in s.covariates})
    columns, labels = [], []
    for name in names:
        if name not in available:
            raise ValueError(f"unknown covariate {name!r}; the table has {available}")
        values = [s.covariates.get(name, math.nan) for s in scans]
        if all(isinstance(v, float) for v in values):
            columns.append(np.array(values, np.float64))
            labels.append(name)
            continue
        text = [str(v) for v in values]
        for level in sorted(set(text))[1:]:
            columns.append(np.array([t == level for t in text], np.float64))
            labels.append(f"{name}={level}")
    matrix = np.column_stack(columns) if columns else np.zeros((len(scans), 0))
    return matrix, labels


# ------------------------------------------------------------------------------ writing


def _atomic_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_cell(v) for v in row] for row in rows])
    write_text(path, out.getvalue())


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "" if not math.isfinite(value) else f"{float(value):.9g}"
    return str(value)


def _is_explain_dir(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == KIND


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_symlink():
        raise FileExistsError(f"{out_dir} is a symbolic link; choose another output folder")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )
    if not _is_explain_dir(out_dir):
        raise FileExistsError(
            f"{out_dir} is not the output of `jaxinterp explain` (no {MANIFEST}); "
            "refusing to replace it"
        )


def _check_inputs_outside(out_dir: Path, inputs: Sequence[Path]) -> None:
    out = out_dir.resolve()
    for path in inputs:
        resolved = Path(path).resolve()
        if resolved == out or out in resolved.parents:
            raise ValueError(
                f"the input {path} lies inside the output folder {out_dir}; choose another "
                "output folder (inputs are never overwritten)"
            )


class _Writer:
    """Writes maps with one affine and description scheme, and records their paths."""

    def __init__(self, root: Path):
        self.root = root

    def nifti(self, rel: str, array: np.ndarray, affine: np.ndarray, description: str) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        save_nifti(path, np.asarray(array, np.float32), affine, description=description[:80])
        return rel


# ------------------------------------------------------------------------------ evaluation


# ------------------------------------------------------------------------------ explain


def explain(
    config: TrainConfig,
    model_workdir: str | os.PathLike,
    table_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    native: bool = False,
    batch_size: int = 8,
    overwrite: bool = False,
    methods: Sequence[str] = DEFAULT_METHODS,
    occlusion: bool = False,
    occlusion_window: int | Sequence[int] | None = None,
    occlusion_stride: int | Sequence[int] | None = None,
    ig_steps: int = 32,
    atlas: str | os.PathLike | None = None,
    atlas_names: Mapping[int, str] | str | os.PathLike | None = None,
    covariates: Sequence[str] = (),
    simulator_name: str | None = None,
    ensemble: Sequence[int] = (),
    evaluate: bool | None = None,
    labels: Mapping[str, int] | None = None,
    register_to_template: bool = False,
    template: str | os.PathLike | None = None,
    registration: RegistrationConfig | None = None,
    smooth_fwhm: float = 0.0,
    map_frame: str = "diseased",
) -> dict[str, Any]:
    """Explains the classifier of ``model_workdir`` on every scan of a table.

    See the module docstring for what is computed and the output layout. Controls (label
    0) get the disease injected, patients (label 1) get it removed.

    Args:
      config: the config the classifier and simulator were trained with (its model
        architectures and ``data.shape``, the model grid, are used; the checkpoints must
        match it).
      model_workdir: the training workdir holding ``classifier/`` and ``simulator/``.
      table_path: a CSV/TSV scan table (`jaxinterp.data.read_table`).
      out_dir: the output folder; created (with its parents). An existing non-empty
        folder is refused unless ``overwrite``, and even then only when it holds an
        earlier explain output. No input may lie inside it.
      native: also write each scan's maps resampled onto its native grid.
      batch_size: scans per jitted inference call (the last batch is padded).
      overwrite: replace an earlier explain output at ``out_dir``.
      methods: saliency baselines, a subset of `METHODS` (empty: none).
      occlusion: also compute the group-level occlusion map (slow on a CPU: one
        classifier pass over all scans per window position).
      occlusion_window, occlusion_stride: override `occlusion_geometry` (an int or one
        per axis), e.g. a coarser stride on a CPU.
      ig_steps: Riemann steps of integrated gradients.
      atlas: a NIfTI label image (integers, 0 = background) for the regional summary.
      atlas_names: label -> region name, or a CSV/TSV with columns ``label``, ``name``.
      covariates: table columns to adjust the regional group test for (text columns are
        dummy-coded).
      simulator_name: the simulator's folder in ``model_workdir`` (default
        `simulator_folder`: ``simulator``, or ``simulator_seed{N}`` for a config with
        another ``simulator_seed``).
      ensemble: ``simulator_seed`` values of further simulators trained against the same
        classifier (folders `simulator_folder`); each scan's maps are the members' mean
        (see the module docstring).
      evaluate: score against the truth of a synthetic cohort: None = when the table is
        one, True = required (error otherwise), False = never.
      labels: label mapping passed to `read_table`.
      register_to_template: register every scan non-rigidly to ``template`` and average
        the maps there (see the module docstring).
      template: the template NIfTI (default: nilearn's MNI152 T1, as `jaxinterp.synth3d`).
      registration: the optimisation of `jaxinterp.register.register` (None: defaults).
      smooth_fwhm: FWHM in mm of the Gaussian kernel applied to every scan's maps before
        group maps and scores (see the module docstring); 0 = none.
      map_frame: where each direction's log-volume-change map lies, a key of `MAP_FRAMES`:
        ``"diseased"`` (inject on the simulated image, remove on the patient's scan),
        ``"simulated"`` (both on the simulated image) or ``"input"`` (both on the scan).

    Returns:
      The summary also written to ``out_dir/explain.json``.

    Raises:
      FileNotFoundError: ``model_workdir`` or a trained network in it is missing.
      FileExistsError: ``out_dir`` exists and may not be replaced.
      DataError: an invalid table, scan, atlas or truth file (a ``ValueError``).
      ValueError: invalid options.
    """
    methods = tuple(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown saliency method(s) {unknown}; choose from {list(METHODS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if map_frame not in MAP_FRAMES:
        raise ValueError(f"map_frame must be one of {list(MAP_FRAMES)}, got {map_frame!r}")
    if ig_steps < 1:
        raise ValueError(f"ig_steps must be >= 1, got {ig_steps}")
    simulator_name = simulator_name or simulator_folder(config)
    members = [(simulator_name, config)]
    for seed in ensemble:
        member = dataclasses.replace(config, simulator_seed=int(seed))
        if int(seed) in (simulator_seed(c) for _, c in members):
            raise ValueError(
                f"ensemble: simulator seed {seed} is already a member (the config's own "
                f"simulator has seed {simulator_seed(config)}); give each member once"
            )
        members.append((simulator_folder(member), member))
    if not (math.isfinite(smooth_fwhm) and smooth_fwhm >= 0):
        raise ValueError(f"smooth_fwhm must be a FWHM in mm >= 0, got {smooth_fwhm}")
    shape = tuple(int(s) for s in config.data.shape)
    if len(shape) != 3 or config.simulator.ndim != 3 or config.classifier.ndim != 3:
        raise ValueError("explain needs a 3D config (data.shape of 3 ints, 3D networks)")
    if config.simulator.output in IMAGE_OUTPUTS:
        raise ValueError("explain needs a simulator that outputs a field, not an image")
    geometry = _occlusion_geometry(shape, occlusion_window, occlusion_stride)
    if atlas is not None and not Path(atlas).is_file():
        raise DataError(f"{atlas}: atlas file not found")
    if template is not None and not register_to_template:
        raise ValueError("a template is only used with register_to_template=True")
    if register_to_template:
        template = Path(template) if template is not None else template_paths()["t1"]
        if not template.is_file():
            raise DataError(f"{template}: template file not found")

    model_workdir = Path(model_workdir)
    table_path = Path(table_path)
    out_dir = Path(os.path.abspath(out_dir))
    _check_out_dir(out_dir, overwrite)
    if not model_workdir.is_dir():
        raise FileNotFoundError(
            f"model workdir {model_workdir} does not exist; train first with "
            f"`jaxinterp train --config ... --workdir {model_workdir}`"
        )
    sample = np.zeros((2, *shape, 1), np.float32)
    # The latest checkpoints, read once: the steps explain.json records are the ones loaded
    # even while a training still writes to the workdir.
    steps = {
        "classifier": loop.final_step(model_workdir / "classifier"),
        "simulator": loop.final_step(model_workdir / simulator_name),
        **{name: loop.final_step(model_workdir / name) for name, _ in members[1:]},
    }
    classifier, clf_variables = load_classifier(
        config, model_workdir, sample, step=steps["classifier"]
    )
    simulator, sim_variables = load_simulator(
        config, model_workdir, sample, name=simulator_name, step=steps["simulator"]
    )
    member_variables = [sim_variables] + [
        load_simulator(c, model_workdir, sample, name=name, step=steps[name])[1]
        for name, c in members[1:]
    ]

    scans = read_table(table_path, labels=labels)
    cohort = _find_truth(table_path, scans)  # a synthetic cohort, in MNI space
    truth_source = None if evaluate is False else cohort
    if evaluate and truth_source is None:
        raise ValueError(
            f"{table_path} is not a synthetic cohort of jaxinterp.synth3d (no recipe.json, "
            "group_truth.nii.gz and 'truth' column beside it); nothing to evaluate against"
        )
    if isinstance(atlas_names, str | os.PathLike):
        atlas_names = read_atlas_names(atlas_names)
    inputs = [table_path, model_workdir, *(s.path for s in scans)]
    inputs += [Path(atlas)] if atlas is not None else []
    inputs += [truth_source.root] if truth_source else []
    _check_inputs_outside(out_dir, inputs)
    covariate_matrix, covariate_labels = _design(scans, covariates)

    # Load every scan onto the model grid.
    images = np.zeros((len(scans), *shape), np.float32)
    infos: list[VolumeInfo] = []
    for i, scan in enumerate(tqdm(scans, desc="load", unit="scan", disable=None)):
        images[i], _, info = load_volume(scan.path, shape=shape)
        infos.append(info)
    affine = infos[0].model_affine
    grid_offset = max(float(np.abs(i.model_affine - affine).max()) for i in infos)
    voxel = float(np.min(np.linalg.norm(affine[:3, :3], axis=0)))
    grids_differ = grid_offset > 0.01 * voxel
    if grids_differ and not register_to_template:
        warnings.warn(
            f"the scans' model grids differ (up to {grid_offset:.3g} mm in the affines): group "
            "maps average voxels that are not the same place; register the scans to one "
            "template first (--register)",
            stacklevel=2,
        )
    label_of = np.array([s.label for s in scans], np.int32)
    control_mean = images[label_of == 0].mean(0) if (label_of == 0).any() else images.mean(0)
    ids = scan_ids(scans)
    split = _read_split(model_workdir)
    to_tpl = None
    if register_to_template:
        registration = registration or RegistrationConfig()
        to_tpl = _register_all(images, template, affine, registration, batch_size)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_folder_beside(out_dir)
    try:
        summary = _explain_into(
            tmp,
            config=config,
            scans=scans,
            ids=ids,
            images=images,
            infos=infos,
            affine=affine,
            control_mean=control_mean,
            split=split,
            models=(simulator, member_variables, classifier, clf_variables),
            native=native,
            batch_size=batch_size,
            methods=methods,
            occlusion=occlusion,
            occlusion_geometry=geometry,
            ig_steps=ig_steps,
            atlas=None if atlas is None else Path(atlas),
            atlas_names=dict(atlas_names or {}),
            covariate_matrix=covariate_matrix,
            covariate_labels=covariate_labels,
            truth_source=truth_source,
            to_tpl=to_tpl,
            smooth_fwhm=float(smooth_fwhm),
            map_frame=map_frame,
        )
        summary.update(
            kind=KIND,
            out_dir=str(out_dir),
            model_workdir=str(model_workdir.resolve()),
            simulator_name=simulator_name,
            ensemble=[name for name, _ in members[1:]],
            checkpoint_steps=steps,
            table=str(table_path.resolve()),
            grids_differ=bool(grids_differ),
            space="MNI152" if cohort is not None else "unknown",
            config=to_dict(config),
            conventions=_CONVENTIONS,
        )
        write_json(tmp / MANIFEST, summary)
        write_text(tmp / MARKER, "")
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return jsonable(summary)


@dataclasses.dataclass(frozen=True)
class _ToTemplate:
    """Every scan's registration to the template, on the model grid."""

    template: Path
    image: np.ndarray  # the template, loaded as the scans are
    mask: np.ndarray  # its brain mask
    fields: np.ndarray  # (n, *shape, 3): scan(x + u(x)) ~ template(x)
    before: np.ndarray  # (n,) mean squared intensity difference in the mask
    after: np.ndarray
    config: RegistrationConfig


def _register_all(images, template, affine, config, batch_size) -> _ToTemplate:
    fixed, _, info = load_volume(template, shape=images.shape[1:], grid=affine)
    n = len(images)
    fields = np.zeros((n, *images.shape[1:], 3), np.float32)
    before, after = np.zeros(n), np.zeros(n)
    progress = tqdm(total=n, desc="register", unit="scan", disable=None)
    for idx, padded in _batches(n, batch_size):
        u, stats = register(
            images[padded][..., None], fixed[..., None], mask=info.mask, config=config
        )
        k = idx.size
        fields[idx] = np.asarray(u)[:k]
        before[idx] = np.asarray(stats["mismatch_before"])[:k]
        after[idx] = np.asarray(stats["mismatch_after"])[:k]
        progress.update(k)
    progress.close()
    return _ToTemplate(Path(template), fixed, info.mask, fields, before, after, config)


def _explain_into(
    root: Path,
    *,
    config: TrainConfig,
    scans: list[Scan],
    ids: list[str],
    images: np.ndarray,
    infos: list[VolumeInfo],
    affine: np.ndarray,
    control_mean: np.ndarray,
    split: Mapping[str, str],
    models: tuple,
    native: bool,
    batch_size: int,
    methods: tuple[str, ...],
    occlusion: bool,
    occlusion_geometry: tuple[tuple[int, ...], tuple[int, ...]],
    ig_steps: int,
    atlas: Path | None,
    atlas_names: dict[int, str],
    covariate_matrix: np.ndarray,
    covariate_labels: list[str],
    truth_source: _TruthSource | None,
    to_tpl: _ToTemplate | None = None,
    smooth_fwhm: float = 0.0,
    map_frame: str = "diseased",
) -> dict[str, Any]:
    simulator, member_variables, classifier, clf_variables = models
    smooth = _smoother(smooth_fwhm)
    smoothed = f", smoothed FWHM {smooth_fwhm:g} mm" if smooth_fwhm else ""
    shape = images.shape[1:]
    n = len(scans)
    writer = _Writer(root)
    labels = np.array([s.label for s in scans], np.int32)
    tasks = np.where(labels == 0, INJECT, REMOVE).astype(np.int32)

    # Truth of a synthetic cohort, on the model grid.
    truth = brain = None
    truth_regions: dict[str, np.ndarray] = {}
    own_in_region: dict[str, np.ndarray] = {}  # region -> each patient's own truth there
    if truth_source is not None:
        truth = _on_grid(truth_source.group_truth, shape, affine, order=1)
        if truth_source.brain_mask is not None:
            brain = _on_grid(truth_source.brain_mask, shape, affine, order=1) > 0.5
        truth_regions = {
            name: _on_grid(p, shape, affine, order=1) > 0.5
            for name, p in truth_source.regions.items()
        }
    scan_mask_fraction = np.mean([info.mask for info in infos], axis=0)
    if brain is None:
        brain = to_tpl.mask if to_tpl is not None else scan_mask_fraction >= 0.5

    # Atlas on the model grid (per distinct grid).
    atlas_grids: dict[bytes, np.ndarray] = {}
    region_labels: list[int] = []
    if atlas is not None:
        for info in infos:
            key = np.round(info.model_affine, 6).tobytes()
            if key not in atlas_grids:
                atlas_grids[key] = np.rint(_on_grid(atlas, shape, info.model_affine, order=0))
        region_labels = sorted(
            {int(v) for grid in atlas_grids.values() for v in np.unique(grid) if v != 0}
        )
        if not region_labels:
            raise DataError(f"{atlas}: no labelled voxel (nonzero) on the model grid")
    region_names = [atlas_names.get(k, f"label_{k}") for k in region_labels]
    region_values = np.full((n, len(region_labels)), np.nan)

    simulate_fn = _simulate_fn(simulator, classifier, map_frame)
    saliency_fn = None
    if methods:
        steps = simulator.config.integration_steps
        saliency_fn = _saliency_fn(classifier, methods, ig_steps, steps)
    lvc_moments = {task: _Moments(shape) for _, _, task, _ in GROUPS}
    saliency_moments = {
        (m, g, kind): _Moments(shape)
        for m in methods
        for _, g, _, _ in GROUPS
        for kind in ("mean", "absmean")
    }
    subject_scores: dict[str, dict[str, list[float]]] = {}
    rows: list[dict[str, Any]] = []
    baseline = jnp.asarray(control_mean)
    progress = tqdm(total=n, desc="explain", unit="scan", disable=None)
    for idx, padded in _batches(n, batch_size):
        batch = jnp.asarray(images[padded])
        result = _ensemble_mean(
            [jax.device_get(simulate_fn(v, clf_variables, batch, jnp.asarray(tasks[padded])))
             for v in member_variables]
        )  # fmt: skip
        maps = jax.device_get(saliency_fn(clf_variables, batch, baseline)) if methods else {}
        # What the group maps average: the maps themselves, or brought to the template.
        group_lvc, group_saliency = result["log_volume_change"], maps
        if to_tpl is not None:
            fields = jnp.asarray(to_tpl.fields[padded])
            group_lvc = np.asarray(to_template(jnp.asarray(group_lvc), fields))
            group_saliency = {m: np.asarray(to_template(jnp.asarray(v), fields))
                              for m, v in maps.items()}  # fmt: skip
        for j, i in enumerate(idx):
            scan, info, sid = scans[i], infos[i], ids[i]
            label = int(labels[i])
            _, group, task, _ = GROUPS[label]
            lvc = result["log_volume_change"][j]
            field = result["displacement"][j]
            simulated = result["simulated"][j]
            folder = f"scans/{sid}"
            aff = info.model_affine
            # What is averaged: the maps smoothed (as they are when smooth_fwhm=0).
            lvc_group = smooth(group_lvc[j], aff)
            saliency_group = {m: smooth(group_saliency[m][j], aff) for m in methods}
            writer.nifti(
                f"{folder}/simulated.nii.gz", simulated, aff, SIMULATED_DESCRIP.format(task=task)
            )
            writer.nifti(f"{folder}/displacement.nii.gz", field, aff, FIELD_DESCRIP)
            map_on = MAP_FRAMES[map_frame][tasks[i]]
            writer.nifti(f"{folder}/log_volume_change.nii.gz", lvc, aff, LVC_DESCRIP[map_on])
            for m in methods:
                writer.nifti(
                    f"{folder}/saliency_{m}.nii.gz",
                    maps[m][j],
                    aff,
                    f"saliency {m} (signed, + raises the logit)",
                )
                saliency_moments[(m, group, "mean")].add(saliency_group[m])
                saliency_moments[(m, group, "absmean")].add(np.abs(saliency_group[m]))
            if native:
                _write_native(writer, folder, scan.path, info, lvc, simulated, field, task, map_on)
            lvc_moments[task].add(lvc_group)
            if to_tpl is not None:
                writer.nifti(
                    f"{folder}/to_template.nii.gz", to_tpl.fields[i], aff, TEMPLATE_FIELD_DESCRIP
                )
            if region_labels:
                grid = atlas_grids[np.round(aff, 6).tobytes()]
                region_values[i] = [
                    float(lvc[grid == k].mean()) if (grid == k).any() else math.nan
                    for k in region_labels
                ]
            shift = (result["logit_simulated"][j] - result["logit_raw"][j]) * (1 - 2 * tasks[i])
            row = {
                "scan_id": sid,
                "subject": scan.subject,
                "label": label,
                "group": group,
                "task": task,
                "split": split.get(str(scan.path), ""),
                "path": str(scan.path),
                "logit_raw": float(result["logit_raw"][j]),
                "logit_simulated": float(result["logit_simulated"][j]),
                "logit_cycled": float(result["logit_cycled"][j]),
                "logit_shift": float(shift),
                "folding_fraction": float(result["folding_fraction"][j]),
                "max_displacement": float(result["max_displacement"][j]),
                "map_on": map_on,
            }
            if to_tpl is not None:
                row["registration_mismatch_before"] = float(to_tpl.before[i])
                row["registration_mismatch_after"] = float(to_tpl.after[i])
            if truth is not None:
                own = _subject_truth(truth_source, scan, shape, aff, label, truth)
                if label == 1:
                    for region, mask in truth_regions.items():
                        if mask.any():  # a region too small for the grid is scored nowhere
                            own_in_region.setdefault(region, np.zeros(n))[i] = own[mask].mean()
                # Scored on the scan's own grid, smoothed alike: the averaged maps unless
                # those were brought to the template.
                lvc_scored, saliency_scored = lvc_group, saliency_group
                if to_tpl is not None:
                    lvc_scored = smooth(lvc, aff)
                    saliency_scored = {m: smooth(maps[m][j], aff) for m in methods}
                sign = 1.0 if label == 0 else -1.0
                score = score_map(lvc_scored, sign * own, brain)
                row["ncc_truth"] = score["ncc_signed"]
                entry = subject_scores.setdefault(f"simulator_{task}", {})
                for k, v in score.items():
                    entry.setdefault(k, []).append(v)
                for m in methods:
                    score = score_map(saliency_scored[m], own, brain)
                    entry = subject_scores.setdefault(f"{m}_{group}", {})
                    for k, v in score.items():
                        entry.setdefault(k, []).append(v)
            rows.append(row)
        progress.update(idx.size)
    progress.close()

    # scans.csv
    covariate_names = list(dict.fromkeys(k for s in scans for k in s.covariates))
    header = list(rows[0]) + [c for c in covariate_names if c not in rows[0]]
    _atomic_csv(
        root / "scans.csv",
        header,
        [
            [row.get(h, scans[i].covariates.get(h, "")) for h in header]
            for i, row in enumerate(rows)
        ],
    )

    # Group maps.
    files: dict[str, str] = {}
    group_maps: dict[str, dict[str, Any]] = {}
    for _, group, task, _ in GROUPS:
        moments = lvc_moments[task]
        if moments.n == 0:
            continue
        mean, t = moments.mean_t()
        files[f"log_volume_change_{task}_mean"] = writer.nifti(
            f"group/log_volume_change_{task}_mean.nii.gz",
            mean,
            affine,
            f"mean log volume change, {task}, n={moments.n}, model grid{smoothed}",
        )
        if moments.n >= 2:
            files[f"log_volume_change_{task}_t"] = writer.nifti(
                f"group/log_volume_change_{task}_t.nii.gz",
                t,
                affine,
                f"one-sample t of log volume change, {task}, df={moments.n - 1}{smoothed}",
            )
        group_maps[f"simulator_{task}"] = {
            "kind": "simulator",
            "direction": task,
            "group": group,
            "n": moments.n,
            "map": mean,
            "sign": 1.0 if task == "inject" else -1.0,
            "file": files[f"log_volume_change_{task}_mean"],
        }
    for m in methods:
        for _, group, _, _ in GROUPS:
            mean_moments = saliency_moments[(m, group, "mean")]
            if mean_moments.n == 0:
                continue
            mean, _ = mean_moments.mean_t()
            absmean, _ = saliency_moments[(m, group, "absmean")].mean_t()
            for kind, value in (("mean", mean), ("absmean", absmean)):
                files[f"saliency_{m}_{group}_{kind}"] = writer.nifti(
                    f"group/saliency_{m}_{group}_{kind}.nii.gz",
                    value,
                    affine,
                    f"{m} {group}s {kind} n={mean_moments.n}{smoothed}",
                )
            group_maps[f"{m}_{group}"] = {
                "kind": "saliency",
                "method": m,
                "group": group,
                "n": mean_moments.n,
                "map": mean,
                "abs_map": absmean,
                "sign": 1.0,
                "file": files[f"saliency_{m}_{group}_mean"],
            }

    mean_image = images.mean(0)
    files["mean_image"] = writer.nifti(
        "group/mean_image.nii.gz", mean_image, affine, "mean input image (z-scored), model grid"
    )
    files["brain_mask"] = writer.nifti(
        "group/brain_mask.nii.gz", brain.astype(np.float32), affine, "brain mask of the group maps"
    )
    group_means = {}
    for label, group, _, _ in GROUPS:
        if (labels == label).any():
            group_means[group] = images[labels == label].mean(0)
            files[f"mean_image_{group}"] = writer.nifti(
                f"group/mean_image_{group}.nii.gz",
                group_means[group],
                affine,
                f"mean {group} image (z-scored), n={int((labels == label).sum())}",
            )
    if len(group_means) == 2:
        difference = smooth(group_means["patient"] - group_means["control"], affine)
        files["intensity_difference"] = writer.nifti(
            "group/intensity_difference.nii.gz",
            difference,
            affine,
            f"mean patient image - mean control image (z-scored){smoothed}",
        )
        group_maps["intensity_difference"] = {
            "kind": "reference",
            "map": difference,
            "sign": 1.0,
            "file": files["intensity_difference"],
        }

    occlusion_info = None
    if occlusion:
        window, stride = occlusion_geometry
        occlusion_fn = _occlusion_fn(classifier, window, stride)
        total = np.zeros(shape, np.float64)
        fill = jnp.asarray(control_mean)
        for idx, padded in tqdm(
            list(_batches(n, batch_size)), desc="occlusion", unit="batch", disable=None
        ):
            drops = np.asarray(
                occlusion_fn(
                    clf_variables, jnp.asarray(images[padded]), jnp.asarray(labels[padded]), fill
                )
            )
            total += drops[: idx.size].sum(0)
        drop = smooth(total / n, affine)
        files["occlusion_accuracy_drop"] = writer.nifti(
            "group/occlusion_accuracy_drop.nii.gz",
            drop,
            affine,
            f"occlusion: accuracy drop, window {window[0]} stride {stride[0]}, n={n}{smoothed}",
        )
        occlusion_info = {
            "window": list(window),
            "stride": list(stride),
            "n": n,
            "fill": "mean control image",
            "assignment": "mean over covering windows",
        }
        group_maps["occlusion"] = {
            "kind": "occlusion",
            "map": drop,
            "sign": 1.0,
            "n": n,
            "file": files["occlusion_accuracy_drop"],
        }

    # Regions.
    region_summary = None
    if region_labels:
        covariate_names = list(dict.fromkeys(k for s in scans for k in s.covariates))
        header = ["scan_id", "subject", "label", *covariate_names, *region_names]
        _atomic_csv(
            root / "regions.csv",
            header,
            [
                [
                    ids[i],
                    s.subject,
                    s.label,
                    *[s.covariates.get(c, "") for c in covariate_names],
                    *region_values[i],
                ]
                for i, s in enumerate(scans)
            ],
        )
        stats = []
        for k, (label_value, name) in enumerate(zip(region_labels, region_names)):
            values = region_values[:, k]
            test = ols_group_test(values, labels, covariate_matrix if covariate_labels else None)
            n_voxels = int((next(iter(atlas_grids.values())) == label_value).sum())
            stats.append(
                {
                    "region": name,
                    "label": label_value,
                    "n_voxels": n_voxels,
                    "mean_control": _nanmean(values[labels == 0]),
                    "mean_patient": _nanmean(values[labels == 1]),
                    **test,
                }
            )
        adjusted = benjamini_hochberg([s["p"] for s in stats])
        for s, q in zip(stats, adjusted):
            s["p_fdr"] = float(q)
            s["covariates"] = " ".join(covariate_labels)
        header = [
            "region",
            "label",
            "n_voxels",
            "n",
            "df",
            "mean_control",
            "mean_patient",
            "beta",
            "se",
            "t",
            "p",
            "p_fdr",
            "covariates",
        ]
        _atomic_csv(root / "region_stats.csv", header, [[s[h] for h in header] for s in stats])
        files["regions"] = "regions.csv"
        files["region_stats"] = "region_stats.csv"
        region_summary = {
            "atlas": str(atlas.resolve()),
            "n_regions": len(region_labels),
            "covariates": covariate_labels,
            "model": "value ~ 1 + group (0 control, 1 patient) + covariates, OLS; two-sided "
            "t test of the group term; p_fdr: Benjamini-Hochberg over regions",
        }

    # Evaluation against the truth.
    evaluation_summary = None
    if truth is not None:
        files["truth"] = writer.nifti(
            "group/truth.nii.gz", truth, affine, "group truth: mean patient log volume change"
        )
        group_maps["abs_truth"] = {
            "kind": "reference",
            "map": np.abs(truth),
            "sign": 1.0,
            "file": files["truth"],
        }
        apply = jax.jit(lambda z: classifier.apply(clf_variables, z[..., None]))
        logit_fn = lambda batch: np.concatenate(
            [np.asarray(apply(jnp.asarray(batch[i : i + batch_size])))
             for i in range(0, len(batch), batch_size)]
        )  # fmt: skip
        affected = {  # the patients whose own effect in the region is at least 1/4 of the most
            region: np.abs(v) >= 0.25 * np.abs(v).max() for region, v in own_in_region.items()
        }
        uses = region_use(
            logit_fn, images, labels, truth_regions, control_mean, affected=affected, dilate=2
        )
        scored = evaluate_maps(
            group_maps,
            truth,
            brain_mask=brain,
            region_masks=truth_regions,
            subject_scores=subject_scores,
            used_regions={region for region, u in uses.items() if u["used"]},
        )
        evaluation = {
            "classifier_uses": uses,
            "truth": {
                "cohort": str(truth_source.root.resolve()),
                "group_truth": str(truth_source.group_truth.resolve()),
                "brain_mask": "template brain mask" if truth_source.brain_mask else "scan masks",
                "regions": sorted(truth_regions),
            },
            "conventions": {
                "ncc_signed": "jaxinterp.ncc(map, expected) inside the brain mask",
                "ncc_abs": "jaxinterp.ncc(|map|, |expected|); for saliency the mean of the "
                "absolute per-scan maps",
                "expected": "simulator inject (controls): +group truth, remove (patients): "
                "-group truth; per scan: patients -own truth, controls +group truth. "
                "Saliency, occlusion, references: +truth (a logit's gradient points to the "
                "patients in both groups; growth_gradient's is in volume, the others' in "
                "intensity)",
                "regions": "each map's mean inside each truth region vs the expected map's; "
                "sign_where_used: right signs among the regions the classifier uses",
                "abs_truth": "reference: |group truth| as a map (what a sign-blind map scores)",
                "intensity_difference": "reference: mean patient - mean control image",
                "classifier_uses": "per truth region grown by 2 voxels: the affected patients' "
                "images with it filled by the mean control image; used = their mean logit moves "
                "towards the controls' by >= 10% of the group gap",
            },
            "maps": scored,
        }
        write_json(root / "evaluation.json", evaluation)
        files["evaluation"] = "evaluation.json"
        evaluation_summary = {name: entry["group"] for name, entry in scored.items()}

    logits = {}
    for _, _, task, _ in GROUPS:
        members = [r for r in rows if r["task"] == task]
        if not members:
            continue
        raw = np.array([r["logit_raw"] for r in members])
        sim = np.array([r["logit_simulated"] for r in members])
        cyc = np.array([r["logit_cycled"] for r in members])
        shift = np.array([r["logit_shift"] for r in members])
        logits[task] = {
            "n": len(members),
            "mean_raw": float(raw.mean()),
            "mean_simulated": float(sim.mean()),
            "mean_shift": float(shift.mean()),
            "fraction_shift_at_least_delta": float(np.mean(shift >= config.objective.delta)),
            "spearman_raw_simulated": spearman(raw, sim),
            "mean_abs_cycle_logit_error": float(np.mean(np.abs(cyc - raw))),
        }
    folding = np.array([r["folding_fraction"] for r in rows])
    registration = None
    if to_tpl is not None:
        files["template"] = writer.nifti(
            "group/template.nii.gz", to_tpl.image, affine, "registration template, z-scored"
        )
        registration = {
            "template": str(to_tpl.template),
            "settings": dataclasses.asdict(to_tpl.config),
            "mismatch_before": {"mean": float(to_tpl.before.mean()),
                                "max": float(to_tpl.before.max())},
            "mismatch_after": {"mean": float(to_tpl.after.mean()),
                               "max": float(to_tpl.after.max())},
            "max_displacement": float(np.abs(to_tpl.fields).max()),
        }  # fmt: skip
    return {
        "n_scans": n,
        "groups": {g: int((labels == lab).sum()) for lab, g, _, _ in GROUPS},
        "shape": list(shape),
        "affine": affine.tolist(),
        "methods": list(methods),
        "occlusion": occlusion_info,
        "native": bool(native),
        "smooth_fwhm_mm": smooth_fwhm,
        "map_frame": {"name": map_frame, **dict(zip(("inject", "remove"), MAP_FRAMES[map_frame]))},
        "logits": logits,
        "folding_fraction": {"mean": float(folding.mean()), "max": float(folding.max())},
        "regions": region_summary,
        "evaluation": evaluation_summary,
        "registration": registration,
        "files": files,
    }


def _smoother(fwhm: float):
    """``(map, affine) -> map`` smoothed with a Gaussian of FWHM ``fwhm`` mm (0: as is)."""
    if not fwhm:
        return lambda array, affine: array
    from nilearn.image import smooth_img  # the field's smoothing, kernel in mm per axis

    return lambda array, affine: smooth_img(
        nib.Nifti1Image(np.asarray(array, np.float32), affine), fwhm
    ).get_fdata(dtype=np.float32)


def _subject_truth(source, scan, shape, affine, label, group_truth) -> np.ndarray:
    """A scan's own truth (patients) or the group truth (controls, who carry none)."""
    if label == 0:
        return group_truth
    path = Path(scan.covariates["truth"])
    if not path.is_absolute():
        path = source.root / path
    return _on_grid(path, shape, affine, order=1)


def _write_native(
    writer, folder, path, info: VolumeInfo, lvc, simulated, field, task, map_on
) -> None:
    """The scan's maps on its native grid; the field converted to world mm (R, A, S)."""
    native_img = nib.funcs.squeeze_image(nib.load(path))
    aff = info.native_affine
    resample = functools.partial(
        _resample_to_native, model_affine=info.model_affine, native_img=native_img
    )
    writer.nifti(
        f"{folder}/native/log_volume_change.nii.gz", resample(lvc), aff, LVC_DESCRIP[map_on]
    )
    writer.nifti(
        f"{folder}/native/simulated.nii.gz",
        resample(simulated),
        aff,
        SIMULATED_DESCRIP.format(task=task),
    )
    field_mm = np.einsum("ij,...j->...i", info.model_affine[:3, :3], field)
    components = [resample(field_mm[..., k]) for k in range(3)]
    writer.nifti(
        f"{folder}/native/displacement_mm.nii.gz",
        np.stack(components, -1),
        aff,
        NATIVE_FIELD_DESCRIP,
    )


def _nanmean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


# ------------------------------------------------------------------------------ command


HELP = (
    "explain the trained classifier of WORKDIR on a scan table: simulated images, "
    "displacement fields and log-volume-change maps per scan and per group, saliency "
    "baselines, regional statistics, and scores against the truth of a synthetic cohort"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jaxinterp explain``."""
    add_config_arguments(
        parser, workdir_help="the training workdir holding classifier/ and simulator/"
    )
    parser.add_argument(
        "--table",
        required=True,
        help="CSV/TSV scan table (columns path, subject, label, covariates)",
    )
    parser.add_argument(
        "--out", required=True, help="output folder (must not exist or be empty, see --overwrite)"
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="also write each scan's maps resampled to its native grid",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="scans per batch (default 8)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier explain output at --out"
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated saliency baselines from {','.join(METHODS)}, "
        "or 'none' (default: all)",
    )
    parser.add_argument(
        "--occlusion",
        action="store_true",
        help="also compute the group occlusion map (slow on a CPU)",
    )
    parser.add_argument(
        "--occlusion-window",
        type=int,
        default=None,
        help="occlusion window in voxels (default: 8 at 64^3, scaled with the grid)",
    )
    parser.add_argument(
        "--occlusion-stride",
        type=int,
        default=None,
        help="occlusion stride in voxels (default: 4 at 64^3, scaled with the grid)",
    )
    parser.add_argument(
        "--ig-steps", type=int, default=32, help="integrated-gradients steps (default 32)"
    )
    parser.add_argument(
        "--smooth-fwhm",
        type=float,
        default=0.0,
        metavar="MM",
        help="smooth every scan's maps with a Gaussian of this FWHM in mm before group maps "
        "and scores, as morphometry does before group statistics (default 0: none)",
    )
    parser.add_argument(
        "--map-frame",
        choices=list(MAP_FRAMES),
        default="diseased",
        help="where the log-volume-change maps lie: 'diseased' (default; inject on the "
        "simulated image, remove on the patient's own scan), 'simulated' (both on the "
        "simulated image, the paper's reading) or 'input' (both on the scan given)",
    )
    parser.add_argument("--atlas", help="NIfTI label image for the regional summary")
    parser.add_argument("--atlas-names", help="CSV/TSV with columns label,name for the atlas")
    parser.add_argument(
        "--covariate",
        dest="covariates",
        action="append",
        default=[],
        metavar="COLUMN",
        help="table column to adjust the regional test for (repeatable)",
    )
    parser.add_argument(
        "--simulator-name",
        default=None,
        help="the simulator's folder in WORKDIR (default simulator, or simulator_seedN "
        "with --set simulator_seed=N)",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        nargs="+",
        default=[],
        metavar="SEED",
        help="also the simulators trained with these simulator_seed values (folders "
        "simulator_seedN); each scan's maps are the members' mean",
    )
    parser.add_argument(
        "--register",
        action="store_true",
        help="register every scan non-rigidly to the template and average the maps there",
    )
    parser.add_argument(
        "--template",
        default=None,
        help="template NIfTI for --register (default: nilearn's MNI152 T1)",
    )
    parser.add_argument(
        "--register-steps",
        type=int,
        default=RegistrationConfig.steps,
        help=f"Adam steps of each registration (default {RegistrationConfig.steps})",
    )


def run(args: argparse.Namespace) -> dict:
    """Runs ``jaxinterp explain`` from parsed arguments; returns the main numbers."""
    from train.config import load_config

    config = load_config(args.config, args.overrides)
    methods = [] if args.methods.strip().lower() in ("", "none") else args.methods.split(",")
    summary = explain(
        config,
        args.workdir,
        args.table,
        args.out,
        native=args.native,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        methods=[m.strip() for m in methods if m.strip()],
        occlusion=args.occlusion,
        occlusion_window=args.occlusion_window,
        occlusion_stride=args.occlusion_stride,
        ig_steps=args.ig_steps,
        atlas=args.atlas,
        atlas_names=args.atlas_names,
        covariates=args.covariates,
        simulator_name=args.simulator_name,
        ensemble=args.ensemble,
        register_to_template=args.register,
        template=args.template,
        registration=RegistrationConfig(steps=args.register_steps),
        smooth_fwhm=args.smooth_fwhm,
        map_frame=args.map_frame,
    )
    keys = ("out_dir", "n_scans", "groups", "logits", "folding_fraction", "evaluation")
    return {k: summary[k] for k in keys}
