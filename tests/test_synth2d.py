"""Tests of the synthetic 2D dataset: shapes, ranges, geometry, noise, files, split."""

import json

import numpy as np
import pytest

from jaxinterp import synth2d

N_PER_GROUP = 64


@pytest.fixture(scope="module")
def data():
    return synth2d.make_synth2d(n_per_group=N_PER_GROUP, seed=3)


def test_shapes_and_dtypes(data):
    n = 2 * N_PER_GROUP
    expected = {
        "images": ((n, 32, 32, 1), np.float32),
        "labels": ((n,), np.int32),
        "magnitudes": ((n, 4), np.float32),
        "centres": ((n, 4, 2), np.float32),
        "offdiag": ((n, 32, 32), np.float32),
        "offdiag_unit": ((n, 32, 32), np.float32),
    }
    assert set(data) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert data[key].shape == shape, key
        assert data[key].dtype == dtype, key
    assert np.bincount(data["labels"]).tolist() == [N_PER_GROUP, N_PER_GROUP]
    # The order is shuffled, not all controls first.
    assert 0 < data["labels"][:N_PER_GROUP].sum() < N_PER_GROUP


def test_magnitude_ranges_per_group_and_quadrant(data):
    mag, labels = data["magnitudes"], data["labels"]
    off, diag = list(synth2d.OFF_DIAGONAL), list(synth2d.DIAGONAL)
    assert off == [1, 2] and diag == [0, 3]
    control, patient = mag[labels == 0], mag[labels == 1]
    for group, (low, high) in ((control, (1, 5)), (patient, (4, 8))):
        assert group[:, off].min() >= low and group[:, off].max() <= high
        # Draws fill the range (64 x 2 uniform samples).
        assert group[:, off].min() < low + 0.3 and group[:, off].max() > high - 0.3
    for group in (control, patient):
        assert group[:, diag].min() >= 1 and group[:, diag].max() <= 6
        assert group[:, diag].min() < 1.3 and group[:, diag].max() > 5.7


def test_centres_inside_quadrants(data):
    c = data["centres"]
    half = 16
    origins = np.array([[0, 0], [0, half], [half, 0], [half, half]])
    offset = c - origins
    assert offset.min() >= 0 and offset.max() <= half - 1
    # Uniform over the quadrant: both halves of every quadrant are used.
    assert (offset < 7.5).any(axis=0).all() and (offset > 7.5).any(axis=0).all()


def test_image_is_sum_of_blobs_with_peaks_at_centres():
    d = synth2d.make_synth2d(n_per_group=4, noise_std=0.0, seed=1)
    # Independent reference: a direct double loop over pixels.
    i = 5
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    ref = np.zeros((32, 32))
    for q in range(4):
        r, c = d["centres"][i, q].astype(np.float64)
        ref += d["magnitudes"][i, q] * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 12.5)
    np.testing.assert_allclose(d["images"][i, ..., 0], ref, rtol=1e-5, atol=1e-5)
    # offdiag = quadrants 1 and 2 alone; offdiag_unit is the same with unit magnitudes.
    off_ref = np.zeros((32, 32))
    unit_ref = np.zeros((32, 32))
    for q in (1, 2):
        r, c = d["centres"][i, q].astype(np.float64)
        g = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 12.5)
        off_ref += d["magnitudes"][i, q] * g
        unit_ref += g
    np.testing.assert_allclose(d["offdiag"][i], off_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d["offdiag_unit"][i], unit_ref, rtol=1e-5, atol=1e-5)
    # The brightest pixel of each quadrant is next to the blob centre.
    img = d["images"][i, ..., 0]
    for q, (r0, c0) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
        quad = img[r0 : r0 + 16, c0 : c0 + 16]
        peak = np.array(np.unravel_index(np.argmax(quad), quad.shape)) + (r0, c0)
        assert np.abs(peak - d["centres"][i, q]).max() <= 1.0


def test_noise_std_measured():
    clean = synth2d.make_synth2d(n_per_group=16, noise_std=0.0, seed=7)
    noisy = synth2d.make_synth2d(n_per_group=16, noise_std=0.002, seed=7)
    # The noise stream is separate: the blobs are identical.
    np.testing.assert_array_equal(clean["magnitudes"], noisy["magnitudes"])
    np.testing.assert_array_equal(clean["centres"], noisy["centres"])
    noise = noisy["images"].astype(np.float64) - clean["images"]
    # 32 * 32 * 32 samples: the std estimate is within ~1%; float32 rounding adds ~1e-7.
    assert noise.std() == pytest.approx(0.002, rel=0.03)
    assert abs(noise.mean()) < 1e-4


