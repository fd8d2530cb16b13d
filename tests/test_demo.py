"""The bundled demonstration pipeline and the demo command (issue: the main job out of the box)."""

import json

import numpy as np
import pytest
import torch

from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH, default_label_maps, load_label_maps, run_demo


@pytest.fixture(scope="module")
def demo_pipe():
    from ultrasound_diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(DEMO_PIPELINE_PATH)


def test_bundled_pipeline_is_small_and_complete():
    index = json.loads((DEMO_PIPELINE_PATH / "model_index.json").read_text())
    class_name = index["_class_name"]  # [shim module, class] so plain diffusers can load it with trust_remote_code
    assert (class_name[-1] if isinstance(class_name, list) else class_name) == "SemanticUltrasoundPipeline"
    assert (DEMO_PIPELINE_PATH / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (DEMO_PIPELINE_PATH / "README.md").is_file()
    size = sum(p.stat().st_size for p in DEMO_PIPELINE_PATH.rglob("*") if p.is_file())
    assert size < 50 * 2**20


def test_bundled_pipeline_generates_plausible_echo(demo_pipe):
    """Few steps, four label maps: a fan, dark outside it, a cavity darker than the myocardium, measured against
    the built-in phantoms of the same label maps (the model's training distribution).

    The strict outside-fan check is on the median image of the batch (the model card reports a faint haze in some
    samples), with a looser bound on every image; contrasts must reach at least 40 % of the phantoms'."""
    from ultrasound_diffusers.data.phantoms import generate_phantoms
    from ultrasound_diffusers.geometry import fan_mask

    labels = default_label_maps(4, size=64, seed=7)
    phantoms = generate_phantoms(4, anatomy="echo", size=64, seed=7)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(phantoms["label"], labels))
    reference = [np.asarray(im, np.float32) / 255.0 for im in phantoms["image"]]
    out = demo_pipe(
        labels, num_inference_steps=20, guidance_scale=1.5, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    images = np.asarray(out.images)[..., 0]
    assert images.shape == (4, 64, 64)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    outside = ~fan_mask(64, 64).numpy()
    outside_means = [image[outside].mean() for image in images]
    assert np.median(outside_means) < 0.05 and max(outside_means) < 0.15, outside_means
    for image, real, label in zip(images, reference, labels):
        fan_contrast = real[label > 0].mean() - real[outside].mean()
        assert image[label > 0].mean() - image[outside].mean() > 0.4 * fan_contrast, "the fan is brighter than outside"
        real_contrast = real[label == 3].mean() - real[label == 1].mean()
        contrast = image[label == 3].mean() - image[label == 1].mean()
        assert contrast > 0.4 * real_contrast, (contrast, real_contrast)


def test_demo_writes_picture(tmp_path, capsys):
    from ultrasound_diffusers.cli import main

    assert main(["demo", "--num_images", "2", "--num_inference_steps", "5", "--output_dir", str(tmp_path)]) == 0
    assert "demo picture written to" in capsys.readouterr().out
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert len(list(tmp_path.glob("generated_*.png"))) == 2


def test_demo_reads_user_label_maps(tmp_path):
    from PIL import Image

    labels = default_label_maps(1, size=64, seed=3)[0].astype(np.uint8)
    Image.fromarray(labels).save(tmp_path / "map.png")
    np.save(tmp_path / "map.npy", labels)
    loaded = load_label_maps([tmp_path / "map.png", tmp_path / "map.npy"])
    assert all(np.array_equal(m, labels) for m in loaded)
    path = run_demo(labels=[tmp_path / "map.png"], num_inference_steps=3, output_dir=tmp_path / "out")
    assert path.exists()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_label_maps([tmp_path / "missing.png"])
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="bad.npy"):
        load_label_maps([tmp_path / "bad.npy"])


def test_demo_shows_label_maps_of_another_size_as_the_network_saw_them(tmp_path, monkeypatch):
    """Label maps of another size than the model's are resized by the pipeline; the figure's first column shows
    them at that size (a 128 px map beside 64 px images once stopped the PIL grid)."""
    import ultrasound_diffusers.visualization as visualization
    from ultrasound_diffusers.data.labels import colorize_labels
    from ultrasound_diffusers.image_processor import resize_label_map

    big = default_label_maps(1, size=128, seed=3)[0].astype(np.uint8)
    np.save(tmp_path / "big.npy", big)
    grids = []
    original = visualization.tile_figure

    def capture(rows, *args, **kwargs):
        grids.append(rows)
        return original(rows, *args, **kwargs)

    monkeypatch.setattr(visualization, "tile_figure", capture)
    path = run_demo(labels=[tmp_path / "big.npy"], num_inference_steps=2, output_dir=tmp_path / "out")
    assert path.is_file()
    (rows,) = grids
    assert rows[0][0].shape == (64, 64, 3) and rows[0][1].shape == (64, 64)
    np.testing.assert_array_equal(rows[0][0], colorize_labels(resize_label_map(big, (64, 64)), 5))


