"""Where a 3D group map differs from the truth: its change by distance from a truth region.

    python benchmarks/map_profile3d.py --explain runs/b32/explain --cohort runs/cohort32

Reads an explain output's group maps (``group/log_volume_change_{inject,remove}_mean``,
the remove map's sign flipped so that both show the disease's direction) and brain mask,
and the cohort's group truth and one region's mask (default the ventricles). Voxels of the
brain are put in bands by their distance from the region (0 = inside; 1, 2, 3 voxels; the
rest, "far"); for the truth and each map the table gives each band's mean change and share
of the map's summed |change|, the spread (std) of the far band, and again after a Gaussian
blur of the map by ``FAR_BLUR_SIGMAS`` voxels, the map's NCC with the truth over the brain,
and the NCC it would have with its far band set to 0. A map that decays from the region
more slowly than the truth shows larger means in bands 1-3; one that carries a ripple over
the rest of the brain, a large far share and std; a ripple that survives the blur is broad,
not voxel noise.

A second table asks how blurred each map is: its NCC with the truth smoothed by a Gaussian
of std ``sigma`` voxels, for each sigma of ``BLUR_SIGMAS``, and the sigma where that NCC
peaks. A map that draws the truth's change but low-pass filtered peaks at its filter's
width with an NCC well above its NCC with the truth itself; a map as sharp as the truth
peaks at 0.

    python benchmarks/map_profile3d.py --map free.nii.gz --brain runs/b32/explain --cohort C

profiles one NIfTI map instead (e.g. a free growth map from `truth_cost3d.py --save`), with
the brain mask of an explain output.

    python benchmarks/map_profile3d.py --explain runs/a/explain --cohort C --compare runs/b/explain

adds a third table: how far the group maps agree with another explain output's (two
simulators against one classifier, say) or with one NIfTI map (the classifier's own growth
response, `explain --methods growth_gradient`'s ``group/saliency_growth_gradient_*_mean``),
and with the truth: their NCC near the region (bands 0-3), in the far band and over the
brain. A far band that agrees between runs comes from what they share (the classifier, the
objective), and averaging them keeps it; one that follows the classifier's growth response
and not the truth is the classifier's reading of places the disease does not touch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import scipy.ndimage

from jaxinterp.metrics import ncc

BANDS = ((0.0, 0.5), (0.5, 1.5), (1.5, 2.5), (2.5, 3.5))  # distance in voxels; the rest is far
BLUR_SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)  # Gaussian std in voxels, 0 = the truth
FAR_BLUR_SIGMAS = (1.0, 2.0)  # the far band's std again, the map blurred by these (voxels)


def brain_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """NCC of two NumPy maps inside ``mask``, as a float."""
    return float(ncc(jnp.asarray(a), jnp.asarray(b), mask=jnp.asarray(mask)))


def band_masks(brain: np.ndarray, region: np.ndarray) -> list[np.ndarray]:
    """The brain's voxels in each of ``BANDS`` by distance from ``region``, then the far rest."""
    distance = scipy.ndimage.distance_transform_edt(~region)
    bands = [brain & (distance >= lo) & (distance < hi) for lo, hi in BANDS]
    return [*bands, brain & (distance >= BANDS[-1][1])]


def read_map(path: str | Path) -> np.ndarray:
    """A NIfTI map as float64, as stored (no z-scoring, no resampling)."""
    return np.asarray(nib.load(path).get_fdata(), np.float64)


def group_maps(explain: str | Path) -> dict[str, np.ndarray]:
    """An explain output's group log volume change maps, ``inject`` and ``remove``, the remove
    map's sign flipped so that both show the disease's direction."""
    group = Path(explain, "group")
    return {
        direction: sign * read_map(group / f"log_volume_change_{direction}_mean.nii.gz")
        for direction, sign in (("inject", 1.0), ("remove", -1.0))
    }


