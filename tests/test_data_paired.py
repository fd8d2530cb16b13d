"""Tests of ultrasound_diffusers.data.paired: the sources, checks and preprocessing of (image, label map) rows."""

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ultrasound_diffusers.data.paired import (
    PairedTransform,
    check_paired_dataset,
    collate_pairs,
    describe_cell,
    load_paired_splits,
    open_cell,
    preprocess_image,
    preprocess_labels,
    read_label_cell,
    to_image_array,
)


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _pairs(n=4, size=(12, 10), num_classes=3, seed=0):
    """A datasets.Dataset of n 8-bit images and label maps (Image features)."""
    import datasets

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        lab = np.zeros(size, np.uint8)
        lab[size[0] // 2 :] = num_classes - 1
        lab[1:4, 1:4] = i % num_classes
        images.append(Image.fromarray((rng.random(size) * 255).astype(np.uint8)))
        labels.append(Image.fromarray(lab))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


# ---------------------------------------------------------------------------------------------------- sources
def test_load_paired_splits_from_phantoms():
    train, validation, base_dir, kind, split = load_paired_splits("phantoms:echo", size=16, num_phantoms=3, seed=1,
                                                                  num_validation=2)
    assert len(train) == 3 and len(validation) == 2 and base_dir is None and (kind, split) == ("phantoms", "train")
    train_images = {np.asarray(im).tobytes() for im in train["image"]}
    assert not any(np.asarray(im).tobytes() in train_images for im in validation["image"])  # new phantoms
    again = load_paired_splits(None, size=(16, 16), num_phantoms=3, seed=1)
    assert again.validation is None  # nothing asked for
    assert [np.asarray(im).tobytes() for im in again.train["image"]] == [np.asarray(im).tobytes() for im in train["image"]]
    assert len(load_paired_splits("phantoms:echo", size=16, num_phantoms=3, max_train_samples=2).train) == 2
    with pytest.raises(ValueError, match="phantoms:ANATOMY"):  # the bare word is not the spelling
        load_paired_splits("phantoms", size=16, num_phantoms=3)


def test_the_phantoms_spelling_gives_count_and_seed():
    """``phantoms:thyroid:4:9`` is 4 thyroid phantoms from seed 9 (the text wins over num_phantoms / seed), never an
    anatomy called "thyroid:4:9"."""
    from ultrasound_diffusers.data.phantoms import generate_phantoms

    splits = load_paired_splits("phantoms:thyroid:4:9", size=16, num_phantoms=3, seed=1)
    want = generate_phantoms(4, "thyroid", size=16, seed=9)
    assert len(splits.train) == 4
    assert [np.asarray(x).tolist() for x in splits.train["label"]] == [np.asarray(x).tolist() for x in want["label"]]
    # N without SEED: the training seed
    assert len(load_paired_splits("phantoms:thyroid:2", size=16, num_phantoms=3, seed=1).train) == 2


def test_a_saved_folder_named_phantoms_is_a_folder(tmp_path):

    _pairs(3).save_to_disk(str(tmp_path / "phantoms_thyroid"))
    splits = load_paired_splits(str(tmp_path / "phantoms_thyroid"), num_phantoms=256)
    assert splits.kind == "saved_dataset" and len(splits.train) == 3


def test_png_folders_train_as_they_evaluate(tmp_path):
    """The PNG dialect (images/ + labels/, as `phantoms --png_dir` writes) gives training the pairs evaluation reads."""
    from ultrasound_diffusers.evaluation.io import load_image_set

    for sub_dir in ("images", "labels"):
        (tmp_path / "png" / sub_dir).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "png" / "images" / f"{i:06d}.png")
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / "png" / "labels" / f"{i:06d}.png")
    splits = load_paired_splits(data_dir=str(tmp_path / "png"))
    assert splits.kind == "folder" and check_paired_dataset(splits.train, base_dir=splits.base_dir) == 3
    image_set = load_image_set(str(tmp_path / "png"))
    rows = [read_label_cell(v).tolist() for v in splits.train.cast_column("label", __import__("datasets").Image(
        decode=False))["label"]]
    assert rows == image_set.labels.tolist()


