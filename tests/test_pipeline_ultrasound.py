"""UltrasoundPipeline: unconditional generation, rectangular sizes, schedulers (tiny random models)."""

import numpy as np
import pytest
import torch
from _pipeline_fixtures import tiny_semantic_unet, tiny_unconditional_pipeline
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from ultrasound_diffusers.pipelines import DiffusionPipeline, UltrasoundPipeline

STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    return tiny_unconditional_pipeline(sample_size=(8, 32))


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs)


def test_rectangular_samples_of_the_lung_shape(pipe):
    out = run(pipe, batch_size=3)
    assert out.images.shape == (3, 8, 32, 1)
    assert out.images.dtype == np.float32 and 0 <= out.images.min() and out.images.max() <= 1
    assert np.abs(out.images[0] - out.images[1]).max() > 1e-3  # different draws in one batch
    pil = run(pipe, batch_size=2, output_type="pil").images
    assert [im.size for im in pil] == [(32, 8), (32, 8)] and pil[0].mode == "L"
    pt = run(pipe, batch_size=2, output_type="pt").images
    assert pt.shape == (2, 1, 8, 32)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), run(pipe, batch_size=2).images, atol=1e-6)


def test_height_and_width_override(pipe):
    assert run(pipe, height=16, width=16).images.shape == (1, 16, 16, 1)


def test_fixed_seed_reproducible(pipe):
    a = run(pipe, seed=5, batch_size=2).images
    np.testing.assert_array_equal(a, run(pipe, seed=5, batch_size=2).images)
    assert np.abs(a - run(pipe, seed=6, batch_size=2).images).max() > 1e-3
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    per_image = pipe(batch_size=2, num_inference_steps=STEPS, output_type="np", generator=generators).images
    assert per_image.shape == (2, 8, 32, 1)


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"num_inference_steps": 0}, {"output_type": "jpg"}])
def test_bad_arguments_raise(pipe, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        run(pipe, **bad)


def test_latents_argument_and_callback(pipe):
    latents = torch.randn(2, 1, 8, 32, generator=torch.Generator().manual_seed(0))
    steps = []

    def callback(pipeline, step, timestep, tensors):
        steps.append(step)
        return {"latents": tensors["latents"].clamp(-0.5, 0.5)} if step == STEPS - 1 else {}

    out = run(pipe, batch_size=2, latents=latents, callback_on_step_end=callback)
    assert steps == list(range(STEPS))
    assert out.images.min() >= 0.25 - 1e-6 and out.images.max() <= 0.75 + 1e-6  # clamped latents
    with pytest.raises(ValueError, match="latents"):
        run(pipe, batch_size=3, latents=latents)


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
def test_diffusers_schedulers_swap_in(pipe, scheduler_cls):
    swapped = UltrasoundPipeline(unet=pipe.unet, scheduler=scheduler_cls.from_config(pipe.scheduler.config))
    swapped.set_progress_bar_config(disable=True)
    out = run(swapped, batch_size=2)
    assert out.images.shape == (2, 8, 32, 1) and np.isfinite(out.images).all()


def test_diffusers_unet2d_model_works():
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=(8, 16),
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    pipe = UltrasoundPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    out = run(pipe, batch_size=2)
    assert out.images.shape == (2, 8, 16, 1)
    np.testing.assert_array_equal(out.images, run(pipe, batch_size=2).images)


def test_label_conditioned_network_is_refused():
    with pytest.raises(ValueError, match="SemanticUltrasoundPipeline"):
        UltrasoundPipeline(unet=tiny_semantic_unet(num_classes=5), scheduler=DDPMScheduler())


def test_save_and_load_with_the_auto_class_reproduces_samples(pipe, tmp_path):
    before = run(pipe, seed=2, batch_size=2).images
    pipe.save_pretrained(tmp_path / "lung")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "lung")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is UltrasoundPipeline
    assert loaded.unet.config.sample_size == [8, 32] or tuple(loaded.unet.config.sample_size) == (8, 32)
    np.testing.assert_array_equal(run(loaded, seed=2, batch_size=2).images, before)
