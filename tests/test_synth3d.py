"""Tests of the synthetic 3D cohort: template, regions, disease field, subjects, files.

Grids are 16^3 or 32^3 (CPU). References: volumes of balls, finite-difference divergence,
the jaxinterp warp and Jacobian, and the files read back through jaxinterp.data.
"""

import json
import math

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
import scipy.interpolate
import scipy.ndimage

from jaxinterp import data as jd
from jaxinterp import integrate_velocity, log_volume_change, synth3d, warp

SHAPE = (32, 32, 32)
SMALL = (16, 16, 16)
N_CONTROLS, N_PATIENTS = 3, 6


@pytest.fixture(scope="module")
def cohort():
    return synth3d.make_cohort(n_controls=N_CONTROLS, n_patients=N_PATIENTS, shape=SHAPE, seed=4)


@pytest.fixture(scope="module")
def regions():
    return {r.name: r for r in synth3d.load_regions()}


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# ------------------------------------------------------------------------------ template


def test_template_grid_and_affine():
    tpl = synth3d.load_template(SHAPE)
    assert tpl.shape == SHAPE and tpl.t1.dtype == np.float32
    # Voxel size = FOV / shape (the template is 197 x 233 x 189 voxels of 1 mm).
    np.testing.assert_allclose(tpl.spacing, np.array([197, 233, 189]) / 32)
    np.testing.assert_allclose(np.diag(tpl.affine)[:3], tpl.spacing)
    # Outer voxel edges coincide with the template's: first edge at its first centre - 0.5.
    first_edge = tpl.affine[:3, 3] - 0.5 * np.asarray(tpl.spacing)
    np.testing.assert_allclose(first_edge, [-98.5, -134.5, -72.5])
    # Background 0, tissue in the template's 0-255 units.
    assert tpl.t1.min() == 0.0 and tpl.t1[0, 0, 0] == 0.0
    assert 150 < np.median(tpl.t1[tpl.brain_mask]) < 220
    assert 0.2 < tpl.brain_mask.mean() < 0.6
    assert not tpl.t1.flags.writeable


def test_ventricle_mask_is_dark_csf_and_nonempty_at_32(regions):
    tpl = synth3d.load_template(SHAPE)
    frac = synth3d.region_fraction(regions["ventricles"], SHAPE)
    mask = frac > 0.5
    assert mask.sum() >= 10  # SPEC: a handful of voxels survive at 32^3
    # CSF is dark in T1 (about 65 at 1 mm, partial-volumed here) vs 150-220 in tissue.
    assert tpl.t1[mask].mean() < 0.75 * np.median(tpl.t1[tpl.brain_mask])
    # The 1 mm mask holds the lateral ventricles and the third ventricle: 10-20 ml, about
    # centred on the midline, and the downsampled fraction keeps its volume.
    volume_ml = frac.sum() * np.prod(tpl.spacing) / 1000.0
    assert 10.0 < volume_ml < 20.0
    centre = tpl.affine[:3, :3] @ np.mean(np.argwhere(mask), axis=0) + tpl.affine[:3, 3]
    assert abs(centre[0]) < 2.0


def test_ball_fraction_keeps_the_ball_volume(regions):
    tpl = synth3d.load_template(SHAPE)
    for name in ("hippocampus_left", "frontal_right"):
        region = regions[name]
        frac = synth3d.region_fraction(region, SHAPE)
        volume = frac.sum() * np.prod(tpl.spacing)
        np.testing.assert_allclose(volume, 4.0 / 3.0 * math.pi * region.radius_mm**3, rtol=0.03)


# ------------------------------------------------------------------------------ fields


def test_poisson_velocity_divergence_is_minus_target():
    spacing = np.array([6.0, 7.0, 5.5])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1) * spacing
    target = np.exp(-np.sum((grid - 16 * spacing) ** 2, -1) / (2 * 15.0**2))
    v = synth3d.poisson_velocity(target, spacing)
    assert v.shape == (*SHAPE, 3) and v.dtype == np.float32
    v_mm = v * spacing
    div = sum(np.gradient(v_mm[..., k], spacing[k], axis=k) for k in range(3))
    inner = (slice(4, -4),) * 3
    # Central differences of central differences vs the 7-point Laplacian of the solve: they
    # differ by O(h^2) (7 % at the peak of a blob 2.5 voxels wide).
    np.testing.assert_allclose(div[inner], -target[inner], atol=0.08)
    assert _corr(div[inner], -target[inner]) > 0.998
    # The field points inward for a positive target (pull-back: content expands).
    assert v[20, 16, 16, 0] < 0 < v[12, 16, 16, 0]