def test_load_paired_splits_from_saved_datasets(tmp_path):
    import datasets

    pairs = _pairs(5)
    datasets.DatasetDict({"train": pairs, "validation": pairs.select([0, 1, 2])}).save_to_disk(str(tmp_path / "dd"))
    train, validation, base_dir, _, _ = load_paired_splits(str(tmp_path / "dd"), num_validation=2)
    assert len(train) == 5 and len(validation) == 2 and base_dir == str(tmp_path / "dd")
    assert load_paired_splits(str(tmp_path / "dd")).validation is None
    pairs.save_to_disk(str(tmp_path / "single"))
    assert load_paired_splits(str(tmp_path / "single"), num_validation=2).validation is None
    datasets.DatasetDict({"test": pairs}).save_to_disk(str(tmp_path / "no-train"))
    assert load_paired_splits(str(tmp_path / "no-train")).split == "test"  # the only split
    datasets.DatasetDict({"test": pairs, "other": pairs}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ValueError, match=r"splits \['test', 'other'\] and none is 'train'"):
        load_paired_splits(str(tmp_path / "two"))
    with pytest.raises(ValueError, match="the training dataset is empty"):
        load_paired_splits(str(tmp_path / "single"), max_train_samples=0)


def test_load_paired_splits_names_the_arguments(tmp_path):
    with pytest.raises(ValueError, match="`data_dir` '.*nowhere' is not a directory"):
        load_paired_splits(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="--train_data_dir '.*nowhere' is not a directory"):
        load_paired_splits(data_dir=str(tmp_path / "nowhere"), arguments={"data_dir": "--train_data_dir"})
    with pytest.raises(ValueError, match="only one of `dataset_name` and `data_dir`"):
        load_paired_splits("phantoms:echo", str(tmp_path))


# ---------------------------------------------------------------------------------------------------- cells
def test_open_and_describe_cells(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "sub").mkdir()
    Image.fromarray(array).save(tmp_path / "sub" / "a.png")
    np.save(tmp_path / "sub" / "b.npy", array.astype(np.int64))
    for cell in ({"bytes": _png(array), "path": None}, {"bytes": None, "path": "sub/a.png"}, "sub/a.png", _png(array),
                 tmp_path / "sub" / "a.png", "sub/b.npy", array.tolist()):
        assert np.array_equal(np.asarray(open_cell(cell, base_dir=tmp_path)), array), cell
    with pytest.raises(ValueError, match="missing value"):
        open_cell(None)
    assert describe_cell({"bytes": b"", "path": "/d/l.png"}, 3) == "row 3 (/d/l.png)"
    assert describe_cell("x.png", 0) == "row 0 (x.png)" and describe_cell(array, 5) == "row 5"


def test_label_cells_follow_the_package_rule():
    grey_rgb = np.stack([np.array([[0, 1], [2, 3]], np.uint8)] * 3, -1)
    assert read_label_cell(_png(grey_rgb)).tolist() == [[0, 1], [2, 3]]
    colour = grey_rgb.copy()
    colour[0, 0, 2] = 9
    with pytest.raises(ValueError, match="a label map is a colour RGB image whose channels differ"):
        read_label_cell(_png(colour))


