"""A synthetic 3D brain cohort with a known answer, built on the MNI ICBM152 2009 template.

The template is the skull-stripped MNI ICBM152 2009a (symmetric) T1 with its grey- and
white-matter probability maps, as shipped inside the ``nilearn`` wheel
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``,
197 x 233 x 189 voxels of 1 mm, RAS+, intensities and probabilities stored as 0-255).

Grids and units. Everything is computed on a *model grid* of ``shape`` voxels that covers
the template's field of view (`jaxinterp.data.model_grid_affine`): voxel size = FOV / shape
per axis (6.2 x 7.3 x 5.9 mm at 32^3, anisotropic), the grid centre is the template centre,
and ``Cohort.affine`` maps model voxel indices to MNI mm, so every map saved with it sits in
MNI space. The template T1 is brought onto the grid exactly as `jaxinterp.data.load_volume`
brings a scan (Gaussian anti-aliasing of std ``(factor - 1) / 2`` native voxels, then
trilinear sampling), in the template's intensity units (tissue 150-220, CSF about 65,
background 0). Arrays are ``(D, H, W)`` = (x, y, z) = (R, A, S); displacement fields are
``(D, H, W, 3)`` in model VOXEL units and pull back (see `jaxinterp.warp`).

Regions are data (see `load_regions`): a JSON list of entries ``{"name", "centre_mm",
"radius_mm", "log_volume_change"}`` plus optional ``"subtype"`` and ``"kind"``. A ``"ball"``
region is the ball of ``radius_mm`` around ``centre_mm`` (MNI mm). A ``"ventricles"``
region is derived from the template at 1 mm, then downsampled: brain voxels with GM < 0.2
and WM < 0.2 within ``radius_mm`` of ``centre_mm``, keeping the connected components
(6-connectivity) of at least 1 ml. With the shipped default (centre (0, -10, 15), 40 mm) it
keeps both lateral ventricles (4.9 ml each) and the third ventricle with the adjacent basal
cisterns (6.2 ml): the central CSF spaces. Each region's 1 mm indicator is downsampled like
the T1 to a *fraction* map on the model grid; its boolean *mask* is fraction > 0.5.

The disease. For a set of regions (one subtype) the *target* log-volume-change map is
``L = sum_r log_volume_change_r * c_r * G_s(fraction_r)`` (`target_map`), with ``G_s`` a
Gaussian of std ``region_smoothing`` mm and ``c_r`` such that the fraction-weighted mean of
each term over its region is ``log_volume_change_r``: to first order the region's tissue
changes in volume by ``exp(log_volume_change)``, its surroundings less.
The field is ``v = -grad psi`` with ``laplacian psi = L`` (physical units, FFT Poisson solve
with psi = 0 one voxel beyond the grid, `poisson_velocity`), so ``div v = -L``. A patient of
severity ``s`` gets the disease displacement ``d = exp(s v)`` (scaling and squaring,
`jaxinterp.integrate_velocity`), whose log volume change
``-log det(I + dd/dx) ~ s L`` (`jaxinterp.log_volume_change`: positive = growth, e.g. the
ventricles; negative = atrophy). Where ``L = 0``, ``div v = 0``: tissue moves but keeps
its volume (the brain as a whole grows when ventricles enlarge). The measured change of a
region (its fraction map warped by ``d``, summed) is smaller than the target: at severity 1
on the default regions, log ratio +0.51 (ventricles), -0.31 (hippocampi), -0.24 (frontal)
at 32^3; +0.56, -0.38, -0.29 at 64^3 (targets +0.7, -0.4, -0.3).

Subjects. Subject ``i`` gets a random smooth warp ``w = exp(v_i)``: each component of
``v_i`` is a stationary Gaussian random field of std ``subject_warp_std`` mm and Gaussian
correlation of std ``subject_warp_smoothing`` mm, drawn as random Fourier modes in MNI mm,
so a subject's anatomy does not depend on the grid size. A patient's clean image is the
template read through the disease warp first (template space), then the subject warp::

    clean_i(x) = T(phi_d(phi_w(x))),   displacement compose(d, w) = w(x) + d(x + w(x))

(one trilinear interpolation; zeros outside the volume). For a control ``d = 0``. Gaussian
noise of std ``noise_std`` (template intensity units) is added inside the brain (voxels
above 5 % of the image's 99.5th percentile); the background stays 0, as in a
skull-stripped scan. ``raw_images`` hold these intensities (what `write_cohort` writes);
``images`` hold them z-scored inside that mask with 0 outside, exactly what
`jaxinterp.data.load_volume` returns for the written file at the same ``shape``.

The truth. ``truth_template[i] = log_volume_change(d_i)`` is the measured (not the target)
log volume change of patient ``i``'s disease warp in template space; inside the brain it
correlates 0.96 (ventricles) to 0.996 (frontal balls) with ``s_i L`` at 32^3, 0.98 to
0.999 at 64^3. ``truth[i](x) = truth_template[i](phi_w(x))`` (trilinear) is the same map in
subject space: the tissue at subject voxel ``x`` is the diseased template's tissue at
``phi_w(x)``, so this is the log volume change the disease gave it. (The log-det of the
disease written as a subject-space map, ``phi_w^-1 o phi_d o phi_w``, differs from it only
by the ratio of the subject warp's Jacobian determinants at two points one disease
displacement apart.) Both are 0 for controls. ``group_truth`` is the mean of
``truth_template`` over the patients.

Patients have *subtypes*: the subtype names given in the regions' ``"subtype"`` entries
(a region without one belongs to every subtype; with none anywhere there is one subtype,
``"all"``). Patients are spread evenly over the chosen subtypes in a random order, and
their severities are uniform in ``severity``. Controls have severity 0 and subtype
``"control"``. Subjects are ordered controls first (``sub-0000`` ...), then patients.

Randomness: ``numpy.random.SeedSequence(seed, spawn_key=...)`` streams, one for the
patients' severities and subtypes, and per subject one for its warp and one for its noise,
keyed by (label, index within the group): adding controls leaves the patients unchanged,
and changing ``shape`` or ``noise_std`` leaves every subject's warp unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.metadata
import importlib.resources
import io
import json
import math
import os
import re
import shutil
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import nibabel as nib
import nibabel.processing
import numpy as np
import scipy.fft
import scipy.ndimage

from jaxinterp.atomic import new_folder_beside, publish
from jaxinterp.data import DataError, model_grid_affine, save_nifti
from jaxinterp.jacobian import log_volume_change
from jaxinterp.warp import compose, warp

__all__ = [
    "CONTROL",
    "Cohort",
    "Region",
    "TEMPLATE_FILES",
    "Template",
    "counterfactual",
    "default_regions_path",
    "load_regions",
    "load_template",
    "make_cohort",
    "parse_regions",
    "poisson_velocity",
    "random_velocity",
    "region_fraction",
    "subtype_names",
    "target_map",
    "template_paths",
    "write_cohort",
]

TEMPLATE_FILES: Mapping[str, str] = types.MappingProxyType(
    {
        "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    }
)
CONTROL = "control"  # the subtype of controls; reserved
_ALL = "all"  # the one subtype when no region names one
_KINDS = ("ball", "ventricles")
_REQUIRED_KEYS = ("name", "centre_mm", "radius_mm", "log_volume_change")
_OPTIONAL_KEYS = ("subtype", "kind")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # safe as a file name
_PROB_SCALE = 255.0  # the GM/WM files store probabilities as 0-255
_CSF_MAX_PROB = 0.2  # a brain voxel with GM and WM below this is CSF
_MIN_COMPONENT_MM3 = 1000.0  # smallest CSF component kept in a "ventricles" region
_MASK_THRESHOLD = 0.05  # brain = above this fraction of the 99.5th percentile (load_volume)
_VELOCITY_STEPS = 7  # scaling-and-squaring steps of every warp
_FOURIER_CUTOFF = 3.5  # random warp modes kept while |omega| * smoothing <= this
_DATASET = "synth3d"
_TABLE = "cohort.csv"


# ------------------------------------------------------------------------------ regions


@dataclasses.dataclass(frozen=True)
class Region:
    """One disease region (see the module docstring).

    Attributes:
      name: unique identifier, letters, digits and ``_ . + -`` (used in file names).
      centre_mm: (x, y, z) in MNI mm.
      radius_mm: radius of the ball; for ``kind="ventricles"`` the search radius.
      log_volume_change: the log volume ratio targeted for the region's tissue at severity 1
        (positive = growth; see `target_map`).
      subtypes: the patient subtypes with this region; None = every subtype.
      kind: ``"ball"`` or ``"ventricles"``.
    """

    name: str
    centre_mm: tuple[float, float, float]
    radius_mm: float
    log_volume_change: float
    subtypes: tuple[str, ...] | None = None
    kind: str = "ball"

    def to_json(self) -> dict[str, Any]:
        """The JSON entry that `parse_regions` reads back to this region."""
        entry: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "centre_mm": list(self.centre_mm),
            "radius_mm": self.radius_mm,
            "log_volume_change": self.log_volume_change,
        }
        if self.subtypes is not None:
            entry["subtype"] = list(self.subtypes)
        return entry


def default_regions_path() -> Path:
    """Path of the shipped default pattern, ``jaxinterp/regions/default.json``.

    Subtypes: ``"typical"`` (ventricles +0.7, both hippocampi -0.4, 10 mm balls),
    ``"ventricular"`` (ventricles only), ``"frontal"`` (two 16 mm frontal balls, -0.3).
    """
    return Path(str(importlib.resources.files("jaxinterp") / "regions" / "default.json"))


def load_regions(path: str | os.PathLike | None = None) -> tuple[Region, ...]:
    """Reads a regions JSON file (a list of entries, see `parse_regions`).

    Args:
      path: the file; None reads `default_regions_path`.

    Raises:
      DataError: (a ``ValueError``) naming the file, and the entry at fault, if the file
        cannot be read or parsed or an entry is invalid.
    """
    path = default_regions_path() if path is None else Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the regions file ({exc})") from exc
    return parse_regions(entries, source=str(path))


def parse_regions(entries: Any, *, source: str = "<regions>") -> tuple[Region, ...]:
    """Validates a list of region entries (dicts as in the JSON file, or `Region`).

    Each dict needs ``name`` (str), ``centre_mm`` (3 finite numbers, MNI mm),
    ``radius_mm`` (finite, > 0) and ``log_volume_change`` (finite number), and may have
    ``subtype`` (a name or a non-empty list of names; absent = every subtype) and ``kind``
    (``"ball"``, the default, or ``"ventricles"``). Unknown keys are errors (they are
    usually typos). Names must be unique; ``"control"`` is not a valid subtype.

    Raises:
      DataError: naming ``source`` and the entry (index and name) at fault.
    """
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{source}: expected a non-empty JSON list of regions")
    regions: list[Region] = []
    for index, entry in enumerate(entries):
        where = f"{source}: region {index}"
        if isinstance(entry, Region):
            entry = entry.to_json()
        if not isinstance(entry, Mapping):
            raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
        if isinstance(entry.get("name"), str):
            where += f" ({entry['name']!r})"
        missing = [k for k in _REQUIRED_KEYS if k not in entry]
        if missing:
            raise DataError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
        unknown = sorted(set(entry) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
        if unknown:
            allowed = ", ".join(map(repr, _REQUIRED_KEYS + _OPTIONAL_KEYS))
            raise DataError(f"{where}: unknown key(s) {unknown} (allowed: {allowed})")
        name = entry["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise DataError(f"{where}: name must match {_NAME.pattern}, got {name!r}")
        centre = entry["centre_mm"]
        if (
            not isinstance(centre, Sequence)
            or isinstance(centre, str)
            or len(centre) != 3
            or not all(_is_finite_number(c) for c in centre)
        ):
            raise DataError(f"{where}: centre_mm must be 3 finite numbers, got {centre!r}")
        radius = entry["radius_mm"]
        if not _is_finite_number(radius) or not radius > 0:
            raise DataError(f"{where}: radius_mm must be a finite number > 0, got {radius!r}")
        lvc = entry["log_volume_change"]
        if not _is_finite_number(lvc):
            raise DataError(f"{where}: log_volume_change must be a finite number, got {lvc!r}")
        kind = entry.get("kind", "ball")
        if kind not in _KINDS:
            raise DataError(f"{where}: kind must be one of {list(_KINDS)}, got {kind!r}")
        subtypes = entry.get("subtype")
        if subtypes is not None:
            if isinstance(subtypes, str):
                subtypes = [subtypes]
            if (
                not isinstance(subtypes, list)
                or not subtypes
                or not all(isinstance(s, str) and _NAME.match(s) for s in subtypes)
            ):
                raise DataError(
                    f"{where}: subtype must be a name or a non-empty list of names matching "
                    f"{_NAME.pattern}, got {entry['subtype']!r}"
                )
            if CONTROL in subtypes:
                raise DataError(f"{where}: {CONTROL!r} is reserved for controls")
            subtypes = tuple(dict.fromkeys(subtypes))
        if any(r.name == name for r in regions):
            raise DataError(f"{where}: duplicated region name {name!r}")
        regions.append(
            Region(
                name=name,
                centre_mm=tuple(float(c) for c in centre),
                radius_mm=float(radius),
                log_volume_change=float(lvc),
                subtypes=subtypes,
                kind=kind,
            )
        )
    return tuple(regions)


def subtype_names(regions: Sequence[Region]) -> tuple[str, ...]:
    """The subtypes named by ``regions``, in order of appearance; ``("all",)`` if none."""
    names = dict.fromkeys(s for r in regions for s in (r.subtypes or ()))
    return tuple(names) or (_ALL,)


def _regions_of(regions: Sequence[Region], subtype: str) -> tuple[Region, ...]:
    return tuple(r for r in regions if r.subtypes is None or subtype in r.subtypes)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------ template


@dataclasses.dataclass(frozen=True, eq=False)
class Template:
    """The MNI template on a model grid (arrays are read-only).

    Attributes:
      t1: ``(D, H, W)`` float32, T1 in the template's units (0-255 scale), background 0.
      brain_mask: ``(D, H, W)`` bool, t1 above 5 % of its 99.5th percentile.
      affine: ``(4, 4)`` model voxel indices -> MNI mm.
      spacing: voxel size in mm per axis (FOV / shape).
    """

    t1: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.t1.shape)


def template_paths() -> dict[str, Path]:
    """Paths of the template files (keys ``t1``, ``gm``, ``wm``) inside the nilearn wheel.

    Raises:
      DataError: if nilearn is missing or a file is not there.
    """
    try:
        folder = importlib.resources.files("nilearn.datasets") / "data"
    except ModuleNotFoundError as exc:
        raise DataError("the MNI template ships with nilearn, which is not installed") from exc
    paths = {k: Path(str(folder / name)) for k, name in TEMPLATE_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"MNI ICBM152 2009 template file(s) not found: {', '.join(missing)}")
    return paths


@functools.lru_cache(maxsize=1)
def _native() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t1, gm, wm, affine) at 1 mm, RAS+; t1 float32, gm and wm uint8 (0-255)."""
    arrays = []
    affine = None
    for key, path in template_paths().items():
        img = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(img.dataobj)
        data = data.astype(np.float32) if key == "t1" else data.astype(np.uint8)
        data.flags.writeable = False
        arrays.append(data)
        if affine is not None and not np.allclose(affine, img.affine):
            raise DataError(f"{path}: its affine differs from the T1's")
        affine = np.asarray(img.affine, np.float64)
    return arrays[0], arrays[1], arrays[2], affine


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be 3 ints >= 4, got {shape}")
    return shape