def test_disease_field_measured_change_matches_target_and_sign(regions):
    tpl = synth3d.load_template(SHAPE)
    typical = [r for r in regions.values() if r.subtypes and "typical" in r.subtypes]
    target = synth3d.target_map(typical, SHAPE)
    v = synth3d.poisson_velocity(target, tpl.spacing)
    d = integrate_velocity(jnp.asarray(v), steps=7)
    measured = np.asarray(log_volume_change(d))
    brain = tpl.brain_mask
    assert _corr(measured[brain], target[brain]) > 0.9
    # Region voxel counts (fraction maps warped by the disease warp): ventricles grow,
    # hippocampi shrink.
    counts = {}
    for region in typical:
        frac = synth3d.region_fraction(region, SHAPE)
        after = np.asarray(warp(jnp.asarray(frac)[..., None], d))[..., 0]
        counts[region.name] = math.log(after.sum() / frac.sum())
    assert counts["ventricles"] > 0.3
    assert counts["hippocampus_left"] < -0.2 and counts["hippocampus_right"] < -0.2
    assert measured[tpl.brain_mask].max() < 3.0  # no folding (clamped values would be 6.9)


def test_flow_equals_integrate_velocity():
    tpl = synth3d.load_template(SMALL)
    v = synth3d.random_velocity(np.random.default_rng(0), tpl, std_mm=6.0, smoothing_mm=20.0)
    ours = np.asarray(synth3d._flow(jnp.asarray(v)))
    ref = np.asarray(integrate_velocity(jnp.asarray(v), steps=7))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_random_velocity_std_and_grid_independence():
    coarse, fine = synth3d.load_template(SMALL), synth3d.load_template(SHAPE)
    fields = {}
    for tpl in (coarse, fine):
        v = synth3d.random_velocity(np.random.default_rng(7), tpl, std_mm=2.0, smoothing_mm=20.0)
        fields[tpl.shape] = (v * np.asarray(tpl.spacing), tpl)
    # The same field in mm: sample the fine one at the coarse voxel centres.
    v_fine, tpl_fine = fields[SHAPE]
    v_coarse, tpl_coarse = fields[SMALL]
    axes = [tpl_fine.affine[a, a] * np.arange(32) + tpl_fine.affine[a, 3] for a in range(3)]
    points = [tpl_coarse.affine[a, a] * np.arange(16) + tpl_coarse.affine[a, 3] for a in range(3)]
    query = np.stack(np.meshgrid(*points, indexing="ij"), -1)
    for k in range(3):
        interp = scipy.interpolate.RegularGridInterpolator(
            axes, v_fine[..., k], bounds_error=False, fill_value=None
        )
        # Trilinear interpolation of a 20 mm-smooth field at 6-7 mm voxels: ~0.2 mm error.
        np.testing.assert_allclose(interp(query), v_coarse[..., k], atol=0.3)
        assert _corr(interp(query), v_coarse[..., k]) > 0.995
    # Pointwise std is std_mm (one draw: 20 %).
    assert 1.5 < v_fine.std() < 2.5


# ------------------------------------------------------------------------------ regions


def _write_regions(tmp_path, entries, name="regions.json"):
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


GOOD = {"name": "r1", "centre_mm": [0, 0, 0], "radius_mm": 5, "log_volume_change": -0.2}


