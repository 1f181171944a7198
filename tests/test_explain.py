"""Explain and report on a tiny synthetic cohort (16^3): NIfTI outputs on the model grid,
the field and its log volume change, a scan stored flipped on disk, group maps, regional
OLS against numpy.linalg.lstsq, evaluation against the truth, refusals, the report."""

import argparse
import csv
import json
import math
import shutil

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

import jaxinterp as ji
from jaxinterp import synth3d
from jaxinterp.data import load_volume, model_grid_affine
from jaxinterp.register import RegistrationConfig
from jaxinterp.stats import benjamini_hochberg, ols_group_test
from train import explain as ex
from train import load_config, train_classifier, train_simulator
from train import report as rp
from train.classifier import load_classifier, predict_logits

# explain's numbers must not come from empty or degenerate slices (a region too small for
# the 16^3 grid once gave a "Mean of empty slice" NaN)
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

SHAPE = (16, 16, 16)
METHODS = ex.METHODS
TINY = [
    "data.kind='table'",
    f"data.shape={SHAPE}",
    "data.n_per_group=6",
    "classifier.features=(4,)",
    "classifier.hidden=8",
    "classifier_optim.steps=4",
    "classifier_optim.batch_size=4",
    "classifier_optim.learning_rate=0.01",
    "classifier_optim.log_every=4",
    "classifier_optim.checkpoint_every=4",
    "simulator.features=(4, 4)",
    "simulator.bottleneck=8",
    "simulator_optim.steps=2",
    "simulator_optim.batch_size=4",
    "simulator_optim.log_every=2",
    "simulator_optim.checkpoint_every=2",
]
ATLAS_NAMES = {1: "ventricles", 2: "frontal_left", 3: "frontal_right", 4: "rest"}
FLIPPED = "flip-0006"  # a copy of sub-0006 (a patient) stored flipped along axis 0


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _load(path):
    img = nib.load(path)
    return np.asarray(img.get_fdata(dtype=np.float32)), img


