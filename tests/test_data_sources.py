"""One spelling of the built-in phantoms (data/sources.parse_phantoms_spec) read the same by every entry point."""

import numpy as np
import pytest

from ultrasound_diffusers.data.sources import PhantomsSpec, is_phantoms_spec, parse_phantoms_spec


def test_the_spelling():
    assert parse_phantoms_spec("phantoms:echo") == PhantomsSpec("echo", None, None)
    assert parse_phantoms_spec("phantoms:thyroid:20") == PhantomsSpec("thyroid", 20, None)
    assert parse_phantoms_spec("phantoms:thyroid:20").seed_or(7) == 7 and PhantomsSpec("echo", 3, 0).seed_or(7) == 0
    assert parse_phantoms_spec("phantoms:echo:200:4242") == PhantomsSpec("echo", 200, 4242)
    assert str(PhantomsSpec("echo", 200, 4242)) == "phantoms:echo:200:4242"
    assert str(parse_phantoms_spec("phantoms:thyroid:20")) == "phantoms:thyroid:20"
    assert is_phantoms_spec("phantoms:echo") and not is_phantoms_spec("phantoms") and not is_phantoms_spec(3)


@pytest.mark.parametrize("spec, match", [
    ("phantoms:liver:3", "anatomy"), ("phantoms:echo:x", "integers"), ("phantoms:echo:0", "positive"),
    ("phantoms:echo:3:-1", "non-negative"), ("phantoms:echo:1:2:3", "expected phantoms:ANATOMY"),
    ("phantom:echo", "not a phantom source"),
])
def test_bad_spellings_name_the_argument(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_phantoms_spec(spec, argument="--labels")
    assert "--labels" in str(info.value)


def test_n_required_where_there_is_no_default():
    with pytest.raises(ValueError, match="needs the number"):
        parse_phantoms_spec("phantoms:echo", require_num=True)


def test_generation_and_evaluation_read_the_same_phantoms():
    from ultrasound_diffusers.data.phantoms import generate_phantoms
    from ultrasound_diffusers.evaluation.io import load_image_set
    from ultrasound_diffusers.generation import load_label_source

    labels = load_label_source("phantoms:echo:3:7", size=32)
    image_set = load_image_set("phantoms:echo:3:7", size=32)
    reference = generate_phantoms(3, "echo", size=32, seed=7)
    want_labels = np.stack([np.asarray(x) for x in reference["label"]])
    want_images = np.stack([np.asarray(x, dtype=np.float32) / 255.0 for x in reference["image"]])
    assert np.array_equal(np.stack(labels.get_many([0, 1, 2])), want_labels)
    assert np.array_equal(image_set.labels, want_labels)
    assert image_set.images.shape == (3, 32, 32)
    assert np.abs(image_set.images - want_images).max() <= 1.0 / 255 + 1e-6
    with pytest.raises(ValueError, match="needs the number"):
        load_image_set("phantoms:echo")
    # reconstruct --image takes the same spelling: phantom --image_index of that set
    from ultrasound_diffusers.reconstruction import load_image

    for index in range(3):
        image, label_map, description = load_image("phantoms:echo:3:7", (32, 32), None, index)
        assert np.array_equal(label_map, want_labels[index]) and description == f"echo phantom {index} (seed 7)"
        assert np.abs(image - want_images[index]).max() <= 1.0 / 255 + 1e-6
    with pytest.raises(ValueError, match="holds 3 phantoms"):
        load_image("phantoms:echo:3:7", (32, 32), None, 3)
    with pytest.raises(ValueError, match="anatomy must be one of"):
        load_image("phantoms:heart:3", (32, 32), None)


def test_the_one_split_rule():
    """The requested split, else train, else the only split, else an error listing the splits; sources without
    splits read as 'train' and refuse another."""
    from ultrasound_diffusers.data.sources import open_source, pick_split, source_kind

    assert pick_split(["test", "train"], None, "x") == "train" and pick_split(["only"], None, "x") == "only"
    assert pick_split(["a", "b"], "b", "x") == "b"
    with pytest.raises(ValueError, match=r"--split 'val' is not a split of x; its splits are \['a', 'b'\]"):
        pick_split(["a", "b"], "val", "x", argument="--split")
    with pytest.raises(ValueError, match=r"splits \['a', 'b'\] and none is 'train'"):
        pick_split(["a", "b"], None, "x")
    with pytest.raises(ValueError, match="is not a split of phantoms:echo:2"):
        open_source("phantoms:echo:2", split="test")
    assert source_kind("phantoms:echo") == "phantoms" and source_kind(np.zeros((1, 2, 2))) == "array"
