"""nnU-Net v2 raw-dataset export (ultrasound_diffusers.data.nnunet) and ``generate --export nnunet``."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from _pipeline_fixtures import LABEL_NAMES
from ultrasound_diffusers.data.nnunet import (
    EXPORT_KIND,
    check_nnunet_target,
    export_nnunet,
    nnunet_dataset_folder,
    resolve_label_names,
)
from ultrasound_diffusers.utils.io import read_marker



@pytest.fixture(scope="module")
def phantoms():
    from ultrasound_diffusers.data.phantoms import generate_phantoms

    return generate_phantoms(5, "echo", size=32, seed=3)


def _read(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def test_layout_dataset_json_and_intact_pixels(phantoms, tmp_path):
    out = export_nnunet(phantoms, tmp_path / "raw", 42, "EchoPhantoms", label_names="echo")
    assert out == tmp_path / "raw" / "Dataset042_EchoPhantoms"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"case_{i:04d}_0000.png" for i in range(5)]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"case_{i:04d}.png" for i in range(5)]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "ultrasound"}
    assert meta["labels"] == {"background": 0, "LV cavity": 1, "tissue in fan": 2, "myocardium": 3, "left atrium": 4}
    assert meta["numTraining"] == 5 and meta["file_ending"] == ".png"
    assert meta["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    assert "outside fan" in meta["description"]
    for i in range(5):
        mode, image = _read(out / "imagesTr" / f"case_{i:04d}_0000.png")
        assert mode == "L" and image.shape == (32, 32)  # 2D grayscale: one nnU-Net channel
        np.testing.assert_array_equal(image, np.asarray(phantoms[i]["image"]))
        mode, label = _read(out / "labelsTr" / f"case_{i:04d}.png")
        assert mode == "L" and label.dtype == np.uint8
        np.testing.assert_array_equal(label, np.asarray(phantoms[i]["label"]))
        assert set(np.unique(label)) <= set(meta["labels"].values())
    with open(out / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == [f"case_{i:04d}" for i in range(5)]
    assert [int(r["seed"]) for r in rows] == phantoms["seed"]
    assert read_marker(out)["kind"] == EXPORT_KIND
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [out.name]  # no temporaries left


def test_default_label_names_from_the_data(phantoms, tmp_path):
    out = export_nnunet(phantoms.select(range(2)), tmp_path / "raw")
    meta = json.loads((out / "dataset.json").read_text())
    assert out.name == "Dataset501_UltrasoundSynthetic"
    highest = max(int(np.asarray(phantoms[i]["label"]).max()) for i in range(2))
    assert meta["labels"] == {"background": 0, **{f"class_{k}": k for k in range(1, highest + 1)}}
    assert meta["numTraining"] == 2


def test_refusals_and_atomicity(phantoms, tmp_path):
    raw = tmp_path / "raw"
    user = raw / "Dataset042_EchoPhantoms"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_nnunet(phantoms, raw, 42, "EchoPhantoms")
    assert (user / "notes.txt").read_text() == "mine"
    out = export_nnunet(phantoms, raw, 42, "EchoPhantoms", label_names="echo", overwrite=True)
    assert not (out / "notes.txt").exists()
    again = export_nnunet(phantoms.select(range(2)), raw, 42, "EchoPhantoms", label_names="echo")  # own: replaced
    assert json.loads((again / "dataset.json").read_text())["numTraining"] == 2
    with pytest.raises(ValueError, match="dataset id 42"):  # nnU-Net needs one folder per id
        export_nnunet(phantoms, raw, 42, "Other")
    with pytest.raises(ValueError, match="dataset_id"):
        nnunet_dataset_folder(1000, "X")
    with pytest.raises(ValueError, match="dataset_name"):
        check_nnunet_target(raw, 7, "has space")
    # a label outside the names: nothing written, the earlier export untouched
    with pytest.raises(ValueError, match=r"label values in \[0, 4\].*3 classes"):
        export_nnunet(phantoms, raw, 42, "EchoPhantoms", label_names=["a", "b", "c"])
    assert json.loads((again / "dataset.json").read_text())["numTraining"] == 2
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset042_EchoPhantoms"]
    with pytest.raises(ValueError, match="image_column"):
        export_nnunet(phantoms, tmp_path / "raw2", image_column="pixels")
    with pytest.raises(ValueError, match="unique"):
        export_nnunet(phantoms, tmp_path / "raw2", label_names=["bg", "x", "x", "y", "z"])


def test_resolve_label_names():
    assert resolve_label_names("camus") == ["background", "LV cavity", "myocardium", "left atrium"]
    assert resolve_label_names("bg, a ,b") == ["bg", "a", "b"]
    assert resolve_label_names({1: "a", 0: "bg"}) == ["bg", "a"]
    assert resolve_label_names(None, 3) == ["class_0", "class_1", "class_2"]
    with pytest.raises(ValueError, match="without gaps"):
        resolve_label_names({0: "bg", 2: "a"})


def test_cli_generate_export_nnunet(saved, tmp_path, capsys):
    import datasets

    from ultrasound_diffusers.cli import main

    out = tmp_path / "run"
    args = ["generate", "--pipeline", str(saved), "--labels", "phantoms:echo:2", "--output_dir", str(out),
            "--images_per_label", "2", "--num_inference_steps", "2", "--batch_size", "2", "--seed", "5",
            "--no_progress", "--export", "nnunet", "png", "--nnunet_id", "7", "--nnunet_name", "Tiny",
            "--nnunet_test", "phantoms:echo:2:4242"]
    assert main(args) == 0
    assert "nnU-Net raw dataset written to" in capsys.readouterr().out
    folder = out / "nnunet_raw" / "Dataset007_Tiny"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["numTest"] == 2 and meta["file_ending"] == ".png"
    assert len(list((folder / "imagesTs").iterdir())) == len(list((folder / "labelsTs").iterdir())) == 2
    # the pipeline's label_names name the classes (label 0 becomes background)
    assert list(meta["labels"]) == ["background", *LABEL_NAMES[1:]]
    ds = datasets.load_from_disk(str(out / "dataset"))
    for i in range(4):
        np.testing.assert_array_equal(_read(folder / "imagesTr" / f"case_{i:04d}_0000.png")[1],
                                      np.asarray(ds[i]["image"]))
        np.testing.assert_array_equal(_read(folder / "labelsTr" / f"case_{i:04d}.png")[1], np.asarray(ds[i]["label"]))
    assert len(list((out / "png" / "images").glob("*.png"))) == 4  # --export png = --save_png
    assert "--export nnunet png" in (out / "README.md").read_text()
    # a bad dataset id fails before anything is generated
    bad = [str(tmp_path / "bad") if a == str(out) else a for a in args[:-6]] + ["--nnunet_id", "0"]
    code = main(bad)
    assert code == 2
    assert "dataset_id" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # so does a held-out set that cannot be read, or one without --export nnunet
    unreadable = [str(tmp_path / "bad2") if a == str(out) else a for a in args[:-2]]
    assert main(unreadable + ["--nnunet_test", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "bad2").exists()
    assert main([a for a in args[:-9]] + ["--nnunet_test", "phantoms:echo:2"]) == 2
    assert "goes with --export nnunet" in capsys.readouterr().err


def test_held_out_cases_go_to_images_ts_and_labels_ts(phantoms, tmp_path):
    """Train on one set, test on another (e.g. real scans): imagesTs / labelsTs in the same coding, marked in
    cases.csv; the class count covers both sets."""
    from ultrasound_diffusers.data.nnunet import held_out_cases_dataset

    held_out = held_out_cases_dataset("phantoms:echo:3:4242", max_images=3)
    assert held_out.column_names == ["image", "label"] and len(held_out) == 3
    out = export_nnunet(phantoms, tmp_path / "raw", 43, "EchoSynthToReal", label_names="echo", test_dataset=held_out)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [f"case_test_{i:04d}_0000.png" for i in range(3)]
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == [f"case_test_{i:04d}.png" for i in range(3)]
    meta = json.loads((out / "dataset.json").read_text())
    assert (meta["numTraining"], meta["numTest"]) == (5, 3)
    reference = held_out_cases_dataset("phantoms:echo:3:4242")
    for i in range(3):
        np.testing.assert_array_equal(_read(out / "imagesTs" / f"case_test_{i:04d}_0000.png")[1],
                                      np.asarray(reference[i]["image"]))
        np.testing.assert_array_equal(_read(out / "labelsTs" / f"case_test_{i:04d}.png")[1],
                                      np.asarray(reference[i]["label"]))
    with open(out / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["split"] for r in rows] == ["train"] * 5 + ["test"] * 3
    # images without label maps: imagesTs only
    images_only = held_out.remove_columns("label")
    out = export_nnunet(phantoms, tmp_path / "raw2", test_dataset=images_only)
    assert len(list((out / "imagesTs").iterdir())) == 3 and not (out / "labelsTs").exists()
    with pytest.raises(ValueError, match="no image column"):
        export_nnunet(phantoms, tmp_path / "raw3", test_dataset=held_out.rename_column("image", "picture"))
    assert not (tmp_path / "raw3" / "Dataset501_UltrasoundSynthetic").exists()
    # another label column: a (dataset, test_label_column) pair; (dataset, None) writes images only
    out = export_nnunet(phantoms, tmp_path / "raw4", test_dataset=(held_out.rename_column("label", "mask"), "mask"))
    for i in range(3):
        np.testing.assert_array_equal(_read(out / "labelsTs" / f"case_test_{i:04d}.png")[1],
                                      np.asarray(reference[i]["label"]))
    out = export_nnunet(phantoms, tmp_path / "raw5", test_dataset=(held_out, None))
    assert len(list((out / "imagesTs").iterdir())) == 3 and not (out / "labelsTs").exists()
    with pytest.raises(ValueError, match="`test_dataset`'s label column 'mask'"):
        export_nnunet(phantoms, tmp_path / "raw6", test_dataset=(held_out, "mask"))
    with pytest.raises(ValueError, match=r"`test_dataset` as a tuple must be \(dataset, label-map column or None\)"):
        export_nnunet(phantoms, tmp_path / "raw6", test_dataset=(held_out, "label", "extra"))
    with pytest.raises(ValueError, match="`test_dataset` is empty"):
        export_nnunet(phantoms, tmp_path / "raw6", test_dataset=held_out.select([]))
    assert not (tmp_path / "raw6").exists()
