"""Tests of the 3D input: scan table, NIfTI loading onto the model grid, splits, writing.

All images are real NIfTI files written by nibabel into tmp_path.
"""

import dataclasses
import math

import nibabel as nib
import numpy as np
import pytest

from jaxinterp import data as jd

# A non-trivial RAS+ affine: anisotropic voxels and an offset, no rotation.
AFFINE = np.array(
    [[1.5, 0.0, 0.0, -30.0], [0.0, 1.2, 0.0, -20.0], [0.0, 0.0, 2.0, -25.0], [0, 0, 0, 1]]
)


def _write(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)
    return path


def _world(affine, shape):
    """World coordinates (3, *shape) of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=0)
    return np.einsum("ij,j...->i...", affine[:3, :3], idx) + affine[:3, 3, None, None, None]


def _smooth(shape, affine=AFFINE):
    """A smooth positive image, a function of world position (so orientation-independent)."""
    x, y, z = _world(affine, shape)
    return (10 + np.sin(x / 12.0) + np.cos(y / 15.0) + 0.5 * np.sin(z / 10.0 + 1)).astype(
        np.float32
    )


def _table(tmp_path, text, name="scans.csv", files=("a.nii.gz", "b.nii.gz", "c.nii.gz")):
    for f in files:
        (tmp_path / f).touch()
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ table


def test_read_table_csv(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.nii").touch()
    table = _table(
        tmp_path,
        "path,subject,label,age,site\n"
        "a.nii.gz,S1,control,71.5,X\n"
        "b.nii.gz,S1,0,,Y\n"
        "\n"
        "c.nii.gz,S2,Patient,80,X\n"
        f"{tmp_path / 'sub' / 'd.nii'},S3,1,66,Z\n",
    )
    scans = jd.read_table(table)
    assert [s.path for s in scans] == [
        tmp_path / "a.nii.gz",
        tmp_path / "b.nii.gz",
        tmp_path / "c.nii.gz",
        tmp_path / "sub" / "d.nii",
    ]
    assert [s.subject for s in scans] == ["S1", "S1", "S2", "S3"]
    assert [s.label for s in scans] == [0, 0, 1, 1]
    assert [s.line for s in scans] == [2, 3, 5, 6]
    assert scans[0].covariates == {"age": 71.5, "site": "X"}
    assert math.isnan(scans[1].covariates["age"])
    assert isinstance(scans[2].covariates["age"], float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scans[0].label = 1
    with pytest.raises(TypeError):
        scans[0].covariates["age"] = 0.0
    assert len({scans[0], scans[0]}) == 1  # hashable


def test_read_table_tsv_sniffed_and_user_labels(tmp_path):
    text = "path\tsubject\tlabel\na.nii.gz\tS1\tCN\nb.nii.gz\tS2\tAD\n"
    for name in ("scans.tsv", "scans.txt"):
        scans = jd.read_table(_table(tmp_path, text, name=name), labels={"CN": 0, "AD": 1})
        assert [s.label for s in scans] == [0, 1]
    with pytest.raises(jd.DataError, match=r"scans\.txt[\s\S]*line 2: unknown label 'CN'"):
        jd.read_table(tmp_path / "scans.txt")


def test_read_table_missing_column(tmp_path):
    table = _table(tmp_path, "path,label\na.nii.gz,0\n")
    with pytest.raises(jd.DataError, match=r"scans\.csv: missing column\(s\) 'subject'"):
        jd.read_table(table)


def test_read_table_missing_file_unknown_label_duplicate(tmp_path):
    table = _table(
        tmp_path,
        "path,subject,label\n"
        "a.nii.gz,S1,0\n"
        "missing.nii.gz,S2,0\n"
        "b.nii.gz,S3,MCI\n"
        "./a.nii.gz,S4,1\n",
    )
    with pytest.raises(jd.DataError) as err:
        jd.read_table(table)
    msg = str(err.value)
    assert str(table) in msg
    assert f"line 3: file not found: {tmp_path / 'missing.nii.gz'}" in msg
    assert "line 4: unknown label 'MCI'" in msg
    assert f"line 5: path {tmp_path / 'a.nii.gz'} already on line 2" in msg


def test_read_table_inconsistent_subject_labels(tmp_path):
    table = _table(tmp_path, "path,subject,label\na.nii.gz,S1,0\nb.nii.gz,S2,0\nc.nii.gz,S1,1\n")
    with pytest.raises(
        jd.DataError,
        match=r"subject 'S1' has scans with different labels"
        r" \(line 2 -> 0, line 4 -> 1\)",
    ):
        jd.read_table(table)


# ------------------------------------------------------------------------------ split


def _scans(n_control, n_patient, seed=0):
    rng = np.random.default_rng(seed)
    scans = []
    for i in range(n_control + n_patient):
        label = int(i >= n_control)
        for k in range(int(rng.integers(1, 4))):
            scans.append(jd.Scan(path=f"/x/{i}_{k}.nii", subject=f"S{i:03d}", label=label))
    return scans


def test_subject_split_disjoint_stratified_deterministic():
    scans = _scans(30, 20)
    train, test = jd.subject_split(scans, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(scans)
    train_subj, test_subj = {s.subject for s in train}, {s.subject for s in test}
    assert not train_subj & test_subj
    test_labels = {s.subject: s.label for s in test}
    assert sorted(test_labels.values()).count(0) == 6  # round(0.2 * 30)
    assert sorted(test_labels.values()).count(1) == 4  # round(0.2 * 20)
    # Deterministic per seed, independent of the input order, different across seeds.
    _, test_again = jd.subject_split(scans[::-1], test_fraction=0.2, seed=0)
    assert {s.subject for s in test_again} == test_subj
    _, test_other = jd.subject_split(scans, test_fraction=0.2, seed=1)
    assert {s.subject for s in test_other} != test_subj
    # Input order is kept on each side.
    assert test == [s for s in scans if s.subject in test_subj]


def test_subject_split_rejects_inconsistent_labels():
    scans = [jd.Scan(path="/a", subject="S", label=0), jd.Scan(path="/b", subject="S", label=1)]
    with pytest.raises(jd.DataError, match="'S'"):
        jd.subject_split(scans)


# ------------------------------------------------------------------------------ volumes


def test_load_round_trip_same_grid(tmp_path):
    shape = (12, 10, 8)
    arr = _smooth(shape)
    path = _write(tmp_path / "img.nii.gz", arr)
    vol, affine, info = jd.load_volume(path, shape=shape)
    assert vol.shape == shape and vol.dtype == np.float32
    np.testing.assert_allclose(affine, info.native_affine, rtol=0, atol=1e-12)  # same grid
    assert info.mask.all()  # positive everywhere: the automatic mask keeps all
    np.testing.assert_allclose(vol * info.std + info.mean, arr, rtol=1e-5, atol=1e-5)
    assert info.native_shape == shape and info.native_axcodes == ("R", "A", "S")


def test_flipped_and_permuted_storage_load_to_same_array(tmp_path):
    shape = (14, 12, 10)
    arr = _smooth(shape)
    ref_vol, ref_aff, _ = jd.load_volume(_write(tmp_path / "ras.nii", arr), shape=(8, 8, 8))

    # x stored flipped: data reversed along axis 0, affine's x column negated and shifted.
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, shape[0] - 1
    flipped = _write(tmp_path / "las.nii", arr[::-1], AFFINE @ flip)
    vol, aff, info = jd.load_volume(flipped, shape=(8, 8, 8))
    assert info.native_axcodes == ("L", "A", "S")
    np.testing.assert_allclose(vol, ref_vol, atol=1e-5)
    np.testing.assert_allclose(aff, ref_aff, atol=1e-9)

    # Axes stored in the order (z, x, y): permuted data and affine columns.
    perm = np.eye(4)[:, [2, 0, 1, 3]]
    permuted = _write(tmp_path / "sra.nii.gz", arr.transpose(2, 0, 1), AFFINE @ perm)
    vol, aff, info = jd.load_volume(permuted, shape=(8, 8, 8))
    assert info.native_axcodes == ("S", "R", "A")
    np.testing.assert_allclose(vol, ref_vol, atol=1e-5)
    np.testing.assert_allclose(aff, ref_aff, atol=1e-9)


def test_4d_single_volume_accepted_multi_volume_rejected(tmp_path):
    arr = _smooth((10, 10, 10))
    ref, _, _ = jd.load_volume(_write(tmp_path / "3d.nii", arr), shape=(8, 8, 8))
    vol, _, info = jd.load_volume(_write(tmp_path / "4d.nii", arr[..., None]), shape=(8, 8, 8))
    np.testing.assert_allclose(vol, ref, atol=1e-6)
    assert info.native_shape == (10, 10, 10)
    two = _write(tmp_path / "two.nii", np.stack([arr, arr], axis=-1))
    with pytest.raises(jd.DataError, match=r"two\.nii: expected a 3D image"):
        jd.load_volume(two, shape=(8, 8, 8))


@pytest.mark.parametrize(
    "name, array, match",
    [
        (
            "nan.nii.gz",
            np.where(np.arange(1000).reshape(10, 10, 10) == 7, np.nan, 1.0)
            + np.arange(10)[:, None, None],
            r"nan\.nii\.gz: 1 voxels are NaN or infinite",
        ),
        ("flat.nii", np.zeros((10, 12)) + np.arange(12), r"flat\.nii: expected a 3D image"),
        ("slice.nii", np.arange(100.0).reshape(10, 10, 1), r"slice\.nii: not a 3D volume"),
        ("const.nii", np.full((6, 6, 6), 3.0), r"const\.nii: the image is constant"),
    ],
)
def test_bad_volumes_rejected_with_file_name(tmp_path, name, array, match):
    path = _write(tmp_path / name, array.astype(np.float32), np.eye(4))
    with pytest.raises(jd.DataError, match=match):
        jd.load_volume(path, shape=(8, 8, 8))


def test_unreadable_and_missing_files_rejected(tmp_path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti file at all")
    with pytest.raises(jd.DataError, match=r"junk\.nii\.gz: cannot read"):
        jd.load_volume(junk)
    # A truncated file: valid header, data cut short.
    good = _write(tmp_path / "good.nii", _smooth((10, 10, 10)))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(jd.DataError, match=r"cut\.nii: cannot read"):
        jd.load_volume(cut)
    with pytest.raises(jd.DataError, match=r"nothere\.nii: file not found"):
        jd.load_volume(tmp_path / "nothere.nii")


def test_zscore_inside_mask(tmp_path):
    rng = np.random.default_rng(0)
    shape = (20, 20, 20)
    x, y, z = np.meshgrid(*[np.arange(s) - 9.5 for s in shape], indexing="ij")
    ball = x**2 + y**2 + z**2 < 7**2
    arr = np.where(ball, 100 + 20 * rng.standard_normal(shape), 0.0).astype(np.float32)
    path = _write(tmp_path / "brain.nii.gz", arr, np.eye(4))
    vol, _, info = jd.load_volume(path, shape=shape)
    np.testing.assert_array_equal(info.mask, ball)  # same grid, zero background
    assert vol[info.mask].mean() == pytest.approx(0.0, abs=1e-5)
    assert vol[info.mask].std() == pytest.approx(1.0, abs=1e-5)
    assert (vol[~info.mask] == 0).all()
    assert info.mean == pytest.approx(arr[ball].mean(), rel=1e-6)

    # A provided mask: an array on the model grid, or an image in world space.
    inner = x**2 + y**2 + z**2 < 4**2
    vol2, _, info2 = jd.load_volume(path, shape=shape, mask=inner)
    np.testing.assert_array_equal(info2.mask, inner)
    assert vol2[inner].std() == pytest.approx(1.0, abs=1e-5)
    mask_path = _write(tmp_path / "mask.nii", inner.astype(np.uint8), np.eye(4))
    _, _, info3 = jd.load_volume(path, shape=shape, mask=mask_path)
    np.testing.assert_array_equal(info3.mask, inner)


def test_model_affine_centre_and_linear_sampling(tmp_path):
    native = (40, 36, 30)
    x, y, z = _world(AFFINE, native)
    arr = (200 + 0.5 * x - 0.3 * y + 0.2 * z).astype(np.float32)  # linear in world space
    path = _write(tmp_path / "lin.nii.gz", arr)
    model = (16, 12, 10)
    vol, affine, info = jd.load_volume(path, shape=model, antialias=False)
    stored = info.native_affine  # AFFINE rounded to float32 by the NIfTI header
    np.testing.assert_allclose(stored, AFFINE, atol=1e-5)
    # The centre voxel of both grids is the same world point.
    centre_native = stored @ np.r_[(np.array(native) - 1) / 2, 1]
    centre_model = affine @ np.r_[(np.array(model) - 1) / 2, 1]
    np.testing.assert_allclose(centre_model, centre_native, atol=1e-9)
    # The model grid spans the scan's field of view: voxel size scales by native / model.
    np.testing.assert_allclose(
        np.diag(affine)[:3], np.diag(stored)[:3] * np.array(native) / np.array(model)
    )
    # Trilinear interpolation is exact for a linear function: every model voxel holds the
    # function at its own world position, so maps on this grid sit at the right place.
    mx, my, mz = _world(affine, model)
    expected = 200 + 0.5 * mx - 0.3 * my + 0.2 * mz
    np.testing.assert_allclose(vol * info.std + info.mean, expected, rtol=1e-5)


def test_load_onto_a_given_grid(tmp_path):
    """``grid=``: the image is sampled on that affine's voxels (a linear function of world
    position comes out exact), and its own grid given back reproduces the default load."""
    native = (40, 36, 30)
    x, y, z = _world(AFFINE, native)
    arr = (200 + 0.5 * x - 0.3 * y + 0.2 * z).astype(np.float32)
    path = _write(tmp_path / "lin.nii.gz", arr)
    model = (16, 12, 10)
    vol, affine, _ = jd.load_volume(path, shape=model)
    again, affine2, _ = jd.load_volume(path, shape=model, grid=affine)
    np.testing.assert_array_equal(again, vol)
    np.testing.assert_array_equal(affine2, affine)
    other = affine.copy()
    other[:3, 3] += [3.0, 2.0, 1.0]  # a grid shifted by a few mm, still inside the scan
    other[:3, :3] *= 0.8
    shifted, got, info = jd.load_volume(path, shape=model, grid=other, antialias=False)
    np.testing.assert_array_equal(got, other)
    mx, my, mz = _world(other, model)
    expected = 200 + 0.5 * mx - 0.3 * my + 0.2 * mz
    np.testing.assert_allclose(shifted * info.std + info.mean, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="grid"):
        jd.load_volume(path, shape=model, grid=np.eye(3))


def test_resample_to_16_and_back_to_native(tmp_path):
    native = (40, 36, 30)
    arr = _smooth(native)
    path = _write(tmp_path / "smooth.nii.gz", arr)
    vol, affine, info = jd.load_volume(path, shape=(16, 16, 16))
    back = jd.resample_to_native(vol, affine, path)
    assert back.shape == native and back.dtype == np.float32
    back = back * info.std + info.mean
    # The image spans 3.9. Inside, the error is the curvature lost by 2.5x-coarser
    # trilinear sampling plus the anti-aliasing blur (about 0.03). The outer native voxels
    # lie up to 0.75 native voxel beyond the outer model voxel centres and take the edge
    # value, an error of one gradient step there (about 0.15).
    err = np.abs(back - arr)
    assert err[2:-2, 2:-2, 2:-2].max() < 0.05
    assert err.max() < 0.2
    assert err.mean() < 0.025
    assert np.corrcoef(back.ravel(), arr.ravel())[0, 1] > 0.995

    # Back to a scan stored flipped: the result follows the scan's on-disk voxel order.
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, native[0] - 1
    flipped_img = nib.Nifti1Image(arr[::-1], AFFINE @ flip)
    back_flipped = jd.resample_to_native(vol, affine, flipped_img) * info.std + info.mean
    np.testing.assert_allclose(back_flipped, back[::-1], atol=1e-5)


def test_antialias_reduces_noise_aliasing(tmp_path):
    rng = np.random.default_rng(1)
    arr = (10 + rng.standard_normal((48, 48, 48))).astype(np.float32)
    path = _write(tmp_path / "noise.nii", arr, np.eye(4))
    _, _, sharp = jd.load_volume(path, shape=(12, 12, 12), antialias=False)
    _, _, blurred = jd.load_volume(path, shape=(12, 12, 12))
    # Point-sampling keeps most of the voxel noise; averaging over ~4^3 voxels removes it.
    assert blurred.std < 0.5 * sharp.std


# ------------------------------------------------------------------------------ writing


@pytest.mark.parametrize("name", ["out.nii", "out.nii.gz"])
def test_save_nifti_round_trip_and_refusal(tmp_path, name):
    arr = _smooth((6, 7, 8)).astype(np.float64)
    path = jd.save_nifti(tmp_path / name, arr, AFFINE, description="log volume change")
    img = nib.load(path)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.get_fdata(), arr, rtol=1e-6)
    np.testing.assert_allclose(img.affine, AFFINE)
    np.testing.assert_allclose(img.get_qform(), AFFINE, atol=1e-6)
    assert img.header["descrip"].item().decode() == "log volume change"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp file left

    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=name.replace(".", r"\.")):
        jd.save_nifti(path, arr + 1, AFFINE)
    assert path.read_bytes() == before
    jd.save_nifti(path, arr + 1, AFFINE, overwrite=True)
    np.testing.assert_allclose(nib.load(path).get_fdata(), arr + 1, rtol=1e-6)


def test_save_nifti_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        jd.save_nifti(tmp_path / "x.img", np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="3D or 4D"):
        jd.save_nifti(tmp_path / "x.nii", np.zeros((2, 2)), np.eye(4))
    assert list(tmp_path.iterdir()) == []
