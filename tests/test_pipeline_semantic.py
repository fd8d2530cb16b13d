"""SemanticUltrasoundPipeline: label-map inputs, guidance, outputs, schedulers, callbacks (tiny random models)."""

import numpy as np
import PIL.Image
import pytest
import torch
from _pipeline_fixtures import (
    NUM_CLASSES,
    echo_label_map,
    tiny_bmap_scheduler,
    tiny_semantic_pipeline,
    tiny_semantic_unet,
)
from diffusers import DDIMScheduler, DDPMScheduler

from ultrasound_diffusers.pipelines import SemanticUltrasoundPipeline
from ultrasound_diffusers.pipelines.pipeline_utils import (
    classifier_free_guidance,
    fit_model_output,
    prepare_extra_step_kwargs,
    prepare_segmap,
)

STEPS = 3



@pytest.fixture(scope="module")
def pipe_fixed():
    """Without learned sigma: a 1-channel output, fixed-variance B-map scheduler."""
    return tiny_semantic_pipeline(learn_sigma=False)


def run(pipe, segmap, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe(segmap, generator=torch.Generator().manual_seed(seed), **kwargs)


# ------------------------------------------------------------------ label-map inputs


def test_every_segmap_form_gives_the_same_images(pipe):
    labels = echo_label_map(16)
    reference = run(pipe, labels).images
    assert reference.shape == (1, 16, 16, 1)
    forms = {
        "PIL L": PIL.Image.fromarray(labels, mode="L"),
        "PIL P": PIL.Image.fromarray(labels, mode="L").convert("P"),
        "PIL I": PIL.Image.fromarray(labels.astype(np.int32), mode="I"),
        "numpy int64": labels.astype(np.int64),
        "numpy [1,H,W]": labels[None],
        "tensor [H,W]": torch.from_numpy(labels).long(),
        "tensor [1,1,H,W]": torch.from_numpy(labels).long()[None, None],
        "tensor float labels": torch.from_numpy(labels).float(),
        "one-hot float [1,K,H,W]": torch.nn.functional.one_hot(torch.from_numpy(labels).long(), NUM_CLASSES)
        .permute(2, 0, 1)[None]
        .float(),
        "list of one": [labels],
    }
    for name, form in forms.items():
        np.testing.assert_allclose(run(pipe, form).images, reference, atol=1e-6, err_msg=name)


def test_batches_and_lists_concatenate(pipe):
    a, b = echo_label_map(16, seed=0), echo_label_map(16, seed=1)
    b[:4] = 4  # make the maps clearly different
    batched = run(pipe, np.stack([a, b]))
    listed = run(pipe, [PIL.Image.fromarray(a), torch.from_numpy(b)])
    assert batched.images.shape == (2, 16, 16, 1)
    np.testing.assert_allclose(listed.images, batched.images, atol=1e-6)
    np.testing.assert_array_equal(batched.segmaps, np.stack([a, b]).astype(np.int64))
    swapped = run(pipe, np.stack([b, a]))  # same noise, maps swapped: the images follow the maps
    assert np.abs(swapped.images[0] - batched.images[0]).max() > 1e-3


def test_maps_are_resized_with_nearest_to_the_model_size(pipe):
    small = echo_label_map(16)
    big = np.kron(small, np.ones((2, 2), np.uint8))  # 32 x 32, every label a 2x2 block
    out = run(pipe, big, output_type="pil")
    assert out.images[0].size == (16, 16) and out.images[0].mode == "L"
    np.testing.assert_array_equal(np.asarray(out.segmaps[0]), small)  # no new labels, same layout
    np.testing.assert_allclose(run(pipe, big).images, run(pipe, small).images, atol=1e-6)


def test_height_and_width_override_the_sample_size(pipe):
    out = run(pipe, echo_label_map(16), height=16, width=24, output_type="pt")
    assert out.images.shape == (1, 1, 16, 24)
    assert out.segmaps.shape == (1, 16, 24)


def test_prepare_segmap_values():
    labels = torch.tensor([[0, 1], [2, 4]])
    one_hot, out_labels = prepare_segmap(labels, 5, (2, 2))
    assert one_hot.shape == (1, 5, 2, 2)
    assert torch.equal(one_hot.argmax(1)[0], labels)
    assert torch.equal(one_hot.sum(1), torch.ones(1, 2, 2))
    assert torch.equal(out_labels[0], labels)
    zeros, none_labels = prepare_segmap(torch.zeros(2, 5, 4, 4), 5, (2, 2))
    assert zeros.shape == (2, 5, 2, 2) and not zeros.any() and none_labels is None


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((16, 16), NUM_CLASSES), "labels must lie in"),
        (np.full((16, 16), -1), "labels must lie in"),
        (np.zeros((2, 3, 16, 16), np.int64), "shape"),
        (np.full((16, 16), 0.5, np.float32), "non-integer"),
        ("labels.png", "PIL image, a numpy array"),
        ([], "empty"),
    ],
)
def test_bad_segmaps_raise_naming_the_argument(pipe, bad, message):
    with pytest.raises(ValueError, match="segmap") as info:
        run(pipe, bad)
    assert message in str(info.value)