def test_load_regions_default_and_round_trip(tmp_path, regions):
    assert list(regions) == [
        "ventricles",
        "hippocampus_left",
        "hippocampus_right",
        "frontal_left",
        "frontal_right",
    ]
    assert regions["ventricles"].kind == "ventricles"
    assert regions["ventricles"].log_volume_change > 0
    assert regions["hippocampus_left"].log_volume_change < 0
    assert synth3d.subtype_names(regions.values()) == ("typical", "ventricular", "frontal")
    path = _write_regions(tmp_path, [r.to_json() for r in regions.values()])
    assert synth3d.load_regions(path) == tuple(regions.values())
    # No subtype anywhere: one subtype "all" with every region.
    assert synth3d.subtype_names(synth3d.parse_regions([GOOD])) == ("all",)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"radius_mm": None}, "missing key(s) 'radius_mm'"),
        ({"radius_mm": 0}, "radius_mm must be a finite number > 0"),
        ({"radius_mm": -3}, "radius_mm must be a finite number > 0"),
        ({"radius_mm": "5"}, "radius_mm must be a finite number > 0"),
        ({"log_volume_change": float("nan")}, "log_volume_change must be a finite number"),
        ({"log_volume_change": float("inf")}, "log_volume_change must be a finite number"),
        ({"centre_mm": [0, 0]}, "centre_mm must be 3 finite numbers"),
        ({"centre_mm": [0, 0, float("nan")]}, "centre_mm must be 3 finite numbers"),
        ({"radius": 5}, "unknown key(s) ['radius']"),
        ({"kind": "cube"}, "kind must be one of"),
        ({"subtype": "control"}, "'control' is reserved"),
        ({"subtype": []}, "subtype must be a name"),
        ({"name": "a b"}, "name must match"),
    ],
)
def test_load_regions_errors_name_file_and_entry(tmp_path, change, message):
    bad = {**GOOD, "name": "bad_one", **change}
    bad = {k: v for k, v in bad.items() if v is not None}
    path = _write_regions(tmp_path, [GOOD, bad])
    with pytest.raises(jd.DataError) as info:
        synth3d.load_regions(path)
    text = str(info.value)
    assert str(path) in text and "region 1" in text and message in text


def test_load_regions_file_errors(tmp_path):
    with pytest.raises(ValueError, match="duplicated region name 'r1'"):
        synth3d.load_regions(_write_regions(tmp_path, [GOOD, GOOD]))
    with pytest.raises(jd.DataError, match="non-empty JSON list"):
        synth3d.load_regions(_write_regions(tmp_path, {"regions": [GOOD]}))
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(jd.DataError, match="broken.json: cannot read"):
        synth3d.load_regions(broken)
    with pytest.raises(jd.DataError, match="missing.json: cannot read"):
        synth3d.load_regions(tmp_path / "missing.json")
    outside = {**GOOD, "centre_mm": [0, 500, 0]}
    with pytest.raises(jd.DataError, match="outside the template"):
        synth3d.region_fraction(synth3d.parse_regions([outside])[0], SMALL)


# ------------------------------------------------------------------------------ cohort


def test_cohort_shapes_labels_subtypes(cohort):
    n = N_CONTROLS + N_PATIENTS
    for name in ("images", "raw_images", "truth", "truth_template"):
        arr = getattr(cohort, name)
        assert arr.shape == (n, *SHAPE) and arr.dtype == np.float32, name
    assert cohort.labels.tolist() == [0] * N_CONTROLS + [1] * N_PATIENTS
    assert cohort.subjects[0] == "sub-0000" and len(set(cohort.subjects)) == n
    assert cohort.subtypes[:N_CONTROLS] == ("control",) * N_CONTROLS
    # Patients spread evenly over the subtypes; severities in range; controls 0.
    patients = cohort.subtypes[N_CONTROLS:]
    assert sorted(patients) == sorted(["typical", "ventricular", "frontal"] * 2)
    assert np.all(cohort.severities[:N_CONTROLS] == 0)
    assert np.all((cohort.severities[N_CONTROLS:] >= 0.5) & (cohort.severities[N_CONTROLS:] <= 1))
    np.testing.assert_allclose(cohort.affine, synth3d.load_template(SHAPE).affine)
    # Images are z-scored in the brain, 0 outside; raw background stays 0.
    for i in range(n):
        brain = cohort.images[i] != 0
        np.testing.assert_allclose(cohort.images[i][brain].mean(), 0, atol=1e-4)
        np.testing.assert_allclose(cohort.images[i][brain].std(), 1, atol=1e-4)
        assert np.all(cohort.raw_images[i][~brain] < 0.05 * 255)


