"""The one input door: every source text resolves to the same kind, split and error from every entry point.

Entry points, each called as its command calls it: training's loader (``prepare_training_data`` of
training/train_semantic.py), generate's label loader (``load_label_source``), evaluate's image loader
(``load_image_set``), reconstruct's (``load_image``) and the nnU-Net held-out cases (``held_out_cases_dataset``).
A spy on ``open_source`` records what the door decided for each; where a view needs more than the door gives (N
phantoms for a set of images, pairs for training), that view's own error is listed in the table.
"""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ultrasound_diffusers.data.label_sources as label_sources_module
import ultrasound_diffusers.data.paired as paired_module
import ultrasound_diffusers.data.sources as sources_package
import ultrasound_diffusers.data.sources.images as images_module
from ultrasound_diffusers.data.sources import resolve

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def _training_script():
    spec = importlib.util.spec_from_file_location("train_semantic_for_sources", ROOT / "training" / "train_semantic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ts = _training_script()


# ---------------------------------------------------------------------------------------------------- sources
def _pairs(n=3, size=8, num_classes=3):
    import datasets

    rng = np.random.default_rng(0)
    labels = [rng.integers(0, num_classes, (size, size), dtype=np.uint8) for _ in range(n)]
    images = [(lab * 60 + 20).astype(np.uint8) for lab in labels]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def _cache_datasets_layout(cache: Path, repo_id: str, ds) -> None:
    """``repo_id`` as ``datasets`` leaves a prepared Hub dataset in its cache: ``org___name/default/0.0.0/HASH``."""
    import datasets

    name = repo_id.split("/")[-1]
    root = cache / "___".join(repo_id.split("/")) / "default" / "0.0.0" / "0123456789abcdef"
    root.mkdir(parents=True)
    ds.save_to_disk(str(cache / "tmp-train"))
    shutil.copy(cache / "tmp-train" / "data-00000-of-00001.arrow", root / f"{name}-train.arrow")
    splits = datasets.SplitDict(dataset_name=name)
    splits.add(datasets.SplitInfo(name="train", num_examples=len(ds), dataset_name=name))
    datasets.DatasetInfo(features=ds.features, config_name="default", dataset_name=name,
                         splits=splits).write_to_directory(str(root))


def _hub_cache_layout(hub: Path, repo_id: str, ds) -> None:
    """``repo_id`` as ``huggingface-cli download --repo-type dataset`` leaves it: ``datasets--org--name``."""
    repo = hub / ("datasets--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / "abc123" / "data").mkdir(parents=True)
    ds.to_parquet(str(repo / "snapshots" / "abc123" / "data" / "train-00000-of-00001.parquet"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder with every kind of source on disk, and the Hub caches."""
    import datasets

    root = tmp_path_factory.mktemp("sources")
    pairs = _pairs()
    pairs.save_to_disk(str(root / "phantoms_x"))  # a saved folder whose name starts with "phantoms"
    datasets.DatasetDict({"test": pairs}).save_to_disk(str(root / "phantoms_only_test"))
    datasets.DatasetDict({"train": pairs, "validation": pairs}).save_to_disk(str(root / "dd"))
    datasets.DatasetDict({"a": pairs, "b": pairs}).save_to_disk(str(root / "two_splits"))
    for sub in ("images", "labels"):  # the PNG dialect of generate --export png / phantoms --png_dir
        (root / "png" / sub).mkdir(parents=True)
    for i, row in enumerate(pairs):
        row["image"].save(root / "png" / "images" / f"{i:06d}.png")
        row["label"].save(root / "png" / "labels" / f"{i:06d}.png")
    (root / "meta" / "scans").mkdir(parents=True)  # an imagefolder whose metadata pairs files of other stems
    with open(root / "meta" / "metadata.jsonl", "w") as handle:
        for i, row in enumerate(pairs):
            row["image"].save(root / "meta" / "scans" / f"scan{i}.png")
            row["label"].save(root / "meta" / "scans" / f"mask{i}.png")
            handle.write(f'{{"image_file_name": "scans/scan{i}.png", "label_file_name": "scans/mask{i}.png"}}\n')
    np.save(root / "maps.npy", np.stack([np.asarray(r["label"]) for r in pairs]))
    _cache_datasets_layout(root / "datasets-cache", "org/pairs", pairs)
    _hub_cache_layout(root / "hub-cache", "org/snap", pairs)
    return root


@pytest.fixture()
def offline(place, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", place / "datasets-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(place / "hub-cache"))
    monkeypatch.chdir(place)  # relative texts ("phantoms", "./nowhere") are looked up here


@pytest.fixture()
def spy(monkeypatch):
    """Record (kind, split) of every Source the door opens, whichever module calls it."""
    seen = []
    real = resolve.open_source

    def recording(*args, **kwargs):
        source = real(*args, **kwargs)
        seen.append((source.kind, source.split))
        return source

    for module in (sources_package, images_module, label_sources_module, paired_module):
        monkeypatch.setattr(module, "open_source", recording)
    return seen


# ---------------------------------------------------------------------------------------------------- entry points
def train(spec, tmp):
    if not isinstance(spec, str):  # the script takes texts; the library function behind it takes any source
        return paired_module.load_paired_splits(spec, size=SIZE, num_phantoms=2)
    args = ts.parse_args(["--dataset_name", spec, "--resolution", str(SIZE), "--phantoms", "2",
                          "--output_dir", str(tmp / "run")])
    return ts.prepare_training_data(args, show_progress=False)


def generate(spec, tmp):
    return label_sources_module.load_label_source(spec, size=SIZE)


def evaluate(spec, tmp):
    return images_module.load_image_set(spec, label_column="auto")


def reconstruct(spec, tmp):
    from ultrasound_diffusers.reconstruction import load_image

    return load_image(spec, (SIZE, SIZE), None, 0)


def nnunet_test_cases(spec, tmp):
    from ultrasound_diffusers.data.nnunet import held_out_cases_dataset

    return held_out_cases_dataset(spec)


ENTRY_POINTS = {"train": train, "generate": generate, "evaluate": evaluate, "reconstruct": reconstruct,
                "nnunet": nnunet_test_cases}
TEXT_ONLY = {"reconstruct"}  # takes --image TEXT only

NEEDS_N = (ValueError, "needs the number of phantoms N")
NO_PAIRS = (ValueError, "holds no \\(image, label map\\) pairs")
MAPS_ONLY = (ValueError, "property maps without B-mode images or label maps")

#: source -> (kind, split) the door decides, or (error type, message) for every entry point; then the entry
#: points whose view refuses what the door opened, with that view's error.
TABLE = [
    ("phantoms:thyroid:3", ("phantoms", "train"), {}),
    ("phantoms:echo:2:4", ("phantoms", "train"), {}),
    ("phantoms:echo", ("phantoms", "train"), {"generate": NEEDS_N, "evaluate": NEEDS_N, "nnunet": NEEDS_N}),
    ("phantoms:lung:2", ("phantoms", "train"), {  # every anatomy of the phantoms registry; lung: 8 x 256 maps
        "train": (ValueError, "must be 8x256"), "generate": MAPS_ONLY, "reconstruct": MAPS_ONLY}),
    ("phantoms_x", ("saved_dataset", "train"), {}),
    ("phantoms_only_test", ("saved_dataset", "test"), {}),
    ("dd", ("saved_dataset", "train"), {}),
    ("two_splits", (ValueError, "splits \\['a', 'b'\\] and none is 'train'"), {}),
    ("org/pairs", ("hub", "train"), {}),
    ("org/snap", ("hub", "train"), {}),
    ("org/not-cached", (ValueError, "not in the local cache and offline mode is on"), {}),
    ("png", ("folder", "train"), {}),
    ("meta", ("folder", "train"), {}),
    ("maps.npy", ("file", "train"), {"train": NO_PAIRS}),
    ("array", ("array", "train"), {"train": NO_PAIRS}),
    ("./nowhere", (FileNotFoundError, "does not exist"), {}),
    ("phantoms", (ValueError, "the built-in phantoms are written phantoms:ANATOMY"), {}),
    ("phantoms:liver:3", (ValueError, "anatomy must be one of"), {}),
    ("phantoms:thyroid:x", (ValueError, "N and SEED must be integers"), {}),
]


@pytest.mark.parametrize("text, door, refused", TABLE, ids=[row[0] for row in TABLE])
def test_every_entry_point_gets_the_same_answer(text, door, refused, place, offline, spy, tmp_path):
    spec = np.stack([np.asarray(r["image"]) for r in _pairs()]) if text == "array" else text
    for name, entry in ENTRY_POINTS.items():
        if name in TEXT_ONLY and not isinstance(spec, str):
            continue
        spy.clear()
        if isinstance(door[0], type):  # the door itself refuses: the same error everywhere
            with pytest.raises(door[0], match=door[1]):
                entry(spec, tmp_path)
            continue
        if name in refused:
            with pytest.raises(refused[name][0], match=refused[name][1]):
                entry(spec, tmp_path)
        else:
            entry(spec, tmp_path)
        assert spy and spy[-1] == door, f"{name}: the door gave {spy} for {text!r}, expected {door}"


def test_phantoms_text_counts_and_anatomy_agree(offline):
    """``phantoms:thyroid:3`` is 3 thyroid phantoms (4 classes) for training and generation, never an anatomy called
    "thyroid:3"; and a saved folder named ``phantoms_x`` is read as the folder (3 rows of its own), not phantoms."""
    args = ts.parse_args(["--dataset_name", "phantoms:thyroid:3", "--resolution", str(SIZE), "--phantoms", "7"])
    dataset, _, num_classes, _ = ts.prepare_training_data(args, show_progress=False)
    labels = label_sources_module.load_label_source("phantoms:thyroid:3", size=SIZE)
    assert len(dataset) == len(labels) == 3 and num_classes <= 4
    assert [np.asarray(x).tolist() for x in dataset["label"]] == [m.tolist() for m in labels]
    saved = ts.prepare_training_data(ts.parse_args(["--dataset_name", "phantoms_x", "--resolution", "8"]),
                                     show_progress=False)[0]
    assert len(saved) == 3 and saved.features["image"].__class__.__name__ == "Image"


def test_a_float_image_in_minus_one_one_gets_one_answer(tmp_path):
    """Training and evaluation both refuse a float image in [-1, 1] with the rescale to use (neither clips it to half
    its range); grey+alpha PNGs are read the same by both."""
    import datasets

    images = [np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)] * 2
    labels = [np.zeros((8, 8), np.uint8)] * 2
    features = datasets.Features({"image": datasets.Array2D((8, 8), "float32"), "label": datasets.Image()})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(
        str(tmp_path / "signed"))
    args = ts.parse_args(["--dataset_name", str(tmp_path / "signed"), "--resolution", "8"])
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2") as from_training:
        ts.prepare_training_data(args, show_progress=False)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2") as from_evaluation:
        images_module.load_image_set(str(tmp_path / "signed"), label_column="label")
    assert "[-1, 1]" in str(from_training.value) and "[-1, 1]" in str(from_evaluation.value)

    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    for sub in ("images", "labels"):
        (tmp_path / "la" / sub).mkdir(parents=True)
    Image.fromarray(np.stack([grey, np.full_like(grey, 128)], -1), mode="LA").save(tmp_path / "la" / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "la" / "labels" / "a.png")
    trained = ts.prepare_training_data(ts.parse_args(["--train_data_dir", str(tmp_path / "la"), "--resolution", "8",
                                                      "--num_classes", "2"]), show_progress=False)[0]
    pixels = paired_module.preprocess_image(trained[0]["image"], (8, 8))  # what the training transform gives
    evaluated = images_module.load_image_set(str(tmp_path / "la")).images[0]
    assert np.allclose((pixels[0].numpy() + 1) / 2, evaluated, atol=1e-6)
    assert np.allclose(evaluated, grey / 255.0, atol=1e-6)
