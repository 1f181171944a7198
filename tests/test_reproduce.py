"""The synthetic 2D reproduction end to end (reduced), its figures, and the notebook."""

import json
import math
import os
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pytest

from jaxinterp import synth2d
from train.cli import main as cli_main
from train.reproduce import SIMULATORS, reproduce_synth2d

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    summary = reproduce_synth2d(out, seeds=(0,), quick=True)
    return out, summary


def test_results_cover_every_method_and_reference(quick_run):
    out, summary = quick_run
    methods = set(summary["ncc"])
    expected = {f"simulator_{name}" for name in SIMULATORS} | {
        "gradient", "guided_backprop", "grad_cam", "guided_grad_cam", "integrated_gradients",
        "integrated_gradients_control_mean", "gradient_x_input", "reference_image",
        "reference_group_difference",
    }  # fmt: skip
    assert methods == expected
    for row in summary["ncc"].values():
        for key in ("signed", "absolute", "signed_controls", "signed_patients"):
            assert -1.0 <= row[key]["mean"] <= 1.0
    # The truth is the image's own off-diagonal blobs: the image itself must correlate.
    assert summary["ncc"]["reference_image"]["signed"]["mean"] > 0.5
    assert 0.5 <= summary["classifier_test_accuracy"][0] <= 1.0
    for per_direction in summary["spearman_raw_simulated"].values():
        assert all(math.isfinite(v[0]) for v in per_direction.values())
    stored = json.loads((out / "results.json").read_text())
    assert stored["summary"]["ncc"] == summary["ncc"]
    table = (out / "results.md").read_text()
    assert "| simulator_condconv |" in table and "reference_image" in table
    for name in ("figure3_maps.png", "figure4_logits.png"):
        assert (out / "seed0" / name).stat().st_size > 10_000


def test_scores_are_ncc_of_the_saved_maps(quick_run):
    """The reference-image score recomputed here with NumPy's Pearson correlation."""
    out, summary = quick_run
    from train.datasets import load_dataset
    from train.reproduce import seed_config

    config = seed_config(0, quick=True)
    dataset = load_dataset(config.data, seed=0)
    truth = synth2d.make_synth2d(n_per_group=config.data.n_per_group, seed=0)["offdiag"]
    scores = [
        np.corrcoef(dataset.images[i, ..., 0].ravel(), truth[i].ravel())[0, 1] for i in dataset.test
    ]
    assert summary["ncc"]["reference_image"]["signed"]["mean"] == pytest.approx(
        np.mean(scores), abs=1e-4
    )


def test_notebook_runs_on_the_quick_run(quick_run):
    out, _ = quick_run
    nb = nbformat.read(REPO / "notebooks" / "synth2d_analysis.ipynb", as_version=4)
    os.environ["JAXINTERP_RUN"] = str(out)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
        )
        client.execute()
    finally:
        del os.environ["JAXINTERP_RUN"]
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "mean logit shift of held-out controls" in text


def test_synth2d_command_writes_and_refuses_to_overwrite(tmp_path, capsys):
    args = ["synth2d", "--out", str(tmp_path), "--seed", "3", "--n-per-group", "8"]
    assert cli_main(args) == 0
    data, recipe = synth2d.load_synth2d(tmp_path)
    assert data["images"].shape == (16, 32, 32, 1) and recipe["params"]["seed"] == 3
    capsys.readouterr()
    assert cli_main(args) == 2
    assert "exist" in capsys.readouterr().err


def test_integrated_gradients_from_the_control_mean_are_complete():
    """IG's completeness: the map sums to f(x) - f(baseline), here the mean control image."""
    import jax

    from jaxinterp.nn import Classifier
    from train.reproduce import saliency_maps, seed_config

    config = seed_config(0, quick=True)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 32, 32, 1)).astype(np.float32)
    control_mean = rng.normal(size=(32, 32, 1)).astype(np.float32)
    variables = Classifier(config.classifier).init(jax.random.key(0), images)
    maps = saliency_maps(config, variables, images, steps=256, control_mean=control_mean)
    f = lambda x: np.asarray(Classifier(config.classifier).apply(variables, x), np.float64)
    want = f(images) - f(control_mean[None])
    got = maps["integrated_gradients_control_mean"].reshape(3, -1).sum(1)
    assert np.all(np.abs(want) > 1e-3)
    np.testing.assert_allclose(got, want, rtol=0.05, atol=1e-3)
    plain = maps["integrated_gradients"].reshape(3, -1).sum(1)
    np.testing.assert_allclose(
        plain, f(images) - f(np.zeros_like(images[:1])), rtol=0.05, atol=1e-3
    )
