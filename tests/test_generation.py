"""Synthetic dataset generation: columns and seeds, batch-size and process-count independence, resuming after an
interruption, unfinished chunks, bad label sources, label sources, PNG folders and the Hub upload (mocked)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _net import free_tcp_port
from _pipeline_fixtures import LABEL_NAMES
from ultrasound_diffusers import generation
from ultrasound_diffusers.generation import derive_seeds, generate_dataset, load_label_source

STEPS = 2
SIZE = 16





def _run(pipe, out, labels="phantoms:echo:5", **kwargs):
    options = dict(images_per_label=2, num_inference_steps=STEPS, batch_size=2, chunk_size=2, seed=3, progress=False)
    options.update(kwargs)
    return generate_dataset(pipe, labels, out, **options)


def _arrays(dataset, column):
    return np.stack([np.asarray(im, dtype=np.int64) for im in dataset[column]])


def assert_same_dataset(a, b, image_tolerance=0):
    """Same columns, same metadata and label maps; images equal up to ``image_tolerance`` grey levels."""
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for column in a.column_names:
        if column not in ("image", "label"):
            assert a[column] == b[column], column
    np.testing.assert_array_equal(_arrays(a, "label"), _arrays(b, "label"))
    diff = np.abs(_arrays(a, "image") - _arrays(b, "image"))
    assert diff.max() <= image_tolerance
    if image_tolerance:
        assert (diff > 0).mean() < 0.01  # at most rare last-bit rounding flips


@pytest.fixture(scope="module")
def reference(pipe, tmp_path_factory):
    """An uninterrupted run: 5 phantom label maps x 2 images, chunks of 2 (5 chunks)."""
    return _run(pipe, tmp_path_factory.mktemp("ref") / "run")


class _Spy:
    """Counts (and optionally interrupts) the chunks a run generates."""

    def __init__(self, monkeypatch, fail_after=None):
        self.generated = []
        original = generation._generate_chunk
        original_write = generation._write_chunk

        def generate(pipeline, source, settings, start, stop, *args, **kwargs):
            self.generated.append((start, stop))
            return original(pipeline, source, settings, start, stop, *args, **kwargs)

        def write(*args, **kwargs):
            if fail_after is not None and len(self.generated) > fail_after:
                raise KeyboardInterrupt("simulated interruption")
            return original_write(*args, **kwargs)

        monkeypatch.setattr(generation, "_generate_chunk", generate)
        monkeypatch.setattr(generation, "_write_chunk", write)


def test_dataset_columns_seeds_and_labels(reference, tmp_path):
    from ultrasound_diffusers.data.phantoms import phantom_label_maps

    ds = reference
    assert ds.num_rows == 10
    for column in ("image", "label", "source_id", "label_index", "copy_index", "seed", "model", "scheduler_class",
                   "scheduler_config", "num_inference_steps", "guidance_scale", "eta"):
        assert column in ds.column_names
    assert ds["label_index"] == [i // 2 for i in range(10)]
    assert ds["copy_index"] == [i % 2 for i in range(10)]
    assert ds["seed"] == [derive_seeds(3, i // 2, i % 2)[0] for i in range(10)]
    assert len(set(ds["seed"])) == 10
    assert ds["source_id"][0] == "phantom-echo-0-0" and ds["num_inference_steps"] == [STEPS] * 10
    assert ds["scheduler_class"][0] == "BMapAttenuationScheduler"
    assert json.loads(ds["scheduler_config"][0])["num_train_timesteps"] == 100
    labels, images = _arrays(ds, "label"), _arrays(ds, "image")
    np.testing.assert_array_equal(labels[::2], phantom_label_maps(5, "echo", size=SIZE, seed=0))
    np.testing.assert_array_equal(labels[::2], labels[1::2])
    assert images.shape == (10, SIZE, SIZE)
    assert (images[::2] != images[1::2]).any(axis=(1, 2)).all()  # each copy has its own noise


def test_run_folder_manifest_and_card(pipe, tmp_path):
    out = tmp_path / "run"
    ds = _run(pipe, out, labels="phantoms:echo:2", images_per_label=1, model_id="org/tiny-model", guidance_scale=1.5)
    manifest = json.loads((out / "generation.json").read_text())
    assert manifest["status"] == "complete" and manifest["num_rows"] == 2 == ds.num_rows
    assert not (out / "chunks").exists()  # merged and removed
    card = (out / "README.md").read_text()
    for text in ("org/tiny-model", "BMapAttenuationScheduler", "| guidance scale | 1.5 |", "phantoms:echo:2",
                 LABEL_NAMES[3], "image-segmentation"):
        assert text in card
    assert ds["model"] == ["org/tiny-model"] * 2 and ds["guidance_scale"] == [1.5, 1.5]


def test_batch_size_does_not_change_the_dataset(pipe, reference, tmp_path):
    one = _run(pipe, tmp_path / "b1", batch_size=1, chunk_size=3)
    many = _run(pipe, tmp_path / "b4", batch_size=4, chunk_size=10)
    # differently shaped batches may round a float's last bit differently; nothing else may change
    assert_same_dataset(reference, one, image_tolerance=1)
    assert_same_dataset(reference, many, image_tolerance=1)


def test_resume_after_interruption_equals_uninterrupted_run(pipe, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        spy = _Spy(patch, fail_after=2)
        with pytest.raises(KeyboardInterrupt):
            _run(pipe, out)
    chunks = sorted(p.name for p in (out / "chunks").iterdir() if not p.name.startswith("."))
    assert len(chunks) == 2 and spy.generated[:2] == [(0, 2), (2, 4)]
    assert json.loads((out / "generation.json").read_text())["status"] == "running"

    spy = _Spy(monkeypatch)
    resumed = _run(pipe, out)
    assert spy.generated == [(4, 6), (6, 8), (8, 10)]  # finished chunks were skipped
    assert_same_dataset(reference, resumed)

    spy.generated.clear()
    again = _run(pipe, out)  # a finished run is not redone
    assert spy.generated == []
    assert_same_dataset(reference, again)


def test_unfinished_chunks_are_not_taken_as_finished(pipe, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _Spy(patch, fail_after=4)
        with pytest.raises(KeyboardInterrupt):
            _run(pipe, out)
    chunks = out / "chunks"
    names = sorted(p.name for p in chunks.iterdir())
    assert len(names) == 4
    (chunks / names[0] / "chunk.json").unlink()  # data written, marker missing
    (chunks / names[1] / "chunk.json").write_text('{"fingerprint": ')  # truncated marker
    marker = json.loads((chunks / names[2] / "chunk.json").read_text())
    (chunks / names[2] / "chunk.json").write_text(json.dumps({**marker, "fingerprint": "another-run"}))
    (chunks / names[3] / "state.json").unlink()  # marker present, dataset incomplete
    leftover = chunks / f".{names[0]}.tmp-deadbeef"  # an interrupted write
    leftover.mkdir()
    (leftover / "data-00000-of-00001.arrow").write_bytes(b"partial")

    spy = _Spy(monkeypatch)
    resumed = _run(pipe, out)
    assert spy.generated == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert not leftover.exists()
    assert_same_dataset(reference, resumed)


def test_other_arguments_in_output_dir_need_overwrite(pipe, tmp_path):
    out = tmp_path / "run"
    _run(pipe, out, labels="phantoms:echo:1", images_per_label=1)
    with pytest.raises(ValueError, match="other arguments"):
        _run(pipe, out, labels="phantoms:echo:1", images_per_label=1, seed=4)
    ds = _run(pipe, out, labels="phantoms:echo:1", images_per_label=1, seed=4, overwrite=True)
    assert ds["global_seed"] == [4]


def test_bad_label_sources_stop_before_generating(pipe, tmp_path, monkeypatch):
    spy = _Spy(monkeypatch)
    good = np.zeros((2, SIZE, SIZE), np.uint8)
    out_of_range = good.copy()
    out_of_range[1, 3, 3] = 7
    with pytest.raises(ValueError, match=r"label map 1 .*\[0, 7\].*5 classes"):
        _run(pipe, tmp_path / "a", labels=out_of_range)
    with pytest.raises(ValueError, match="size 24x24 .* 16x16 .*resize_labels"):
        _run(pipe, tmp_path / "b", labels=np.zeros((2, 24, 24), np.uint8))
    with pytest.raises(ValueError, match="non-integer"):
        _run(pipe, tmp_path / "c", labels=good.astype(np.float32) + 0.5)
    with pytest.raises(ValueError, match="phantoms:ANATOMY:N"):
        _run(pipe, tmp_path / "d", labels="phantoms:echo")
    with pytest.raises(ValueError, match="label-conditioned"):
        from _pipeline_fixtures import tiny_unconditional_pipeline

        _run(tiny_unconditional_pipeline(), tmp_path / "e")
    assert spy.generated == []
    assert not any((tmp_path / name / "chunks").exists() for name in "abcde")


def test_cli_reports_bad_label_folder(saved, tmp_path, capsys):
    from PIL import Image

    from ultrasound_diffusers.cli import main

    folder = tmp_path / "labels"
    folder.mkdir()
    Image.fromarray(np.full((SIZE, SIZE), 9, np.uint8)).save(folder / "a.png")
    code = main(["generate", "--pipeline", str(saved), "--labels", str(folder), "--output_dir",
                 str(tmp_path / "out"), "--num_inference_steps", "2", "--no_progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'a.png'" in err and "[9, 9]" in err
    assert not (tmp_path / "out" / "chunks").exists()


def test_resize_and_augment(pipe, tmp_path):
    from ultrasound_diffusers.data.augment import augment_label_map
    from ultrasound_diffusers.data.phantoms import phantom_label_maps

    big = phantom_label_maps(2, "echo", size=32, seed=1)
    ds = _run(pipe, tmp_path / "run", labels=big, resize_labels=True, augment=True, images_per_label=2)
    labels = _arrays(ds, "label")
    assert labels.shape == (4, SIZE, SIZE) and ds["augmented"] == [True] * 4
    from ultrasound_diffusers.image_processor import resize_label_map

    resized = resize_label_map(big[0].astype(np.int64), (SIZE, SIZE))
    expected = augment_label_map(resized.astype(np.uint8), seed=ds["augmentation_seed"][1])
    np.testing.assert_array_equal(labels[1], expected)
    assert not np.array_equal(labels[0], labels[1])  # each copy has its own augmentation
    assert ds["augmentation_seed"][1] == derive_seeds(3, 0, 1)[1]


def test_label_sources(tmp_path):
    import datasets
    from PIL import Image

    maps = np.random.default_rng(0).integers(0, 5, size=(3, 8, 8)).astype(np.uint8)
    # a saved DatasetDict with an Image column and id columns
    features = datasets.Features({"label": datasets.Image(), "patient": datasets.Value("string"),
                                  "view": datasets.Value("string")})
    rows = {"label": [Image.fromarray(m) for m in maps], "patient": ["p1", "p1", "p2"], "view": ["2CH", "4CH", "2CH"]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                               "test": datasets.Dataset.from_dict(rows, features=features).select([0])})
    dd.save_to_disk(str(tmp_path / "camus"))
    source = load_label_source(str(tmp_path / "camus"), id_column="patient,view")
    assert len(source) == 3 and source.source_id(1) == "p1_4CH"
    np.testing.assert_array_equal(np.stack(source.get_many([0, 1, 2])), maps)
    assert len(load_label_source(str(tmp_path / "camus"), split="test")) == 1
    with pytest.raises(ValueError, match="not a column"):
        load_label_source(str(tmp_path / "camus"), label_column="mask")
    with pytest.raises(ValueError, match="uniquely"):
        load_label_source(str(tmp_path / "camus"), id_column="patient")
    # a folder of PNGs (sorted, ids are relative paths) and a .npy stack
    (tmp_path / "pngs" / "sub").mkdir(parents=True)
    for i, m in enumerate(maps):
        Image.fromarray(m).save(tmp_path / "pngs" / ("sub" if i else ".") / f"m{i}.png")
    folder = load_label_source(str(tmp_path / "pngs"))
    assert [folder.source_id(i) for i in range(3)] == ["m0.png", "sub/m1.png", "sub/m2.png"]
    np.testing.assert_array_equal(folder[2], maps[2])
    files = load_label_source([tmp_path / "pngs" / "sub" / "m2.png", str(tmp_path / "pngs" / "m0.png")])
    assert files.source_id(1).endswith("m0.png")
    np.testing.assert_array_equal(np.stack(list(files)), maps[[2, 0]])
    np.save(tmp_path / "maps.npy", maps)
    np.testing.assert_array_equal(load_label_source(str(tmp_path / "maps.npy"))[1], maps[1])
    with pytest.raises(FileNotFoundError):
        load_label_source(str(tmp_path / "missing"))
    rgb = Image.fromarray(np.stack([maps[0], maps[0] * 0, maps[0]], -1))
    from ultrasound_diffusers.image_processor import to_label_array

    with pytest.raises(ValueError, match="colour"):
        to_label_array(rgb)


def test_png_folders(pipe, tmp_path):
    import csv

    out = tmp_path / "run"
    ds = _run(pipe, out, labels="phantoms:echo:2", save_png=True)
    images = sorted((out / "png" / "images").glob("*.png"))
    assert [p.name for p in images] == ["000000-000.png", "000000-001.png", "000001-000.png", "000001-001.png"]
    from PIL import Image

    with Image.open(images[3]) as im:
        np.testing.assert_array_equal(np.asarray(im), np.asarray(ds[3]["image"]))
    with Image.open(out / "png" / "labels" / images[3].name) as im:
        np.testing.assert_array_equal(np.asarray(im), np.asarray(ds[3]["label"]))
    with open(out / "png" / "images" / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["seed"]) for r in rows] == ds["seed"]


def test_push_to_hub_uploads_card_then_dataset(pipe, tmp_path, monkeypatch):
    import datasets

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, repo_type, private))
            return type("Url", (), {"repo_id": repo_id})()

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, repo_type=None, commit_message=None):
            calls.append(("upload_file", path_in_repo, repo_id, repo_type, path_or_fileobj.decode()))

    def fake_push(self, repo_id, **kwargs):
        calls.append(("push_to_hub", repo_id, self.num_rows, kwargs.get("private")))

    monkeypatch.setattr(generation, "_hub_api", lambda token=None: FakeApi())
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_push)
    _run(pipe, tmp_path / "run", labels="phantoms:echo:2", push_to_hub="me/synthetic-echo", hub_private=True)
    assert [c[0] for c in calls] == ["create_repo", "upload_file", "push_to_hub"]
    assert calls[0][1:] == ("me/synthetic-echo", "dataset", True)
    card = calls[1][4]
    assert calls[1][1] == "README.md" and "# synthetic-echo" in card and "| inference steps | 2 |" in card
    assert card == (tmp_path / "run" / "README.md").read_text()
    assert calls[2][1:] == ("me/synthetic-echo", 4, True)


def _cli_args(saved, out, *extra):
    return ["generate", "--pipeline", str(saved), "--labels", "phantoms:echo:4", "--output_dir", str(out),
            "--images_per_label", "2", "--num_inference_steps", str(STEPS), "--batch_size", "2", "--chunk_size", "2",
            "--seed", "5", "--no_progress", *extra]


def _env():
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_two_processes_equal_one_process(saved, tmp_path):
    import datasets

    from ultrasound_diffusers.cli import main

    assert main(_cli_args(saved, tmp_path / "one")) == 0
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--main_process_port",
               str(free_tcp_port()), "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ultrasound_diffusers",
               *_cli_args(saved, tmp_path / "two", "--keep_chunks")]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    markers = [json.loads(p.read_text()) for p in (tmp_path / "two" / "chunks").glob("chunk-*/chunk.json")]
    assert sorted(m["process_index"] for m in markers) == [0, 0, 1, 1]  # both processes did their share
    one = datasets.load_from_disk(str(tmp_path / "one" / "dataset"))
    two = datasets.load_from_disk(str(tmp_path / "two" / "dataset"))
    assert_same_dataset(one, two)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_dataset(saved, tmp_path):
    import datasets

    from ultrasound_diffusers.cli import main

    args = ["--num_inference_steps", "8", "--chunk_size", "1", "--batch_size", "1"]
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "ultrasound_diffusers", *_cli_args(saved, out), *args],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "chunks").glob("chunk-*/chunk.json")):
        if process.poll() is not None:
            pytest.fail(f"generate exited early: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    process.kill()  # SIGKILL: no cleanup of any kind
    process.wait()
    process.stderr.close()
    manifest = json.loads((out / "generation.json").read_text())
    finished = list((out / "chunks").glob("chunk-*/chunk.json"))
    assert manifest["status"] == "running" and 1 <= len(finished) < 8  # killed in the middle

    assert main(_cli_args(saved, out) + args) == 0
    assert main(_cli_args(saved, tmp_path / "whole") + args) == 0
    resumed = datasets.load_from_disk(str(out / "dataset"))
    whole = datasets.load_from_disk(str(tmp_path / "whole" / "dataset"))
    assert_same_dataset(whole, resumed)