def distance_profile(
    map_: np.ndarray, truth: np.ndarray, brain: np.ndarray, region: np.ndarray
) -> dict:
    """The profile of ``map_`` by distance from ``region`` (boolean), over ``brain``;
    ``far_std_blurred[s]``: the far band's std with ``map_`` blurred by a Gaussian of std
    ``s`` voxels (the whole grid blurred, the std taken in the far band)."""
    total = np.abs(map_[brain]).sum()
    masks = band_masks(brain, region)
    bands = [
        {"voxels": int(band.sum()), "mean": float(map_[band].mean()),
         "share": float(np.abs(map_[band]).sum() / total)}
        for band in masks
    ]  # fmt: skip
    far = masks[-1]
    cut = np.where(far, 0.0, map_)
    return {
        "bands": bands,
        "far_std": float(map_[far].std()),
        "far_std_blurred": {
            s: float(scipy.ndimage.gaussian_filter(map_, s)[far].std()) for s in FAR_BLUR_SIGMAS
        },
        "ncc": brain_ncc(map_, truth, brain),
        "ncc_far_zeroed": brain_ncc(cut, truth, brain),
    }


def band_agreement(
    a: np.ndarray, b: np.ndarray, brain: np.ndarray, region: np.ndarray
) -> dict[str, float]:
    """NCC of maps ``a`` and ``b`` near ``region`` (bands 0-3 of `band_masks`), in the far
    band, and over the whole ``brain``."""
    masks = band_masks(brain, region)
    near = np.any(masks[:-1], axis=0)
    return {
        "near": brain_ncc(a, b, near),
        "far": brain_ncc(a, b, masks[-1]),
        "brain": brain_ncc(a, b, brain),
    }


def blur_match(
    map_: np.ndarray, truth: np.ndarray, brain: np.ndarray, sigmas=BLUR_SIGMAS
) -> dict[float, float]:
    """NCC over ``brain`` of ``map_`` with ``truth`` smoothed by a Gaussian of each std (voxels;
    0 = unsmoothed: scipy leaves the array as it is; the whole grid is smoothed, the NCC
    taken inside the brain)."""
    return {
        float(s): brain_ncc(map_, scipy.ndimage.gaussian_filter(truth, s), brain) for s in sigmas
    }


def region_parts(brain: np.ndarray, region: np.ndarray, axis: int) -> dict[str, np.ndarray]:
    """The brain's voxels near ``region`` (bands 0-3 of `band_masks`), and their halves of
    lower and of higher index along ``axis``, split at the region's centroid."""
    near = np.any(band_masks(brain, region)[:-1], axis=0)
    centre = np.argwhere(region).mean(axis=0)[axis]
    index = np.indices(region.shape)[axis]
    return {
        "near": near,
        "low half": near & (index < centre),
        "high half": near & (index >= centre),
    }


