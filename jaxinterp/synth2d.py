"""The synthetic 2D dataset of the paper (section 4.1), with its ground truth.

Every image is ``size x size`` (default 32 x 32) and holds four Gaussian blobs, one per
quadrant. The quadrants are numbered in row-major order of the array (axis 0 = row, top =
row 0; axis 1 = column, left = column 0)::

    0 = top-left     1 = top-right
    2 = bottom-left  3 = bottom-right

Quadrants 0 and 3 are the *diagonal* ones, 1 and 2 the *off-diagonal* ones. Blob ``q`` of an
image is ``magnitudes[q] * exp(-|x - centres[q]|^2 / (2 blob_sigma^2))``: a Gaussian of unit
peak scaled by its magnitude, with ``x`` the (row, column) index of a pixel. Its centre is
drawn uniformly (continuous) in the square spanned by the pixel centres of its quadrant,
``[r0, r0 + size/2 - 1] x [c0, c0 + size/2 - 1]``. Blobs are added (they may overlap a
little near quadrant borders), then Gaussian noise of std ``noise_std`` is added.

Magnitudes: off-diagonal blobs ~ U(1, 5) in controls (label 0) and U(4, 8) in patients
(label 1); diagonal blobs ~ U(1, 6) in both groups (subject-specific, not group-related).
The paper does not give the blob width; jaxinterp fixes ``blob_sigma = 2.5`` pixels.

Arrays are channels-last: images are ``(N, H, W, 1)`` float32.

Ground truth. The only group-related content of an image is the magnitude of its two
off-diagonal blobs. For each image the dataset stores

- ``offdiag`` ``(N, H, W)``: the two off-diagonal blobs of that image alone (magnitude
  times unit-peak Gaussian, no noise, no diagonal blobs), and
- ``offdiag_unit`` ``(N, H, W)``: the same two blobs with unit peak (magnitudes set to 1).

The pattern of a simulator is ``X - X^`` (original minus simulated). Turning a control into
a patient raises the off-diagonal magnitudes, so the *signed* truth for "inject" is
``-offdiag`` (the pattern is negative on the off-diagonal blobs); for "remove" applied to a
patient it is ``+offdiag``. Normalized cross-correlation is invariant to a positive scale, so
any per-blob magnitude change proportional to the blob's own magnitude scores 1 against
``offdiag``; a change equal on both blobs (what the group means suggest: +3 on average
each) scores 1 against ``offdiag_unit``. ``offdiag`` is the reference truth of jaxinterp
(it is the image's "magnitude carried by the off-diagonal blobs"); report ``offdiag_unit``
beside it when the difference matters.

Randomness: ``numpy.random.default_rng`` streams spawned from ``SeedSequence(seed)``, one
each for group order, magnitudes, centres and noise, so changing ``noise_std`` leaves the
blobs unchanged. The order of images is shuffled (labels are interleaved).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.atomic import atomic_path, write_text

__all__ = [
    "DIAGONAL",
    "OFF_DIAGONAL",
    "load_synth2d",
    "make_synth2d",
    "save_synth2d",
    "split",
    "synth2d_recipe",
]

DIAGONAL = (0, 3)  # top-left, bottom-right
OFF_DIAGONAL = (1, 2)  # top-right, bottom-left

_DATA_FILE = "synth2d.npz"
_RECIPE_FILE = "recipe.json"


def synth2d_recipe(**params: Any) -> dict[str, Any]:
    """Every parameter of `make_synth2d` (its defaults where not given) plus the
    conventions and the numpy version.

    ``make_synth2d(**recipe["params"])`` regenerates the data. An unknown parameter is a
    ``TypeError``, as in `make_synth2d`.
    """
    bound = inspect.signature(make_synth2d).bind(**params)
    bound.apply_defaults()

    def plain(value: Any) -> Any:  # JSON-ready: ints stay ints, pairs become lists
        if isinstance(value, tuple | list):
            return [float(v) for v in value]
        return int(value) if isinstance(value, int | np.integer) else float(value)

    return {
        "dataset": "synth2d",
        "params": {name: plain(value) for name, value in bound.arguments.items()},
        "conventions": {
            "layout": "images (N, H, W, 1) float32, channels-last; axis 0 = row (top = 0)",
            "quadrants": "0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right",
            "diagonal": list(DIAGONAL),
            "off_diagonal": list(OFF_DIAGONAL),
            "labels": "0 = control, 1 = patient",
            "blob": "magnitude * exp(-|x - centre|^2 / (2 blob_sigma^2)), x = (row, col)",
            "centres": "uniform in the pixel-centre square of the quadrant",
            "ground_truth": "offdiag = the two off-diagonal blobs alone; pattern X - X^ "
            "should match -offdiag for inject, +offdiag for remove",
        },
        "numpy_version": np.__version__,
    }


def make_synth2d(
    *,
    n_per_group: int = 512,
    size: int = 32,
    blob_sigma: float = 2.5,
    noise_std: float = 0.002,
    offdiag_control: tuple[float, float] = (1.0, 5.0),
    offdiag_patient: tuple[float, float] = (4.0, 8.0),
    diag: tuple[float, float] = (1.0, 6.0),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Generates the synthetic 2D dataset (see the module docstring for the conventions).

    Args:
      n_per_group: images per group (controls, patients).
      size: image side in pixels; must be even (quadrants are ``size // 2``).
      blob_sigma: standard deviation of every Gaussian blob, in pixels.
      noise_std: standard deviation of the additive Gaussian noise.
      offdiag_control: (low, high) of the off-diagonal magnitudes of controls.
      offdiag_patient: (low, high) of the off-diagonal magnitudes of patients.
      diag: (low, high) of the diagonal magnitudes, both groups.
      seed: the seed of every random draw.

    Returns:
      A dict of numpy arrays, ``N = 2 * n_per_group``:
      ``images`` (N, size, size, 1) float32; ``labels`` (N,) int32, 0 = control,
      1 = patient; ``magnitudes`` (N, 4) float32 per quadrant; ``centres`` (N, 4, 2) float32,
      (row, column) in pixels per quadrant; ``offdiag`` (N, size, size) float32, the two
      off-diagonal blobs without noise; ``offdiag_unit`` (N, size, size) float32, the same
      blobs with unit peak.
    """
    if n_per_group < 1:
        raise ValueError(f"n_per_group must be >= 1, got {n_per_group}")
    if size < 2 or size % 2:
        raise ValueError(f"size must be even and >= 2, got {size}")
    if blob_sigma <= 0:
        raise ValueError(f"blob_sigma must be > 0, got {blob_sigma}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    for name, (low, high) in (
        ("offdiag_control", offdiag_control),
        ("offdiag_patient", offdiag_patient),
        ("diag", diag),
    ):
        if not low <= high:
            raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")

    n = 2 * n_per_group
    half = size // 2
    rng_order, rng_mag, rng_centre, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )

    labels = np.repeat(np.arange(2, dtype=np.int32), n_per_group)
    labels = labels[rng_order.permutation(n)]

    magnitudes = np.empty((n, 4), np.float64)
    magnitudes[:, list(DIAGONAL)] = rng_mag.uniform(*diag, size=(n, 2))
    offdiag_low = np.where(labels == 1, offdiag_patient[0], offdiag_control[0])
    offdiag_high = np.where(labels == 1, offdiag_patient[1], offdiag_control[1])
    magnitudes[:, list(OFF_DIAGONAL)] = rng_mag.uniform(
        offdiag_low[:, None], offdiag_high[:, None], size=(n, 2)
    )

    origins = np.array([[0, 0], [0, half], [half, 0], [half, half]], np.float64)  # (4, 2)
    centres = origins + rng_centre.uniform(0.0, half - 1.0, size=(n, 4, 2))

    grid = np.arange(size, dtype=np.float64)
    # unit-peak blobs (N, 4, H, W); separable Gaussian: rows times columns.
    rows = np.exp(-((grid - centres[..., 0, None]) ** 2) / (2.0 * blob_sigma**2))
    cols = np.exp(-((grid - centres[..., 1, None]) ** 2) / (2.0 * blob_sigma**2))
    unit = rows[..., :, None] * cols[..., None, :]
    blobs = magnitudes[..., None, None] * unit

    clean = blobs.sum(axis=1)
    noise = rng_noise.normal(0.0, noise_std, size=clean.shape) if noise_std > 0 else 0.0
    images = (clean + noise)[..., None]

    off = list(OFF_DIAGONAL)
    return {
        "images": images.astype(np.float32),
        "labels": labels,
        "magnitudes": magnitudes.astype(np.float32),
        "centres": centres.astype(np.float32),
        "offdiag": blobs[:, off].sum(axis=1).astype(np.float32),
        "offdiag_unit": unit[:, off].sum(axis=1).astype(np.float32),
    }