@pytest.mark.parametrize("sampler, short, fewstep", [(None, "ddim-clipped", False), ("ddpm", "ddpm", False),
                                                     ("sde-dpm++", "sde-dpm++", False), (None, "ddim", None)])
def test_demo_figure_title_is_one_line_naming_the_sampler(tmp_path, monkeypatch, sampler, short, fewstep):
    """The title once printed the scheduler object (its whole JSON config, ~30 lines)."""
    import ultrasound_diffusers.visualization as visualization

    titles = []
    original = visualization.tile_figure

    def capture(rows, column_titles=(), title="", **kwargs):
        titles.append(title)
        return original(rows, column_titles, title, **kwargs)

    monkeypatch.setattr(visualization, "tile_figure", capture)
    run_demo(num_images=1, num_inference_steps=2, output_dir=tmp_path / "out", scheduler=sampler, fewstep=fewstep)
    (title,) = titles
    assert "\n" not in title and len(title) < 100, title
    assert f"sampler {short}," in title and "2 steps" in title and "seed 0" in title
    assert title.startswith("bmap-echo-phantom-64" + ("-fewstep" if fewstep is None else " |"))


def test_fewstep_student_is_bundled_and_plausible_in_four_calls():
    """The bundled few-step student (progressive distillation, guidance distilled in): 4 unguided calls give a fan,
    dark outside it, a cavity darker than the myocardium, with the same bounds as the 50-step model's test above."""
    from ultrasound_diffusers import DiffusionPipeline
    from ultrasound_diffusers.data.phantoms import generate_phantoms
    from ultrasound_diffusers.demo import FEWSTEP_DEFAULTS, FEWSTEP_PIPELINE_PATH, demo_source
    from ultrasound_diffusers.geometry import fan_mask

    assert demo_source() == demo_source(fewstep=True) == (str(FEWSTEP_PIPELINE_PATH), 4, 1.0) == (str(FEWSTEP_PIPELINE_PATH), *FEWSTEP_DEFAULTS)
    assert demo_source(fewstep=False) == (str(DEMO_PIPELINE_PATH), 50, 1.5)
    assert demo_source(DEMO_PIPELINE_PATH) == demo_source(DEMO_PIPELINE_PATH, fewstep=False) == (str(DEMO_PIPELINE_PATH), 50, 1.5)
    with pytest.raises(ValueError, match="--fewstep"):
        demo_source(DEMO_PIPELINE_PATH, fewstep=True)
    pipe = DiffusionPipeline.from_pretrained(FEWSTEP_PIPELINE_PATH)
    assert pipe.scheduler.config.sampler == "ddim" and pipe.scheduler.config.timestep_spacing == "trailing"
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    labels = default_label_maps(4, size=64, seed=7)
    phantoms = generate_phantoms(4, anatomy="echo", size=64, seed=7)
    images = np.asarray(pipe(labels, num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                             output_type="np").images)[..., 0]
    assert calls == [4, 4, 4, 4]  # four calls of the batch itself: no null-map half
    outside = ~fan_mask(64, 64).numpy()
    outside_means = [image[outside].mean() for image in images]
    assert np.median(outside_means) < 0.05 and max(outside_means) < 0.15, outside_means
    for image, real, label in zip(images, phantoms["image"], labels):
        real = np.asarray(real, np.float32) / 255.0
        assert image[label > 0].mean() - image[outside].mean() > 0.4 * (real[label > 0].mean() - real[outside].mean())
        assert image[label == 3].mean() - image[label == 1].mean() > 0.4 * (real[label == 3].mean() - real[label == 1].mean())


def test_demo_runs_the_student_by_default_and_the_50_step_model_with_no_fewstep(tmp_path, monkeypatch):
    """The command's default is the few-step student at 4 calls and guidance 1; --no-fewstep the 50-step model at
    guidance 1.5 (steps shortened here with --num_inference_steps); --fewstep beside --pipeline is refused."""
    import ultrasound_diffusers.demo as demo
    from ultrasound_diffusers.cli import main

    calls = []
    original = demo.demo_title
    monkeypatch.setattr(demo, "demo_title", lambda *args: calls.append(args) or original(*args))
    assert main(["demo", "--num_images", "2", "--output_dir", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "demo.png").stat().st_size > 10_000 and len(list((tmp_path / "a").glob("generated_*.png"))) == 2
    assert main(["demo", "--no-fewstep", "--num_images", "1", "--num_inference_steps", "2", "--output_dir", str(tmp_path / "b")]) == 0
    (source_a, _, steps_a, guidance_a, _), (source_b, _, steps_b, guidance_b, _) = calls
    assert (source_a, steps_a, guidance_a) == (str(demo.FEWSTEP_PIPELINE_PATH), 4, 1.0)
    assert (source_b, steps_b, guidance_b) == (str(DEMO_PIPELINE_PATH), 2, 1.5)
    assert main(["demo", "--fewstep", "--pipeline", str(DEMO_PIPELINE_PATH), "--output_dir", str(tmp_path / "c")]) == 2
