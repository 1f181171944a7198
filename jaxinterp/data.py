"""3D input of jaxinterp: the scan table, NIfTI loading onto the model grid, splits, writing.

Conventions:

- World space is the scanner/template space of the NIfTI affine, in mm, RAS+.
- Every loaded volume is first reoriented to the closest canonical RAS+ orientation
  (``nibabel.as_closest_canonical``): array axis 0 runs to the Right, axis 1 to the
  Anterior, axis 2 to the Superior. Arrays are ``(D, H, W)`` = (x, y, z) in that order;
  models add the channel last: ``(N, D, H, W, 1)``.
- The model grid covers the field of view of the reoriented scan with ``shape`` voxels:
  voxel edges line up with the scan's outer voxel edges, so the centre of the grid is the
  centre of the scan and the model voxel size is ``native size * native voxels / shape``
  (anisotropic when the scan is not a cube). Its affine is returned, so a map computed on
  the model grid can be saved and sits at the right place in world space.
- Intensities are z-scored inside a brain mask; voxels outside the mask are set to 0, the
  value the warp reads outside the volume (zero padding).

Table format (CSV or TSV): one row per scan, columns ``path`` (relative paths resolved
against the table's directory), ``subject``, ``label`` (``0``/``1`` or
``control``/``patient``, or a user mapping), and any covariates.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import nibabel.processing
import numpy as np
import scipy.ndimage

from jaxinterp.atomic import atomic_path

__all__ = [
    "DEFAULT_LABELS",
    "DataError",
    "Scan",
    "VolumeInfo",
    "load_volume",
    "model_grid_affine",
    "read_table",
    "resample_to_native",
    "save_nifti",
    "subject_split",
]

# Accepted label spellings when the user gives no mapping (matched case-insensitively).
DEFAULT_LABELS: Mapping[str, int] = types.MappingProxyType(
    {"0": 0, "1": 1, "control": 0, "patient": 1}
)
_REQUIRED = ("path", "subject", "label")
_MAX_ERRORS = 20  # errors listed in one DataError


class DataError(ValueError):
    """Invalid input data; the message names the file (and the table line) at fault."""


@dataclasses.dataclass(frozen=True)
class Scan:
    """One row of the scan table.

    Attributes:
      path: absolute path of the image.
      subject: subject identifier (several scans may share one).
      label: 0 = control, 1 = patient.
      covariates: the other columns of the table, read-only; float for a numeric column
        (an empty cell is NaN), str otherwise.
      line: line of the table the scan came from (the header is line 1).
    """

    path: Path
    subject: str
    label: int
    covariates: Mapping[str, float | str] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}), hash=False
    )
    line: int = 0


def read_table(path: str | os.PathLike, *, labels: Mapping[str, int] | None = None) -> list[Scan]:
    """Reads and validates a scan table.

    The delimiter is chosen by extension (``.csv`` comma, ``.tsv``/``.tab`` tab), otherwise
    sniffed among comma, tab and semicolon. Header names are stripped of whitespace; a UTF-8
    byte-order mark is ignored; blank lines are skipped.

    Args:
      path: the CSV or TSV file.
      labels: mapping from the strings of the ``label`` column to 0 (control) or 1
        (patient), e.g. ``{"CN": 0, "AD": 1}``, matched exactly after stripping spaces.
        When None, `DEFAULT_LABELS` is used (case-insensitive).

    Returns:
      The scans in table order.

    Raises:
      DataError: naming the table and the lines at fault, for: an unreadable table, a
        missing column, an empty cell in a required column, a missing image file, an
        unknown label, a duplicated path, a subject whose scans carry different labels.
        All problems found are listed in one error.
    """
    table = Path(path)
    if labels is None:
        mapping, fold = dict(DEFAULT_LABELS), True
    else:
        mapping, fold = {str(k).strip(): v for k, v in labels.items()}, False
        bad = {k: v for k, v in mapping.items() if v not in (0, 1) or isinstance(v, bool)}
        if bad:
            raise ValueError(f"labels must map to 0 or 1, got {bad}")

    try:
        text = table.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{table}: cannot read the scan table ({exc})") from exc
    reader = csv.reader(text.splitlines(), delimiter=_delimiter(table, text))
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        raise DataError(f"{table}: the scan table is empty")
    header = [h.strip() for h in header]
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise DataError(
            f"{table}: missing column(s) {', '.join(map(repr, missing))} "
            f"(found: {', '.join(map(repr, header))})"
        )
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataError(f"{table}: duplicated column(s) {', '.join(map(repr, duplicated))}")

    errors: list[str] = []
    rows: list[tuple[int, dict[str, str]]] = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        line = reader.line_num
        if len(cells) != len(header):
            errors.append(f"line {line}: {len(cells)} fields, the header has {len(header)}")
            continue
        rows.append((line, {h: c.strip() for h, c in zip(header, cells, strict=True)}))
    if not rows and not errors:
        raise DataError(f"{table}: the scan table has no rows")

    covariate_names = [h for h in header if h not in _REQUIRED]
    numeric = {n: all(_is_float(r[n]) for _, r in rows if r[n]) for n in covariate_names}

    scans: list[Scan] = []
    seen_paths: dict[Path, int] = {}
    for line, row in rows:
        empty = [c for c in _REQUIRED if not row[c]]
        if empty:
            errors.append(f"line {line}: empty {', '.join(map(repr, empty))}")
            continue
        scan_path = Path(row["path"]).expanduser()
        if not scan_path.is_absolute():
            scan_path = table.parent / scan_path
        scan_path = Path(os.path.abspath(scan_path))
        key = row["label"].casefold() if fold else row["label"]
        label = mapping.get(key)
        if label is None:
            errors.append(
                f"line {line}: unknown label {row['label']!r} "
                f"(accepted: {', '.join(map(repr, mapping))})"
            )
        if not scan_path.is_file():
            errors.append(f"line {line}: file not found: {scan_path}")
        if scan_path in seen_paths:
            errors.append(f"line {line}: path {scan_path} already on line {seen_paths[scan_path]}")
        else:
            seen_paths[scan_path] = line
        covariates = {
            name: (float(row[name]) if row[name] else math.nan) if numeric[name] else row[name]
            for name in covariate_names
        }
        if label is not None:
            scans.append(
                Scan(
                    path=scan_path,
                    subject=row["subject"],
                    label=int(label),
                    covariates=types.MappingProxyType(covariates),
                    line=line,
                )
            )

    by_subject: dict[str, list[Scan]] = {}
    for scan in scans:
        by_subject.setdefault(scan.subject, []).append(scan)
    for subject, members in by_subject.items():
        if len({s.label for s in members}) > 1:
            detail = ", ".join(f"line {s.line} -> {s.label}" for s in members)
            errors.append(f"subject {subject!r} has scans with different labels ({detail})")

    if errors:
        shown = errors[:_MAX_ERRORS]
        more = len(errors) - len(shown)
        msg = f"{table}: invalid scan table:\n  " + "\n  ".join(shown)
        if more:
            msg += f"\n  ... and {more} more"
        raise DataError(msg)
    return scans


def subject_split(
    scans: Sequence[Scan], *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Scan], list[Scan]]:
    """Splits scans into (train, test) by subject, stratified by label.

    Subjects (not scans) are shuffled within each label and ``round(test_fraction * number
    of subjects with that label)`` go to the test set, so no subject is on both sides. The
    result depends only on the set of (subject, label) pairs and the seed, not on the order
    of ``scans``. Each side keeps the input order.

    Raises:
      DataError: if a subject's scans carry different labels.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    subject_label: dict[str, int] = {}
    for scan in scans:
        if subject_label.setdefault(scan.subject, scan.label) != scan.label:
            raise DataError(f"subject {scan.subject!r} has scans with different labels")
    rng = np.random.default_rng(seed)
    test_subjects: set[str] = set()
    for label in sorted(set(subject_label.values())):
        members = sorted(s for s, lab in subject_label.items() if lab == label)
        n_test = int(round(test_fraction * len(members)))
        order = rng.permutation(len(members))
        test_subjects.update(members[i] for i in order[:n_test])
    train = [s for s in scans if s.subject not in test_subjects]
    test = [s for s in scans if s.subject in test_subjects]
    return train, test


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeInfo:
    """What `load_volume` did to a scan.

    Attributes:
      path: the file read.
      native_shape: shape of the scan on disk (3D, after squeezing a single-volume 4D).
      native_affine: affine of the scan on disk (voxel -> world mm).
      native_axcodes: orientation of the scan on disk, e.g. ("L", "P", "S").
      canonical_affine: affine after reorientation to RAS+ (same grid, axes permuted/flipped).
      model_affine: affine of the model grid (voxel -> world mm).
      mean: intensity mean inside the mask before z-scoring (model grid).
      std: intensity std inside the mask before z-scoring (model grid).
      mask: boolean brain mask on the model grid, ``(D, H, W)``.
    """

    path: Path
    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    native_axcodes: tuple[str, str, str]
    canonical_affine: np.ndarray
    model_affine: np.ndarray
    mean: float
    std: float
    mask: np.ndarray


