"""The 3D randomisation check's comparison of two explain runs, on hand-made NIfTI outputs."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from benchmarks.randomisation3d import PASS_BELOW, compare_runs, main


def _write_run(folder, maps, tasks, mask=None):
    """An explain-like output: scans.csv, scans/<id>/<name>.nii.gz, group/brain_mask."""
    (folder / "group").mkdir(parents=True)
    with open(folder / "scans.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["scan_id", "task"])
        writer.writeheader()
        for scan, task in tasks.items():
            writer.writerow({"scan_id": scan, "task": task})
    for scan, per_scan in maps.items():
        (folder / "scans" / scan).mkdir(parents=True)
        for name, array in per_scan.items():
            nib.save(nib.Nifti1Image(array, np.eye(4)), folder / "scans" / scan / f"{name}.nii.gz")
    if mask is not None:
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)),
                 folder / "group" / "brain_mask.nii.gz")  # fmt: skip


def test_compare_runs_scores_each_method_against_numpy(tmp_path):
    rng = np.random.default_rng(0)
    shape = (8, 8, 8)
    mask = np.zeros(shape, bool)
    mask[1:7, 1:7, 1:7] = True
    tasks = {"sub-0": "inject", "sub-1": "remove"}
    a = {s: {n: rng.normal(size=shape).astype(np.float32)
             for n in ("log_volume_change", "saliency_gradient", "saliency_grad_cam")}
         for s in tasks}  # fmt: skip
    b = {
        s: {
            "log_volume_change": rng.normal(size=shape).astype(np.float32),  # unrelated
            "saliency_gradient": 2.0 * a[s]["saliency_gradient"] + 1.0,  # same up to scale
            "saliency_grad_cam": -a[s]["saliency_grad_cam"],  # flipped
        }
        for s in tasks
    }
    _write_run(tmp_path / "trained", a, tasks, mask)
    _write_run(tmp_path / "untrained", b, tasks)
    result = compare_runs(tmp_path / "trained", tmp_path / "untrained")
    assert result["n_scans"] == 2
    expected = [np.corrcoef(a[s]["log_volume_change"][mask], b[s]["log_volume_change"][mask])[0, 1]
                for s in tasks]  # fmt: skip
    np.testing.assert_allclose(result["scans"]["log_volume_change"]["mean"], np.mean(expected),
                               atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(result["scans"]["saliency_gradient"]["mean"], 1.0, atol=1e-4)
    np.testing.assert_allclose(result["scans"]["saliency_grad_cam"]["mean"], -1.0, atol=1e-4)
    assert result["passes"] == {
        "log_volume_change": abs(np.mean(expected)) < PASS_BELOW,
        "saliency_gradient": False,
        "saliency_grad_cam": False,
    }
    assert result["passes"]["log_volume_change"]  # 512 independent voxels: |r| << 0.3
    # Per task: each of the two scans alone; absolute maps against NumPy.
    assert set(result["by_task"]) == {"inject", "remove"}
    for scan, task in tasks.items():
        np.testing.assert_allclose(
            result["by_task"][task]["log_volume_change"]["mean"],
            expected[list(tasks).index(scan)],
            atol=1e-4,
        )
    lvc = [(np.abs(a[s]["log_volume_change"][mask]), np.abs(b[s]["log_volume_change"][mask]))
           for s in tasks]  # fmt: skip
    want_abs = np.mean([np.corrcoef(x, y)[0, 1] for x, y in lvc])
    got_abs = result["scans_abs"]["log_volume_change"]["mean"]
    np.testing.assert_allclose(got_abs, want_abs, atol=1e-4)
    # A flipped map is the same map in absolute value.
    np.testing.assert_allclose(result["scans_abs"]["saliency_grad_cam"]["mean"], 1.0, atol=1e-4)


def test_one_direction_that_fails_is_not_hidden_by_the_mean(tmp_path):
    """The same map for inject scans and its negative for remove scans: the mean over all
    scans is 0, each task's is +1 or -1, and the method fails."""
    rng = np.random.default_rng(2)
    shape = (6, 6, 6)
    tasks = {"sub-0": "inject", "sub-1": "inject", "sub-2": "remove", "sub-3": "remove"}
    a = {s: {"log_volume_change": rng.normal(size=shape).astype(np.float32)} for s in tasks}
    sign = {"inject": 1.0, "remove": -1.0}
    b = {s: {"log_volume_change": sign[t] * a[s]["log_volume_change"]} for s, t in tasks.items()}
    _write_run(tmp_path / "trained", a, tasks)
    _write_run(tmp_path / "untrained", b, tasks)
    result = compare_runs(tmp_path / "trained", tmp_path / "untrained")
    assert result["scans"]["log_volume_change"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert result["by_task"]["inject"]["log_volume_change"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert result["by_task"]["remove"]["log_volume_change"]["mean"] == pytest.approx(-1.0, abs=1e-5)
    assert result["passes"] == {"log_volume_change": False}


def test_compare_runs_rejects_scans_explained_in_different_directions(tmp_path):
    maps = {"sub-0": {"log_volume_change": np.ones((4, 4, 4), np.float32)}}
    _write_run(tmp_path / "a", maps, {"sub-0": "inject"})
    _write_run(tmp_path / "b", maps, {"sub-0": "remove"})
    with pytest.raises(ValueError, match="sub-0.*inject.*remove"):
        compare_runs(tmp_path / "a", tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="scans.csv"):
        compare_runs(tmp_path / "a", tmp_path / "missing")


def test_main_writes_json_and_keeps_an_existing_file(tmp_path, capsys):
    rng = np.random.default_rng(1)
    maps = {"sub-0": {"log_volume_change": rng.normal(size=(6, 6, 6)).astype(np.float32)}}
    _write_run(tmp_path / "a", maps, {"sub-0": "inject"})
    _write_run(tmp_path / "b", maps, {"sub-0": "inject"})
    out = tmp_path / "result.json"
    args = ["--trained", str(tmp_path / "a"), "--untrained", str(tmp_path / "b"), "--out", str(out)]
    main(args)
    assert "| log_volume_change | 1.000" in capsys.readouterr().out
    assert json.loads(out.read_text())["passes"] == {"log_volume_change": False}
    with pytest.raises(SystemExit, match="exists"):
        main(args)
    assert json.loads(out.read_text())["n_scans"] == 1
