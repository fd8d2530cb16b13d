"""Never lose a user's data, never report garbage as success (issue 22; issue 16's bad-input table).

Every case runs the real entry point (the CLI in-process, the pipelines, generate_dataset, the training script's
argument checks) on a bad or hostile input and asserts (a) a clear error naming the argument and (b) that no
file of the user's changed. Each case failed before its fix (the folder was deleted, NaN images were written,
a traceback escaped, ...).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from _pipeline_fixtures import echo_label_map
from ultrasound_diffusers.cli import main as cli
from ultrasound_diffusers.utils import io as uio



def snapshot(folder: Path) -> dict:
    """Path -> SHA-256 of every file below ``folder`` (the user's data we must not touch)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work\n")
    (path / "png").mkdir()
    (path / "png" / "figure.png").write_bytes(b"not ours")
    (path / "README.md").write_text("my notes\n")
    return path




@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "phantoms"
    assert cli(["phantoms", "--num_images", "4", "--size", "16", "--output_dir", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------------- writers
WRITER_CASES = {
    "phantoms --output_dir": lambda w, ph: ["phantoms", "--num_images", "2", "--size", "16", "--output_dir", str(w)],
    "phantoms --png_dir": lambda w, ph: ["phantoms", "--num_images", "2", "--size", "16", "--png_dir", str(w)],
    "prepare lung --output_dir": lambda w, ph: ["prepare", "lung", "--input", str(ph / "maps.npy"), "--output_dir", str(w)],
    "evaluate --out": lambda w, ph: ["evaluate", "--real", str(ph), "--generated", str(ph), "--out", str(w),
                                     "--metrics", "depth", "--no_progress"],
}


@pytest.mark.parametrize("case", sorted(WRITER_CASES))
def test_writers_refuse_a_folder_they_did_not_write(case, tmp_path, phantom_dir, capsys):
    np.save(phantom_dir / "maps.npy", np.random.default_rng(0).random((3, 40, 40)).astype(np.float32))
    target = user_folder(tmp_path / "w")
    before = snapshot(target)
    assert cli(WRITER_CASES[case](target, phantom_dir)) == 2
    err = capsys.readouterr().err
    assert "not empty and was not written by" in err and "--overwrite" in err
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporaries left beside it


def test_a_writer_replaces_its_own_output_and_overwrite_replaces_a_foreign_one(tmp_path):
    out = tmp_path / "ph"
    args = ["phantoms", "--num_images", "2", "--size", "16", "--output_dir", str(out)]
    assert cli(args) == 0 and uio.read_marker(out)["kind"] == "phantoms"
    assert cli(args) == 0  # an earlier output of the same command is replaced
    other = user_folder(tmp_path / "other")
    assert cli(args[:-1] + [str(other), "--overwrite"]) == 0
    assert not (other / "thesis.tex").exists() and (other / "dataset_info.json").is_file()


def test_output_folder_holding_an_input_or_the_working_directory_is_never_replaced(tmp_path, phantom_dir,
                                                                                      monkeypatch, capsys):
    study = tmp_path / "study"
    (study / "raw").mkdir(parents=True)
    (study / "raw" / "scan.dcm").write_bytes(b"DICM" * 10)
    before = snapshot(study)
    code = cli(["prepare", "dicom", "--input", str(study / "raw"), "--output_dir", str(study), "--overwrite"])
    assert code == 2 and "contains the input" in capsys.readouterr().err
    assert snapshot(study) == before
    # evaluate --out over the folder that holds --real
    real_parent = tmp_path / "data"
    real_parent.mkdir()
    real = real_parent / "real"
    import shutil

    shutil.copytree(phantom_dir, real)
    before = snapshot(real_parent)
    code = cli(["evaluate", "--real", str(real), "--generated", str(real), "--out", str(real_parent),
                "--metrics", "depth", "--overwrite", "--no_progress"])
    assert code == 2 and "contains the input" in capsys.readouterr().err
    assert snapshot(real_parent) == before
    # the working directory (and its parents), even with --overwrite
    work = user_folder(tmp_path / "cwd")
    monkeypatch.chdir(work)
    before = snapshot(work)
    for target in (".", str(tmp_path)):
        code = cli(["phantoms", "--num_images", "2", "--size", "16", "--output_dir", target, "--overwrite"])
        assert code == 2 and "working directory" in capsys.readouterr().err
    assert snapshot(work) == before


def test_generate_never_writes_into_a_foreign_folder(pipe, tmp_path):
    from ultrasound_diffusers.generation import generate_dataset

    target = user_folder(tmp_path / "w")
    before = snapshot(target)
    with pytest.raises(ValueError, match="not a generation run|was not written by"):
        generate_dataset(pipe, "phantoms:echo:2", target, num_inference_steps=2, progress=False, save_png=True)
    assert snapshot(target) == before
    # with overwrite=True the one output rule (utils/io.check_output_dir, tests/test_output_rule.py) replaces it


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max of 4194304: never a live process
    (tmp_path / f".dataset.tmp-{dead}-0123abcd").mkdir()
    (tmp_path / f".generation.json.{dead}.abcd_123.tmp").write_text("x")
    (tmp_path / ".dataset.tmp-89abcdef").mkdir()  # version 0.1.0 naming, no pid
    (tmp_path / f".dataset.tmp-{os.getpid()}-0123abcd").mkdir()  # a live process: kept
    (tmp_path / "dataset").mkdir()
    removed = uio.remove_stale_temporaries(tmp_path)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".dataset.tmp-{os.getpid()}-0123abcd", "dataset"]


def test_generate_cleans_up_what_a_killed_merge_left(pipe, tmp_path):
    from ultrasound_diffusers.generation import generate_dataset

    out = tmp_path / "run"
    generate_dataset(pipe, "phantoms:echo:2", out, num_inference_steps=2, progress=False)
    dead = 2**22 + 777
    (out / f".dataset.tmp-{dead}-0123abcd").mkdir()
    (out / f".generation.json.{dead}.zzzzzzzz.tmp").write_text("{}")
    generate_dataset(pipe, "phantoms:echo:2", out, num_inference_steps=2, progress=False)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and "tmp" in p.name]


# ---------------------------------------------------------------------------------------------------- NaN and ranges
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(guidance_scale=float("inf")), "guidance_scale"),
        (dict(guidance_scale=True), "guidance_scale"),
        (dict(eta=float("nan")), "eta"),
        (dict(eta=float("inf")), "eta"),
        (dict(height=100000), "height"),
        (dict(height=16.5), "height"),
    ],
)
def test_pipeline_refuses_non_finite_and_out_of_range_settings(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(echo_label_map(16), num_inference_steps=2, output_type="np", **kwargs)


def test_pipeline_refuses_non_finite_soft_label_maps(pipe):
    soft = torch.full((1, 5, 16, 16), 0.2)
    soft[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        pipe(soft, num_inference_steps=2, output_type="np")


def test_memory_bound_is_checked_before_the_loop(pipe):
    from ultrasound_diffusers.utils.memory import check_image_size

    with pytest.raises(ValueError, match="GiB"):
        check_image_size(8000, 8000, bytes_per_pixel=1e4, batch=4, argument="height", available=2**30)
    assert check_image_size(64, 64, bytes_per_pixel=100, available=2**30) == 64 * 64 * 100


def test_generate_refuses_nan_guidance_and_never_writes_nan_images(pipe, tmp_path, monkeypatch):
    from ultrasound_diffusers import generation

    with pytest.raises(ValueError, match="guidance_scale"):
        generation.generate_dataset(pipe, "phantoms:echo:2", tmp_path / "a", guidance_scale=float("nan"),
                                    num_inference_steps=2, progress=False)
    assert not (tmp_path / "a").exists()

    class NaNPipeline:  # a diverged model: the wrapper returns NaN images
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            out = self.inner(*args, **kwargs)
            out.images[:] = np.nan
            return out

    with pytest.raises(ValueError, match="NaN or infinite images"):
        generation.generate_dataset(NaNPipeline(pipe), "phantoms:echo:2", tmp_path / "b", num_inference_steps=2,
                                    progress=False)
    assert not (tmp_path / "b" / "dataset").exists()


def test_cli_generate_with_nan_guidance_exits_2(saved, tmp_path, capsys):
    code = cli(["generate", "--pipeline", str(saved), "--labels", "phantoms:echo:2", "--output_dir",
                str(tmp_path / "out"), "--guidance_scale", "nan", "--num_inference_steps", "2", "--no_progress"])
    assert code == 2 and "guidance_scale" in capsys.readouterr().err
    assert not (tmp_path / "out" / "dataset").exists()


def test_phantoms_size_is_bounded_up_front(tmp_path, capsys):
    assert cli(["phantoms", "--num_images", "2", "--size", "100000", "--output_dir", str(tmp_path / "p")]) == 2
    assert "16384" in capsys.readouterr().err
    assert cli(["phantoms", "--num_images", "64", "--size", "12000", "--output_dir", str(tmp_path / "p")]) == 2
    assert "GiB" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------------------------- label inputs
def test_demo_refuses_a_colour_coded_label_map(tmp_path, capsys):
    from PIL import Image

    colour = np.zeros((32, 32, 3), np.uint8)
    colour[8:24, 8:24] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "map.png")
    code = cli(["demo", "--labels", str(tmp_path / "map.png"), "--output_dir", str(tmp_path / "demo"),
                "--num_inference_steps", "2"])
    assert code == 2
    assert "colour RGB image whose channels differ" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_generate_names_a_label_file_that_is_not_an_image(saved, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.png").write_bytes(b"this is not a png")
    code = cli(["generate", "--pipeline", str(saved), "--labels", str(labels), "--output_dir",
                str(tmp_path / "out"), "--num_inference_steps", "2", "--no_progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "not a readable image" in err and "Traceback" not in err


def test_offline_hub_dataset_gives_one_line(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code = cli(["generate", "--pipeline", str(saved), "--labels", "org/not-cached", "--output_dir",
                str(tmp_path / "out"), "--num_inference_steps", "2", "--no_progress"])
    assert code == 2
    assert "not in the local cache" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def ts():
    import sys

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "training"))
    try:
        return importlib.import_module("train_semantic")
    finally:
        sys.path.remove(str(root / "training"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--learning_rate", "nan"], "--learning_rate"),
        (["--learning_rate", "-1"], "--learning_rate"),
        (["--ema_decay", "1.5"], "--ema_decay"),
        (["--guidance_scale", "inf"], "--guidance_scale"),
        (["--resume_from_checkpoint", "nowhere/checkpoint-3"], "not a checkpoint-N folder"),
    ],
)
def test_training_reports_bad_flags_in_one_line(ts, flags, message, tmp_path, capsys):
    assert ts.main(flags + ["--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_semantic.py: error: ") and message in err and "Traceback" not in err


def test_training_refuses_a_bad_output_dir_before_any_work(ts, tmp_path, capsys):
    file = tmp_path / "model.bin"
    file.write_text("x")
    assert ts.main(["--output_dir", str(file)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    foreign = user_folder(tmp_path / "mine")
    before = snapshot(foreign)
    assert ts.main(["--output_dir", str(foreign)]) == 2
    assert re.search("not from a training run|is not empty", capsys.readouterr().err)
    assert snapshot(foreign) == before


def test_resume_latest_skips_empty_and_partial_checkpoints(ts, tmp_path):
    run = tmp_path / "run"
    good = run / "checkpoint-100"
    (good / "unet").mkdir(parents=True)
    (good / "optimizer.bin").write_bytes(b"x")
    (good / "unet" / "config.json").write_text("{}")
    (good / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (run / "checkpoint-200").mkdir()  # empty
    partial = run / "checkpoint-300"
    (partial / "unet").mkdir(parents=True)
    (partial / "unet" / "config.json").write_text("{}")  # weights but no optimizer state
    assert [step for step, _ in ts.list_checkpoints(str(run))] == [100]


# ---------------------------------------------------------------------------------------------------- the CLI entry point
def test_importing_main_runs_nothing(monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["x", "phantoms", "--num_images", "1"])
    sys.modules.pop("ultrasound_diffusers.__main__", None)
    module = importlib.import_module("ultrasound_diffusers.__main__")  # no SystemExit, no work
    assert callable(module.console_main)