def _downsample(
    data: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int], mode: str
) -> np.ndarray:
    """A 1 mm array (or a box cut from the template) onto the model grid, like load_volume.

    Gaussian anti-aliasing of std ``(factor - 1) / 2`` native voxels (``factor`` from the
    whole template), then trilinear sampling at the model voxel centres.
    """
    t1, _, _, native_affine = _native()
    factor = np.asarray(t1.shape, np.float64) / np.asarray(shape, np.float64)
    sigma = np.maximum(0.0, (factor - 1.0) / 2.0)
    data = np.asarray(data, np.float32)
    if sigma.any():
        data = scipy.ndimage.gaussian_filter(data, sigma, mode=mode)
    model_affine = model_grid_affine(native_affine, t1.shape, shape)
    out = nibabel.processing.resample_from_to(
        nib.Nifti1Image(data, affine), (shape, model_affine), order=1, mode=mode, cval=0.0
    )
    return np.asarray(out.dataobj, np.float32)


def load_template(shape: Sequence[int] = (32, 32, 32)) -> Template:
    """The template T1 on the model grid of ``shape`` (cached; arrays are read-only).

    Resampled as `jaxinterp.data.load_volume` resamples a scan, in the template's own
    intensity units; ``brain_mask`` is load_volume's automatic mask rule.
    """
    return _template(_check_shape(shape))