def split(
    data: Mapping[str, np.ndarray], *, test_fraction: float = 0.2, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Stratified random split into (train, test).

    In each label group ``round(test_fraction * group size)`` images go to the test set.
    Every array of ``data`` whose leading axis has length N is indexed; each returned dict
    also holds ``index`` (int64), the positions of its images in ``data`` (sorted).
    Deterministic per seed.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(data["labels"])
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = int(round(test_fraction * members.size))
        test_parts.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test_parts)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(n), test_idx).astype(np.int64)

    def take(idx: np.ndarray) -> dict[str, np.ndarray]:
        out = {
            k: np.asarray(v)[idx]
            for k, v in data.items()
            if k != "index" and np.ndim(v) >= 1 and np.shape(v)[0] == n
        }
        out["index"] = idx
        return out

    return take(train_idx), take(test_idx)


def save_synth2d(
    out_dir: str | os.PathLike,
    data: Mapping[str, np.ndarray],
    recipe: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Writes ``out_dir/synth2d.npz`` (uncompressed) and ``out_dir/recipe.json``.

    Each file is written to a temporary file in ``out_dir`` and moved into place with
    ``os.replace``, so a reader never sees a partial file. Raises ``FileExistsError``
    before writing anything if either file exists and ``overwrite`` is False.
    Returns the two paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path, recipe_path = out_dir / _DATA_FILE, out_dir / _RECIPE_FILE
    if not overwrite:
        for p in (data_path, recipe_path):
            if p.exists():
                raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")
    arrays = {k: np.asarray(v) for k, v in data.items()}
    text = json.dumps(recipe, indent=2, sort_keys=True) + "\n"
    with atomic_path(data_path) as tmp:  # the temporary name ends in .npz too
        np.savez(tmp, **arrays)
    write_text(recipe_path, text)
    return data_path, recipe_path


def load_synth2d(out_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads what `save_synth2d` wrote: (data, recipe)."""
    out_dir = Path(out_dir)
    with np.load(out_dir / _DATA_FILE, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    recipe = json.loads((out_dir / _RECIPE_FILE).read_text(encoding="utf-8"))
    return data, recipe