def test_to_image_array_modes_and_channels():
    assert to_image_array(Image.fromarray(np.full((2, 3), 255, np.uint8))).shape == (1, 2, 3)
    assert float(to_image_array(np.full((2, 2), 65535, np.uint16)).min()) == 1.0
    i16 = Image.fromarray(np.full((2, 2), 32768, np.uint16))
    assert np.allclose(to_image_array(i16), 32768 / 65535)
    assert np.allclose(to_image_array(Image.fromarray(np.full((2, 2), 0.25, np.float32), mode="F")), 0.25)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    assert np.allclose(to_image_array(rgba), 0.299) and to_image_array(rgba, channels=3).shape == (3, 2, 2)
    assert to_image_array(np.zeros((1, 4, 5), np.float32), channels=3).shape == (3, 4, 5)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):  # never clipped to half its range
        to_image_array(np.full((2, 2), -0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_image_array(np.full((2, 2), 3.0))
    with pytest.raises(ValueError, match="C = 1"):
        to_image_array(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="`channels`"):
        to_image_array(np.zeros((2, 2)), channels=2)


# ---------------------------------------------------------------------------------------------------- checks
def test_check_paired_dataset_counts_classes_and_names_rows():
    pairs = _pairs(4, num_classes=3)
    assert check_paired_dataset(pairs) == 3
    assert check_paired_dataset(pairs, num_classes=5) == 5
    assert check_paired_dataset(pairs, label_column=None) == 0
    with pytest.raises(ValueError, match=r"row 0 holds class ids in \[0, 2\], outside \[0, 2\) \(`num_classes` 2\)"):
        check_paired_dataset(pairs, num_classes=2)
    with pytest.raises(ValueError, match="`label_column` 'mask' is not a column of the dataset"):
        check_paired_dataset(pairs, label_column="mask")
    with pytest.raises(ValueError, match="--image_column 'img' is not a column"):
        check_paired_dataset(pairs, image_column="img", arguments={"image_column": "--image_column"})
    with pytest.raises(ValueError, match="`image_column` and `label_column` must differ"):
        check_paired_dataset(pairs, label_column="image")


def test_check_paired_dataset_refuses_a_label_map_of_another_size():
    import datasets

    pairs = _pairs(2)
    rows = pairs.cast_column("label", datasets.Image(decode=False)).to_dict()
    rows["label"][1] = {"bytes": _png(np.zeros((5, 5), np.uint8)), "path": "labels/p1.png"}
    bad = datasets.Dataset.from_dict(rows, features=pairs.cast_column("label", datasets.Image(decode=False)).features)
    with pytest.raises(ValueError, match=r"label map of row 1 \(labels/p1.png\) has size \(5, 5\).*\(12, 10\)"):
        check_paired_dataset(bad)


# ---------------------------------------------------------------------------------------------------- tensors
def test_preprocess_and_transform():
    labels = np.zeros((20, 24), np.uint8)
    labels[:, 12:] = 3
    y = preprocess_labels(Image.fromarray(labels), (10, 12))
    assert y.dtype == torch.int64 and y.shape == (10, 12) and set(y.unique().tolist()) == {0, 3}
    odd = np.arange(7 * 9).reshape(7, 9) % 5
    expected = torch.nn.functional.interpolate(torch.from_numpy(odd).float()[None, None], size=(4, 5),
                                               mode="nearest-exact")[0, 0].long()
    assert torch.equal(preprocess_labels(odd, (4, 5)), expected)  # the package's nearest rule
    x = preprocess_image(np.full((20, 24), 255, np.uint8), (10, 12))
    assert x.dtype == torch.float32 and x.shape == (1, 10, 12) and torch.allclose(x, torch.ones_like(x))

    pairs = _pairs(3, size=(12, 10))
    transform = pickle.loads(pickle.dumps(PairedTransform("image", "label", (8, 8), channels=3)))  # for workers
    batch = collate_pairs([pairs.with_transform(transform)[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (3, 8, 8) and batch["labels"].dtype == torch.int64
    assert float(batch["pixel_values"].min()) >= -1 and float(batch["pixel_values"].max()) <= 1
    images_only = collate_pairs([pairs.with_transform(PairedTransform("image", None, (8, 8)))[0]])
    assert set(images_only) == {"pixel_values"} and images_only["pixel_values"].shape == (1, 1, 8, 8)