def test_colour_pil_label_map_is_refused(pipe):
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 1
    with pytest.raises(ValueError, match="colour RGB image whose channels differ"):
        run(pipe, PIL.Image.fromarray(colour, mode="RGB"))


# ------------------------------------------------------------------ outputs, determinism, several images per map


def test_output_types_agree(pipe):
    labels = echo_label_map(16)
    as_np = run(pipe, labels, output_type="np")
    as_pt = run(pipe, labels, output_type="pt")
    as_pil = run(pipe, labels, output_type="pil")
    assert as_np.images.dtype == np.float32 and 0.0 <= as_np.images.min() and as_np.images.max() <= 1.0
    assert isinstance(as_pt.images, torch.Tensor) and as_pt.images.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(as_pt.images.permute(0, 2, 3, 1).numpy(), as_np.images, atol=1e-6)
    pil = np.asarray(as_pil.images[0], dtype=np.float32) / 255
    np.testing.assert_allclose(pil, as_np.images[0, ..., 0], atol=1 / 255 + 1e-6)
    images, segmaps = pipe(labels, num_inference_steps=STEPS, output_type="np", return_dict=False,
                           generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(images, as_np.images, atol=1e-6)
    with pytest.raises(ValueError, match="output_type"):
        run(pipe, labels, output_type="jpeg")


def test_fixed_seed_is_reproducible_and_seeds_differ(pipe):
    labels = echo_label_map(16)
    first = run(pipe, labels, seed=3, guidance_scale=1.5).images
    again = run(pipe, labels, seed=3, guidance_scale=1.5).images
    other = run(pipe, labels, seed=4, guidance_scale=1.5).images
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_num_images_per_prompt_orders_images_by_map(pipe):
    a, b = echo_label_map(16, 0), echo_label_map(16, 1)
    b[:] = 1
    out = run(pipe, [a, b], num_images_per_prompt=2)
    assert out.images.shape == (4, 16, 16, 1) and out.segmaps.shape == (4, 16, 16)
    for i, expected in enumerate([a, a, b, b]):
        np.testing.assert_array_equal(out.segmaps[i], expected)
    assert np.abs(out.images[0] - out.images[1]).max() > 1e-3  # two different draws of the same map
    generators = [torch.Generator().manual_seed(s) for s in range(4)]
    per_image = pipe([a, b], num_images_per_prompt=2, num_inference_steps=STEPS, output_type="np", generator=generators)
    assert per_image.images.shape == (4, 16, 16, 1)
    with pytest.raises(ValueError, match="generator"):
        pipe(a, num_inference_steps=STEPS, generator=generators[:3])


# ------------------------------------------------------------------ classifier-free guidance


def test_guidance_formula_on_prediction_channels_only():
    cond = torch.randn(2, 2, 4, 4)
    uncond = torch.randn(2, 2, 4, 4)
    out = classifier_free_guidance(cond, uncond, 1.5, channels=1)
    torch.testing.assert_close(out[:, :1], uncond[:, :1] + 1.5 * (cond[:, :1] - uncond[:, :1]))
    torch.testing.assert_close(out[:, 1:], cond[:, 1:])  # the variance channel of the labelled branch


def _record_unet_inputs(pipe):
    calls = []

    def hook(module, args, kwargs):
        calls.append((args[0].shape[0], kwargs["segmap"].clone()))

    return calls, pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_guidance_uses_one_batched_pass_with_a_zero_null_map(pipe):
    labels = echo_label_map(16)
    calls, handle = _record_unet_inputs(pipe)
    try:
        run(pipe, [labels, labels], guidance_scale=1.0)
        unguided = list(calls)
        calls.clear()
        run(pipe, [labels, labels], guidance_scale=1.5)
    finally:
        handle.remove()
    assert [batch for batch, _ in unguided] == [2] * STEPS
    assert [batch for batch, _ in calls] == [4] * STEPS
    segmap = calls[0][1]
    assert segmap[:2].sum(1).eq(1).all()  # labelled one-hot rows
    assert not segmap[2:].any()  # null rows are all zero


def test_guidance_scale_zero_equals_the_null_map(pipe_fixed):
    labels = echo_label_map(16)
    null = torch.zeros(1, NUM_CLASSES, 16, 16)
    unconditional = run(pipe_fixed, labels, guidance_scale=0.0).images
    direct_null = run(pipe_fixed, null, guidance_scale=1.0).images
    np.testing.assert_allclose(unconditional, direct_null, atol=1e-5)
    guided = run(pipe_fixed, labels, guidance_scale=2.0).images
    unguided = run(pipe_fixed, labels, guidance_scale=1.0).images
    assert np.abs(guided - unguided).max() > 1e-4
    with pytest.raises(ValueError, match="guidance_scale"):
        run(pipe_fixed, labels, guidance_scale=-1.0)


# ------------------------------------------------------------------ schedulers, eta, learned sigma


def test_fit_model_output_drops_variance_for_fixed_variance_schedulers():
    output = torch.randn(1, 2, 4, 4)
    ddpm_learned = DDPMScheduler(num_train_timesteps=10, variance_type="learned_range")
    ddpm_fixed = DDPMScheduler(num_train_timesteps=10)
    ddim_swapped = DDIMScheduler.from_config(ddpm_learned.config)  # keeps variance_type as a foreign key
    assert fit_model_output(output, ddpm_learned, 1).shape[1] == 2
    assert fit_model_output(output, ddpm_fixed, 1).shape[1] == 1
    assert fit_model_output(output, ddim_swapped, 1).shape[1] == 1
    with pytest.raises(ValueError, match="channels"):
        fit_model_output(torch.randn(1, 3, 4, 4), ddpm_fixed, 1)


def test_eta_is_passed_only_where_accepted():
    ddim = DDIMScheduler(num_train_timesteps=10)
    ddpm = DDPMScheduler(num_train_timesteps=10)
    assert "eta" not in prepare_extra_step_kwargs(ddim, None, None)  # None: the scheduler's default (0.0)
    assert prepare_extra_step_kwargs(ddim, None, 0.3)["eta"] == 0.3
    assert "eta" not in prepare_extra_step_kwargs(ddpm, None, 0.3)
    with pytest.raises(ValueError, match="eta"):
        prepare_extra_step_kwargs(ddim, None, -1.0)


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
def test_diffusers_schedulers_swap_in_through_from_config(pipe, scheduler_cls):
    labels = echo_label_map(16)
    swapped = SemanticUltrasoundPipeline(
        unet=pipe.unet, scheduler=scheduler_cls.from_config(pipe.scheduler.config)
    )
    swapped.set_progress_bar_config(disable=True)
    assert swapped.scheduler.config.num_train_timesteps == pipe.scheduler.config.num_train_timesteps
    out = run(swapped, labels, guidance_scale=1.5)
    assert out.images.shape == (1, 16, 16, 1) and np.isfinite(out.images).all()
    np.testing.assert_array_equal(out.images, run(swapped, labels, guidance_scale=1.5).images)


def test_ddim_eta_none_is_deterministic_given_the_latents(pipe):
    labels = echo_label_map(16)
    ddim = SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    ddim.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    a = run(ddim, labels, seed=1, latents=latents).images
    b = run(ddim, labels, seed=2, latents=latents).images  # eta=None -> 0.0: no noise after the first draw
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = run(ddim, labels, seed=1, latents=latents, eta=1.0).images
    d = run(ddim, labels, seed=2, latents=latents, eta=1.0).images
    assert np.abs(c - d).max() > 1e-4
    # the B-map scheduler's default sampler (ddpm) draws noise at every step
    e = run(pipe, labels, seed=1, latents=latents).images
    f = run(pipe, labels, seed=2, latents=latents).images
    assert np.abs(e - f).max() > 1e-4


def test_use_clipped_model_output_reaches_the_ddim_step(pipe_fixed):
    """DDIMPipeline's argument: the noise recomputed from the clipped x_0 changes DDIM where clipping acts, and only
    there; schedulers without it ignore it; a non-bool is refused by name."""
    labels = echo_label_map(16)
    latents = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def with_scheduler(scheduler, **kwargs):
        p = SemanticUltrasoundPipeline(unet=pipe_fixed.unet, scheduler=scheduler)
        p.set_progress_bar_config(disable=True)
        return run(p, labels, latents=latents, guidance_scale=1.5, **kwargs).images

    ddim = tiny_bmap_scheduler("fixed_small", sampler="ddim")
    plain, clipped = with_scheduler(ddim), with_scheduler(ddim, use_clipped_model_output=True)
    assert np.abs(plain - clipped).max() > 1e-3  # the random network's x_0 leaves [-1, 1] at high noise
    np.testing.assert_array_equal(plain, with_scheduler(ddim, use_clipped_model_output=False))
    unclipped = tiny_bmap_scheduler("fixed_small", sampler="ddim", clip_sample=False)
    np.testing.assert_allclose(  # nothing clipped: the recomputed noise is the model's own
        with_scheduler(unclipped), with_scheduler(unclipped, use_clipped_model_output=True), atol=1e-5
    )
    # diffusers' DDIMScheduler takes the same argument
    diffusers_ddim = DDIMScheduler.from_config(ddim.config)
    assert np.abs(with_scheduler(diffusers_ddim) - with_scheduler(diffusers_ddim, use_clipped_model_output=True)).max() > 1e-3
    assert "use_clipped_model_output" not in prepare_extra_step_kwargs(DDPMScheduler(num_train_timesteps=10), None, None, True)
    with pytest.raises(ValueError, match="use_clipped_model_output"):
        with_scheduler(ddim, use_clipped_model_output="yes")


# ------------------------------------------------------------------ callbacks, progress bar, construction


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(pipe):
    labels = echo_label_map(16)
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, int(timestep), sorted(tensors)))
        assert tensors["latents"].shape == (1, 1, 16, 16)
        if step == STEPS - 1:
            return {"latents": torch.zeros_like(tensors["latents"])}
        return {}

    out = run(pipe, labels, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "segmap"])
    assert [s for s, _, _ in seen] == list(range(STEPS))
    assert [t for _, t, _ in seen] == [int(t) for t in pipe.scheduler.timesteps]
    assert seen[0][2] == ["latents", "segmap"]
    np.testing.assert_allclose(out.images, 0.5)  # zero latents -> mid grey
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        run(pipe, labels, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise_pred"])


def test_progress_bar_counts_the_steps(pipe, capsys):
    pipe.set_progress_bar_config(disable=False)
    try:
        run(pipe, echo_label_map(16))
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert f"{STEPS}/{STEPS}" in capsys.readouterr().err


def test_unconditional_network_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        SemanticUltrasoundPipeline(unet=tiny_semantic_unet(num_classes=0), scheduler=DDPMScheduler())


def test_label_names_are_kept_in_the_config(pipe):
    assert pipe.config.label_names["1"] == "LV cavity"
    assert len(pipe.config.label_names) == NUM_CLASSES
