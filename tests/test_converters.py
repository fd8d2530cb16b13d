import shutil
import warnings

import numpy as np
import pytest
from _dicom_fixtures import write_ultrasound_dicom

from ultrasound_diffusers.data.converters import ConversionWarning, assign_splits, detect_scan_area

H, W = 40, 32


def _fake_echo(rng, frames=None):
    """A sector image (apex at the top row) and CAMUS labels (1 LV, 2 myocardium, 3 LA) inside it."""
    yy, xx = np.mgrid[0:H, 0:W]
    sector = (np.abs(xx - W / 2) <= 0.6 * yy + 1) & (yy < H - 2)
    image = np.where(sector, rng.integers(1, 256, (H, W)), 0).astype(np.uint8)
    label = np.zeros((H, W), np.uint8)
    lv = ((xx - W / 2) / 5.0) ** 2 + ((yy - 17) / 9.0) ** 2 <= 1
    epi = ((xx - W / 2) / 7.0) ** 2 + ((yy - 17) / 11.0) ** 2 <= 1
    la = ((xx - W / 2) / 5.0) ** 2 + ((yy - 31) / 4.0) ** 2 <= 1
    label[epi & (yy < 26)] = 2
    label[lv & (yy < 26)] = 1
    label[la & (yy >= 26)] = 3
    image[label == 1] = 0  # blood can be exactly 0 inside the fan: the fan must not get holes
    if frames:
        return np.stack([image] * frames, -1), np.stack([label] * frames, -1)
    return image, label


def _write_nifti(path, picture):
    import nibabel as nib

    # CAMUS stores the picture transposed: nibabel arrays are [W, H(, T)]
    arr = picture.T if picture.ndim == 2 else picture.transpose(1, 0, 2)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr), np.diag([0.3, 0.3, 1.0, 1.0])), str(path))