@functools.lru_cache(maxsize=4)
def _template(shape: tuple[int, int, int]) -> Template:
    t1, _, _, native_affine = _native()
    data = np.maximum(_downsample(t1, native_affine, shape, "nearest"), 0.0)
    brain = data > _MASK_THRESHOLD * float(np.percentile(data, 99.5))
    affine = model_grid_affine(native_affine, t1.shape, shape)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    for a in (data, brain, affine):
        a.flags.writeable = False
    return Template(t1=data, brain_mask=brain, affine=affine, spacing=spacing)


def _box(region: Region, margin_vox: int) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Native-grid box around a region: (slices, box affine, world mm of its voxels)."""
    t1, _, _, affine = _native()
    centre = np.linalg.solve(affine, np.array([*region.centre_mm, 1.0]))[:3]
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(centre < -0.5) or np.any(centre > np.asarray(t1.shape) - 0.5):
        raise DataError(
            f"region {region.name!r}: centre {region.centre_mm} mm is outside the template"
        )
    half = region.radius_mm / sizes + margin_vox
    lo = np.clip(np.floor(centre - half).astype(int), 0, np.asarray(t1.shape))
    hi = np.clip(np.ceil(centre + half).astype(int) + 1, 0, np.asarray(t1.shape))
    slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    box_affine = affine.copy()
    box_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    idx = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), axis=-1
    ).astype(np.float64)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return slices, box_affine, world


def _region_indicator_1mm(region: Region, margin_vox: int) -> tuple[np.ndarray, np.ndarray]:
    """The region's 1 mm indicator on a box of the template, and the box affine."""
    t1, gm, wm, affine = _native()
    slices, box_affine, world = _box(region, margin_vox)
    inside = np.linalg.norm(world - np.asarray(region.centre_mm), axis=-1) <= region.radius_mm
    if region.kind == "ball":
        return inside, box_affine
    csf_max = _CSF_MAX_PROB * _PROB_SCALE
    csf = inside & (t1[slices] > 0) & (gm[slices] < csf_max) & (wm[slices] < csf_max)
    labels, _ = scipy.ndimage.label(csf)
    sizes = np.bincount(labels.ravel()) * abs(np.linalg.det(affine[:3, :3]))
    keep = np.flatnonzero(sizes >= _MIN_COMPONENT_MM3)
    mask = np.isin(labels, keep[keep > 0])
    if not mask.any():
        raise DataError(
            f"region {region.name!r}: no CSF component of >= {_MIN_COMPONENT_MM3:g} mm^3 "
            f"within {region.radius_mm} mm of {region.centre_mm}"
        )
    return mask, box_affine


