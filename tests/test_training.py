"""Tests of training/train_semantic.py: data checks and flags in-process, tiny end-to-end runs as subprocesses.

The script's data helpers live in :mod:`ultrasound_diffusers.data.paired` and its training helpers in
:mod:`ultrasound_diffusers.training_utils` (tested in tests/test_data_paired.py and tests/test_training_utils.py);
the tests here check them as the script uses them (errors naming its flags).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _net import free_tcp_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_semantic.py"

# A model small enough for 16-32 px runs in seconds.
TINY_MODEL = dict(
    model_channels=16,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[2],
    num_head_channels=16,
    norm_num_groups=8,
    spade_hidden_channels=16,
)


def load_script():
    spec = importlib.util.spec_from_file_location("train_semantic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ts = load_script()


def check_dataset(ds, image_column, label_column, num_classes, **kwargs):
    """The script's data check: the package's check with errors naming the script's flags."""
    from ultrasound_diffusers.data.paired import check_paired_dataset

    return check_paired_dataset(ds, image_column, label_column, num_classes, arguments=ts.DATA_FLAGS, **kwargs)


# ---------------------------------------------------------------------------------------------------- data
def _label_map(rng, height, width, num_classes):
    lab = np.zeros((height, width), np.uint8)
    r = int(rng.integers(3, height // 2))
    lab[2 : 2 + r, 3 : 3 + r] = 1
    lab[height - height // 3 :, :] = num_classes - 1
    return lab


def make_imagefolder(root: Path, n=5, size=(20, 24), num_classes=4, bad=None):
    """imagefolder with metadata.jsonl pairing images/ and labels/; ``bad`` = (index, kind) plants a fault."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            lab = _label_map(rng, *size, num_classes)
            img = (rng.random(size) * 255).astype(np.uint8)
            if bad == (i, "range"):
                lab[0, 0] = num_classes + 2
            if bad == (i, "size"):
                lab = lab[:-2]
            if bad == (i, "rgb"):  # a colour-coded map: channels differ
                lab = np.stack([lab, lab, (lab + 1) % 4], axis=-1).astype(np.uint8)
            if bad == (i, "grey-rgb"):  # a label map saved as RGB with equal channels: accepted everywhere
                lab = np.stack([lab] * 3, axis=-1)
            Image.fromarray(img).save(root / "images" / f"im{i}.png")
            Image.fromarray(lab).save(root / "labels" / f"lab{i}.png")
            f.write(json.dumps({"image_file_name": f"images/im{i}.png", "label_file_name": f"labels/lab{i}.png"}) + "\n")
    return root


def load_imagefolder(root):
    import datasets

    return datasets.load_dataset("imagefolder", data_dir=str(root), split="train")


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory):
    """12 paired 16x16 images / 3-class label maps saved with save_to_disk, and a tiny model config file."""
    import datasets
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    images, labels = [], []
    for _ in range(12):
        lab = _label_map(rng, 16, 16, 3)
        images.append(Image.fromarray((rng.random((16, 16)) * 60 + lab * 70).astype(np.uint8)))
        labels.append(Image.fromarray(lab))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(root / "ds"))
    (root / "tiny.json").write_text(json.dumps(TINY_MODEL))
    return root


def test_check_dataset_infers_classes_and_accepts_good_data(tmp_path):
    ds = load_imagefolder(make_imagefolder(tmp_path / "ok"))
    assert set(ds.column_names) >= {"image", "label"}
    assert check_dataset(ds, "image", "label", None, show_progress=False) == 4
    assert check_dataset(ds, "image", "label", 6, show_progress=False) == 6
    assert check_dataset(ds, "image", None, None, show_progress=False) == 0


@pytest.mark.parametrize(
    "kind, message",
    [
        ("range", r"row 3 \(.*lab3\.png\).*outside \[0, 4\)"),
        ("size", r"row 3 \(.*lab3\.png\).*same size"),
        ("rgb", r"row 3 \(.*lab3\.png\).*colour RGB image whose channels differ"),
    ],
)
def test_check_dataset_names_the_bad_file(tmp_path, kind, message):
    ds = load_imagefolder(make_imagefolder(tmp_path / kind, bad=(3, kind)))
    with pytest.raises(ValueError, match=message):
        check_dataset(ds, "image", "label", 4, show_progress=False)


def test_check_dataset_accepts_a_grey_label_map_saved_as_rgb(tmp_path):
    ds = load_imagefolder(make_imagefolder(tmp_path / "grey", bad=(3, "grey-rgb")))
    assert check_dataset(ds, "image", "label", 4, show_progress=False) == 4


def test_check_dataset_wrong_columns(tmp_path):
    ds = load_imagefolder(make_imagefolder(tmp_path / "cols", n=2))
    with pytest.raises(ValueError, match=r"--label_column 'mask' is not a column.*'image'.*'label'"):
        check_dataset(ds, "image", "mask", None, show_progress=False)
    with pytest.raises(ValueError, match="--image_column 'img'"):
        check_dataset(ds, "img", "label", None, show_progress=False)


def test_preprocessing_resizes_scales_and_converts(tmp_path):
    from PIL import Image

    from ultrasound_diffusers.data.paired import preprocess_image, preprocess_labels

    rgb = Image.fromarray(np.full((20, 24, 3), [255, 0, 0], np.uint8))
    x = preprocess_image(rgb, (10, 12), channels=1)
    assert x.shape == (1, 10, 12)
    assert torch.allclose(x, torch.full_like(x, 0.299 * 2 - 1), atol=2e-3)  # luminance of pure red
    x3 = preprocess_image(Image.fromarray(np.zeros((8, 8), np.uint8)), (8, 8), channels=3)
    assert x3.shape == (3, 8, 8) and float(x3.max()) == -1.0
    x16 = preprocess_image(np.full((4, 4), 65535, np.uint16), (4, 4), channels=1)
    assert float(x16.min()) == 1.0
    lab = np.zeros((20, 24), np.uint8)
    lab[:, 12:] = 3
    y = preprocess_labels(Image.fromarray(lab), (10, 12))
    assert y.dtype == torch.int64 and y.shape == (10, 12)
    assert set(y.unique().tolist()) == {0, 3} and bool((y[:, 6:] == 3).all()) and bool((y[:, :6] == 0).all())


def test_arguments_and_model_config(tmp_path, capsys):
    assert ts.parse_resolution("64") == (64, 64)
    assert ts.parse_resolution("8,256") == (8, 256)
    with pytest.raises(SystemExit):
        ts.parse_args(["--resolution", "8,a"])
    assert "--resolution must be an int or H,W" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--drop_rate"):
        ts.parse_args(["--drop_rate", "1.5"])
    with pytest.raises(ValueError, match="--bmap_min"):
        ts.parse_args(["--bmap_min", "0"])
    assert ts.load_model_config("tiny-64")["model_channels"] == 32
    path = tmp_path / "m.json"
    path.write_text(json.dumps(TINY_MODEL))
    assert ts.load_model_config(str(path))["model_channels"] == 16
    path.write_text(json.dumps({"model_channel": 3}))
    with pytest.raises(ValueError, match="model_channel"):
        ts.load_model_config(str(path))
    with pytest.raises(ValueError, match="preset"):
        ts.load_model_config("no-such-model")
    for config_file in sorted((ROOT / "training" / "configs").glob("*.json")):
        config = ts.load_model_config(config_file.stem)
        assert "model_channels" in config, config_file


def test_model_and_scheduler_follow_the_flags(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(TINY_MODEL))
    args = ts.parse_args(["--model_config", str(path), "--resolution", "8,32", "--unconditional", "--no-learn_sigma",
                          "--bmap_min", "1.0", "--probe_geometry", "linear", "--num_train_timesteps", "30"])
    unet = ts.build_model(args, num_classes=5)
    assert unet.config.num_classes == 0 and list(unet.config.sample_size) == [8, 32] and not unet.config.learn_sigma
    sched = ts.build_scheduler(args, learn_sigma=False)
    assert sched.config.variance_type == "fixed_small" and sched.config.bmap_min == 1.0
    assert sched.config.probe_geometry == "linear" and sched.config.num_train_timesteps == 30


# ---------------------------------------------------------------------------------------------------- end to end
def _env():
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def script_command(launcher="python", processes=1):
    """(command prefix, environment) that runs the training script with ``python`` or ``accelerate launch``."""
    if launcher == "python":
        cmd = [sys.executable, str(SCRIPT)]
        env = _env()
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_processes", str(processes)]
        env = _env()
        if processes > 1:
            cmd += ["--multi_gpu", "--main_process_port", str(free_tcp_port())]
            env["ACCELERATE_USE_CPU"] = "true"
        cmd += [str(SCRIPT)]
    return cmd, env


#: Seconds a tiny run may take; raise it on a machine whose cores are busy (TRAINING_TEST_TIMEOUT=1200).
RUN_TIMEOUT = int(os.environ.get("TRAINING_TEST_TIMEOUT", "300"))


def run_script(args, launcher="python", processes=1, expect_ok=True, timeout=None, env=None):
    timeout = RUN_TIMEOUT if timeout is None else timeout
    cmd, base_env = script_command(launcher, processes)
    env = {**base_env, **(env or {})}
    result = subprocess.run(cmd + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if expect_ok and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def tiny_args(data_root, output_dir, *extra):
    return [str(a) for a in [
        "--dataset_name", data_root / "ds", "--model_config", data_root / "tiny.json", "--resolution", "16",
        "--num_train_timesteps", "50", "--train_batch_size", "4", "--output_dir", output_dir, "--seed", "7",
        *extra,
    ]]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_accelerate_run_checkpoints_resumes_exactly_and_loads(saved_dataset, tmp_path):
    common = ["--max_train_steps", "5", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1", "--use_ema",
              "--ema_decay", "0.9", "--learn_sigma", "--random_flip", "--drop_rate", "0.3",
              "--validation_steps", "5", "--validation_inference_steps", "2", "--num_validation_images", "2"]
    full = tmp_path / "full"
    run_script(tiny_args(saved_dataset, full, *common, "--license", "cc-by-nc-sa-4.0"), launcher="accelerate")

    # the pipeline folder, model card, samples, logs and the one kept checkpoint
    for name in ("model_index.json", "unet", "scheduler", "README.md", "training_args.json",
                 "samples/step-0000005.png", "checkpoint-4/unet_ema", "checkpoint-4/optimizer.bin"):
        assert (full / name).exists(), name
    assert not (full / "checkpoint-2").exists()  # --checkpoints_total_limit 1
    from PIL import Image

    grid = np.asarray(Image.open(full / "samples" / "step-0000005.png"))
    assert grid.shape == (2 * 16 + 2, 2 * 16 + 2, 3)  # 2 rows of label map | sample
    assert not np.array_equal(grid[:16, :16, 0], grid[:16, :16, 1])  # the label map is in colour
    assert list((full / "logs").rglob("events.out.tfevents*"))
    assert "train_semantic.py" in (full / "README.md").read_text()
    from ultrasound_diffusers.hub_utils import read_card_metadata

    assert read_card_metadata(full / "README.md")["license"] == "cc-by-nc-sa-4.0"  # --license reaches the card

    # kill after step 4: a new run holding only checkpoint-4 resumes and ends exactly where the full run ended
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    run_script(tiny_args(saved_dataset, resumed, *common, "--resume_from_checkpoint", "latest"), launcher="python")
    final_full, final_resumed = _weights(full / "unet"), _weights(resumed / "unet")
    assert final_full.keys() == final_resumed.keys()
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
    # the EMA weights were saved and differ from the raw ones at step 4
    raw4, ema4 = _weights(full / "checkpoint-4" / "unet"), _weights(full / "checkpoint-4" / "unet_ema")
    assert any(not torch.equal(raw4[k], ema4[k]) for k in raw4)

    # the folder loads with the package's DiffusionPipeline and generates
    from ultrasound_diffusers.pipelines import DiffusionPipeline, SemanticUltrasoundPipeline

    pipe = DiffusionPipeline.from_pretrained(str(full))
    assert isinstance(pipe, SemanticUltrasoundPipeline)
    assert pipe.unet.config.num_classes == 3 and pipe.scheduler.config.variance_type == "learned_range"
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 8:] = 2
    out = pipe(segmap=labels, num_inference_steps=2, guidance_scale=1.5, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert np.asarray(out.images).shape[:3] == (1, 16, 16) and np.isfinite(np.asarray(out.images)).all()


@pytest.mark.slow
def test_killed_run_resumes_in_place_to_the_same_weights(saved_dataset, tmp_path):
    """SIGKILL a run after its first checkpoint; the same command with --resume_from_checkpoint latest in the
    same folder ends with the weights of an uninterrupted run."""
    import signal
    import time

    common = ["--max_train_steps", "40", "--checkpointing_steps", "5", "--checkpoints_total_limit", "1",
              "--use_ema", "--ema_decay", "0.9", "--learn_sigma", "--random_flip", "--drop_rate", "0.3",
              "--validation_steps", "0", "--logger", "none"]
    full = tmp_path / "full"
    run_script(tiny_args(saved_dataset, full, *common))

    killed = tmp_path / "killed"
    cmd, env = script_command()
    proc = subprocess.Popen(cmd + tiny_args(saved_dataset, killed, *common), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and not list(killed.glob("checkpoint-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.15)  # into the next steps, possibly into the next checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model_index.json").exists()
    assert list(killed.glob("checkpoint-*")), "a complete checkpoint survives the kill"

    result = run_script(tiny_args(saved_dataset, killed, *common, "--resume_from_checkpoint", "latest"))
    assert "resum" in (result.stderr + result.stdout).lower()
    final_full, final_resumed = _weights(full / "unet"), _weights(killed / "unet")
    assert final_full.keys() == final_resumed.keys()
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
    assert [p.name for p in killed.glob("checkpoint-*")] == ["checkpoint-40"]


@pytest.mark.slow
def test_imagefolder_with_metadata_end_to_end(saved_dataset, tmp_path):
    folder = make_imagefolder(tmp_path / "folder", n=4, size=(20, 24), num_classes=4)
    out = tmp_path / "out"
    result = run_script(["--train_data_dir", folder, "--model_config", saved_dataset / "tiny.json",
                         "--resolution", "16", "--num_train_timesteps", "20", "--train_batch_size", "2",
                         "--max_train_steps", "2", "--checkpointing_steps", "0", "--validation_steps", "0",
                         "--logger", "none", "--output_dir", out])
    assert "dataset: 4 examples, 4 classes" in result.stderr + result.stdout
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["num_classes"] == 4 and config["sample_size"] == 16
    assert str(folder) in (out / "README.md").read_text()


@pytest.mark.slow
def test_two_cpu_processes_on_the_default_phantoms(saved_dataset, tmp_path):
    out = tmp_path / "ddp"
    result = run_script(
        ["--model_config", saved_dataset / "tiny.json", "--resolution", "32", "--phantoms", "8",
         "--num_train_timesteps", "50", "--train_batch_size", "2", "--max_train_steps", "2",
         "--checkpointing_steps", "2", "--validation_steps", "0", "--logger", "none", "--output_dir", out],
        launcher="accelerate", processes=2,
    )
    log = result.stderr + result.stdout
    assert "processes: 2" in log and "dataset: 8 examples, 5 classes" in log
    assert (out / "checkpoint-2" / "random_states_1.pkl").exists()  # the second process saved its RNG state
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["num_classes"] == 5 and config["sample_size"] == 32
    assert json.loads((out / "training_args.json").read_text())["phantoms"] == 8


@pytest.mark.slow
def test_unconditional_rectangular_run(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(2)
    images = [Image.fromarray((rng.random((8, 32)) * 255).astype(np.uint8)) for _ in range(6)]
    datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()})).save_to_disk(
        str(tmp_path / "lung"))
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_MODEL))
    out = tmp_path / "out"
    run_script(["--dataset_name", tmp_path / "lung", "--unconditional", "--model_config", tmp_path / "tiny.json",
                "--resolution", "8,32", "--probe_geometry", "linear", "--num_train_timesteps", "30",
                "--max_train_steps", "2", "--train_batch_size", "2", "--validation_steps", "0",
                "--checkpointing_steps", "0", "--logger", "none", "--output_dir", out])
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["num_classes"] == 0 and list(config["sample_size"]) == [8, 32]
    from ultrasound_diffusers.pipelines import DiffusionPipeline, UltrasoundPipeline

    pipe = DiffusionPipeline.from_pretrained(str(out))
    assert isinstance(pipe, UltrasoundPipeline)
    images = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert np.asarray(images).shape[:3] == (1, 8, 32)


@pytest.mark.slow
def test_wandb_logs_the_validation_grid_as_an_image(saved_dataset, tmp_path):
    """--logger wandb (offline): the sample grid is logged as a wandb.Image, the same picture as samples/."""
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb) so --logger wandb is not tested")
    from PIL import Image

    wandb_dir = tmp_path / "wandb"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_CONFIG_DIR": str(wandb_dir / "config"),
           "WANDB_CACHE_DIR": str(wandb_dir / "cache"), "WANDB_DATA_DIR": str(wandb_dir / "data"),
           "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    out = tmp_path / "out"
    run_script(tiny_args(saved_dataset, out, "--logger", "wandb", "--max_train_steps", "2", "--validation_steps", "2",
                         "--validation_inference_steps", "2", "--num_validation_images", "2",
                         "--checkpointing_steps", "0"), env=env)
    runs = sorted(wandb_dir.rglob("offline-run-*"))
    assert len(runs) == 1, runs
    media = sorted(runs[0].rglob("media/images/validation_*.png"))
    assert len(media) == 1, sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file())
    logged = np.asarray(Image.open(media[0]).convert("RGB"))
    saved = np.asarray(Image.open(out / "samples" / "step-0000002.png").convert("RGB"))
    assert logged.shape == (2 * 16 + 2, 2 * 16 + 2, 3) and np.array_equal(logged, saved)
    assert not list((out / "logs").rglob("events.out.tfevents*"))  # no tensorboard files with --logger wandb


@pytest.mark.slow
def test_mask_ablated_training_accepts_label_maps_with_missing_classes(saved_dataset, tmp_path):
    """--class_drop_rate: the flag reaches the training inputs, and the pipeline of a few steps generates from
    label maps that lack classes."""
    common = ["--max_train_steps", "3", "--checkpointing_steps", "0", "--validation_steps", "0", "--logger", "none"]
    out, plain = tmp_path / "ablated", tmp_path / "plain"
    run_script(tiny_args(saved_dataset, out, "--class_drop_rate", "0.5", *common))
    run_script(tiny_args(saved_dataset, plain, *common))
    assert json.loads((out / "training_args.json").read_text())["class_drop_rate"] == 0.5
    ablated_weights, plain_weights = _weights(out / "unet"), _weights(plain / "unet")
    assert any(not torch.equal(ablated_weights[k], plain_weights[k]) for k in plain_weights)  # other label maps

    from ultrasound_diffusers.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(out))
    assert pipe.unet.config.num_classes == 3  # no extra class: dropped classes became class 0
    full = torch.zeros(1, 16, 16, dtype=torch.long)
    full[:, 2:7, 3:8], full[:, 11:] = 1, 2
    maps = {"full": full, "without class 1": torch.where(full == 1, 0, full),
            "background only": torch.zeros_like(full)}
    images = {}
    for name, segmap in maps.items():
        result = pipe(segmap=segmap, num_inference_steps=2, guidance_scale=1.5, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        images[name] = np.asarray(result)
        assert images[name].shape[:3] == (1, 16, 16) and np.isfinite(images[name]).all(), name
    assert not np.array_equal(images["full"], images["without class 1"])  # same noise, other conditioning


def test_license_flags_follow_the_card_rule():
    assert ts.parse_args(["--license", "apache-2.0"]).license == "apache-2.0"
    args = ts.parse_args(["--license", "other", "--license_name", "my-terms-1.0", "--license_link", "LICENSE.md"])
    assert (args.license_name, args.license_link) == ("my-terms-1.0", "LICENSE.md")
    assert ts.parse_args([]).license is None  # the card then says other / unknown
    with pytest.raises(ValueError, match="--license: `license_name` must be a lowercase id"):
        ts.parse_args(["--license", "other", "--license_name", "My Terms"])
    with pytest.raises(ValueError, match="go with --license other"):
        ts.parse_args(["--license", "mit", "--license_name", "x"])
    for bad in ("not-a-license!", "Apache 2.0"):  # refused before training, not written into the card
        with pytest.raises(ValueError, match="--license: `license` must be a Hub license id"):
            ts.parse_args(["--license", bad])


def test_class_drop_rate_flag_is_checked():
    assert ts.parse_args(["--class_drop_rate", "0.3"]).class_drop_rate == 0.3
    assert ts.parse_args([]).class_drop_rate == 0.0
    for bad in ("-0.1", "1.5", "nan"):
        with pytest.raises(ValueError, match=r"--class_drop_rate must be a probability in \[0, 1\]"):
            ts.parse_args(["--class_drop_rate", bad])


def test_validation_split_and_phantoms(tmp_path):
    import datasets

    ok = load_imagefolder(make_imagefolder(tmp_path / "train", n=3))
    bad = load_imagefolder(make_imagefolder(tmp_path / "val", n=2, bad=(1, "range")))
    datasets.DatasetDict({"train": ok, "validation": ok.select([0, 1])}).save_to_disk(str(tmp_path / "good"))
    datasets.DatasetDict({"train": ok, "validation": bad}).save_to_disk(str(tmp_path / "bad"))
    args = ts.parse_args(["--dataset_name", str(tmp_path / "good"), "--num_validation_images", "1"])
    train, val, num_classes, _ = ts.prepare_training_data(args, show_progress=False)
    assert len(train) == 3 and len(val) == 1 and num_classes == 4
    args = ts.parse_args(["--dataset_name", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match=r"validation split: .*row 1"):
        ts.prepare_training_data(args, show_progress=False)
    # phantoms: validation examples are new ones, not training examples
    args = ts.parse_args(["--dataset_name", "phantoms:echo", "--phantoms", "3", "--resolution", "16",
                          "--num_validation_images", "2"])
    train, val, num_classes, _ = ts.prepare_training_data(args, show_progress=False)
    assert len(train) == 3 and len(val) == 2 and num_classes == 5
    train_images = {np.asarray(im).tobytes() for im in train["image"]}
    assert not any(np.asarray(im).tobytes() in train_images for im in val["image"])


def test_bad_labels_stop_the_script_before_training(saved_dataset, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match=r"row 0.*outside \[0, 2\) \(--num_classes 2\)"):
        ts.train(tiny_args(saved_dataset, out, "--num_classes", "2", "--max_train_steps", "1"))
    assert not out.exists()  # nothing was written: the check runs before the run starts
    with pytest.raises(ValueError, match="--label_column 'mask'"):
        ts.train(tiny_args(saved_dataset, out, "--label_column", "mask"))


def test_training_args_keep_every_stage(tmp_path):
    """Issue 32: a fine-tune resumed from the first stage's checkpoint into the same folder used to overwrite the
    first stage's training_args.json; each earlier stage is kept under "earlier_stages", oldest first."""
    saved = tmp_path / "training_args.json"
    stage1 = {"learning_rate": 2e-4, "max_train_steps": 2400, "noise_offset": 0.0, "resume_from_checkpoint": None,
              "resolution": (64, 64), "hub_token": "secret"}
    first = ts.stage_arguments(stage1, saved)
    assert first == {"learning_rate": 2e-4, "max_train_steps": 2400, "noise_offset": 0.0, "resume_from_checkpoint": None,
                     "resolution": [64, 64]}  # tuples as lists, no Hub token
    saved.write_text(json.dumps(first))
    stage2 = dict(stage1, learning_rate=5e-5, max_train_steps=3200, noise_offset=0.1, resume_from_checkpoint="latest")
    second = ts.stage_arguments(stage2, saved)
    assert second["max_train_steps"] == 3200 and second["earlier_stages"] == [first]
    saved.write_text(json.dumps(second))
    # the same stage resumed again (after a kill) adds nothing; a third stage appends the second
    assert ts.stage_arguments(stage2, saved)["earlier_stages"] == [first]
    stage3 = dict(stage2, max_train_steps=4000)
    third = ts.stage_arguments(stage3, saved)
    assert [s["max_train_steps"] for s in third["earlier_stages"]] == [2400, 3200]
    # a fresh (not resumed) run starts a new history
    assert "earlier_stages" not in ts.stage_arguments(dict(stage3, resume_from_checkpoint=None), saved)