def _scipy_smoother(fwhm, affine):
    """The reference for ``smooth_fwhm``: SciPy's Gaussian with sigma = FWHM / sqrt(8 ln 2)
    / voxel size along each axis; returns ``(smooth, sigma)``."""
    sigma = fwhm / math.sqrt(8 * math.log(2)) / np.linalg.norm(affine[:3, :3], axis=0)
    return (lambda m: scipy.ndimage.gaussian_filter(m.astype(np.float64), sigma)), sigma


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Cohort, trained networks, one explain run (native, occlusion, atlas), the inputs."""
    root = tmp_path_factory.mktemp("explain")
    cohort = synth3d.make_cohort(n_controls=6, n_patients=6, shape=SHAPE, seed=0)
    table = synth3d.write_cohort(root / "cohort", cohort)
    config = load_config("brain3d_32", [*TINY, f"data.path='{table}'"])
    workdir = root / "run"
    train_classifier(config, workdir)
    train_simulator(config, workdir)

    # A table with covariates and one scan stored flipped on disk (same place in the world).
    img = nib.load(table.parent / "images" / "sub-0006.nii.gz")
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, img.shape[0] - 1
    nib.save(
        nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine @ flip),
        table.parent / "images" / f"{FLIPPED}.nii.gz",
    )
    rng = np.random.default_rng(0)
    rows = _rows(table)
    rows.append({**rows[6], "path": f"images/{FLIPPED}.nii.gz", "subject": FLIPPED})
    for i, row in enumerate(rows):
        row["age"] = f"{rng.uniform(60, 80):.2f}"
        row["site"] = "AB"[i % 2]
    plus = table.parent / "cohort_plus.csv"
    _write_rows(plus, rows)

    # An atlas at twice the resolution (nearest-neighbour brings it back exactly).
    labels = np.zeros(SHAPE, np.int16)
    labels[cohort.brain_mask] = 4
    for k, name in ATLAS_NAMES.items():
        if name in cohort.region_masks:
            labels[cohort.region_masks[name]] = k
    fine = labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    (root / "atlas").mkdir()
    atlas = root / "atlas" / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(fine, model_grid_affine(cohort.affine, SHAPE, (32, 32, 32))), atlas)

    out = root / "out"
    summary = ex.explain(
        config,
        workdir,
        plus,
        out,
        native=True,
        batch_size=8,
        methods=METHODS,
        occlusion=True,
        occlusion_window=4,
        occlusion_stride=4,
        ig_steps=2,
        atlas=atlas,
        atlas_names=ATLAS_NAMES,
        covariates=("age", "site"),
    )
    return {
        "config": config,
        "workdir": workdir,
        "table": plus,
        "out": out,
        "cohort": cohort,
        "cohort_table": table,
        "summary": summary,
        "labels": labels,
        "root": root,
    }


def test_outputs_on_the_model_grid(run):
    out, cohort = run["out"], run["cohort"]
    assert (out / "COMPLETE").is_file()
    rows = _rows(out / "scans.csv")
    assert len(rows) == 13 and rows[-1]["subject"] == FLIPPED
    for row in rows:
        folder = out / "scans" / row["scan_id"]
        _, model_affine, _ = load_volume(row["path"], shape=SHAPE)
        np.testing.assert_allclose(model_affine, cohort.affine, atol=1e-6)
        for name in (
            "simulated",
            "log_volume_change",
            "displacement",
            *[f"saliency_{m}" for m in METHODS],
        ):
            data, img = _load(folder / f"{name}.nii.gz")
            np.testing.assert_allclose(img.affine, model_affine, atol=1e-5)
            assert data.shape == (*SHAPE, 3) if name == "displacement" else SHAPE
            assert np.isfinite(data).all()
        descrip = nib.load(folder / "displacement.nii.gz").header["descrip"].tobytes().decode()
        assert "voxels" in descrip and "pull-back" in descrip
    assert {r["task"] for r in rows if r["label"] == "0"} == {"inject"}
    assert {r["task"] for r in rows if r["label"] == "1"} == {"remove"}
    # the checkpoints explained: the last step of each training (TINY: 4 and 2)
    manifest = json.loads((out / "explain.json").read_text())
    assert manifest["checkpoint_steps"] == {"classifier": 4, "simulator": 2}


def test_log_volume_change_is_that_of_the_saved_field(run):
    """The default frame ("diseased"): a control's map lies on its simulated image, a
    patient's on the patient's own scan (the saved field's map read at its inverse)."""
    rows = _rows(run["out"] / "scans.csv")
    for row in rows[:2] + rows[-3:]:
        folder = run["out"] / "scans" / row["scan_id"]
        field, _ = _load(folder / "displacement.nii.gz")
        lvc, img = _load(folder / "log_volume_change.nii.gz")
        on_output = np.asarray(ji.log_volume_change(jnp.asarray(field)))
        on_input = np.asarray(ji.log_volume_change_on_input(jnp.asarray(field)))
        assert row["map_on"] == {"inject": "simulated", "remove": "input"}[row["task"]]
        np.testing.assert_allclose(lvc, on_input if row["map_on"] == "input" else on_output,
                                   atol=1e-5)  # fmt: skip
        assert row["map_on"] in img.header["descrip"].tobytes().decode()
        folding = float(ji.folding_fraction(jnp.asarray(field)))
        assert float(row["folding_fraction"]) == pytest.approx(folding, abs=1e-7)
        assert np.abs(on_input - on_output).max() > 5e-5  # the frames differ (tiny fields)


def test_logits_are_the_classifiers(run):
    rows = _rows(run["out"] / "scans.csv")
    images = np.stack([load_volume(r["path"], shape=SHAPE)[0] for r in rows])[..., None]
    model, variables = load_classifier(run["config"], run["workdir"], images)
    logits = predict_logits(model, variables, images)
    np.testing.assert_allclose([float(r["logit_raw"]) for r in rows], logits, atol=1e-5)
    for r in rows:
        sign = 1 if r["task"] == "inject" else -1
        shift = (float(r["logit_simulated"]) - float(r["logit_raw"])) * sign
        assert float(r["logit_shift"]) == pytest.approx(shift, abs=1e-6)


def test_growth_gradient_baseline_is_the_saliency_function_with_the_simulators_steps(run):
    # An untrained classifier: the fixture's trained one is too small to have a gradient.
    classifier = ji.nn.Classifier(ji.nn.ClassifierConfig(features=(4, 4), hidden=8))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, *SHAPE)), jnp.float32)
    variables = classifier.init(jax.random.key(0), images[..., None])
    fn = ex._saliency_fn(classifier, ("gradient", "growth_gradient"), 2, 3)
    maps = fn(variables, images, jnp.zeros(SHAPE))
    logit_fn = lambda z: classifier.apply(variables, z)
    want = ji.saliency.growth_gradient(logit_fn, images[..., None], steps=3)
    np.testing.assert_allclose(maps["growth_gradient"], want, rtol=1e-4, atol=1e-6)
    assert np.abs(want).max() > 0
    # the explain run wrote one for every scan, beside the other baselines
    row = _rows(run["out"] / "scans.csv")[0]
    assert (run["out"] / "scans" / row["scan_id"] / "saliency_growth_gradient.nii.gz").is_file()


def test_scan_stored_flipped_gives_the_same_map_in_world_space(run):
    out = run["out"]
    for name in ("log_volume_change", "displacement", "simulated"):
        a, img_a = _load(out / "scans" / "sub-0006" / f"{name}.nii.gz")
        b, img_b = _load(out / "scans" / FLIPPED / f"{name}.nii.gz")
        np.testing.assert_allclose(img_a.affine, img_b.affine)
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Native space: the flipped scan's map is stored flipped, with the flipped affine.
    a, img_a = _load(out / "scans" / "sub-0006" / "native" / "log_volume_change.nii.gz")
    b, img_b = _load(out / "scans" / FLIPPED / "native" / "log_volume_change.nii.gz")
    flipped = nib.load(run["table"].parent / "images" / f"{FLIPPED}.nii.gz")
    np.testing.assert_allclose(img_b.affine, flipped.affine, atol=1e-5)
    np.testing.assert_allclose(b[::-1], a, atol=1e-5)
    field, img = _load(out / "scans" / FLIPPED / "native" / "displacement_mm.nii.gz")
    assert field.shape == (*SHAPE, 3)
    assert "mm" in img.header["descrip"].tobytes().decode()