@functools.lru_cache(maxsize=64)
def _fraction(region: Region, shape: tuple[int, int, int]) -> np.ndarray:
    t1, _, _, _ = _native()
    factor = np.asarray(t1.shape, np.float64) / np.asarray(shape, np.float64)
    margin = (
        int(np.ceil(4.0 * max(0.0, (float(factor.max()) - 1.0) / 2.0)))
        + 2
        + int(np.ceil(factor.max()))
    )
    indicator, box_affine = _region_indicator_1mm(region, margin)
    out = np.clip(_downsample(indicator, box_affine, shape, "constant"), 0.0, 1.0)
    out.flags.writeable = False
    return out


def region_fraction(region: Region, shape: Sequence[int] = (32, 32, 32)) -> np.ndarray:
    """The region's 1 mm indicator downsampled onto the model grid: ``(D, H, W)`` in [0, 1].

    The region's mask on the grid is ``region_fraction(...) > 0.5``. Cached, read-only.
    """
    return _fraction(region, _check_shape(shape))


def target_map(
    regions: Sequence[Region],
    shape: Sequence[int] = (32, 32, 32),
    *,
    smoothing_mm: float = 4.0,
) -> np.ndarray:
    """Target log-volume-change map at severity 1: ``sum_r lvc_r * c_r * G_s(fraction_r)``.

    ``G_s`` is a Gaussian blur of std ``smoothing_mm`` and ``c_r`` scales the blurred
    fraction map so that its fraction-weighted mean over the region is 1:
    ``c_r = sum(f_r) / sum(f_r * G_s(f_r))``. To first order the region's volume then
    changes by ``exp(lvc_r)`` (its tissue's mean log volume change is ``lvc_r``); the
    surrounding tissue changes too, less, and the peak of the map exceeds ``lvc_r``.

    Args:
      regions: the regions of one subtype (all of them are used).
      shape: model grid.
      smoothing_mm: std of the Gaussian ``G_s`` in mm (0: no smoothing).

    Returns:
      ``(D, H, W)`` float32.
    """
    shape = _check_shape(shape)
    if not smoothing_mm >= 0:
        raise ValueError(f"smoothing_mm must be >= 0, got {smoothing_mm}")
    spacing = np.asarray(load_template(shape).spacing)
    total = np.zeros(shape, np.float64)
    for region in regions:
        frac = region_fraction(region, shape).astype(np.float64)
        if not frac.any():
            raise DataError(f"region {region.name!r} is empty on the {shape} grid")
        blurred = frac
        if smoothing_mm > 0:
            blurred = scipy.ndimage.gaussian_filter(frac, smoothing_mm / spacing, mode="constant")
        scale = frac.sum() / (frac * blurred).sum()
        total += region.log_volume_change * scale * blurred
    return total.astype(np.float32)


# ------------------------------------------------------------------------------ fields


