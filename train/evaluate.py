"""Scoring explanation maps against a known truth (the synthetic cohorts' answer).

`evaluate_maps` scores group maps: signed and absolute NCC inside a brain mask, each map's
mean inside each truth region (does it get the sign right?), and a summary of per-subject
scores. `score_map` scores one map; `spearman` compares raw and simulated logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from jaxinterp.metrics import ncc

__all__ = ["evaluate_maps", "score_map", "spearman", "spread"]

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

    Returns:
      ``name -> {"group": {"ncc_signed", "ncc_abs"}, "regions": {...}, "subjects": {...}}``.
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
        result = {k: v for k, v in entry.items() if k not in ("map", "abs_map")}
        result.update(group=scores, regions=regions)
        if subject_scores and name in subject_scores:
            result["subjects"] = {k: spread(v) for k, v in subject_scores[name].items()}
        out[name] = result
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN for fewer than 3 values or a constant input."""
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(scipy.stats.spearmanr(a, b).statistic)