def test_truth_signs_group_truth_and_controls(cohort):
    masks = cohort.region_masks
    assert not cohort.truth[:N_CONTROLS].any() and not cohort.truth_template[:N_CONTROLS].any()
    patients = np.flatnonzero(cohort.labels == 1)
    np.testing.assert_allclose(
        cohort.group_truth, cohort.truth_template[patients].mean(axis=0), atol=1e-6
    )
    brain = cohort.brain_mask
    for i in patients:
        sub = cohort.subtypes[i]
        tt = cohort.truth_template[i]
        target = cohort.severities[i] * cohort.targets[sub]
        assert _corr(tt[brain], target[brain]) > 0.9
        if sub in ("typical", "ventricular"):
            assert tt[masks["ventricles"]].mean() > 0.1
            assert cohort.truth[i][masks["ventricles"]].mean() > 0.05  # subject space
        if sub == "typical":
            assert tt[masks["hippocampus_left"]].mean() < -0.05
        if sub == "frontal":
            assert tt[masks["frontal_left"] | masks["frontal_right"]].mean() < -0.1
            assert abs(tt[masks["ventricles"]].mean()) < 0.05
        # The subject-space truth is the template truth moved by a small warp.
        assert _corr(cohort.truth[i], tt) > 0.8


def test_ventricles_look_larger_in_patient_images(cohort):
    """Image-level check: dark (CSF) voxels in the ventricle area, patients vs controls."""
    area = cohort.region_masks["ventricles"]
    tpl = synth3d.load_template(SHAPE)
    near = (synth3d.region_fraction(synth3d.load_regions()[0], SHAPE) > 0.05) & tpl.brain_mask
    assert area.sum() < near.sum()
    csf = cohort.raw_images < 120.0
    counts = csf[:, near].sum(axis=1)
    enlarged = [i for i, s in enumerate(cohort.subtypes) if s in ("typical", "ventricular")]
    assert counts[enlarged].mean() > counts[:N_CONTROLS].mean()