def model_grid_affine(
    affine: np.ndarray, native_shape: Sequence[int], shape: Sequence[int]
) -> np.ndarray:
    """Affine of a grid of ``shape`` voxels covering the field of view of a scan.

    The outer voxel edges of both grids coincide: model voxel ``j`` has its centre at
    native voxel coordinate ``(j + 0.5) * n / m - 0.5`` (``n`` native, ``m`` model voxels
    per axis), so the two grid centres are the same world point.
    """
    scale = np.asarray(native_shape, np.float64) / np.asarray(shape, np.float64)
    model_to_native = np.eye(4)
    model_to_native[:3, :3] = np.diag(scale)
    model_to_native[:3, 3] = 0.5 * scale - 0.5
    return np.asarray(affine, np.float64) @ model_to_native


def load_volume(
    path: str | os.PathLike,
    *,
    shape: Sequence[int] = (64, 64, 64),
    mask: str | os.PathLike | nib.spatialimages.SpatialImage | np.ndarray | None = None,
    mask_threshold: float = 0.05,
    antialias: bool = True,
    grid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, VolumeInfo]:
    """Loads a NIfTI scan onto the model grid, z-scored inside a brain mask.

    Steps: read with nibabel (a 4D file holding a single volume is squeezed to 3D); check
    the data; reorient to closest canonical RAS+; if the grid shrinks, blur with a Gaussian
    of std ``(factor - 1) / 2`` native voxels per axis (``factor`` = model / native voxel
    size; the anti-aliasing rule of scikit-image's ``resize``) so that trilinear sampling
    does not alias noise; resample trilinearly onto the model grid (see
    `model_grid_affine`, or ``grid``);
    z-score inside the mask and set the voxels outside it to 0.

    Args:
      path: a ``.nii`` or ``.nii.gz`` file (any 3D image nibabel reads works).
      shape: model grid ``(D, H, W)`` along the canonical (R, A, S) axes.
      mask: the brain mask. None: voxels above ``mask_threshold`` times the robust
        maximum (99.5th percentile) of the resampled image, which suits skull-stripped
        scans with a zero background. A path or nibabel image: resampled from its own
        world space onto the model grid (trilinear, then > 0.5). An array: already on the
        model grid, shape ``shape``, nonzero = brain.
      mask_threshold: fraction of the robust maximum for the automatic mask.
      antialias: blur before downsampling (see above).
      grid: the model grid's affine (voxel indices to world mm), e.g. another scan's, to
        load this image onto that grid instead of one covering its own field of view.

    Returns:
      ``(volume, model_affine, info)``: volume ``(D, H, W)`` float32 in RAS+ order;
      model_affine ``(4, 4)`` float64 mapping model voxel indices to world mm; info a
      `VolumeInfo`.

    Raises:
      DataError: naming the file, if it cannot be read, is not 3D (or 4D with one volume),
        has a spatial axis of length < 2, holds non-finite values, is constant, or leaves
        an empty or constant mask.
    """
    path = Path(path)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive ints, got {shape}")
    img = _read_image(path)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if data.size == 0:
        raise DataError(f"{path}: the image is empty (shape {data.shape})")
    if not np.isfinite(data).all():
        bad = int(np.size(data) - np.isfinite(data).sum())
        raise DataError(f"{path}: {bad} voxels are NaN or infinite")
    if float(data.max()) == float(data.min()):
        raise DataError(f"{path}: the image is constant ({float(data.min())})")

    canonical = nib.as_closest_canonical(img)
    data = np.asarray(canonical.get_fdata(dtype=np.float32))
    if grid is None:
        model_affine = model_grid_affine(canonical.affine, data.shape, shape)
    else:
        model_affine = np.asarray(grid, np.float64)
        if model_affine.shape != (4, 4) or not np.isfinite(model_affine).all():
            raise ValueError(f"grid must be a finite (4, 4) affine, got {model_affine.shape}")
    if antialias:
        voxel = lambda a: np.linalg.norm(a[:3, :3], axis=0)  # noqa: E731
        factor = voxel(model_affine) / voxel(np.asarray(canonical.affine, np.float64))
        sigma = np.maximum(0.0, (factor - 1.0) / 2.0)
        if sigma.any():
            data = scipy.ndimage.gaussian_filter(data, sigma, mode="nearest")
    # nibabel.processing.resample_from_to composes the voxel-to-voxel map from the two
    # affines itself (inv(A_from) @ A_to) and runs scipy.ndimage.affine_transform: one
    # well-tested library call instead of our own affine algebra. order=1 is trilinear.
    # mode="nearest": when the model grid is finer than the scan, its outer voxel centres
    # lie up to half a native voxel beyond the scan's outer centres; extend the edge there.
    resampled = nibabel.processing.resample_from_to(
        nib.Nifti1Image(data, canonical.affine), (shape, model_affine), order=1, mode="nearest"
    )
    volume = np.asarray(resampled.dataobj, dtype=np.float32)

    brain = _model_mask(path, volume, model_affine, mask, mask_threshold)
    inside = volume[brain].astype(np.float64)
    mean, std = float(inside.mean()), float(inside.std())
    if not std > 0:
        raise DataError(f"{path}: the image is constant inside the brain mask")
    out = np.where(brain, (volume - mean) / std, 0.0).astype(np.float32)
    info = VolumeInfo(
        path=path,
        native_shape=tuple(int(s) for s in img.shape),
        native_affine=np.asarray(img.affine, np.float64),
        native_axcodes=tuple(nib.aff2axcodes(img.affine)),
        canonical_affine=np.asarray(canonical.affine, np.float64),
        model_affine=model_affine,
        mean=mean,
        std=std,
        mask=brain,
    )
    return out, model_affine, info