def test_group_maps_are_mean_and_t_of_the_subject_maps(run):
    out = run["out"]
    rows = _rows(out / "scans.csv")
    for task in ("inject", "remove"):
        maps = np.stack(
            [
                _load(out / "scans" / r["scan_id"] / "log_volume_change.nii.gz")[0]
                for r in rows
                if r["task"] == task
            ]
        )
        mean, img = _load(out / "group" / f"log_volume_change_{task}_mean.nii.gz")
        t, _ = _load(out / "group" / f"log_volume_change_{task}_t.nii.gz")
        np.testing.assert_allclose(img.affine, run["cohort"].affine, atol=1e-5)
        np.testing.assert_allclose(mean, maps.mean(0), atol=1e-6)
        varies = maps.std(0) > 1e-3
        reference = scipy.stats.ttest_1samp(maps[:, varies].astype(np.float64), 0.0).statistic
        np.testing.assert_allclose(t[varies], reference, rtol=1e-3, atol=1e-3)
    for m in METHODS:
        for group in ("control", "patient"):
            assert (out / "group" / f"saliency_{m}_{group}_absmean.nii.gz").is_file()
    drop, _ = _load(out / "group" / "occlusion_accuracy_drop.nii.gz")
    assert drop.shape == SHAPE and np.isfinite(drop).all() and np.abs(drop).max() <= 1.0
    assert run["summary"]["occlusion"]["window"] == [4, 4, 4]
    assert ex.occlusion_geometry((64, 64, 64)) == ((8, 8, 8), (4, 4, 4))
    assert ex.occlusion_geometry((32, 16, 64)) == ((4, 2, 8), (2, 1, 4))


def test_registration_to_the_template(run):
    """--register: every scan gets a to_template field that lowers its mismatch with the
    template, and the group maps are the means of the subject maps sampled at x + u(x)
    (checked with SciPy's trilinear sampling of the saved files). With smoothing, the maps
    are smoothed after the sampling (SciPy's Gaussian), and each scan is scored on its own
    grid, its own map smoothed alike."""
    out = run["root"] / "out_registered"
    fwhm = 20.0
    summary = ex.explain(
        run["config"],
        run["workdir"],
        run["table"],
        out,
        methods=("gradient",),
        ig_steps=1,
        register_to_template=True,
        registration=RegistrationConfig(steps=10, learning_rate=0.2, integration_steps=3),
        smooth_fwhm=fwhm,
    )
    rows = _rows(out / "scans.csv")
    before = np.array([float(r["registration_mismatch_before"]) for r in rows])
    after = np.array([float(r["registration_mismatch_after"]) for r in rows])
    assert (after < before).all()
    assert summary["registration"]["template"] == str(synth3d.template_paths()["t1"])
    template, timg = _load(out / "group" / "template.nii.gz")
    np.testing.assert_allclose(timg.affine, run["cohort"].affine, atol=1e-5)
    smooth, _ = _scipy_smoother(fwhm, timg.affine)
    truth, _ = _load(out / "group" / "truth.nii.gz")
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1)
    for task, group in (("inject", "control"), ("remove", "patient")):
        members = [r for r in rows if r["task"] == task]
        lvc, grad = [], []
        for r in members:
            folder = out / "scans" / r["scan_id"]
            field, fimg = _load(folder / "to_template.nii.gz")
            assert field.shape == (*SHAPE, 3)
            np.testing.assert_allclose(fimg.affine, run["cohort"].affine, atol=1e-5)
            points = np.moveaxis(grid + field, -1, 0)
            for maps, name in ((lvc, "log_volume_change"), (grad, "saliency_gradient")):
                m = _load(folder / f"{name}.nii.gz")[0]
                sampled = scipy.ndimage.map_coordinates(m, points, order=1, mode="nearest")
                maps.append(smooth(sampled))
            if task == "inject":  # a control's own truth is the group truth
                native = _load(folder / "log_volume_change.nii.gz")[0]
                expected = ji.ncc(jnp.asarray(smooth(native)), jnp.asarray(truth),
                                  mask=run["cohort"].brain_mask)  # fmt: skip
                assert float(r["ncc_truth"]) == pytest.approx(float(expected), abs=1e-4)
        mean, _ = _load(out / "group" / f"log_volume_change_{task}_mean.nii.gz")
        np.testing.assert_allclose(mean, np.mean(lvc, 0), atol=1e-5)
        sal, _ = _load(out / "group" / f"saliency_gradient_{group}_mean.nii.gz")
        np.testing.assert_allclose(sal, np.mean(grad, 0), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="template"):
        ex.explain(run["config"], run["workdir"], run["table"], run["root"] / "x",
                   template=synth3d.template_paths()["t1"])  # fmt: skip


