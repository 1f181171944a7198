"""benchmarks/map_profile3d.py: a map's change by distance from a region, against NumPy."""

import nibabel as nib
import numpy as np
import scipy.ndimage

from benchmarks.map_profile3d import (
    band_agreement,
    band_masks,
    blur_match,
    distance_profile,
    main,
    region_parts,
    side_ratios,
)


def test_profile_bands_and_far_ripple():
    shape = (12, 12, 12)
    region = np.zeros(shape, bool)
    region[5:7, 5:7, 5:7] = True
    brain = np.ones(shape, bool)
    brain[0] = False
    truth = np.zeros(shape)
    truth[4:8, 4:8, 4:8] = 0.5  # the region and the 1-voxel shell (and its edges/corners)
    truth[region] = 1.0
    p = distance_profile(truth, truth, brain, region)
    assert [b["voxels"] for b in p["bands"]][0] == 8
    assert sum(b["voxels"] for b in p["bands"]) == brain.sum()
    np.testing.assert_allclose(sum(b["share"] for b in p["bands"]), 1.0)
    np.testing.assert_allclose(p["bands"][0]["mean"], 1.0)
    np.testing.assert_allclose(p["ncc"], 1.0)
    # A ripple far from the region lowers the NCC; zeroing the far band takes it out again.
    rng = np.random.default_rng(0)
    distance = np.sqrt(sum((np.indices(shape)[k] - 5.5) ** 2 for k in range(3)))
    far = brain & (distance > 6)
    rippled = truth + np.where(far, 0.3 * rng.normal(size=shape), 0.0)
    q = distance_profile(rippled, truth, brain, region)
    assert q["ncc"] < 0.95
    np.testing.assert_allclose(q["ncc_far_zeroed"], 1.0, atol=1e-6)
    assert q["far_std"] > 0.1 and p["far_std"] == 0.0
    # the far band's std of the blurred map, against SciPy's blur of the same map
    far_band = band_masks(brain, region)[-1]
    for sigma, std in q["far_std_blurred"].items():
        want = scipy.ndimage.gaussian_filter(rippled, sigma)[far_band].std()
        np.testing.assert_allclose(std, want, rtol=1e-10)
        assert 0 < std < q["far_std"]
    # voxel noise does not survive a blur of 2 voxels; a ripple as broad as the grid does
    assert q["far_std_blurred"][2.0] < 0.2 * q["far_std"]
    broad = truth + 0.05 * (np.indices(shape)[0] - 5.5)  # a ramp across the whole grid
    b = distance_profile(broad, truth, brain, region)
    assert b["far_std_blurred"][2.0] > 0.5 * b["far_std"]
    # every band by hand: the Euclidean distance to the cube [5, 6]^3 from its per-axis gaps
    gaps = np.maximum(0, np.maximum(5 - np.indices(shape), np.indices(shape) - 6))
    distance = np.sqrt((gaps**2).sum(0))
    for band, (lo, hi) in zip(p["bands"], [(0, 0.5), (0.5, 1.5), (1.5, 2.5), (2.5, 3.5)]):
        inside = brain & (distance >= lo) & (distance < hi)
        assert band["voxels"] == inside.sum()
        np.testing.assert_allclose(band["mean"], truth[inside].mean())


def test_blur_match_finds_the_blur_of_a_smoothed_truth():
    rng = np.random.default_rng(1)
    shape = (16, 16, 16)
    truth = np.zeros(shape)
    truth[6:9, 6:9, 6:9] = 1.0
    truth[3, 11, 4] = -0.7  # a second, point-like change
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    blurred = scipy.ndimage.gaussian_filter(truth, 1.5)
    match = blur_match(blurred, truth, brain)
    assert max(match, key=match.get) == 1.5
    np.testing.assert_allclose(match[1.5], 1.0, atol=1e-6)  # NCC in float32
    assert match[0.0] < 0.95
    # NCC by NumPy's corrcoef over the brain, for the unsmoothed truth and a noisy map
    noisy = truth + 0.2 * rng.normal(size=shape)
    expected = np.corrcoef(noisy[brain], truth[brain])[0, 1]
    np.testing.assert_allclose(blur_match(noisy, truth, brain, (0.0,))[0.0], expected, rtol=1e-5)
    noisy_match = blur_match(noisy, truth, brain)
    assert max(noisy_match, key=noisy_match.get) == 0.0


def test_band_agreement_separates_a_shared_region_from_independent_ripples():
    rng = np.random.default_rng(2)
    shape = (14, 14, 14)
    region = np.zeros(shape, bool)
    region[6:8, 6:8, 6:8] = True
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    near = scipy.ndimage.distance_transform_edt(~region) < 3.5
    shared = np.where(near, rng.normal(size=shape), 0.0)
    a = shared + np.where(near, 0.0, rng.normal(size=shape))
    b = shared + np.where(near, 0.0, rng.normal(size=shape))
    agree = band_agreement(a, b, brain, region)
    np.testing.assert_allclose(agree["near"], 1.0, atol=1e-5)
    far = brain & ~near
    np.testing.assert_allclose(agree["far"], np.corrcoef(a[far], b[far])[0, 1], atol=1e-5)
    assert abs(agree["far"]) < 0.15
    np.testing.assert_allclose(agree["brain"], np.corrcoef(a[brain], b[brain])[0, 1], atol=1e-5)
    # the same ripple in both: the far band agrees as well as the region
    assert band_agreement(a, a + 0.01 * b, brain, region)["far"] > 0.99