def resample_to_native(
    map_volume: np.ndarray,
    model_affine: np.ndarray,
    native_img: str | os.PathLike | nib.spatialimages.SpatialImage,
    *,
    order: int = 1,
) -> np.ndarray:
    """Brings a map on the model grid back onto a scan's native grid.

    Args:
      map_volume: ``(D, H, W)`` map on the model grid (RAS+ axis order, as `load_volume`
        returns).
      model_affine: the model grid's affine, as returned by `load_volume`.
      native_img: the scan (path or nibabel image) whose grid to sample on; only its
        shape and affine are used (a single-volume 4D counts as 3D).
      order: spline order, 1 = trilinear, 0 = nearest (for label maps).

    Returns:
      float32 array with the scan's on-disk shape and voxel order (not reoriented), so
      ``save_nifti(p, out, native_affine)`` overlays the scan. Native voxels beyond the
      outermost model voxel centres take the nearest edge value.
    """
    map_volume = np.asarray(map_volume, np.float32)
    if map_volume.ndim != 3:
        raise ValueError(f"map_volume must be 3D (D, H, W), got shape {map_volume.shape}")
    if not isinstance(native_img, nib.spatialimages.SpatialImage):
        native_img = _read_image(Path(native_img), read_data=False)
    target = (tuple(native_img.shape[:3]), native_img.affine)
    out = nibabel.processing.resample_from_to(
        nib.Nifti1Image(map_volume, np.asarray(model_affine, np.float64)),
        target,
        order=order,
        mode="nearest",
    )
    return np.asarray(out.dataobj, dtype=np.float32)


