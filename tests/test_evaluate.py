"""train.evaluate: which truth regions a classifier looks at, and group maps scored."""

import numpy as np
import pytest

from train.evaluate import evaluate_maps, region_use


def test_region_use_finds_the_region_a_classifier_reads():
    rng = np.random.default_rng(0)
    shape = (6, 6, 6)
    a = np.zeros(shape, bool)
    a[:2, :2, :2] = True  # the region the toy classifier reads
    b = np.zeros(shape, bool)
    b[4:, 4:, 4:] = True  # a region it ignores
    labels = np.array([0] * 5 + [1] * 5)
    images = rng.normal(size=(10, *shape)) * 0.1
    images[labels == 1] += 2.0 * (a | b)  # patients differ in both regions
    logit_fn = lambda x: 10.0 * x[:, :2, :2, :2].mean(axis=(1, 2, 3))
    fill = images[labels == 0].mean(0)
    uses = region_use(logit_fn, images, labels, {"a": a, "b": b}, fill)
    raw = logit_fn(images)
    gap = raw[labels == 1].mean() - raw[labels == 0].mean()
    filled = np.where(a, fill, images[labels == 1])
    want = (raw[labels == 1] - logit_fn(filled)).mean()
    assert uses["a"]["logit_drop"] == pytest.approx(want)
    assert uses["a"]["fraction_of_gap"] == pytest.approx(want / gap)
    assert uses["a"]["fraction_of_gap"] == pytest.approx(1.0, abs=1e-9)  # filled = control
    assert uses["a"]["used"] and uses["a"]["n"] == 5
    assert uses["b"]["logit_drop"] == pytest.approx(0.0, abs=1e-12) and not uses["b"]["used"]
    # Only the affected patients are tested; none affected gives NaN and not used.
    some = {"a": np.array([False] * 7 + [True] * 3), "b": np.zeros(10, bool)}
    uses = region_use(logit_fn, images, labels, {"a": a, "b": b}, fill, affected=some)
    assert uses["a"]["n"] == 3 and uses["b"]["n"] == 0
    assert np.isnan(uses["b"]["logit_drop"]) and not uses["b"]["used"]


def test_region_use_dilation_reaches_the_border():
    """A classifier that reads the voxels next to a region only sees it filled when the
    region is grown."""
    shape = (7, 7, 7)
    core = np.zeros(shape, bool)
    core[3, 3, 3] = True
    labels = np.array([0, 0, 1, 1])
    images = np.zeros((4, *shape))
    images[labels == 1, 3, 3, 4] = 1.0  # the change sits beside the region
    logit_fn = lambda x: x[:, 3, 3, 4]
    fill = np.zeros(shape)
    plain = region_use(logit_fn, images, labels, {"r": core}, fill)
    grown = region_use(logit_fn, images, labels, {"r": core}, fill, dilate=1)
    assert plain["r"]["fraction_of_gap"] == pytest.approx(0.0) and not plain["r"]["used"]
    assert grown["r"]["fraction_of_gap"] == pytest.approx(1.0) and grown["r"]["used"]


def test_evaluate_maps_scores_against_numpy_and_counts_signs_where_used():
    rng = np.random.default_rng(1)
    shape = (8, 8, 8)
    truth = rng.normal(size=shape).astype(np.float32)
    brain = np.zeros(shape, bool)
    brain[1:7, 1:7, 1:7] = True
    up = np.zeros(shape, bool)
    up[1:3, 1:3, 1:3] = True
    down = np.zeros(shape, bool)
    down[5:7, 5:7, 5:7] = True
    truth[up], truth[down] = 1.0, -1.0
    # A map that is right in "up", wrong in "down", and the negated truth elsewhere.
    mine = -truth.copy()
    mine[up] = 0.5
    mine[down] = 0.5
    maps = {"mine": {"map": mine, "sign": 1.0, "file": "x.nii.gz"},
            "flipped": {"map": truth, "sign": -1.0}}  # fmt: skip
    regions = {"up": up, "down": down}
    plain = evaluate_maps(maps, truth, brain_mask=brain, region_masks=regions)
    scored = evaluate_maps(
        maps, truth, brain_mask=brain, region_masks=regions, used_regions={"down"}
    )
    a, b = mine[brain].astype(np.float64), truth[brain].astype(np.float64)
    want = np.corrcoef(a, b)[0, 1]  # NCC = Pearson correlation inside the mask
    assert scored["mine"]["group"]["ncc_signed"] == pytest.approx(want, abs=1e-5)
    want_abs = np.corrcoef(np.abs(a), np.abs(b))[0, 1]
    assert scored["mine"]["group"]["ncc_abs"] == pytest.approx(want_abs, abs=1e-5)
    assert scored["mine"]["file"] == "x.nii.gz"
    assert scored["mine"]["regions"]["up"]["sign_agrees"]
    assert not scored["mine"]["regions"]["down"]["sign_agrees"]
    assert scored["mine"]["regions"]["down"]["used_by_classifier"]
    assert not scored["mine"]["regions"]["up"]["used_by_classifier"]
    assert scored["mine"]["sign_where_used"] == {"right": 0, "of": 1}
    # The truth scored against -truth: every sign wrong, NCC -1.
    assert scored["flipped"]["group"]["ncc_signed"] == pytest.approx(-1.0, abs=1e-5)
    assert scored["flipped"]["sign_where_used"] == {"right": 0, "of": 1}
    assert "sign_where_used" not in plain["mine"]
    assert "used_by_classifier" not in plain["mine"]["regions"]["up"]
