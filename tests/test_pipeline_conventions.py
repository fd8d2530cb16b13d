"""The diffusers conventions a user tries first work on our pipelines as on diffusers' own (issue 33).

Where diffusers has the same pipeline (its ``DDPMPipeline`` is an unconditional sampler), our
``UltrasoundPipeline`` is run on the same network and scheduler and must give the same images, output types,
tuples, progress-bar behaviour, dtype moves and offload errors. Conventions that ``DDPMPipeline`` lacks
(``callback_on_step_end``, ``num_images_per_prompt``, ``output_type="pt"``) are checked against diffusers'
documented contract: its ``PipelineCallback`` objects, one generator per image, ``"latent"`` the model-space result.
"""

from __future__ import annotations

import copy

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from _pipeline_fixtures import echo_label_map
from ultrasound_diffusers.pipelines import UltrasoundPipeline

STEPS = 3
MAP = echo_label_map(16)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pair():
    """(diffusers' DDPMPipeline, our UltrasoundPipeline) on copies of one tiny UNet2DModel and DDPM scheduler."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    scheduler = DDPMScheduler(num_train_timesteps=20)
    theirs = DDPMPipeline(unet=copy.deepcopy(unet), scheduler=DDPMScheduler.from_config(scheduler.config))
    ours = UltrasoundPipeline(unet=copy.deepcopy(unet), scheduler=DDPMScheduler.from_config(scheduler.config))
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    return theirs, ours


@pytest.mark.parametrize("generator", [lambda: gen(0), lambda: [gen(0), gen(1)]], ids=["one", "list"])
def test_same_images_as_diffusers_ddpm_pipeline(pair, generator):
    theirs, ours = pair
    expected = theirs(batch_size=2, generator=generator(), num_inference_steps=STEPS, output_type="np").images
    got = ours(batch_size=2, generator=generator(), num_inference_steps=STEPS, output_type="np").images
    assert got.shape == expected.shape == (2, 8, 8, 1) and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_list_of_generators_seeds_each_image(pair):
    """diffusers' rule: with one generator per image, image k is the image a batch of one draws with generator k."""
    theirs, ours = pair
    for pipe in (theirs, ours):
        both = pipe(batch_size=2, generator=[gen(5), gen(6)], num_inference_steps=STEPS, output_type="np").images
        second = pipe(batch_size=1, generator=gen(6), num_inference_steps=STEPS, output_type="np").images
        np.testing.assert_allclose(both[1], second[0], atol=1e-6)


def test_pil_output_and_return_dict_false_as_diffusers(pair):
    theirs, ours = pair
    expected = theirs(batch_size=1, generator=gen(1), num_inference_steps=STEPS, return_dict=False)
    got = ours(batch_size=1, generator=gen(1), num_inference_steps=STEPS, return_dict=False)
    assert type(got) is type(expected) is tuple and len(got) == len(expected) == 1
    assert all(isinstance(im, PIL.Image.Image) for im in got[0]) and got[0][0].mode == expected[0][0].mode == "L"
    np.testing.assert_array_equal(np.asarray(got[0][0]), np.asarray(expected[0][0]))


def test_pt_and_latent_outputs_match_np(pair):
    _, ours = pair
    as_np = ours(batch_size=2, generator=gen(2), num_inference_steps=STEPS, output_type="np").images
    as_pt = ours(batch_size=2, generator=gen(2), num_inference_steps=STEPS, output_type="pt").images
    latent = ours(batch_size=2, generator=gen(2), num_inference_steps=STEPS, output_type="latent").images
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(as_pt.permute(0, 2, 3, 1).numpy(), as_np, atol=1e-6)
    torch.testing.assert_close((latent / 2 + 0.5).clamp(0, 1), as_pt)


def test_progress_bar_config_as_diffusers(pair, capsys):
    theirs, ours = pair
    for disable in (False, True):
        shown = {}
        for pipe in (theirs, ours):
            pipe.set_progress_bar_config(disable=disable)
            pipe(batch_size=1, generator=gen(0), num_inference_steps=STEPS, output_type="np")
            shown[type(pipe).__name__] = f"{STEPS}/{STEPS}" in capsys.readouterr().err
        assert shown == {"DDPMPipeline": not disable, "UltrasoundPipeline": not disable}


def test_to_device_and_dtype_as_diffusers(pair):
    theirs, ours = (copy.deepcopy(p) for p in pair)
    for pipe in (theirs, ours):
        assert pipe.to("cpu", torch.float64) is pipe
        assert pipe.unet.dtype == torch.float64 and pipe.device.type == "cpu"
    expected = theirs(batch_size=1, generator=gen(3), num_inference_steps=STEPS, output_type="np").images
    got = ours(batch_size=1, generator=gen(3), num_inference_steps=STEPS, output_type="np").images
    np.testing.assert_allclose(got, expected, atol=1e-7)  # ours hands back float32 arrays (documented), theirs float64
    latent = ours(batch_size=1, generator=gen(3), num_inference_steps=STEPS, output_type="latent").images
    assert latent.dtype == torch.float64