def save_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    description: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a 3D or 4D array as NIfTI-1, atomically.

    The array is written as is (voxel order = array order; ``affine`` maps voxel indices to
    world mm); float64 is stored as float32 and bool as uint8. The file goes to a temporary
    file in the same directory and is moved into place with ``os.replace``, so a reader
    never sees a partial file. The sform and qform both hold ``affine`` (code 2, aligned).

    Args:
      path: destination ending in ``.nii`` or ``.nii.gz`` (compressed).
      array: ``(D, H, W)`` or ``(D, H, W, C)``.
      affine: ``(4, 4)`` voxel -> world mm.
      description: stored in the header's ``descrip`` field (at most 80 ASCII bytes).
      overwrite: replace an existing file; by default an existing path is refused so that
        an input is never overwritten.

    Raises:
      FileExistsError: the path exists and ``overwrite`` is False.
    """
    path = Path(path)
    name = path.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii" if name.endswith(".nii") else ""
    if not suffix:
        raise ValueError(f"{path}: the file name must end with .nii or .nii.gz")
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise ValueError(f"array must be 3D or 4D, got shape {array.shape}")
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite (4, 4) array, got shape {affine.shape}")
    if description is not None and len(description.encode("ascii")) > 80:
        raise ValueError(f"description must be at most 80 ASCII bytes: {description!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=2)
    img.set_qform(affine, code=2)
    if description is not None:
        img.header["descrip"] = description

    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def _read_image(path: Path, *, read_data: bool = True) -> Any:
    """nibabel image of ``path`` squeezed to 3D, or a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(path)
        img = nib.funcs.squeeze_image(img)  # drops trailing length-1 axes beyond the 3rd
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc
    if len(img.shape) != 3:
        raise DataError(f"{path}: expected a 3D image (or 4D with one volume), shape {img.shape}")
    if min(img.shape) < 2:
        raise DataError(f"{path}: not a 3D volume, an axis has length < 2 (shape {img.shape})")
    if not read_data:
        return img
    try:
        img.get_fdata(dtype=np.float32)  # read once here so corrupt data fails with the name
    except Exception as exc:
        msg = f"{path}: cannot read the image data ({type(exc).__name__}: {exc})"
        raise DataError(msg) from exc
    return img


