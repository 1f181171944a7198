"""Scoring explanation maps against a known truth (the synthetic cohorts' answer).

`evaluate_maps` scores group maps: signed and absolute NCC inside a brain mask, each map's
mean inside each truth region (does it get the sign right?), and a summary of per-subject
scores. `score_map` scores one map; `spearman` compares raw and simulated logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
import scipy.stats

from jaxinterp.metrics import ncc

__all__ = [
    "RANDOMISATION_PASS_BELOW",
    "evaluate_maps",
    "randomisation_passes",
    "region_use",
    "score_map",
    "spearman",
    "spread",
]

# Randomisation checks (benchmarks/randomisation3d.py, benchmarks/study_synth2d.py): a
# method passes when the NCC of its maps for the trained and the untrained classifier is
# below this in absolute value in each direction (r^2 < 0.09).
RANDOMISATION_PASS_BELOW = 0.3


def randomisation_passes(ncc_per_direction: Iterable[float]) -> bool:
    """Whether a method passes the randomisation check: the NCC of its maps for the trained
    and the untrained classifier is below `RANDOMISATION_PASS_BELOW` in absolute value in
    every direction (a mean over directions can hide one that fails)."""
    return all(abs(value) < RANDOMISATION_PASS_BELOW for value in ncc_per_direction)


_ncc = jax.jit(ncc)


def score_map(map_: np.ndarray, expected: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Signed and absolute NCC of a map with the map it should be, inside ``mask``."""
    a, b, m = jnp.asarray(map_, jnp.float32), jnp.asarray(expected, jnp.float32), jnp.asarray(mask)
    return {
        "ncc_signed": float(_ncc(a, b, mask=m)),
        "ncc_abs": float(_ncc(jnp.abs(a), jnp.abs(b), mask=m)),
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    if v.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def evaluate_maps(
    maps: Mapping[str, Mapping[str, Any]],
    truth: np.ndarray,
    *,
    brain_mask: np.ndarray,
    region_masks: Mapping[str, np.ndarray],
    subject_scores: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    used_regions: Collection[str] | None = None,
) -> dict[str, Any]:
    """Scores group maps against the group truth (a log-volume-change map).

    Args:
      maps: ``name -> {"map": signed group map, "abs_map": optional map for the absolute
        score (default ``|map|``), "sign": +1 or -1 (the expected map is ``sign *
        truth``), plus any JSON-ready fields to copy (e.g. "file", "kind")}``.
      truth: the group truth on the model grid.
      brain_mask: voxels that count for the NCC.
      region_masks: truth regions; each map's mean inside each region is reported with
        the expected map's mean there and whether the signs agree.
      subject_scores: ``name -> {"ncc_signed": [...], "ncc_abs": [...]}`` per-subject NCCs
        to summarise (mean, std, min, max, n).
      used_regions: the truth regions the classifier is known to use (`region_use`); each
        region entry then says ``used_by_classifier``, and the map's ``sign_where_used``
        counts the right signs among them (a region the classifier ignores is no fair
        target for an explanation of that classifier).

    Returns:
      ``name -> {"group": {"ncc_signed", "ncc_abs"}, "regions": {...}, "subjects": {...}}``,
      plus ``"sign_where_used": {"right", "of"}`` when ``used_regions`` is given.
    """
    brain = np.asarray(brain_mask, bool)
    out = {}
    for name, entry in maps.items():
        sign = float(entry.get("sign", 1.0))
        expected = sign * np.asarray(truth, np.float32)
        group_map = np.asarray(entry["map"], np.float32)
        abs_map = np.asarray(entry.get("abs_map", np.abs(group_map)), np.float32)
        a = jnp.asarray(group_map)
        m = jnp.asarray(brain)
        scores = {
            "ncc_signed": float(_ncc(a, jnp.asarray(expected), mask=m)),
            "ncc_abs": float(_ncc(jnp.asarray(abs_map), jnp.asarray(np.abs(expected)), mask=m)),
        }
        regions = {}
        for region, mask in region_masks.items():
            mask = np.asarray(mask, bool)
            if not mask.any():
                continue
            want, got = float(expected[mask].mean()), float(group_map[mask].mean())
            regions[region] = {
                "expected_mean": want,
                "map_mean": got,
                "sign_agrees": bool(np.sign(want) == np.sign(got) and want != 0),
            }
            if used_regions is not None:
                regions[region]["used_by_classifier"] = region in used_regions
        result = {k: v for k, v in entry.items() if k not in ("map", "abs_map")}
        result.update(group=scores, regions=regions)
        if used_regions is not None:
            used = [r for r in regions.values() if r["used_by_classifier"]]
            result["sign_where_used"] = {
                "right": sum(r["sign_agrees"] for r in used),
                "of": len(used),
            }
        if subject_scores and name in subject_scores:
            result["subjects"] = {k: spread(v) for k, v in subject_scores[name].items()}
        out[name] = result
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN for fewer than 3 values or a constant input."""
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(scipy.stats.spearmanr(a, b).statistic)


def region_use(
    logit_fn: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    regions: Mapping[str, np.ndarray],
    fill: np.ndarray,
    *,
    affected: Mapping[str, np.ndarray] | None = None,
    threshold: float = 0.1,
    dilate: int = 0,
) -> dict[str, dict[str, Any]]:
    """Does the classifier use each truth region? A map can only be expected to show a
    region the classifier looks at.

    For each region, the patients' images get the region's voxels replaced by ``fill``
    (the mean control image) and the classifier's logits are taken again. The region is
    ``used`` when this moves the patients' mean logit towards the controls' by at least
    ``threshold`` of the gap between the two groups' mean logits.

    Args:
      logit_fn: images ``(B, *spatial)`` -> logits ``(B,)`` (batching is the caller's).
      images: ``(N, *spatial)``; labels ``(N,)`` 0 = control, 1 = patient.
      regions: name -> boolean mask ``spatial``.
      fill: ``spatial`` values written into a region.
      affected: name -> ``(N,)`` booleans, the patients that carry the region's effect
        (subtypes); default every patient.
      dilate: grow each region by this many voxels first (a volume change shows at the
        region's border: an enlarged ventricle replaces the tissue around it).

    Returns:
      name -> ``{"n", "logit_drop", "fraction_of_gap", "used"}`` (``n`` = patients tested;
      ``logit_drop`` = mean raw minus filled logit).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    raw = np.asarray(logit_fn(images), np.float64)
    gap = float(raw[labels == 1].mean() - raw[labels == 0].mean())
    out = {}
    for name, mask in regions.items():
        mask = np.asarray(mask, bool)
        if dilate and mask.any():
            mask = scipy.ndimage.binary_dilation(mask, iterations=dilate)
        who = labels == 1
        if affected is not None and name in affected:
            who = who & np.asarray(affected[name], bool)
        idx = np.flatnonzero(who)
        if idx.size == 0 or not mask.any():
            out[name] = {"n": int(idx.size), "logit_drop": math.nan,
                         "fraction_of_gap": math.nan, "used": False}  # fmt: skip
            continue
        filled = np.where(mask, np.asarray(fill), images[idx])
        drop = float((raw[idx] - np.asarray(logit_fn(filled), np.float64)).mean())
        fraction = drop / gap if gap > 0 else math.nan
        out[name] = {
            "n": int(idx.size),
            "logit_drop": drop,
            "fraction_of_gap": fraction,
            "used": bool(fraction >= threshold),
        }
    return out