def test_regions_per_scan_and_ols_against_lstsq(run):
    out = run["out"]
    rows = _rows(out / "regions.csv")
    scans = _rows(out / "scans.csv")
    assert [r["subject"] for r in rows] == [s["subject"] for s in scans]
    present = sorted(set(np.unique(run["labels"]).tolist()) - {0})
    names = [ATLAS_NAMES[k] for k in present]
    assert list(rows[0])[-len(names) :] == names
    for row, scan in zip(rows, scans):
        lvc, _ = _load(out / "scans" / scan["scan_id"] / "log_volume_change.nii.gz")
        for k, name in zip(present, names):
            assert float(row[name]) == pytest.approx(
                float(lvc[run["labels"] == k].mean()), abs=1e-6
            )
    stats = {r["region"]: r for r in _rows(out / "region_stats.csv")}
    group = np.array([float(r["label"]) for r in rows])
    age = np.array([float(r["age"]) for r in rows])
    site = np.array([r["site"] == "B" for r in rows], float)
    x = np.column_stack([np.ones_like(group), group, age, site])
    for name in names:
        y = np.array([float(r[name]) for r in rows])
        beta, rss, rank, _ = np.linalg.lstsq(x, y, rcond=None)
        df = len(y) - x.shape[1]
        se = math.sqrt(rss[0] / df * np.linalg.inv(x.T @ x)[1, 1])
        t = beta[1] / se
        assert float(stats[name]["beta"]) == pytest.approx(beta[1], rel=1e-5, abs=1e-9)
        assert float(stats[name]["t"]) == pytest.approx(t, rel=1e-4)
        assert float(stats[name]["p"]) == pytest.approx(2 * scipy.stats.t.sf(abs(t), df), rel=1e-4)
        assert int(stats[name]["df"]) == df and stats[name]["covariates"] == "age site=B"