def _model_mask(
    path: Path,
    volume: np.ndarray,
    model_affine: np.ndarray,
    mask: Any,
    threshold: float,
) -> np.ndarray:
    if mask is None:
        robust_max = float(np.percentile(volume, 99.5))
        brain = volume > threshold * robust_max
        if robust_max <= 0:
            brain = np.zeros(volume.shape, bool)
    elif isinstance(mask, np.ndarray):
        if mask.shape != volume.shape:
            raise ValueError(f"mask array shape {mask.shape} != model shape {volume.shape}")
        brain = mask.astype(bool)
    else:
        mask_img = mask
        if not isinstance(mask_img, nib.spatialimages.SpatialImage):
            mask_img = _read_image(Path(mask))
        mask_data = np.asarray(mask_img.get_fdata(dtype=np.float32) != 0, np.float32)
        resampled = nibabel.processing.resample_from_to(
            nib.Nifti1Image(mask_data, mask_img.affine),
            (volume.shape, model_affine),
            order=1,
            mode="constant",
            cval=0.0,
        )
        brain = np.asarray(resampled.dataobj) > 0.5
    if brain.sum() < 2:
        raise DataError(f"{path}: the brain mask is empty on the model grid")
    return brain


def _delimiter(table: Path, text: str) -> str:
    ext = table.suffix.lower()
    if ext == ".csv":
        return ","
    if ext in (".tsv", ".tab"):
        return "\t"
    try:
        return csv.Sniffer().sniff(text[:4096], delimiters=",\t;").delimiter
    except csv.Error as exc:
        raise DataError(f"{table}: cannot tell the delimiter; name it .csv or .tsv") from exc


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