def test_determinism_and_keyed_streams():
    kwargs = dict(n_controls=2, n_patients=2, shape=SMALL, seed=11)
    a = synth3d.make_cohort(**kwargs)
    b = synth3d.make_cohort(**kwargs)
    for name in ("images", "raw_images", "truth", "truth_template", "severities"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.subtypes == b.subtypes
    c = synth3d.make_cohort(**{**kwargs, "seed": 12})
    assert not np.array_equal(a.raw_images, c.raw_images)
    # More controls: the first controls and every patient are unchanged.
    d = synth3d.make_cohort(**{**kwargs, "n_controls": 3})
    np.testing.assert_array_equal(d.raw_images[:2], a.raw_images[:2])
    np.testing.assert_array_equal(d.raw_images[3:], a.raw_images[2:])
    np.testing.assert_array_equal(d.truth[3:], a.truth[2:])
    # The recipe regenerates the cohort.
    params = json.loads(json.dumps(dict(a.recipe)))
    e = synth3d.make_cohort(**params["params"], regions=params["regions"])
    np.testing.assert_array_equal(e.raw_images, a.raw_images)


def test_counterfactual_reproduces_each_subject_and_swaps_its_disease(cohort):
    control = 0
    patient = next(i for i, s in enumerate(cohort.subtypes) if s in ("typical", "ventricular"))
    sub, sev = cohort.subtypes[patient], float(cohort.severities[patient])
    # Own disease (none for the control): the cohort's own image and truth.
    image, truth = synth3d.counterfactual(cohort, control, subtype=None)
    np.testing.assert_allclose(image, cohort.images[control], atol=1e-5)
    assert not truth.any()
    image, truth = synth3d.counterfactual(cohort, patient, subtype=sub, severity=sev)
    np.testing.assert_allclose(image, cohort.images[patient], atol=1e-5)
    np.testing.assert_allclose(truth, cohort.truth[patient], atol=1e-6)
    # The control with this patient's disease: the same change of volume, moved by the
    # control's own small warp; the patient healed: its ventricles shrink back.
    sick, truth = synth3d.counterfactual(cohort, control, subtype="ventricular", severity=1.0)
    ventricles = cohort.region_masks["ventricles"]
    assert truth[ventricles].mean() > 0.1
    assert _corr(truth, cohort.targets["ventricular"]) > 0.8
    near = scipy.ndimage.binary_dilation(ventricles, iterations=2)
    far = cohort.brain_mask & ~scipy.ndimage.binary_dilation(ventricles, iterations=6)

    def changed_near_ventricles(a, b):  # most near the ventricles (measured: 2.2 times)
        diff = np.abs(a - b)
        return diff[near].mean() > 1.5 * diff[far].mean()

    assert changed_near_ventricles(sick, cohort.images[control])
    healed, truth = synth3d.counterfactual(cohort, patient, subtype=None)
    assert not truth.any()
    assert changed_near_ventricles(healed, cohort.images[patient])
    with pytest.raises(ValueError, match="subtype must be None or one of"):
        synth3d.counterfactual(cohort, control, subtype="nope")
    with pytest.raises(ValueError, match="index must be in"):
        synth3d.counterfactual(cohort, N_CONTROLS + N_PATIENTS, subtype=None)


def test_make_cohort_argument_errors():
    with pytest.raises(ValueError, match="subtypes must be a non-empty subset"):
        synth3d.make_cohort(n_controls=1, n_patients=1, shape=SMALL, subtypes=["nope"])
    with pytest.raises(ValueError, match="severity"):
        synth3d.make_cohort(n_controls=1, n_patients=1, shape=SMALL, severity=(1.0, 0.5))
    with pytest.raises(ValueError, match="at least|>= 1 subject"):
        synth3d.make_cohort(n_controls=0, n_patients=0, shape=SMALL)
    one = synth3d.make_cohort(n_controls=0, n_patients=2, shape=SMALL, subtypes=["frontal"])
    assert one.subtypes == ("frontal", "frontal") and set(one.targets) == {"frontal"}


# ------------------------------------------------------------------------------ files


def test_write_cohort_reads_back(tmp_path, cohort):
    out = tmp_path / "cohort"
    table = synth3d.write_cohort(out, cohort)
    assert table == out / "cohort.csv" and (out / "COMPLETE").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]  # no temporary folder left
    scans = jd.read_table(table)
    assert [s.subject for s in scans] == list(cohort.subjects)
    assert [s.label for s in scans] == cohort.labels.tolist()
    assert [s.covariates["subtype"] for s in scans] == list(cohort.subtypes)
    np.testing.assert_allclose(
        [s.covariates["severity"] for s in scans], cohort.severities, rtol=1e-5
    )
    for i in (0, N_CONTROLS):  # a control and a patient
        volume, affine, _ = jd.load_volume(scans[i].path, shape=SHAPE)
        np.testing.assert_allclose(affine, cohort.affine, atol=1e-9)
        np.testing.assert_allclose(volume, cohort.images[i], atol=1e-5)
        img = nib.load(out / scans[i].covariates["truth"])
        np.testing.assert_allclose(img.affine, cohort.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(img.dataobj), cohort.truth[i])
    group = nib.load(out / "group_truth.nii.gz")
    np.testing.assert_array_equal(np.asarray(group.dataobj), cohort.group_truth)
    assert synth3d.load_regions(out / "regions.json") == cohort.regions
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["dataset"] == "synth3d" and recipe["params"]["shape"] == list(SHAPE)
    # World position: the MNI origin lies inside the grid, near its centre.
    origin = np.linalg.solve(cohort.affine, [0, 0, 0, 1])[:3]
    assert np.all((origin > 10) & (origin < 22))


def test_write_cohort_refuses_to_overwrite(tmp_path):
    small = synth3d.make_cohort(n_controls=1, n_patients=1, shape=SMALL, seed=1)
    out = tmp_path / "c"
    synth3d.write_cohort(out, small)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        synth3d.write_cohort(out, small)
    synth3d.write_cohort(out, small, overwrite=True)
    assert (out / "COMPLETE").is_file()
    other = tmp_path / "not_a_cohort"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a synth3d cohort"):
        synth3d.write_cohort(other, small, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "not_a_cohort"]
