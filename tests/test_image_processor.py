"""One label-map rule for every entry point (issue 15): acceptance, the nearest resize rule, the size parser."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ultrasound_diffusers.data.phantoms import phantom_label_maps
from ultrasound_diffusers.image_processor import (
    nearest_indices,
    parse_size,
    read_label_file,
    resize_label_map,
    to_label_array,
)


def reference_nearest_exact(labels: np.ndarray, size):
    """PyTorch's nearest-exact, the rule the package adopted (an independent implementation)."""
    x = torch.from_numpy(labels.astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(x, size=size, mode="nearest-exact")[0, 0].long().numpy()


@pytest.mark.parametrize("size", [(40, 40), (64, 64), (96, 40), (13, 200), (1, 1)])
def test_resize_rule_matches_nearest_exact_for_numpy_and_torch(size):
    labels = phantom_label_maps(1, anatomy="echo", size=96, seed=3)[0].astype(np.int64)
    expected = reference_nearest_exact(labels, size)
    np.testing.assert_array_equal(resize_label_map(labels, size), expected)
    np.testing.assert_array_equal(resize_label_map(torch.from_numpy(labels), size).numpy(), expected)
    assert nearest_indices(96, size[0]).max() < 96


def every_entry_point_resize(labels: np.ndarray, size):
    """The same 96 -> 40 map through every place that resizes label maps."""
    from ultrasound_diffusers.data.converters import resize
    from ultrasound_diffusers.data.paired import preprocess_labels
    from ultrasound_diffusers.evaluation.io import resize_label
    from ultrasound_diffusers.data.label_sources import _resize_nearest
    from ultrasound_diffusers.models.unet_semantic_2d import prepare_segmap as model_prepare
    from ultrasound_diffusers.pipelines.pipeline_utils import prepare_segmap as pipeline_prepare

    num_classes = int(labels.max()) + 1
    _, pipe_labels = pipeline_prepare(labels, num_classes, size)
    model_one_hot = model_prepare(torch.from_numpy(labels)[None], num_classes, size=size)
    return {
        "converters": resize(labels.astype(np.uint8), size, label=True).astype(np.int64),
        "evaluation": resize_label(labels, size),
        "generation": _resize_nearest(labels, size),
        "pipeline": pipe_labels[0].numpy(),
        "model": model_one_hot.argmax(1)[0].numpy(),
        "training": preprocess_labels(labels, size).numpy(),
    }


def test_a_non_integer_resize_ratio_gives_one_answer_everywhere():
    labels = phantom_label_maps(1, anatomy="echo", size=96, seed=1)[0].astype(np.int64)
    results = every_entry_point_resize(labels, (40, 40))
    reference = results["pipeline"]
    for name, result in results.items():
        assert np.array_equal(result, reference), f"{name} differs in {(result != reference).sum()} pixels"


GOOD = {
    "uint8": np.array([[0, 1], [2, 3]], np.uint8),
    "float whole": np.array([[0.0, 1.0], [2.0, 3.0]]),
    "bool": np.array([[True, False], [False, True]]),
    "[1,H,W] tensor": torch.tensor([[[0, 1], [2, 3]]]),
    "grey RGB PIL": Image.fromarray(np.stack([np.array([[0, 1], [2, 3]], np.uint8)] * 3, -1)),
    "L PIL": Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8)),
}
BAD = {
    "negative": (np.array([[0, -1], [2, 3]]), "negative"),
    "fractional": (np.array([[0.5, 1.0], [2.0, 3.0]]), "non-integer"),
    "nan": (np.array([[np.nan, 1.0], [2.0, 3.0]]), "NaN or infinite"),
    "inf": (np.array([[np.inf, 1.0], [2.0, 3.0]]), "NaN or infinite"),
    "colour RGB": (Image.fromarray(np.dstack([np.eye(2, dtype=np.uint8) * 200, np.zeros((2, 2, 2), np.uint8)])),
                   "colour RGB image whose channels differ"),
    "4-D": (np.zeros((2, 3, 4, 5)), "2-D label map"),
    "strings": (np.array([["a", "b"]]), "integer class indices"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_accepted_label_maps(name):
    out = to_label_array(GOOD[name])
    assert out.dtype == np.int64 and out.shape == (2, 2)


@pytest.mark.parametrize("name", sorted(BAD))
def test_refused_label_maps_name_the_map(name):
    value, message = BAD[name]
    with pytest.raises(ValueError, match=message):
        to_label_array(value, where="map X")
    with pytest.raises(ValueError, match="map X"):
        to_label_array(value, where="map X")


ENTRY_POINT_READERS = {}


def _entry_points():
    import importlib
    import sys
    from pathlib import Path

    from ultrasound_diffusers.evaluation.io import label_to_array
    from ultrasound_diffusers.image_processor import to_label_array as generation_reader
    from ultrasound_diffusers.pipelines.pipeline_utils import prepare_segmap

    root = Path(__file__).resolve().parents[1] / "training"
    sys.path.insert(0, str(root))
    try:
        ts = importlib.import_module("train_semantic")
    finally:
        sys.path.remove(str(root))
    return {
        "generation": generation_reader,
        "evaluation": label_to_array,
        "training": ts.label_array,
        "pipeline": lambda v: prepare_segmap(v, 8, (2, 2))[1][0].numpy(),
    }


@pytest.mark.parametrize("name", sorted(set(GOOD) | set(BAD)))
def test_every_entry_point_accepts_and_rejects_the_same_maps(name):
    outcomes = {}
    for entry, reader in _entry_points().items():
        value = GOOD[name] if name in GOOD else BAD[name][0]
        try:
            outcomes[entry] = ("ok", tuple(np.asarray(reader(value)).ravel()))
        except ValueError:
            outcomes[entry] = ("refused", None)
    assert len(set(outcomes.values())) == 1, outcomes
    assert outcomes["generation"][0] == ("ok" if name in GOOD else "refused")


def test_read_label_file(tmp_path):
    Image.fromarray(np.array([[0, 4]], np.uint8)).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", np.array([[1.0, 2.0]]))
    (tmp_path / "c.png").write_bytes(b"nope")
    assert read_label_file(tmp_path / "a.png").tolist() == [[0, 4]]
    assert read_label_file(tmp_path / "b.npy").tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="c.png is not a readable image"):
        read_label_file(tmp_path / "c.png")
    with pytest.raises(FileNotFoundError, match="d.png"):
        read_label_file(tmp_path / "d.png")


@pytest.mark.parametrize("text, expected", [("64", 64), ("8x256", (8, 256)), ("8,256", (8, 256)), (32, 32),
                                            ((4, 5), (4, 5))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["0", "axb", "1x2x3", -1, True, 2.5])
def test_parse_size_refuses(bad):
    with pytest.raises(ValueError, match="`size`"):
        parse_size(bad)


def test_parse_size_pairs_and_minimum_are_the_rule_of_every_size_argument():
    """The converters' and the phantoms' size arguments are this parser with ``as_pair`` (and a minimum)."""
    from ultrasound_diffusers.data import converters, phantoms

    assert parse_size(64, as_pair=True) == (64, 64) and parse_size("8x256", as_pair=True) == (8, 256)
    assert parse_size(None, as_pair=True) is None
    with pytest.raises(ValueError, match="`size` must be at least 8 x 8 pixels"):
        parse_size((7, 64), minimum=8)
    for text in ["48x64", (48, 64), [48, 64]]:
        assert converters.parse_size(text) == phantoms.parse_size(text) == (48, 64)
    assert converters.parse_size(4) == (4, 4)
    with pytest.raises(ValueError, match="at least 8 x 8"):
        phantoms.parse_size(4)
    for bad in [True, 2.5, "0"]:  # refused alike
        for parser in (converters.parse_size, phantoms.parse_size):
            with pytest.raises(ValueError, match="`size`"):
                parser(bad)


# ---------------------------------------------------------------------------------------------------- issue 27 cases
def test_label_rule_edge_cases_report_themselves(tmp_path):
    """A 1e20 label is reported as itself (not wrapped to -2**63 by a cast); a nested list is a label map; a pickled
    .npy names its file wherever it is read (label file, training cell)."""
    from ultrasound_diffusers.data.paired import read_label_cell
    from ultrasound_diffusers.image_processor import read_label_file, to_label_array

    with pytest.raises(ValueError, match=r"too large to be class indices \(up to 1e\+20"):
        to_label_array(np.array([[0.0, 1e20]]))
    assert to_label_array([[0, 1], [2, 0]]).tolist() == [[0, 1], [2, 0]]
    with pytest.raises(ValueError, match="not an array-like"):
        to_label_array([[0, 1], [2]])
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for read in (read_label_file, read_label_cell):
        with pytest.raises(ValueError, match=r"pickled\.npy is not a readable \.npy array"):
            read(tmp_path / "pickled.npy")


def test_image_rule_one_answer():
    """One image rule: uint8 / uint16 scaled, floats in [0, 1] kept, [-1, 1] refused with the rescale (never clipped),
    grey+alpha and RGBA drop their alpha, 2-D nested lists read as arrays."""
    from PIL import Image

    from ultrasound_diffusers.image_processor import to_image_array

    assert np.allclose(to_image_array(np.full((2, 2), 51, np.uint8)), 0.2)
    assert np.allclose(to_image_array(np.full((2, 2), 0.25, np.float32)), 0.25)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*\(x \+ 1\) / 2"):
        to_image_array(np.linspace(-1, 1, 4).reshape(2, 2))
    with pytest.raises(ValueError, match="NaN"):
        to_image_array(np.full((2, 2), np.nan))
    grey_alpha = np.stack([np.full((2, 3), 102, np.uint8), np.zeros((2, 3), np.uint8)], -1)
    assert np.allclose(to_image_array(grey_alpha), 0.4) and to_image_array(grey_alpha).shape == (1, 2, 3)
    assert np.allclose(to_image_array(Image.fromarray(grey_alpha, mode="LA")), 0.4)
    assert np.allclose(to_image_array([[0, 255], [255, 0]]), [[[0, 1], [1, 0]]])
    with pytest.raises(ValueError, match="integer values must lie in"):
        to_image_array(np.full((2, 2), 300, np.int32))


def test_label_map_processor_is_the_one_home_of_the_one_hot():
    """Issue 28: pipelines, the training loop and the network encode label maps through LabelMapProcessor (as
    diffusers' pipelines preprocess images through VaeImageProcessor), so there is one one-hot encoding."""
    import re

    import torch

    from ultrasound_diffusers.image_processor import LabelMapProcessor
    from ultrasound_diffusers.models.unet_semantic_2d import prepare_segmap
    from ultrasound_diffusers.pipelines.pipeline_utils import prepare_segmap as pipeline_prepare
    from ultrasound_diffusers.training_utils import draw_training_inputs  # noqa: F401  (uses the processor)

    root = Path(__file__).resolve().parents[1]
    sources = list((root / "ultrasound_diffusers").rglob("*.py")) + list((root / "pipelines").glob("*.py"))
    callers = sorted(str(p.relative_to(root)) for p in sources if re.search(r"\bF\.one_hot\(|functional\.one_hot\(", p.read_text()))
    # the segmentation network's loss one-hot encodes its training targets: not a network input
    assert callers == ["ultrasound_diffusers/evaluation/segmentation.py", "ultrasound_diffusers/image_processor.py"]

    processor = LabelMapProcessor(num_classes=4)
    labels = torch.tensor([[[0, 1], [2, 3]]])
    one_hot = processor.one_hot(labels)
    assert one_hot.shape == (1, 4, 2, 2) and one_hot.dtype == torch.float32
    assert torch.equal(one_hot.argmax(1), labels) and torch.equal(one_hot.sum(1), torch.ones(1, 2, 2))
    # the pipeline helper, the network's own entry and the processor agree, resize included
    encoded, back = processor.preprocess(labels[0].numpy(), size=(4, 4))
    assert torch.equal(encoded, pipeline_prepare(labels, 4, (4, 4))[0])
    assert torch.equal(encoded, prepare_segmap(labels, 4, size=(4, 4)))
    assert torch.equal(back, encoded.argmax(1))
    with pytest.raises(ValueError, match="num_classes"):
        LabelMapProcessor(0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        processor.preprocess(np.full((2, 2), 4), size=(2, 2))