def test_ols_group_test_matches_lstsq_and_flags_rank_deficiency():
    rng = np.random.default_rng(1)
    n = 30
    group = np.repeat([0.0, 1.0], n // 2)
    cov = rng.normal(size=(n, 2))
    y = 0.5 * group + cov @ [0.3, -0.2] + rng.normal(scale=0.1, size=n)
    result = ols_group_test(y, group, cov)
    x = np.column_stack([np.ones(n), group, cov])
    beta, rss, _, _ = np.linalg.lstsq(x, y, rcond=None)
    se = math.sqrt(rss[0] / (n - 4) * np.linalg.inv(x.T @ x)[1, 1])
    assert result["beta"] == pytest.approx(beta[1], rel=1e-10)
    assert result["se"] == pytest.approx(se, rel=1e-8)
    assert result["p"] == pytest.approx(2 * scipy.stats.t.sf(abs(beta[1] / se), n - 4), rel=1e-6)
    # Without covariates the group t test is the pooled two-sample t test.
    plain = ols_group_test(y, group)
    ref = scipy.stats.ttest_ind(y[group == 1], y[group == 0])
    assert plain["t"] == pytest.approx(ref.statistic, rel=1e-8)
    assert plain["p"] == pytest.approx(ref.pvalue, rel=1e-6)
    collinear = ols_group_test(y, group, group[:, None] * 2.0)
    assert math.isnan(collinear["t"]) and collinear["df"] == 0
    q = benjamini_hochberg([0.01, 0.04, math.nan, 0.03])
    np.testing.assert_allclose(q, [0.03, 0.04, np.nan, 0.04])


def test_evaluation_against_the_truth(run):
    out = run["out"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    maps = evaluation["maps"]
    expected = {
        "simulator_inject",
        "simulator_remove",
        "occlusion",
        "intensity_difference",
        "abs_truth",
        *[f"{m}_{g}" for m in METHODS for g in ("control", "patient")],
    }
    assert set(maps) == expected
    assert maps["abs_truth"]["group"]["ncc_abs"] == pytest.approx(1.0, abs=1e-5)
    truth, _ = _load(out / "group" / "truth.nii.gz")
    np.testing.assert_allclose(truth, run["cohort"].group_truth, atol=1e-6)
    brain = run["cohort"].brain_mask
    for task, sign in (("inject", 1.0), ("remove", -1.0)):
        mean, _ = _load(out / "group" / f"log_volume_change_{task}_mean.nii.gz")
        score = float(ji.ncc(jnp.asarray(mean), jnp.asarray(sign * truth), mask=brain))
        entry = maps[f"simulator_{task}"]
        assert entry["group"]["ncc_signed"] == pytest.approx(score, abs=1e-5)
        assert entry["subjects"]["ncc_signed"]["n"] == (6 if task == "inject" else 7)
        for region, r in entry["regions"].items():
            mask = run["cohort"].region_masks[region]
            assert r["map_mean"] == pytest.approx(float(mean[mask].mean()), abs=1e-6)
            assert r["sign_agrees"] == (np.sign(r["map_mean"]) == np.sign(r["expected_mean"]))
            assert r["used_by_classifier"] == evaluation["classifier_uses"][region]["used"]
        used = [r for r in entry["regions"].values() if r["used_by_classifier"]]
        assert entry["sign_where_used"] == {
            "right": sum(r["sign_agrees"] for r in used),
            "of": len(used),
        }
    rows = _rows(out / "scans.csv")
    assert all(r["ncc_truth"] != "" for r in rows)
    uses = evaluation["classifier_uses"]
    assert set(uses) == set(run["cohort"].region_masks)
    for entry in uses.values():
        assert 0 <= entry["n"] <= 7
        fraction = entry["fraction_of_gap"]  # None (JSON null) when no patient is affected
        assert entry["used"] == (fraction is not None and fraction >= 0.1)


def test_smoothing_before_group_maps_and_scores(run, tmp_path):
    """``smooth_fwhm``: group maps and per-scan scores are those of the unsmoothed run's
    per-scan maps smoothed by SciPy's Gaussian (sigma = FWHM / sqrt(8 ln 2) / voxel size);
    the per-scan files stay unsmoothed."""
    fwhm = 20.0
    out = tmp_path / "smoothed"
    summary = ex.explain(
        run["config"], run["workdir"], run["table"], out, methods=("gradient",), smooth_fwhm=fwhm
    )
    assert summary["smooth_fwhm_mm"] == fwhm
    truth, img = _load(out / "group" / "truth.nii.gz")
    smooth, sigma = _scipy_smoother(fwhm, img.affine)
    assert 0.5 < sigma.min() and sigma.max() < 2.0  # a kernel that matters on this grid
    brain = run["cohort"].brain_mask
    rows = _rows(out / "scans.csv")
    for task in ("inject", "remove"):
        ids = [r["scan_id"] for r in rows if r["task"] == task]
        raw = np.stack(
            [_load(run["out"] / "scans" / i / "log_volume_change.nii.gz")[0] for i in ids]
        )
        again = np.stack([_load(out / "scans" / i / "log_volume_change.nii.gz")[0] for i in ids])
        np.testing.assert_allclose(again, raw, atol=1e-6)  # the files: unsmoothed
        mean, _ = _load(out / "group" / f"log_volume_change_{task}_mean.nii.gz")
        expected = np.mean([smooth(m) for m in raw], axis=0)
        np.testing.assert_allclose(mean, expected, atol=1e-5)
        assert np.abs(mean - raw.mean(0)).max() > 100 * 1e-5  # smoothing changed the map
    controls = [r for r in rows if r["task"] == "inject"]
    for r in controls:  # a control's own truth is the group truth
        lvc, _ = _load(out / "scans" / r["scan_id"] / "log_volume_change.nii.gz")
        score = float(ji.ncc(jnp.asarray(smooth(lvc)), jnp.asarray(truth), mask=brain))
        assert float(r["ncc_truth"]) == pytest.approx(score, abs=1e-4)
    gradients = np.stack(
        [_load(out / "scans" / r["scan_id"] / "saliency_gradient.nii.gz")[0] for r in controls]
    )
    group, _ = _load(out / "group" / "saliency_gradient_control_mean.nii.gz")
    np.testing.assert_allclose(group, np.mean([smooth(g) for g in gradients], 0), atol=1e-5)
    absmean, _ = _load(out / "group" / "saliency_gradient_control_absmean.nii.gz")
    expected = np.mean([np.abs(smooth(g)) for g in gradients], 0)
    np.testing.assert_allclose(absmean, expected, atol=1e-5)
    difference, _ = _load(out / "group" / "intensity_difference.nii.gz")
    unsmoothed, _ = _load(run["out"] / "group" / "intensity_difference.nii.gz")
    np.testing.assert_allclose(difference, smooth(unsmoothed), atol=1e-5)
    page = rp.report(out, tmp_path / "report")
    assert "smoothed (Gaussian, FWHM 20 mm)" in page.read_text()


def test_refusals_and_clear_errors(run, tmp_path):
    config, workdir, table, out = run["config"], run["workdir"], run["table"], run["out"]
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match="not empty"):
        ex.explain(config, workdir, table, out)
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(FileExistsError, match="not the output"):
        ex.explain(config, workdir, table, table.parent, overwrite=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ex.explain(config, tmp_path / "nowhere", table, tmp_path / "o1")
    (tmp_path / "half").mkdir()
    shutil.copytree(workdir / "classifier", tmp_path / "half" / "classifier")
    with pytest.raises(FileNotFoundError, match="no trained simulator"):
        ex.explain(config, tmp_path / "half", table, tmp_path / "o2")
    with pytest.raises(ValueError, match="unknown saliency method"):
        ex.explain(config, workdir, table, tmp_path / "o3", methods=("gradcam",))
    with pytest.raises(ValueError, match="smooth_fwhm must be"):
        ex.explain(config, workdir, table, tmp_path / "o4", smooth_fwhm=-4.0)
    assert not (tmp_path / "o4").exists()
    with pytest.raises(ValueError, match="map_frame must be one of"):
        ex.explain(config, workdir, table, tmp_path / "o5", map_frame="healed")
    # An earlier explain output that holds an input is never replaced.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / ex.MANIFEST).write_text(json.dumps({"kind": ex.KIND}))
    rows = _rows(table)
    for row in rows:
        row["path"] = str(table.parent / row["path"])
    _write_rows(fake / "table.csv", rows)
    with pytest.raises(ValueError, match="inside the output folder"):
        ex.explain(config, workdir, fake / "table.csv", fake, overwrite=True)
    assert (fake / "table.csv").is_file()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_report_writes_figures_and_page(run, tmp_path):
    parser = argparse.ArgumentParser()
    rp.add_arguments(parser)
    args = parser.parse_args(["--explain", str(run["out"]), "--out", str(tmp_path / "report")])
    page = rp.run(args)["page"]
    text = open(page).read()
    figures = sorted((tmp_path / "report" / "figures").glob("*.png"))
    names = {p.stem for p in figures}
    assert {
        "logits",
        "log_volume_change_inject_mean",
        "log_volume_change_remove_t",
        "truth",
        "occlusion_accuracy_drop",
        "saliency_grad_cam_patient_mean",
    } <= names
    for p in figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{p.name}" in text
    assert "Evaluation against the truth" in text and "simulator_inject" in text
    assert "## Regions" in text
    assert "the patients' (disease removed) on their own scans." in text
    assert "the controls' (disease injected) on their simulated, diseased images" in text
    assert "right sign where the classifier looks" in text
    for region in run["cohort"].region_masks:
        assert f"| {region} |" in text  # the classifier-use table
    with pytest.raises(FileExistsError):
        rp.report(run["out"], tmp_path / "report")
    rp.report(run["out"], tmp_path / "report", overwrite=True, background="mean")
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        rp.report(tmp_path, tmp_path / "r2")


def test_explain_from_command_line_arguments(run, tmp_path):
    parser = argparse.ArgumentParser()
    ex.add_arguments(parser)
    table = run["table"].parent / "cohort.csv"
    overrides = [x for o in [*TINY, f"data.path='{table}'"] for x in ("--set", o)]
    argv = [
        "--config",
        "brain3d_32",
        "--workdir",
        str(run["workdir"]),
        "--table",
        str(table),
        "--out",
        str(tmp_path / "cli"),
        "--methods",
        "none",
        "--batch-size",
        "5",
        *overrides,
    ]
    args = parser.parse_args(argv)
    assert args.ensemble == []
    assert parser.parse_args([*argv, "--ensemble", "5", "9"]).ensemble == [5, 9]
    summary = ex.run(args)
    assert summary["n_scans"] == 12 and summary["groups"] == {"control": 6, "patient": 6}
    assert json.loads(json.dumps(summary)) == summary  # JSON-ready for the command's output
    out = tmp_path / "cli"
    assert (out / "COMPLETE").is_file() and not list(out.glob("group/saliency_*"))
    assert not (out / "scans" / "sub-0000" / "native").exists()
    # The same scans give the same maps whatever the batch size (5 here, 8 above).
    a, _ = _load(out / "scans" / "sub-0011" / "log_volume_change.nii.gz")
    b, _ = _load(run["out"] / "scans" / "sub-0011" / "log_volume_change.nii.gz")
    np.testing.assert_allclose(a, b, atol=1e-5)
    # --overwrite replaces an earlier explain output as a whole.
    (out / "stale.txt").write_text("from an earlier run")
    with pytest.raises(FileExistsError):
        ex.run(args)
    assert json.loads((out / ex.MANIFEST).read_text())["smooth_fwhm_mm"] == 0.0
    ex.run(parser.parse_args([*argv, "--overwrite", "--smooth-fwhm", "8"]))
    assert (out / "COMPLETE").is_file() and not (out / "stale.txt").exists()
    manifest = json.loads((out / ex.MANIFEST).read_text())
    assert manifest["smooth_fwhm_mm"] == 8.0
    assert manifest["map_frame"] == {"name": "diseased", "inject": "simulated", "remove": "input"}
    # --map-frame simulated: a patient's map on the healed image, the saved field's own.
    ex.run(parser.parse_args([*argv, "--overwrite", "--map-frame", "simulated"]))
    assert json.loads((out / ex.MANIFEST).read_text())["map_frame"]["remove"] == "simulated"
    field, _ = _load(out / "scans" / "sub-0011" / "displacement.nii.gz")
    lvc, _ = _load(out / "scans" / "sub-0011" / "log_volume_change.nii.gz")
    np.testing.assert_allclose(lvc, ji.log_volume_change(jnp.asarray(field)), atol=1e-5)
    assert {r["map_on"] for r in _rows(out / "scans.csv")} == {"simulated"}
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--map-frame", "healed"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    for text in (ex.FIELD_DESCRIP, ex.NATIVE_FIELD_DESCRIP, *ex.LVC_DESCRIP.values()):
        assert len(text.encode("ascii")) <= 80


def test_ensemble_maps_are_the_members_mean(run, tmp_path):
    """``ensemble``: a second simulator (``simulator_seed=5``, folder ``simulator_seed5``)
    joins the config's own; each scan's log volume change and logits are the mean of the
    two members' own explain runs, the simulated image the first member's, and the group
    map the mean of the ensemble's scan maps."""
    config, workdir, table = run["config"], run["workdir"], run["table"]
    member = load_config("brain3d_32", [*TINY, f"data.path='{run['cohort_table']}'",
                                        "simulator_seed=5"])  # fmt: skip
    train_simulator(member, workdir)
    assert (workdir / "simulator_seed5").is_dir()
    alone = ex.explain(member, workdir, table, tmp_path / "member", methods=(), evaluate=False)
    assert alone["checkpoint_steps"]["simulator"] == 2
    summary = ex.explain(config, workdir, table, tmp_path / "both", methods=(), ensemble=(5,))
    assert summary["ensemble"] == ["simulator_seed5"]
    assert set(summary["checkpoint_steps"]) == {"classifier", "simulator", "simulator_seed5"}
    outs = {"first": run["out"], "member": tmp_path / "member", "both": tmp_path / "both"}
    rows = {k: {r["scan_id"]: r for r in _rows(o / "scans.csv")} for k, o in outs.items()}
    lvc = lambda k, i: _load(outs[k] / "scans" / i / "log_volume_change.nii.gz")[0]
    differ = 0.0
    for i, row in rows["both"].items():
        first, other = lvc("first", i), lvc("member", i)
        differ = max(differ, float(np.abs(first - other).max()))
        np.testing.assert_allclose(lvc("both", i), (first + other) / 2, atol=1e-6)
        for key in ("logit_simulated", "logit_cycled", "folding_fraction"):
            want = (float(rows["first"][i][key]) + float(rows["member"][i][key])) / 2
            assert float(row[key]) == pytest.approx(want, abs=1e-4)
        assert float(row["logit_raw"]) == pytest.approx(float(rows["first"][i]["logit_raw"]))
        simulated = _load(outs["both"] / "scans" / i / "simulated.nii.gz")[0]
        np.testing.assert_allclose(
            simulated, _load(outs["first"] / "scans" / i / "simulated.nii.gz")[0], atol=1e-6
        )
    assert differ > 1e-3  # two different simulators
    ids = [i for i, r in rows["both"].items() if r["task"] == "inject"]
    mean, _ = _load(outs["both"] / "group" / "log_volume_change_inject_mean.nii.gz")
    np.testing.assert_allclose(mean, np.mean([lvc("both", i) for i in ids], 0), atol=1e-6)
    page = rp.report(outs["both"], tmp_path / "report").read_text()
    assert "ensemble members `simulator_seed5`, maps averaged" in page
    with pytest.raises(ValueError, match="already a member"):
        ex.explain(config, workdir, table, tmp_path / "o1", ensemble=(5, 0))
    with pytest.raises(FileNotFoundError, match="simulator_seed6"):
        ex.explain(config, workdir, table, tmp_path / "o2", ensemble=(6,))


def test_seed_summary_reads_explain_outputs(run, tmp_path, capsys):
    from benchmarks import seeds3d

    out = run["out"]
    numbers = seeds3d.seed_numbers(out)
    maps = json.loads((out / "evaluation.json").read_text())["maps"]
    logits = json.loads((out / "explain.json").read_text())["logits"]
    rows = _rows(out / "scans.csv")
    # The fixture's classifier is too small to have a gradient: every baseline scores null
    # (NaN), so there is none to beat and no margin.
    baselines = [k for k, v in maps.items() if v["kind"] in ("saliency", "occlusion")]
    assert "occlusion" in baselines and "gradient_control" in baselines
    assert all(maps[k]["group"]["ncc_signed"] is None for k in baselines)
    assert numbers["baseline_ncc_signed_name"] == "none"
    assert math.isnan(numbers["baseline_ncc_signed"]) and math.isnan(
        numbers["baseline_margin_ncc_abs"]
    )
    accuracy = json.loads((run["workdir"] / "classifier" / "summary.json").read_text())
    assert numbers["test_accuracy"] == accuracy["test"]["accuracy"]
    for task in ("inject", "remove"):
        entry = maps[f"simulator_{task}"]
        assert numbers[f"group_{task}"] == entry["group"]["ncc_signed"]
        per_scan = [float(r["ncc_truth"]) for r in rows if r["task"] == task]
        assert numbers[f"subject_median_{task}"] == pytest.approx(np.median(per_scan))
        right = sum(r["sign_agrees"] for r in entry["regions"].values())
        assert numbers[f"sign_all_{task}"] == right
        assert numbers[f"past_delta_{task}"] == logits[task]["fraction_shift_at_least_delta"]
    # With scores given to three baselines (a copy of the output), the best one is picked,
    # the best classic one leaves the growth gradient out, and each margin is the
    # simulator's worse direction minus it.
    copy = shutil.copytree(out, tmp_path / "scored")
    scored = json.loads((copy / "evaluation.json").read_text())
    scored["maps"]["occlusion"]["group"] = {"ncc_signed": 0.05, "ncc_abs": 0.3}
    scored["maps"]["gradient_patient"]["group"] = {"ncc_signed": 0.1, "ncc_abs": 0.2}
    scored["maps"]["growth_gradient_control"]["group"] = {"ncc_signed": 0.6, "ncc_abs": 0.7}
    (copy / "evaluation.json").write_text(json.dumps(scored))
    numbers = seeds3d.seed_numbers(copy)
    worse = min(numbers["group_inject"], numbers["group_remove"])
    worse_abs = min(numbers["group_abs_inject"], numbers["group_abs_remove"])
    assert numbers["baseline_ncc_signed_name"] == "growth_gradient_control"
    assert numbers["baseline_margin_ncc_abs"] == pytest.approx(worse_abs - 0.7)
    assert numbers["classic_ncc_signed_name"] == "gradient_patient"
    assert numbers["classic_ncc_abs_name"] == "occlusion"
    assert numbers["classic_margin_ncc_signed"] == pytest.approx(worse - 0.1)
    assert numbers["classic_margin_ncc_abs"] == pytest.approx(worse_abs - 0.3)

    # Mean, sample std and worst seed against NumPy, on three made-up seeds of those numbers
    # (the worst of a baseline is its highest: the one hardest to beat).
    seeds = [
        {**numbers, "group_inject": g, "baseline_ncc_abs": b}
        for g, b in ((0.5, 0.2), (0.8, 0.6), (0.65, 0.4))
    ]
    stats = seeds3d.summarise(seeds)
    values = np.array([0.5, 0.8, 0.65])
    assert stats["group_inject"]["mean"] == pytest.approx(values.mean())
    assert stats["group_inject"]["std"] == pytest.approx(values.std(ddof=1))
    text = seeds3d.table(seeds, ["s0", "s1", "s2"])
    line = next(x for x in text.splitlines() if x.startswith("| group NCC, inject |"))
    assert line.endswith(f"| 0.650 ± {values.std(ddof=1):.3f} | 0.500 |")
    line = next(
        x for x in text.splitlines() if x.startswith("| best baseline (growth gradient too), abs")
    )
    assert line.endswith("| 0.600 |")
    verdict = next(x for x in text.splitlines() if x.startswith("- group NCC >= 0.8"))
    low = min(0.5, numbers["group_remove"])
    assert f"worst seed {low:.3f} missed" in verdict

    # The sign target reads on the regions the classifier uses; every region is counted
    # beside it: one seed right in its one used region but wrong in two others...
    signs = {"regions_inject": 5, "regions_remove": 5, "used_inject": 1, "used_remove": 1}
    right = {**signs, "sign_all_inject": 5, "sign_all_remove": 5}
    right.update(sign_used_inject=1, sign_used_remove=1)
    partly = {**right, "sign_all_inject": 3}
    sign_line = lambda seeds: next(  # noqa: E731
        x for x in seeds3d.table(seeds, ["a", "b"]).splitlines() if "- right sign" in x
    )
    line = sign_line([{**numbers, **right}, {**numbers, **partly}])
    assert "classifier uses, every seed: met (inject 1/1, 1/1; remove 1/1, 1/1)" in line
    assert "in every truth region: missed (inject 5/5, 3/5; remove 5/5, 5/5)" in line
    # ... and one wrong in the region it uses
    line = sign_line([{**numbers, **right}, {**numbers, **partly, "sign_used_remove": 0}])
    assert "classifier uses, every seed: missed (inject 1/1, 1/1; remove 1/1, 0/1)" in line
    assert "in every truth region: met" not in sign_line([{**numbers, **partly}] * 2)

    # The command line: one table, the numbers as JSON, a missing folder named.
    target = tmp_path / "seeds.json"
    seeds3d.main(["--explain", str(out), str(out), "--labels", "a", "b", "--json", str(target)])
    assert "| group NCC, remove |" in capsys.readouterr().out
    written = json.loads(target.read_text())
    assert written["summary"]["group_remove"]["std"] == 0.0
    with pytest.raises(SystemExit, match="evaluation.json: missing"):
        seeds3d.seed_numbers(tmp_path)
    unscored = shutil.copytree(out, tmp_path / "unscored")
    blank = _rows(out / "scans.csv")
    blank[0]["ncc_truth"] = ""
    _write_rows(unscored / "scans.csv", blank)
    with pytest.raises(SystemExit, match=f"scans.csv: {blank[0]['scan_id']} has no NCC"):
        seeds3d.seed_numbers(unscored)
    with pytest.raises(SystemExit):  # --json never replaces a file
        seeds3d.main(["--explain", str(out), "--json", str(target)])