def test_deterministic_per_seed():
    a = synth2d.make_synth2d(n_per_group=8, seed=11)
    b = synth2d.make_synth2d(n_per_group=8, seed=11)
    c = synth2d.make_synth2d(n_per_group=8, seed=12)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["images"], c["images"])


def test_groups_are_separable_by_offdiag_magnitudes(data):
    # The group signal lives in the off-diagonal blobs only.
    mag, labels = data["magnitudes"], data["labels"]
    off_mean = mag[:, [1, 2]].mean(axis=1)
    diag_mean = mag[:, [0, 3]].mean(axis=1)
    assert off_mean[labels == 1].mean() - off_mean[labels == 0].mean() == pytest.approx(3, abs=0.5)
    assert abs(diag_mean[labels == 1].mean() - diag_mean[labels == 0].mean()) < 0.6


def test_save_load_round_trip_and_recipe(tmp_path, data):
    recipe = synth2d.synth2d_recipe(n_per_group=N_PER_GROUP, seed=3)
    data_path, recipe_path = synth2d.save_synth2d(tmp_path / "ds", data, recipe)
    assert data_path.name == "synth2d.npz" and recipe_path.name == "recipe.json"
    loaded, loaded_recipe = synth2d.load_synth2d(tmp_path / "ds")
    assert loaded_recipe == json.loads(json.dumps(recipe))
    assert loaded_recipe["numpy_version"] == np.__version__
    assert loaded_recipe["params"]["blob_sigma"] == 2.5
    assert set(loaded) == set(data)
    for key in data:
        np.testing.assert_array_equal(loaded[key], data[key])
        assert loaded[key].dtype == data[key].dtype
    # The recipe regenerates the data exactly.
    again = synth2d.make_synth2d(**loaded_recipe["params"])
    for key in data:
        np.testing.assert_array_equal(again[key], data[key])
    # No temporary files left behind.
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["recipe.json", "synth2d.npz"]


def test_save_refuses_to_overwrite(tmp_path):
    d = synth2d.make_synth2d(n_per_group=2, seed=0)
    recipe = synth2d.synth2d_recipe(n_per_group=2, seed=0)
    synth2d.save_synth2d(tmp_path, d, recipe)
    before = (tmp_path / "synth2d.npz").read_bytes()
    d2 = synth2d.make_synth2d(n_per_group=2, seed=1)
    with pytest.raises(FileExistsError, match="synth2d.npz"):
        synth2d.save_synth2d(tmp_path, d2, recipe)
    assert (tmp_path / "synth2d.npz").read_bytes() == before
    # A lone recipe.json also blocks, and nothing is written.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "recipe.json").write_text("{}")
    with pytest.raises(FileExistsError, match="recipe.json"):
        synth2d.save_synth2d(tmp_path / "other", d2, recipe)
    assert not (tmp_path / "other" / "synth2d.npz").exists()
    synth2d.save_synth2d(tmp_path, d2, recipe, overwrite=True)
    loaded, _ = synth2d.load_synth2d(tmp_path)
    np.testing.assert_array_equal(loaded["images"], d2["images"])


def test_split_stratified_disjoint_deterministic(data):
    train, test = synth2d.split(data, test_fraction=0.2, seed=0)
    n = 2 * N_PER_GROUP
    assert np.intersect1d(train["index"], test["index"]).size == 0
    assert np.union1d(train["index"], test["index"]).size == n
    per_group_test = round(0.2 * N_PER_GROUP)
    assert np.bincount(test["labels"]).tolist() == [per_group_test] * 2
    assert np.bincount(train["labels"]).tolist() == [N_PER_GROUP - per_group_test] * 2
    for key in data:
        np.testing.assert_array_equal(test[key], data[key][test["index"]])
        assert train[key].shape[1:] == data[key].shape[1:]
    train2, test2 = synth2d.split(data, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(test["index"], test2["index"])
    _, test3 = synth2d.split(data, test_fraction=0.2, seed=1)
    assert not np.array_equal(test["index"], test3["index"])
    with pytest.raises(ValueError, match="test_fraction"):
        synth2d.split(data, test_fraction=1.0, seed=0)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="size"):
        synth2d.make_synth2d(n_per_group=2, size=31)
    with pytest.raises(ValueError, match="blob_sigma"):
        synth2d.make_synth2d(n_per_group=2, blob_sigma=0)
    with pytest.raises(TypeError):
        synth2d.make_synth2d(2)  # hyperparameters are keyword-only