def poisson_velocity(target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """A velocity field whose divergence is ``-target``: ``v = -grad psi``, ``lap psi = target``.

    The Poisson equation is solved in mm (7-point Laplacian, ``psi = 0`` one voxel beyond
    the grid, by a type-I discrete sine transform, scipy's FFT); the gradient is the central
    difference. Since ``log det(I + du/dx) ~ div u`` for a small field, the flow of ``s v``
    has ``log_volume_change`` close to ``s * target`` (positive target = growth).

    Args:
      target: ``(D, H, W)`` log-volume-change map.
      spacing: voxel size in mm per axis.

    Returns:
      ``(D, H, W, 3)`` float32 in VOXEL units (component k along axis k).
    """
    target = np.asarray(target, np.float64)
    spacing = np.asarray(spacing, np.float64)
    if target.ndim != 3 or spacing.shape != (3,) or not (spacing > 0).all():
        raise ValueError(
            f"target must be 3D and spacing 3 positive numbers, got {target.shape}, {spacing}"
        )
    eigen = np.zeros(target.shape)
    for axis, (n, h) in enumerate(zip(target.shape, spacing, strict=True)):
        k = np.arange(1, n + 1)
        lam = (2.0 * np.cos(np.pi * k / (n + 1)) - 2.0) / h**2
        eigen = eigen + lam.reshape([n if a == axis else 1 for a in range(3)])
    psi = scipy.fft.idstn(scipy.fft.dstn(target, type=1) / eigen, type=1)
    padded = np.pad(psi, 1)
    inner = (slice(1, -1),) * 3
    v = []
    for axis, h in enumerate(spacing):
        ahead = list(inner)
        behind = list(inner)
        ahead[axis], behind[axis] = slice(2, None), slice(None, -2)
        grad_mm = (padded[tuple(ahead)] - padded[tuple(behind)]) / (2.0 * h)
        v.append(-grad_mm / h)  # displacement in mm -> voxels
    return np.stack(v, axis=-1).astype(np.float32)


def random_velocity(
    rng: np.random.Generator,
    template: Template,
    *,
    std_mm: float,
    smoothing_mm: float,
) -> np.ndarray:
    """A smooth random velocity field, the same in mm whatever the grid.

    Each component is a stationary Gaussian random field in MNI mm with pointwise std
    ``std_mm`` and the spectrum of white noise blurred by a Gaussian of std
    ``smoothing_mm``: a sum of Fourier modes of period twice the field of view,
    ``a_k (g cos(w_k . x) + g' sin(w_k . x))``, ``a_k ~ exp(-|w_k|^2 smoothing^2 / 2)``
    (modes with ``|w| smoothing > 3.5`` and the constant mode dropped), ``g, g' ~ N(0, 1)``.
    The number of draws depends only on the field of view and ``smoothing_mm``.

    Returns:
      ``(D, H, W, 3)`` float32 in VOXEL units of ``template``'s grid.
    """
    if not std_mm >= 0 or not smoothing_mm > 0:
        raise ValueError(f"need std_mm >= 0 and smoothing_mm > 0, got {std_mm}, {smoothing_mm}")
    spacing = np.asarray(template.spacing)
    fov = spacing * np.asarray(template.shape)
    period = 2.0 * fov
    omegas = []
    for p in period:
        k_max = int(np.ceil(_FOURIER_CUTOFF * p / (2.0 * np.pi * smoothing_mm)))
        omegas.append(2.0 * np.pi * np.arange(-k_max, k_max + 1) / p)
    amp = functools.reduce(
        np.multiply.outer, [np.exp(-0.5 * (w * smoothing_mm) ** 2) for w in omegas]
    )
    amp[tuple(len(w) // 2 for w in omegas)] = 0.0
    amp /= np.sqrt(np.sum(amp**2))
    coef = rng.standard_normal((3, 2, *amp.shape))
    coef = amp * (coef[:, 0] + 1j * coef[:, 1])  # (3, kx, ky, kz)
    # World coordinates along each axis (the model grid has a diagonal affine).
    axes_mm = [
        template.affine[a, a] * np.arange(n) + template.affine[a, 3]
        for a, n in enumerate(template.shape)
    ]
    phases = [np.exp(-1j * np.multiply.outer(x, w)) for x, w in zip(axes_mm, omegas, strict=True)]
    fields = [np.einsum("abc,ia,jb,kc->ijk", c, *phases, optimize=True).real for c in coef]
    v_mm = std_mm * np.stack(fields, axis=-1)
    return (v_mm / spacing).astype(np.float32)


# Jitted one operation at a time: jax.jit(integrate_velocity) unrolls 7 compositions into
# one XLA program that compiled in 12 s and ran 7x slower than 7 calls of a jitted compose
# (CPU, 32^3).
_compose = jax.jit(compose)
_warp = jax.jit(warp)
_log_volume_change = jax.jit(log_volume_change)


def _flow(velocity: jax.Array) -> jax.Array:
    """``integrate_velocity(velocity, steps=7)``, one jitted composition per step."""
    u = velocity * (2.0**-_VELOCITY_STEPS)
    for _ in range(_VELOCITY_STEPS):
        u = _compose(u, u)
    return u


def _simulate(
    template: jax.Array, v_subject: jax.Array, v_disease: jax.Array | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(clean image, truth in template space, truth in subject space) of one subject.

    ``template`` is ``(D, H, W, 1)``; the truths are None for a control (no disease).
    """
    w = _flow(v_subject)
    if v_disease is None:
        return np.asarray(_warp(template, w)[..., 0]), None, None
    d = _flow(v_disease)
    clean = _warp(template, _compose(d, w))[..., 0]
    truth_template = _log_volume_change(d)
    truth = _warp(truth_template[..., None], w)[..., 0]
    return np.asarray(clean), np.asarray(truth_template), np.asarray(truth)


def _subject(
    t1: jax.Array,
    template: Template,
    seed: int,
    label: int,
    j: int,
    v_disease: np.ndarray | None,
    *,
    std_mm: float,
    smoothing_mm: float,
    noise_std: float,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(raw image, truth in template space, truth in subject space) of the ``j``-th subject
    of group ``label`` (its own warp and noise, drawn from ``seed``) with the disease
    velocity ``v_disease`` (None: healthy)."""
    v_subject = random_velocity(
        _stream(seed, 1 + label, j, 0), template, std_mm=std_mm, smoothing_mm=smoothing_mm
    )
    if v_disease is not None:
        v_disease = jnp.asarray(v_disease, jnp.float32)
    clean, t_template, t_subject = _simulate(t1, jnp.asarray(v_subject), v_disease)
    brain = clean > _MASK_THRESHOLD * float(np.percentile(clean, 99.5))
    noise = _stream(seed, 1 + label, j, 1).standard_normal(clean.shape) * noise_std
    raw = np.where(brain, clean + noise, clean) if noise_std > 0 else clean
    return raw, t_template, t_subject


def _zscore(raw: np.ndarray) -> np.ndarray:
    """z-score inside load_volume's automatic mask, 0 outside (load_volume's exact steps)."""
    robust_max = float(np.percentile(raw, 99.5))
    brain = raw > _MASK_THRESHOLD * robust_max
    inside = raw[brain].astype(np.float64)
    mean, std = float(inside.mean()), float(inside.std())
    return np.where(brain, (raw - mean) / std, 0.0).astype(np.float32)


# ------------------------------------------------------------------------------ cohort


@dataclasses.dataclass(frozen=True, eq=False)
class Cohort:
    """A synthetic cohort (see the module docstring for every definition). N subjects.

    Attributes:
      images: ``(N, D, H, W)`` float32, z-scored in the brain, 0 outside (model input).
      raw_images: ``(N, D, H, W)`` float32, template intensity units (what is written).
      labels: ``(N,)`` int32, 0 = control, 1 = patient.
      subjects: ``(N,)`` subject ids, ``sub-0000`` ...
      severities: ``(N,)`` float32, 0 for controls.
      subtypes: ``(N,)`` subtype names, ``"control"`` for controls.
      truth: ``(N, D, H, W)`` float32, each subject's true log volume change in its own
        space (0 for controls).
      truth_template: ``(N, D, H, W)`` float32, the same in template space.
      group_truth: ``(D, H, W)`` float32, mean of ``truth_template`` over the patients.
      targets: subtype -> ``(D, H, W)`` target map ``L`` at severity 1.
      region_masks: region name -> ``(D, H, W)`` bool, template space.
      brain_mask: ``(D, H, W)`` bool, the template's brain.
      template: ``(D, H, W)`` float32, the template T1 on the grid.
      affine: ``(4, 4)`` model voxel -> MNI mm.
      regions: the regions used.
      recipe: parameters (``make_cohort(**recipe["params"], regions=regions)`` regenerates
        the cohort), conventions and versions.
    """

    images: np.ndarray
    raw_images: np.ndarray
    labels: np.ndarray
    subjects: tuple[str, ...]
    severities: np.ndarray
    subtypes: tuple[str, ...]
    truth: np.ndarray
    truth_template: np.ndarray
    group_truth: np.ndarray
    targets: Mapping[str, np.ndarray]
    region_masks: Mapping[str, np.ndarray]
    brain_mask: np.ndarray
    template: np.ndarray
    affine: np.ndarray
    regions: tuple[Region, ...]
    recipe: Mapping[str, Any]


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def make_cohort(
    *,
    n_controls: int,
    n_patients: int,
    shape: Sequence[int] = (32, 32, 32),
    regions: str | os.PathLike | Sequence[Region | Mapping[str, Any]] | None = None,
    subtypes: Sequence[str] | None = None,
    severity: tuple[float, float] = (0.5, 1.0),
    region_smoothing: float = 4.0,
    subject_warp_std: float = 1.2,
    subject_warp_smoothing: float = 25.0,
    noise_std: float = 5.0,
    seed: int = 0,
) -> Cohort:
    """Generates a synthetic cohort with known per-subject and group truth maps.

    Args:
      n_controls: number of controls (label 0), >= 0.
      n_patients: number of patients (label 1), >= 0; at least one subject in all.
      shape: model grid ``(D, H, W)``; 32^3 (6 mm voxels) for CPU work, 64^3 as in the
        paper.
      regions: a regions JSON path, a list of entries or `Region`, or None for
        `default_regions_path`.
      subtypes: the subtypes patients are spread over (evenly, random order); None = all
        subtypes of ``regions`` (`subtype_names`).
      severity: (low, high) of the patients' uniform severities; 0 <= low <= high.
      region_smoothing: std in mm of the Gaussian that smooths each region's fraction map
        into the target.
      subject_warp_std: pointwise std in mm of each component of the subject warp's
        velocity. With the defaults the largest displacement in the brain is 1.2-1.8
        voxels at 64^3 (4-6 mm) and the warp's own log volume change stays within
        +-0.23 (ten subjects).
      subject_warp_smoothing: its correlation scale, the std in mm of the Gaussian blur.
      noise_std: std of the Gaussian intensity noise inside the brain, in template units
        (tissue 150-220).
      seed: seed of every random draw.

    Returns:
      A `Cohort`.
    """
    shape = _check_shape(shape)
    if n_controls < 0 or n_patients < 0 or n_controls + n_patients < 1:
        raise ValueError(
            f"need n_controls, n_patients >= 0 and >= 1 subject in all, got "
            f"{n_controls}, {n_patients}"
        )
    lo, hi = (float(s) for s in severity)
    if not 0.0 <= lo <= hi or not math.isfinite(hi):
        raise ValueError(f"severity must be (low, high) with 0 <= low <= high, got {severity}")
    for name, value in (
        ("noise_std", noise_std),
        ("subject_warp_std", subject_warp_std),
        ("region_smoothing", region_smoothing),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if not (math.isfinite(subject_warp_smoothing) and subject_warp_smoothing > 0):
        raise ValueError(f"subject_warp_smoothing must be > 0, got {subject_warp_smoothing}")

    if regions is None:
        regions = load_regions()
    elif isinstance(regions, str | os.PathLike):
        regions = load_regions(regions)
    else:
        regions = parse_regions(list(regions))
    available = subtype_names(regions)
    chosen = available if subtypes is None else tuple(subtypes)
    unknown = [s for s in chosen if s not in available]
    if not chosen or unknown:
        raise ValueError(f"subtypes must be a non-empty subset of {available}, got {chosen}")

    template = load_template(shape)
    targets = {
        s: target_map(_regions_of(regions, s), shape, smoothing_mm=region_smoothing) for s in chosen
    }
    velocities = {s: poisson_velocity(t, template.spacing) for s, t in targets.items()}

    rng = _stream(seed, 0)
    patient_severity = rng.uniform(lo, hi, size=n_patients)
    patient_subtype = [
        chosen[i] for i in rng.permutation(np.resize(np.arange(len(chosen)), n_patients))
    ]

    n = n_controls + n_patients
    labels = np.repeat(np.array([0, 1], np.int32), [n_controls, n_patients])
    raw = np.zeros((n, *shape), np.float32)
    truth = np.zeros((n, *shape), np.float32)
    truth_template = np.zeros((n, *shape), np.float32)
    t1 = jnp.asarray(template.t1)[..., None]
    subject_warp = {"std_mm": subject_warp_std, "smoothing_mm": subject_warp_smoothing}
    for i in range(n):
        label = int(labels[i])
        j = i if label == 0 else i - n_controls
        v_disease = None
        if label == 1:
            v_disease = patient_severity[j] * velocities[patient_subtype[j]]
        raw[i], t_template, t_subject = _subject(
            t1, template, seed, label, j, v_disease, noise_std=noise_std, **subject_warp
        )
        if label == 1:
            truth_template[i], truth[i] = t_template, t_subject

    images = np.stack([_zscore(r) for r in raw])
    group = truth_template[labels == 1].mean(axis=0) if n_patients else np.zeros(shape, np.float32)
    params = {
        "n_controls": int(n_controls),
        "n_patients": int(n_patients),
        "shape": list(shape),
        "subtypes": list(chosen),
        "severity": [lo, hi],
        "region_smoothing": float(region_smoothing),
        "subject_warp_std": float(subject_warp_std),
        "subject_warp_smoothing": float(subject_warp_smoothing),
        "noise_std": float(noise_std),
        "seed": int(seed),
    }
    recipe = {
        "dataset": _DATASET,
        "params": params,
        "regions": [r.to_json() for r in regions],
        "template": {"source": "nilearn (MNI ICBM152 2009a sym, 1 mm)", **TEMPLATE_FILES},
        "affine": np.asarray(template.affine).tolist(),
        "spacing_mm": list(template.spacing),
        "conventions": {
            "layout": "(D, H, W) = (x, y, z), RAS+, model voxel -> MNI mm by 'affine'",
            "labels": "0 = control, 1 = patient",
            "images": "raw: template T1 units, noise inside the brain, background 0; "
            "load_volume(path, shape) gives the z-scored model input",
            "warps": "pull back; patient image = T(phi_d(phi_w(x))), disease in template "
            "space first, then the subject warp",
            "truth": "log volume change = -log det(I + dd/dx) of the disease warp, measured; "
            "positive = growth; truth_template in template space, truth = truth_template "
            "warped by the subject warp; 0 for controls",
            "group_truth": "mean of truth_template over patients",
            "target": "L = sum_r lvc_r * c_r * G(fraction_r), G a Gaussian blur of std "
            "region_smoothing mm, c_r: fraction-weighted mean of c_r * G(fraction_r) over "
            "region r is 1; severity 1",
        },
        "versions": {
            "numpy": np.__version__,
            "jax": jax.__version__,
            "nibabel": nib.__version__,
            "nilearn": _version("nilearn"),
        },
    }
    region_masks = {r.name: np.asarray(region_fraction(r, shape) > 0.5) for r in regions}
    return Cohort(
        images=images,
        raw_images=raw,
        labels=labels,
        subjects=tuple(f"sub-{i:04d}" for i in range(n)),
        severities=np.concatenate([np.zeros(n_controls), patient_severity]).astype(np.float32),
        subtypes=(CONTROL,) * n_controls + tuple(patient_subtype),
        truth=truth,
        truth_template=truth_template,
        group_truth=group.astype(np.float32),
        targets=types.MappingProxyType(targets),
        region_masks=types.MappingProxyType(region_masks),
        brain_mask=np.array(template.brain_mask),
        template=np.array(template.t1),
        affine=np.array(template.affine),
        regions=tuple(regions),
        recipe=types.MappingProxyType(recipe),
    )


def counterfactual(
    cohort: Cohort, index: int, *, subtype: str | None, severity: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Subject ``index`` of ``cohort``, its own anatomy and noise, with another disease.

    ``subtype`` at ``severity`` (one of ``cohort.targets``), or healthy (``subtype=None``):
    a control as it would look as a patient, a patient without its disease. With the
    subject's own subtype and severity (or None for a control) this is its cohort image.

    Returns:
      ``(image, truth)``: the z-scored model input ``(D, H, W)`` (as ``cohort.images``) and
      the disease's log volume change in the subject's space (zeros when healthy).
    """
    params = cohort.recipe["params"]
    if not 0 <= index < len(cohort.labels):
        raise ValueError(f"index must be in [0, {len(cohort.labels)}), got {index}")
    if subtype is not None and subtype not in cohort.targets:
        raise ValueError(
            f"subtype must be None or one of {sorted(cohort.targets)}, got {subtype!r}"
        )
    label = int(cohort.labels[index])
    j = index if label == 0 else index - params["n_controls"]
    template = load_template(params["shape"])
    v_disease = None
    if subtype is not None:
        v_disease = severity * poisson_velocity(cohort.targets[subtype], template.spacing)
    raw, _, truth = _subject(
        jnp.asarray(template.t1)[..., None],
        template,
        params["seed"],
        label,
        j,
        v_disease,
        std_mm=params["subject_warp_std"],
        smoothing_mm=params["subject_warp_smoothing"],
        noise_std=params["noise_std"],
    )
    return _zscore(raw), (np.zeros_like(raw) if truth is None else truth)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


# ------------------------------------------------------------------------------ writing


def write_cohort(out_dir: str | os.PathLike, cohort: Cohort, *, overwrite: bool = False) -> Path:
    """Writes a cohort as NIfTI files and a scan table, atomically.

    Layout of ``out_dir`` (all NIfTI with ``cohort.affine``, MNI space)::

        cohort.csv                  path, subject, label, severity, subtype, truth,
                                    truth_template (paths relative to out_dir)
        images/sub-XXXX.nii.gz      raw images (load_volume(path, shape=...) = images)
        truth/sub-XXXX.nii.gz       truth in subject space (zeros for controls)
        truth_template/sub-XXXX.nii.gz
        group_truth.nii.gz
        targets/<subtype>.nii.gz    target maps at severity 1
        masks/<region>.nii.gz, masks/brain.nii.gz, template.nii.gz
        regions.json                the regions (load_regions reads it)
        recipe.json                 parameters, conventions, versions
        COMPLETE                    written last

    ``cohort.csv`` is what `jaxinterp.data.read_table` reads. Everything is written into a
    temporary folder beside ``out_dir`` that is then renamed to ``out_dir``, so ``out_dir``
    either does not exist or is complete.

    Args:
      out_dir: the folder to create; its parent must exist.
      cohort: from `make_cohort`.
      overwrite: replace an existing ``out_dir``, only if it holds a cohort written by
        this function (its ``recipe.json`` says so); anything else is never deleted.

    Returns:
      The path of ``cohort.csv``.

    Raises:
      FileExistsError: ``out_dir`` exists and ``overwrite`` is False, or it is not a
        synth3d cohort.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
        if not _is_cohort_dir(out_dir):
            raise FileExistsError(
                f"{out_dir} exists and is not a synth3d cohort; refusing to replace it"
            )
    tmp = new_folder_beside(out_dir)
    try:
        _write_all(tmp, cohort)
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / _TABLE


def _write_all(folder: Path, cohort: Cohort) -> None:
    affine = cohort.affine
    for sub in ("images", "truth", "truth_template", "targets", "masks"):
        (folder / sub).mkdir()
    rows = []
    for i, subject in enumerate(cohort.subjects):
        rel = {k: f"{k}/{subject}.nii.gz" for k in ("images", "truth", "truth_template")}
        save_nifti(
            folder / rel["images"],
            cohort.raw_images[i],
            affine,
            description=f"synth3d {subject} label {int(cohort.labels[i])}",
        )
        save_nifti(
            folder / rel["truth"],
            cohort.truth[i],
            affine,
            description=f"synth3d {subject} log volume change, subject space",
        )
        save_nifti(
            folder / rel["truth_template"],
            cohort.truth_template[i],
            affine,
            description=f"synth3d {subject} log volume change, template space",
        )
        rows.append(
            [
                rel["images"],
                subject,
                int(cohort.labels[i]),
                f"{float(cohort.severities[i]):.9g}",
                cohort.subtypes[i],
                rel["truth"],
                rel["truth_template"],
            ]
        )
    save_nifti(
        folder / "group_truth.nii.gz",
        cohort.group_truth,
        affine,
        description="synth3d group truth: mean patient log volume change",
    )
    for name, target in cohort.targets.items():
        save_nifti(
            folder / "targets" / f"{name}.nii.gz",
            target,
            affine,
            description=f"synth3d target log volume change, {name}, severity 1",
        )
    for name, mask in cohort.region_masks.items():
        save_nifti(
            folder / "masks" / f"{name}.nii.gz", mask, affine, description=f"synth3d region {name}"
        )
    save_nifti(
        folder / "masks" / "brain.nii.gz",
        cohort.brain_mask,
        affine,
        description="synth3d template brain mask",
    )
    save_nifti(
        folder / "template.nii.gz",
        cohort.template,
        affine,
        description="MNI ICBM152 2009a T1 on the model grid",
    )

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["path", "subject", "label", "severity", "subtype", "truth", "truth_template"])
    writer.writerows(rows)
    (folder / _TABLE).write_text(table.getvalue(), encoding="utf-8")
    regions = [r.to_json() for r in cohort.regions]
    (folder / "regions.json").write_text(json.dumps(regions, indent=2) + "\n", encoding="utf-8")
    recipe = json.dumps(dict(cohort.recipe), indent=2, sort_keys=True) + "\n"
    (folder / "recipe.json").write_text(recipe, encoding="utf-8")
    (folder / "COMPLETE").write_text("", encoding="utf-8")


def _is_cohort_dir(path: Path) -> bool:
    try:
        recipe = json.loads((path / "recipe.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return path.is_dir() and not path.is_symlink() and recipe.get("dataset") == _DATASET