@pytest.fixture
def camus_nifti(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "CAMUS_public"
    truth = {}
    for pid in ("patient0001", "patient0002", "patient0003"):
        pdir = root / "database_nifti" / pid
        pdir.mkdir(parents=True)
        for view in ("2CH", "4CH"):
            (pdir / f"Info_{view}.cfg").write_text("ED: 1\nES: 12\nNbFrame: 14\nSex: F\nAge: 61\nImageQuality: Good\nEF: 55.5\nFrameRate: 40.0\n")
            for phase in ("ED", "ES"):
                img, lab = _fake_echo(rng)
                truth[(pid, view, phase)] = (img, lab)
                _write_nifti(pdir / f"{pid}_{view}_{phase}.nii.gz", img)
                _write_nifti(pdir / f"{pid}_{view}_{phase}_gt.nii.gz", lab)
            img, lab = _fake_echo(rng, frames=3)
            _write_nifti(pdir / f"{pid}_{view}_half_sequence.nii.gz", img)
            _write_nifti(pdir / f"{pid}_{view}_half_sequence_gt.nii.gz", lab)
    split = root / "database_split"
    split.mkdir()
    for name, pid in (("training", "patient0001"), ("validation", "patient0002"), ("testing", "patient0003")):
        (split / f"subgroup_{name}.txt").write_text(pid + "\n")
    return root, truth


def test_camus_nifti_layout_orientation_splits_and_info(camus_nifti):
    from ultrasound_diffusers.data.camus import convert_camus

    root, truth = camus_nifti
    dd = convert_camus(root)
    assert {k: len(v) for k, v in dd.items()} == {"train": 4, "validation": 4, "test": 4}
    row = next(r for r in dd["validation"] if r["view"] == "4CH" and r["phase"] == "ES")
    img, lab = truth[("patient0002", "4CH", "ES")]
    np.testing.assert_array_equal(np.asarray(row["image"]), img)  # apex at the top again
    np.testing.assert_array_equal(np.asarray(row["label"]), lab)
    assert row["frame"] == 12 and row["ef"] == pytest.approx(55.5) and row["sex"] == "F" and row["nb_frame"] == 14
    assert row["spacing_x_mm"] == pytest.approx(0.3) and row["num_classes"] == 4 and row["augmentation"] == 0

    dd = convert_camus(root, views=["2CH"], phases=["ED"], half_sequences=True, size=(20, 16))
    train = dd["train"]
    assert len(train) == 1 + 3 and sorted(set(train["phase"])) == ["ED", "half_sequence"]
    assert train[0]["image"].size == (16, 20) and train[0]["source_height"] == H


def test_camus_fan_labels_and_augmentation(camus_nifti):
    from ultrasound_diffusers.data.camus import convert_camus

    root, truth = camus_nifti
    dd = convert_camus(root, phases=["ED"], fan_labels=True, augment_copies=2, seed=1)
    train = dd["train"]
    assert len(train) == 2 * 3 and len(dd["test"]) == 2  # augmented copies for training only
    assert sorted(train["augmentation"]) == [0, 0, 1, 1, 2, 2]
    img, lab = truth[("patient0001", "2CH", "ED")]
    rows = [r for r in train if r["view"] == "2CH"]
    original = np.asarray(rows[0]["label"])
    fan = np.asarray(rows[0]["image"]) > 0
    assert set(np.unique(original)) == {0, 1, 2, 3, 4} and rows[0]["num_classes"] == 5
    assert (original[lab == 1] == 1).all() and (original[lab == 2] == 3).all() and (original[lab == 3] == 4).all()
    assert (original[fan & (lab == 0)] == 2).all() and (original[(lab == 0) & ~fan & (original == 0)] == 0).all()
    # the fan is the hull of the image: the zero-valued blood inside it is not cut out
    assert (original[lab == 1] != 0).all()
    inside = original > 0
    for r in rows[1:]:
        aug = np.asarray(r["label"])
        np.testing.assert_array_equal(aug > 0, inside)  # fan re-applied
        assert not np.array_equal(aug, original)
        np.testing.assert_array_equal(np.asarray(r["image"]), np.asarray(rows[0]["image"]))
    with pytest.raises(ValueError, match="fan_labels"):
        convert_camus(root, augment_copies=1)


def test_camus_mhd_release_and_bad_files(tmp_path):
    import SimpleITK as sitk

    from ultrasound_diffusers.data.camus import convert_camus

    rng = np.random.default_rng(1)
    root = tmp_path / "camus_old"
    expected = {}
    for split, pid, with_gt in (("training", "patient0001", True), ("training", "patient0051", True), ("testing", "patient0451", False)):
        pdir = root / split / pid
        pdir.mkdir(parents=True)
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                img, lab = _fake_echo(rng)
                expected[(pid, view, phase)] = img
                sitk.WriteImage(sitk.GetImageFromArray(img[None]), str(pdir / f"{pid}_{view}_{phase}.mhd"))
                if with_gt:
                    sitk.WriteImage(sitk.GetImageFromArray(lab[None]), str(pdir / f"{pid}_{view}_{phase}_gt.mhd"))
    # a corrupt file: its raw data is truncated
    raw = root / "training" / "patient0051" / "patient0051_4CH_ES.raw"
    raw.write_bytes(raw.read_bytes()[:10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dd = convert_camus(root)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConversionWarning)]
    assert any("patient0051_4CH_ES" in m for m in messages)
    assert {k: len(v) for k, v in dd.items()} == {"train": 3, "validation": 4, "test": 4}
    test_row = dd["test"][0]
    assert test_row["label"] is None
    np.testing.assert_array_equal(np.asarray(test_row["image"]), expected[("patient0451", test_row["view"], test_row["phase"])])
    with pytest.raises(ValueError, match="patient0051_4CH_ES"):
        convert_camus(root, strict=True)


def test_thyroid_volumes_to_slices(tmp_path):
    import nibabel as nib

    from ultrasound_diffusers.data.thyroid import convert_thyroid

    base = tmp_path / "US_volunteer_dataset" / "ground_truth_data"
    (base / "US").mkdir(parents=True)
    (base / "US_thyroid_label").mkdir()
    rng = np.random.default_rng(0)
    vols = {}
    for name in ("P1_left", "P2_right", "P3_left"):
        vol = rng.normal(100, 30, (16, 12, 5)).astype(np.float32)  # nibabel array [x, y, z]
        lab = np.zeros((16, 12, 5), np.uint8)
        lab[4:10, 3:8, 1:4] = 1
        lab[11:14, 2:5, 2] = 4  # right carotid -> 2
        lab[11:14, 8:11, 2] = 5  # right jugular -> 3
        vols[name] = (vol, lab)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(base / "US" / f"{name}.nii"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(base / "US_thyroid_label" / f"{name}.nii"))
    (base / "US" / "broken.nii").write_bytes(b"not a nifti file at all")
    (base / "US_thyroid_label" / "broken.nii").write_bytes(b"not a nifti file either")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dd = convert_thyroid(tmp_path, skip_empty=True, fractions=(1, 1, 1))
    assert any("broken" in str(w.message) and "unreadable" in str(w.message) for w in caught if issubclass(w.category, ConversionWarning))
    assert sum(len(v) for v in dd.values()) == 3 * 3  # slices 1..3 of each volume carry labels
    for split in dd.values():
        assert len(set(split["volume"])) <= 1  # a volume never spans two splits
    row = next(r for s in dd.values() for r in s if r["volume"] == "P2_right" and r["slice_index"] == 2)
    lab = np.asarray(row["label"])
    assert lab.shape == (12, 16)  # the slice is transposed to the picture (rows = y)
    np.testing.assert_array_equal(lab, np.vectorize({0: 0, 1: 1, 4: 2, 5: 3}.get)(vols["P2_right"][1][:, :, 2].T))
    assert set(np.unique(lab)) == {0, 1, 2, 3} and row["num_classes"] == 4
    with pytest.warns(ConversionWarning):
        full = convert_thyroid(tmp_path, axis=2)
    assert sum(len(v) for v in full.values()) == 3 * 5
    with pytest.raises(ValueError, match="broken"):
        convert_thyroid(tmp_path, strict=True)


def test_lung_maps(tmp_path):
    import torch

    from ultrasound_diffusers.data.lung import convert_lung, preprocess_lung_map

    rng = np.random.default_rng(0)
    stack = rng.random((3, 40, 64)).astype(np.float32)
    torch.save(torch.from_numpy(stack), tmp_path / "maps_a.pt")
    single = rng.random((32, 64)).astype(np.float32)
    single[:4, :8] = 2.0  # values above 1 are clipped in the image
    np.save(tmp_path / "map_b.npy", single)
    (tmp_path / "broken.pt").write_bytes(b"definitely not a tensor")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dd = convert_lung(tmp_path)
    assert any("broken.pt" in str(w.message) for w in caught if issubclass(w.category, ConversionWarning))
    train = dd["train"]
    assert len(train) == 4 and len(dd["validation"]) == 0
    row = next(r for r in train if r["source_file"] == "maps_a.pt" and r["index_in_file"] == 0)
    expected = stack[0, :32].reshape(8, 4, 16, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(np.asarray(row["values"]), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(row["image"]), np.clip(np.rint(expected * 255), 0, 255).astype(np.uint8))
    assert row["image"].mode == "L" and row["image"].size == (16, 8)
    b = next(r for r in train if r["source_file"] == "map_b.npy")
    assert np.asarray(b["image"])[0, :2].tolist() == [255, 255] and np.asarray(b["values"])[0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="map of shape"):
        preprocess_lung_map(np.zeros((16, 64)))
    with pytest.raises(ValueError, match="broken.pt"):
        convert_lung(tmp_path, strict=True)


PYDICOM_US = ["examples_rgb_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm", "ExplVR_BigEnd.dcm", "examples_ybr_color.dcm"]


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory):
    from pydicom.data import get_testdata_file

    folder = tmp_path_factory.mktemp("dicoms")
    for name in PYDICOM_US + ["CT_small.dcm"]:
        shutil.copy(get_testdata_file(name), folder / name)
    (folder / "notes.txt").write_text("not a DICOM file")
    return folder


def test_dicom_folder(dicom_dir):
    import pydicom

    from ultrasound_diffusers.data.dicom import convert_dicom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dd = convert_dicom(dicom_dir, max_frames=3, crop=False)
    skipped = " ".join(str(w.message) for w in caught if issubclass(w.category, ConversionWarning))
    assert "CT_small.dcm" in skipped and "notes.txt" in skipped
    # the 60 x 80 big-endian file is a flat grey picture with no speckle: no scan area, dropped (fails closed)
    assert "ExplVR_BigEnd.dcm: no ultrasound scan area found" in skipped
    rows = dd["train"]
    # two single frames + the first 3 frames of the YBR cine; examples_jpeg2k.dcm is dropped: the "PWR" labels of
    # its power Doppler bars lie inside its fitted scan area (burned-in text inside the scan area)
    assert len(rows) == 2 + 3
    assert "examples_jpeg2k.dcm: dropped 1 of 1 frame(s)" in skipped
    assert sorted(set(rows["photometric_interpretation"])) == sorted({"RGB", "PALETTE COLOR", "YBR_FULL_422"})
    for row in rows:
        img, area = np.asarray(row["image"]), np.asarray(row["scan_area"])
        assert row["image"].mode == "L" and img.shape == area.shape
        assert (img[area == 0] == 0).all(), "everything outside the scan area is zero"
        assert 0.03 < area.mean() < 0.95 and img[area == 1].mean() > 10
    # de-identified: no patient identifiers anywhere in the metadata
    values = " ".join(str(v) for col in rows.column_names if col not in ("image", "scan_area") for v in rows[col])
    for name in PYDICOM_US:
        ds = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
        for tag in ("PatientName", "PatientID", "InstitutionName", "StudyDate"):
            value = str(ds.get(tag, "") or "")
            if len(value) > 3:
                assert value not in values, f"{tag} leaked"
    assert not any("patient" in c.lower() for c in rows.column_names)
    # burned-in text: the banner of the lymph-node image (top rows) is removed, the tissue kept
    ds = pydicom.dcmread(dicom_dir / "examples_rgb_color.dcm")
    source = ds.pixel_array.astype(np.float32).mean(-1)
    row = next(r for r in rows if r["photometric_interpretation"] == "RGB" and r["source_height"] == 240)
    img = np.asarray(row["image"])
    assert source[10:45, :60].max() > 100 and img[10:45, :60].max() == 0
    assert img[120, 160] > 0 or img[110:130, 150:170].mean() > 5

    cropped = convert_dicom(dicom_dir / "examples_ybr_color.dcm", size=32, max_frames=2)["train"]
    assert len(cropped) == 2 and cropped[0]["image"].size == (32, 32) and cropped[1]["frame"] == 1
    with pytest.raises(ValueError, match="CT_small"):
        convert_dicom(dicom_dir, max_frames=1, strict=True)


def test_detect_scan_area_and_splits():
    rng = np.random.default_rng(0)
    frame = np.zeros((60, 80), np.float32)
    yy, xx = np.mgrid[0:60, 0:80]
    fan = (np.abs(xx - 40) <= 0.7 * yy) & (yy < 55)
    frame[fan] = rng.uniform(20, 255, fan.sum())
    frame[2:5, 2:30] = 255  # a burned-in text line
    mask = detect_scan_area(frame)
    assert not mask[2:5, 2:30].any()
    assert (mask & fan).sum() / fan.sum() > 0.9 and (mask & ~fan).sum() / fan.sum() < 0.1
    s = assign_splits([f"k{i}" for i in range(20)], (0.8, 0.1, 0.1), seed=0)
    assert sorted(s.values()).count("validation") == 2 and sorted(s.values()).count("test") == 2
    assert s == assign_splits([f"k{i}" for i in reversed(range(20))], (0.8, 0.1, 0.1), seed=0)


def test_cli_prepare_is_atomic(tmp_path):
    import datasets

    from ultrasound_diffusers.cli import main

    src = tmp_path / "maps"
    src.mkdir()
    np.save(src / "a.npy", np.random.default_rng(0).random((2, 32, 16)).astype(np.float32))
    (src / "z_broken.npy").write_bytes(b"corrupt")
    out = tmp_path / "out"
    with pytest.warns(ConversionWarning):
        assert main(["prepare", "lung", "--input", str(src), "--output_dir", str(out)]) == 0
    assert len(datasets.load_from_disk(str(out))["train"]) == 2
    failed = tmp_path / "failed"
    assert main(["prepare", "lung", "--input", str(src), "--output_dir", str(failed), "--strict"]) == 2
    assert not failed.exists() and not any(p.name.startswith(".failed") for p in tmp_path.iterdir())


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    import datasets

    from ultrasound_diffusers.data.converters import save_dataset

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"a": [1, 2]})})

    def broken_save(self, path, **kwargs):
        (tmp_path / "marker").write_text("started")
        __import__("pathlib").Path(path, "partial.arrow").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_dataset(dd, tmp_path / "out")
    assert (tmp_path / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker"]


def _write_monochrome_us(path, pixels, photometric, bits_stored=8):
    """A minimal ultrasound DICOM file with a patient name and id in it."""
    write_ultrasound_dicom(path, pixels, photometric, bits_stored, PatientName="Doe^Jane", PatientID="PID-123456")


def test_dicom_monochrome1_and_monochrome2(tmp_path):
    """MONOCHROME2 (8 and 12 bits, single frame and cine) and inverted MONOCHROME1: same grayscale frames."""
    from ultrasound_diffusers.data.dicom import convert_dicom
    from ultrasound_diffusers.geometry import fan_mask

    rng = np.random.default_rng(0)
    fan = fan_mask(96, 128, apex=(0.5, 0.05), radii=(0.0, 0.7), half_angle_deg=35.0).numpy()
    tissue = np.where(fan, rng.integers(40, 250, size=(96, 128)), 0).astype(np.int64)
    tissue[4:12, 4:40] = 255  # burned-in text in a corner, apart from the fan
    (tmp_path / "m2").mkdir()
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2_12bit").mkdir()
    _write_monochrome_us(tmp_path / "m2" / "a.dcm", tissue, "MONOCHROME2")
    _write_monochrome_us(tmp_path / "m1" / "a.dcm", 255 - tissue, "MONOCHROME1")
    cine = np.stack([tissue * 4095 // 255, (tissue // 2) * 4095 // 255])
    _write_monochrome_us(tmp_path / "m2_12bit" / "a.dcm", cine, "MONOCHROME2", bits_stored=12)

    rows = {name: convert_dicom(tmp_path / name, crop=False)["train"] for name in ("m2", "m1", "m2_12bit")}
    assert rows["m2"][0]["photometric_interpretation"] == "MONOCHROME2"
    assert rows["m1"][0]["photometric_interpretation"] == "MONOCHROME1"
    img2, img1 = np.asarray(rows["m2"][0]["image"]), np.asarray(rows["m1"][0]["image"])
    area = np.asarray(rows["m2"][0]["scan_area"]).astype(bool)
    assert np.array_equal(img1, img2), "MONOCHROME1 is inverted to the MONOCHROME2 grey scale"
    assert (img2[~area] == 0).all() and not img2[4:12, 4:40].any(), "burned-in text outside the scan area is removed"
    inside = area & fan
    assert inside.sum() > 0.8 * fan.sum() and np.array_equal(img2[inside], tissue[inside])
    twelve = rows["m2_12bit"]
    assert len(twelve) == 2 and [r["frame"] for r in twelve] == [0, 1]
    first = np.asarray(twelve[0]["image"]).astype(int)
    assert np.abs(first[inside] - tissue[inside]).max() <= 1, "12-bit values are scaled to 0-255"
    assert np.asarray(twelve[1]["image"])[inside].mean() < 0.6 * first[inside].mean()
    values = " ".join(str(v) for r in (rows["m2"], rows["m1"]) for c in r.column_names if c != "image" for v in r[c])
    assert "Doe^Jane" not in values and "PID-123456" not in values


def _corrupt_camus(root):
    for pid in ("patient0001", "patient0002"):
        pdir = root / "database_nifti" / pid
        pdir.mkdir(parents=True)
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                (pdir / f"{pid}_{view}_{phase}.nii.gz").write_bytes(b"not gzip")
                (pdir / f"{pid}_{view}_{phase}_gt.nii.gz").write_bytes(b"not gzip")
    return root


def _corrupt_thyroid(root):
    (root / "US").mkdir(parents=True)
    (root / "US_thyroid_label").mkdir()
    for name in ("P1", "P2", "P3"):
        (root / "US" / f"{name}.nii").write_bytes(b"truncated")
        (root / "US_thyroid_label" / f"{name}.nii").write_bytes(b"truncated")
    return root


def test_camus_and_thyroid_refuse_when_every_file_fails(tmp_path):
    from ultrasound_diffusers.data.camus import convert_camus
    from ultrasound_diffusers.data.thyroid import convert_thyroid

    camus = _corrupt_camus(tmp_path / "camus_in")
    with pytest.warns(ConversionWarning), pytest.raises(ValueError, match=r"camus_in: 8 file\(s\) failed \(8 unreadable\)"):
        convert_camus(camus)
    thyroid = _corrupt_thyroid(tmp_path / "thyroid_in")
    with pytest.warns(ConversionWarning), pytest.raises(ValueError, match=r"thyroid_in: 3 file\(s\) failed \(3 unreadable\)"):
        convert_thyroid(thyroid)
    # readable volumes without any label and --skip_empty: nothing to convert is an error too, with the remedy
    import nibabel as nib

    empty = tmp_path / "empty_labels"
    (empty / "US").mkdir(parents=True)
    (empty / "US_thyroid_label").mkdir()
    nib.save(nib.Nifti1Image(np.ones((8, 6, 3), np.float32), np.eye(4)), str(empty / "US" / "P1.nii"))
    nib.save(nib.Nifti1Image(np.zeros((8, 6, 3), np.uint8), np.eye(4)), str(empty / "US_thyroid_label" / "P1.nii"))
    with pytest.raises(ValueError, match="drop --skip_empty"):
        convert_thyroid(empty, skip_empty=True)
    assert sum(len(s) for s in convert_thyroid(empty).values()) == 3


@pytest.mark.parametrize("source", ["camus", "thyroid"])
def test_cli_prepare_refuses_unreadable_input(tmp_path, capsys, source):
    from ultrasound_diffusers.cli import main

    src = (_corrupt_camus if source == "camus" else _corrupt_thyroid)(tmp_path / f"{source}_in")
    out = tmp_path / "out"
    with pytest.warns(ConversionWarning):
        assert main(["prepare", source, "--input", str(src), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{source}_in" in err and "file(s) failed" in err and "unreadable" in err
    assert not out.exists()