def test_region_parts_split_the_near_bands_at_the_region_centre():
    shape = (12, 12, 12)
    region = np.zeros(shape, bool)
    region[4:8, 5:9, 5:7] = True  # centre (5.5, 6.5, 5.5)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    parts = region_parts(brain, region, axis=1)
    near = brain & (scipy.ndimage.distance_transform_edt(~region) < 3.5)
    np.testing.assert_array_equal(parts["near"], near)
    index = np.indices(shape)[1]
    np.testing.assert_array_equal(parts["low half"], near & (index <= 6))
    np.testing.assert_array_equal(parts["high half"], near & (index >= 7))


def test_side_ratios_find_the_half_a_map_favours():
    shape = (14, 14, 14)
    region = np.zeros(shape, bool)
    region[5:9, 5:9, 6:8] = True  # centre (6.5, 6.5, 6.5)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    truth = scipy.ndimage.gaussian_filter(region.astype(float), 1.0)
    index = np.indices(shape)
    favoured = truth * np.where(index[1] >= 7, 3.0, 1.5)  # axis 1's high half drawn twice
    sides = side_ratios(favoured, truth, brain, region)
    np.testing.assert_allclose(sides["ratios"][1], (1.5, 3.0))
    near = brain & (scipy.ndimage.distance_transform_edt(~region) < 3.5)
    for axis in (0, 2):  # the other axes by hand: each half's means
        halves = [near & (index[axis] < 7), near & (index[axis] >= 7)]
        expected = [favoured[h].mean() / truth[h].mean() for h in halves]
        np.testing.assert_allclose(sides["ratios"][axis], expected)
    assert sides["ncc_near_truth"] > 0.999  # favoured is 0 where truth is, far from the region
    # a map right near the region at any scale and wrong far from it: replacing the near bands
    # changes nothing, so the NCC is NumPy's
    rng = np.random.default_rng(4)
    rippled = np.where(near, 2.0 * truth, truth + 0.1 * rng.normal(size=shape))
    sides = side_ratios(rippled, truth, brain, region)
    np.testing.assert_allclose(sides["ratios"], [(2.0, 2.0)] * 3)
    expected = np.corrcoef(rippled[brain], truth[brain])[0, 1]
    np.testing.assert_allclose(sides["ncc_near_truth"], expected, rtol=1e-5)
    assert expected < 0.95


def test_cli_compares_group_maps_with_a_nifti_map_and_the_truth(tmp_path, capsys):
    rng = np.random.default_rng(3)
    shape = (12, 12, 12)
    save = lambda a, path: (
        path.parent.mkdir(parents=True, exist_ok=True),
        nib.save(nib.Nifti1Image(a.astype(np.float32), np.eye(4)), path),
    )
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    region = np.zeros(shape, bool)
    region[5:7, 5:7, 5:7] = True
    truth = scipy.ndimage.gaussian_filter(region.astype(float), 1.0)
    inject = truth + 0.05 * rng.normal(size=shape)
    other = inject + 0.05 * rng.normal(size=shape)
    save(brain.astype(float), tmp_path / "ex/group/brain_mask.nii.gz")
    save(inject, tmp_path / "ex/group/log_volume_change_inject_mean.nii.gz")
    save(-truth, tmp_path / "ex/group/log_volume_change_remove_mean.nii.gz")  # sign flipped
    save(truth, tmp_path / "cohort/group_truth.nii.gz")
    save(region.astype(float), tmp_path / "cohort/masks/ventricles.nii.gz")
    save(other, tmp_path / "other.nii.gz")
    main([
        "--explain", str(tmp_path / "ex"), "--cohort", str(tmp_path / "cohort"),
        "--compare", str(tmp_path / "other.nii.gz"),
    ])  # fmt: skip
    out = capsys.readouterr().out
    rows = {
        tuple(cells[1:3]): [float(v) for v in cells[3:6]]
        for line in out.splitlines()
        if len(cells := [c.strip() for c in line.split("|")]) == 7
        and cells[2] in ("compared", "truth")
    }
    f32 = lambda a: a.astype(np.float32).astype(np.float64)
    expected = band_agreement(f32(inject), f32(other), brain, region)
    np.testing.assert_allclose(rows["inject", "compared"], list(expected.values()), atol=6e-4)
    np.testing.assert_allclose(rows["remove", "truth"], [1.0, 1.0, 1.0], atol=6e-4)
    assert rows["inject", "truth"][2] < rows["remove", "truth"][2]
    # the last table: each map's sides, the compared NIfTI map's too
    sides = {
        cells[1]: cells[2:6]
        for line in out.split("halves split at its centre")[1].splitlines()
        if len(cells := [c.strip() for c in line.split("|")]) == 7
        and "/" in cells[2]
        and cells[1] != "map"
    }
    assert set(sides) == {"inject", "remove", "other.nii.gz"}
    assert sides["remove"] == ["1.00 / 1.00"] * 3 + ["1.000"]
    for name, map_ in (("inject", inject), ("other.nii.gz", other)):
        expected = side_ratios(f32(map_), f32(truth), brain, region)
        cells = [f"{lo:.2f} / {hi:.2f}" for lo, hi in expected["ratios"]]
        assert sides[name] == cells + [f"{expected['ncc_near_truth']:.3f}"]