def side_ratios(map_: np.ndarray, truth: np.ndarray, brain: np.ndarray, region: np.ndarray) -> dict:
    """Near ``region``, cut in two along each axis (`region_parts`): ``ratios[axis] = (low,
    high)``, the map's mean over the truth's mean in the half of lower and of higher index;
    ``ncc_near_truth``, the NCC over ``brain`` of ``map_`` with its near voxels replaced by
    ``a * truth`` (``a`` the least-squares scale there)."""
    ratios = []
    for axis in range(region.ndim):
        parts = region_parts(brain, region, axis)
        halves = (parts["low half"], parts["high half"])
        ratios.append(tuple(float(map_[h].mean() / truth[h].mean()) for h in halves))
    near = parts["near"]
    scale = (map_[near] * truth[near]).sum() / (truth[near] ** 2).sum()
    replaced = np.where(near, scale * truth, map_)
    return {"ratios": ratios, "ncc_near_truth": brain_ncc(replaced, truth, brain)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--explain", help="a `jaxinterp explain` output folder")
    source.add_argument("--map", help="one NIfTI map on the cohort's grid (needs --brain)")
    parser.add_argument("--brain", help="with --map: an explain output for its brain mask")
    parser.add_argument("--cohort", required=True, help="a `jaxinterp synth3d` output folder")
    parser.add_argument("--region", default="ventricles", help="mask name in COHORT/masks")
    parser.add_argument(
        "--compare",
        help="with --explain: another explain output (its group maps) or a NIfTI map to correlate",
    )
    args = parser.parse_args(argv)
    if args.map and not args.brain:
        parser.error("--map needs --brain (an explain output folder)")
    if args.compare and not args.explain:
        parser.error("--compare needs --explain (the group maps to correlate)")
    cohort = Path(args.cohort)
    truth = read_map(cohort / "group_truth.nii.gz")
    brain = read_map(Path(args.explain or args.brain, "group", "brain_mask.nii.gz")) > 0.5
    region = read_map(cohort / "masks" / f"{args.region}.nii.gz") > 0.5
    maps = {"truth": truth}
    if args.map:
        map_ = read_map(args.map)
        if map_.shape != truth.shape:
            parser.error(f"{args.map}: shape {map_.shape}, the cohort's truth {truth.shape}")
        maps[Path(args.map).name] = map_
    else:
        maps.update(group_maps(args.explain))
    names = ["inside", "1 voxel", "2 voxels", "3 voxels", "far"]
    print(f"Distance from {args.region} ({region.sum()} voxels), over {brain.sum()} brain voxels")
    print("| map | " + " | ".join(f"{n}: mean / share" for n in names)
          + " | far std | far std, map blurred "
          + " / ".join(f"{s:g}" for s in FAR_BLUR_SIGMAS)
          + " voxels | NCC with truth | NCC, far band 0 |")  # fmt: skip
    print("|---" * (len(names) + 5) + "|")
    for name, map_ in maps.items():
        p = distance_profile(map_, truth, brain, region)
        cells = [f"{b['mean']:+.3f} / {b['share']:.2f}" for b in p["bands"]]
        blurred = " / ".join(f"{v:.4f}" for v in p["far_std_blurred"].values())
        cells += [f"{p['far_std']:.4f}", blurred, f"{p['ncc']:.3f}", f"{p['ncc_far_zeroed']:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{n} {b['voxels']}" for n, b in zip(names, p["bands"]))
    print(f"(voxels per band: {counts})")
    print()
    print("| map | " + " | ".join(f"NCC, truth blurred {s:g}" for s in BLUR_SIGMAS)
          + " | peaks at sigma (voxels) |")  # fmt: skip
    print("|---" * (len(BLUR_SIGMAS) + 2) + "|")
    for name, map_ in maps.items():
        match = blur_match(map_, truth, brain)
        best = max(match, key=match.get)
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in match.values()) + f" | {best:g} |")
    if args.compare:
        if Path(args.compare).is_dir():
            other = group_maps(args.compare)
        else:
            map_ = read_map(args.compare)
            if map_.shape != truth.shape:
                parser.error(
                    f"{args.compare}: shape {map_.shape}, the cohort's truth {truth.shape}"
                )
            other = {"inject": map_, "remove": map_}
            maps[Path(args.compare).name] = map_  # its sides too, in the last table
        print()
        print(f"Agreement (NCC) of the group maps with {args.compare} and with the truth")
        print("| direction | with | near (bands 0-3) | far | brain |")
        print("|---|---|---|---|---|")
        for direction, map_ in group_maps(args.explain).items():
            for name, ref in (("compared", other[direction]), ("truth", truth)):
                agree = band_agreement(map_, ref, brain, region)
                cells = " | ".join(f"{v:.3f}" for v in agree.values())
                print(f"| {direction} | {name} | {cells} |")
    maps.pop("truth")
    print()
    print(f"Near {args.region} (bands 0-3), halves split at its centre: map mean / truth mean")
    print("| map | " + " | ".join(f"axis {k}: low / high half" for k in range(truth.ndim))
          + " | NCC, near bands the truth |")  # fmt: skip
    print("|---" * (truth.ndim + 2) + "|")
    for name, map_ in maps.items():
        sides = side_ratios(map_, truth, brain, region)
        cells = [f"{lo:.2f} / {hi:.2f}" for lo, hi in sides["ratios"]]
        print(f"| {name} | " + " | ".join(cells) + f" | {sides['ncc_near_truth']:.3f} |")


if __name__ == "__main__":
    main()
