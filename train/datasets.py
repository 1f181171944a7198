"""Datasets in memory, their train/test split, and the deterministic order of batches.

The batch of step ``s`` is a pure function of ``(seed, s)``: each epoch is a permutation
drawn from ``(seed, stream, epoch)``. A run resumed at step ``s`` therefore continues
with exactly the examples an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxinterp import data as scan_data
from jaxinterp import synth2d, synth3d
from jaxinterp.atomic import write_json
from train.config import DataConfig


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images with labels, split into train and test indices."""

    images: np.ndarray  # (N, *spatial, 1) float32, channels-last
    labels: np.ndarray  # (N,) int32, 0 = control, 1 = patient
    train: np.ndarray  # indices of the training images
    test: np.ndarray  # indices of the held-out images
    affine: np.ndarray | None = None  # model-grid affine of 3D scans (voxel -> mm)
    names: tuple[str, ...] = ()  # scan paths or image ids, for outputs

    def subset(self, which: str, label: int | None = None) -> np.ndarray:
        idx = self.train if which == "train" else self.test if which == "test" else None
        if idx is None:
            raise ValueError(f"subset must be 'train' or 'test', got {which!r}")
        return idx if label is None else idx[self.labels[idx] == label]


def load_dataset(config: DataConfig, *, seed: int) -> Dataset:
    """Load (or generate) the images of ``config`` and split them, seeded."""
    if config.kind == "synth2d":
        arrays = synth2d.make_synth2d(n_per_group=config.n_per_group, seed=seed)
        return _from_arrays(arrays, config, seed)
    if config.kind == "synth3d":
        cohort = synth3d.make_cohort(
            n_controls=config.n_per_group,
            n_patients=config.n_per_group,
            shape=tuple(config.shape),
            regions=config.regions,
            seed=seed,
        )
        arrays = {"images": cohort.images[..., None], "labels": cohort.labels}
        return dataclasses.replace(
            _from_arrays(arrays, config, seed), affine=cohort.affine, names=cohort.subjects
        )
    if config.kind == "npz":
        path = _existing(config.path, "an .npz file with 'images' and 'labels'")
        with np.load(path) as f:
            missing = {"images", "labels"} - set(f.files)
            if missing:
                raise ValueError(f"{path}: missing arrays {sorted(missing)}")
            arrays = {k: f[k] for k in f.files}
        images = arrays["images"]
        if images.ndim not in (4, 5) or images.shape[-1] != 1:
            raise ValueError(f"{path}: 'images' must be (N, *spatial, 1), got {images.shape}")
        bad = np.flatnonzero(~np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1))
        if bad.size:
            raise ValueError(
                f"{path}: 'images' holds non-finite values (NaN or inf) in image(s) "
                f"{bad[:5].tolist()}{' ...' if bad.size > 5 else ''}"
            )
        if arrays["labels"].shape != (images.shape[0],):
            raise ValueError(
                f"{path}: 'labels' must be ({images.shape[0]},), one per image, "
                f"got {arrays['labels'].shape}"
            )
        return _from_arrays(arrays, config, seed)
    if config.kind == "table":
        path = _existing(config.path, "a CSV/TSV scan table")
        scans = scan_data.read_table(path)
        train, test = scan_data.subject_split(scans, test_fraction=config.test_fraction, seed=seed)
        order = {s.path: i for i, s in enumerate(scans)}
        volumes, affine = [], None
        for scan in scans:
            volume, affine, _ = scan_data.load_volume(scan.path, shape=tuple(config.shape))
            volumes.append(volume)
        return Dataset(
            images=np.stack(volumes)[..., None].astype(np.float32),
            labels=np.array([s.label for s in scans], np.int32),
            train=np.array(sorted(order[s.path] for s in train), np.int64),
            test=np.array(sorted(order[s.path] for s in test), np.int64),
            affine=affine,
            names=tuple(str(s.path) for s in scans),
        )
    raise ValueError(f"unknown data kind {config.kind!r}: use synth2d, synth3d, npz or table")


def _existing(path: str | None, what: str) -> Path:
    if not path:
        raise ValueError(f"data.path must name {what}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist")
    return p


def _from_arrays(arrays: dict, config: DataConfig, seed: int) -> Dataset:
    labels = np.asarray(arrays["labels"]).astype(np.int32)
    bad = set(np.unique(labels).tolist()) - {0, 1}
    if bad:
        raise ValueError(f"labels must be 0 (control) or 1 (patient), found {sorted(bad)}")
    train, test = synth2d.split({"labels": labels}, test_fraction=config.test_fraction, seed=seed)
    return Dataset(
        images=np.asarray(arrays["images"], np.float32),
        labels=labels,
        train=train["index"],
        test=test["index"],
        names=tuple(f"image{i:05d}" for i in range(labels.shape[0])),
    )


def batch_indices(pool: np.ndarray, batch_size: int, step: int, *, seed: int, stream: int = 0):
    """The ``batch_size`` members of ``pool`` used at ``step`` (epochs of permutations)."""
    if batch_size > pool.size:
        raise ValueError(f"batch size {batch_size} is larger than the {pool.size} images available")
    per_epoch = pool.size // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, stream, epoch]).permutation(pool.size)
    return pool[order[position * batch_size : (position + 1) * batch_size]]


def save_split(path: Path, dataset: Dataset) -> None:
    """Record which images trained and which were held out (JSON, written atomically)."""
    payload = {
        "train": [dataset.names[i] for i in dataset.train],
        "test": [dataset.names[i] for i in dataset.test],
    }
    write_json(path, payload)