def test_semantic_pipeline_to_dtype(pipe):
    moved = copy.deepcopy(pipe).to("cpu", torch.float64)
    out = moved(MAP, generator=gen(0), num_inference_steps=STEPS, output_type="latent")
    assert moved.unet.dtype == torch.float64 and out.images.dtype == torch.float64
    assert isinstance(out.segmaps, torch.Tensor) and out.segmaps.dtype == torch.long


def test_enable_model_cpu_offload_as_diffusers(pair, pipe):
    """With an accelerator, offloading works as on diffusers' pipelines; on a CPU-only build it fails with
    diffusers' own error, for theirs and ours alike."""
    theirs, ours = (copy.deepcopy(p) for p in pair)
    outcomes = []
    for p in (theirs, ours, copy.deepcopy(pipe)):
        try:
            p.enable_model_cpu_offload()
            outcomes.append("ok")
        except (RuntimeError, ValueError) as error:
            outcomes.append(f"{type(error).__name__}: {error}")
    assert outcomes[1] == outcomes[2] == outcomes[0], outcomes
    if outcomes[0] == "ok":  # an accelerator: the offloaded pipelines still generate the same images
        expected = theirs(batch_size=1, generator=gen(4), num_inference_steps=STEPS, output_type="np").images
        got = ours(batch_size=1, generator=gen(4), num_inference_steps=STEPS, output_type="np").images
        np.testing.assert_allclose(got, expected, atol=1e-4)


# ------------------------------------------------------------------ callbacks (diffusers' PipelineCallback contract)
class ScaleLatents(PipelineCallback):
    """A diffusers callback object: halves the latents at one step."""

    tensor_inputs = ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        if step_index == self.config.cutoff_step_index:
            return {"latents": callback_kwargs["latents"] * 0.5}
        return {}


class Recorder(PipelineCallback):
    tensor_inputs = ["latents", "segmap"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        pipeline._recorded = getattr(pipeline, "_recorded", []) + [(step_index, sorted(callback_kwargs))]
        return {}


def test_pipeline_callback_objects_work(pipe, unconditional):
    def run(p, args, callback):
        return p(*args, generator=gen(0), num_inference_steps=STEPS, output_type="latent",
                 callback_on_step_end=callback).images

    for p, args in ((pipe, (MAP,)), (unconditional, ())):
        plain = run(p, args, None)
        halved = run(p, args, ScaleLatents(cutoff_step_ratio=None, cutoff_step_index=STEPS - 1))
        torch.testing.assert_close(halved, plain * 0.5)  # the last step's latents are the output
    pipe._recorded = []
    run(pipe, (MAP,), MultiPipelineCallbacks([Recorder(), ScaleLatents(cutoff_step_ratio=None, cutoff_step_index=99)]))
    assert pipe._recorded == [(i, ["latents", "segmap"]) for i in range(STEPS)]


def test_callback_tensor_inputs_are_given_and_checked(pipe):
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, int(t), sorted(kwargs), tuple(kwargs["segmap"].shape)))
        return kwargs

    pipe(MAP, num_images_per_prompt=2, num_inference_steps=STEPS, callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=["latents", "segmap"])
    assert [s[0] for s in seen] == list(range(STEPS)) and all(s[2] == ["latents", "segmap"] for s in seen)
    assert seen[0][3] == (2, 5, 16, 16)
    assert [s[1] for s in seen] == [int(t) for t in pipe.scheduler.timesteps]
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(MAP, num_inference_steps=STEPS, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["x"])


def test_interrupt_from_a_callback(pipe, unconditional):
    """diffusers' convention: ``pipe._interrupt = True`` in a callback skips the remaining steps."""
    for p, args in ((pipe, (MAP,)), (unconditional, ())):
        calls = []

        def stop(pipeline, i, t, kwargs):
            calls.append(i)
            pipeline._interrupt = True
            return {}

        p(*args, num_inference_steps=STEPS, output_type="np", callback_on_step_end=stop)
        assert calls == [0]


# ------------------------------------------------------------------------------------------ num_images_per_prompt
def test_num_images_per_prompt_with_one_generator_per_image(pipe):
    """Image i * n + j comes from map i; with a list of generators, image k is what generator k draws alone."""
    maps = [MAP, echo_label_map(16, seed=1)]
    out = pipe(maps, num_images_per_prompt=2, generator=[gen(s) for s in (10, 11, 12, 13)],
               num_inference_steps=STEPS, output_type="np")
    assert out.images.shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(out.segmaps[2], out.segmaps[3])
    single = pipe(maps[1], generator=gen(13), num_inference_steps=STEPS, output_type="np")
    np.testing.assert_allclose(out.images[3], single.images[0], atol=1e-5)
