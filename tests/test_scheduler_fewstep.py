"""Tests of BMapConsistencyScheduler (few-step consistency sampling under a per-pixel B-map schedule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler

from ultrasound_diffusers.schedulers import BMapAttenuationScheduler, BMapConsistencyScheduler
from ultrasound_diffusers.schedulers.scheduling_bmap_consistency import consistency_scalings, lcm_timesteps

SHAPE = (2, 1, 16, 16)


def _tensors(seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(3)]


def test_timesteps_follow_the_distillation_grid():
    assert lcm_timesteps(1).tolist() == [999]
    assert lcm_timesteps(2).tolist() == [999, 499]
    assert lcm_timesteps(4).tolist() == [999, 759, 499, 259]
    steps = lcm_timesteps(8)
    assert len(steps) == 8 and np.all(np.diff(steps) < 0) and np.all((steps + 1) % 20 == 0)
    s = BMapConsistencyScheduler()
    for bad in (0, 51, 2.5, True):
        with pytest.raises(ValueError, match="num_inference_steps"):
            s.set_timesteps(bad)
    with pytest.raises(ValueError, match="strictly decreasing"):
        s.set_timesteps(timesteps=[100, 500])
    with pytest.raises(ValueError, match="exactly one"):
        s.set_timesteps(4, timesteps=[999, 499])
    s.set_timesteps(timesteps=[999, 500])
    assert s.timesteps.tolist() == [999, 500] and s.num_inference_steps == 2


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_reduces_to_lcm_scheduler_without_attenuation(prediction_type):
    """bmap_min=1: every pixel has the level abar_t, and each step is diffusers' LCMScheduler step."""
    ours = BMapConsistencyScheduler(beta_schedule="squaredcos_cap_v2", bmap_min=1.0, prediction_type=prediction_type)
    ref = LCMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=True)
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    sample, _, _ = _tensors(1)
    x_ours, x_ref = sample.clone(), sample.clone()
    for i, t in enumerate(ours.timesteps):
        out = _tensors(10 + i)[0]
        a = ours.step(out, t, x_ours, generator=torch.Generator().manual_seed(i))
        b = ref.step(out, ref.timesteps[i], x_ref, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(a.denoised, b.denoised, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-5, atol=1e-5)
        x_ours, x_ref = a.prev_sample, b.prev_sample


def test_per_pixel_denoise_and_renoise():
    """With B-maps the x_0 conversion and the re-noising use each pixel's own a_t(p)."""
    s = BMapConsistencyScheduler(prediction_type="v_prediction", clip_sample=False)
    s.set_timesteps(2)
    sample, out, noise = _tensors(2)
    t, t_next = s.timesteps.tolist()
    result = s.step(out, t, sample, noise=noise)
    a_t = s.signal_level(t, SHAPE)
    a_next = s.signal_level(t_next, SHAPE)
    assert float(a_t.max() - a_t.min()) > 0  # the levels differ over the pixels
    c_skip, c_out = s.get_scalings_for_boundary_condition_discrete(t)
    x0 = a_t.sqrt() * sample.double() - (1 - a_t).sqrt() * out.double()
    denoised = c_skip * sample.double() + c_out * x0
    torch.testing.assert_close(result.denoised, denoised.float())
    torch.testing.assert_close(result.prev_sample, (a_next.sqrt() * denoised + (1 - a_next).sqrt() * noise.double()).float())
    last = s.step(out, t_next, result.prev_sample, noise=noise)
    torch.testing.assert_close(last.prev_sample, last.denoised)  # no noise after the last step


def test_boundary_condition_at_t_min():
    c_skip, c_out = consistency_scalings(torch.tensor([0, 19, 999]))
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
    assert float(c_skip[1]) < 1e-4 and float(c_out[1]) > 0.9999
    s = BMapConsistencyScheduler(prediction_type="epsilon")
    sample, out, _ = _tensors(3)
    torch.testing.assert_close(s.denoise(out, 0, sample), sample.double())  # f(x, 0) = x at every pixel
    batch_t = torch.tensor([0, 999])
    f = s.denoise(out, batch_t, sample)
    torch.testing.assert_close(f[0], sample[0].double())
    assert not torch.allclose(f[1], sample[1].double())


def test_from_config_of_the_bmap_scheduler_and_save_load(tmp_path):
    bmap = BMapAttenuationScheduler.from_preset("camus-sdm", bmap_min=0.9, prediction_type="v_prediction",
                                                probe_geometry="linear")
    s = BMapConsistencyScheduler.from_config(bmap.config)
    for key in ("bmap_min", "prediction_type", "probe_geometry", "fan_apex", "beta_schedule", "bmap_schedule"):
        assert s.config[key] == bmap.config[key], key
    torch.testing.assert_close(s.signal_level(500, SHAPE), bmap.signal_level(500, SHAPE))
    s.save_pretrained(tmp_path)
    loaded = BMapConsistencyScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(s.config)
    s.set_timesteps(4)
    loaded.set_timesteps(4)
    sample, out, noise = _tensors(4)
    torch.testing.assert_close(loaded.step(out, 999, sample, noise=noise).prev_sample,
                               s.step(out, 999, sample, noise=noise).prev_sample)


def test_step_shapes_dtypes_and_errors():
    s = BMapConsistencyScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(torch.zeros(SHAPE), 999, torch.zeros(SHAPE))
    s.set_timesteps(4)
    sample = torch.randn(SHAPE, dtype=torch.float32)
    out = s.step(torch.randn(2, 2, 16, 16), 999, sample, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.shape == SHAPE and out.prev_sample.dtype == torch.float32
    half = s.step(torch.randn(SHAPE), 999, sample.double(), generator=torch.Generator().manual_seed(0))
    assert half.prev_sample.dtype == torch.float64
    with pytest.raises(ValueError, match="channels"):
        s.step(torch.randn(2, 3, 16, 16), 999, sample)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        s.step(torch.randn(SHAPE), 998, sample)
    with pytest.raises(ValueError, match="prediction_type"):
        BMapConsistencyScheduler(prediction_type="score")
    with pytest.raises(ValueError, match="timestep_scaling"):
        BMapConsistencyScheduler(timestep_scaling=0)


def test_pipeline_runs_the_few_step_scheduler(pipe):
    """The existing SemanticUltrasoundPipeline samples with it: pipe(label_map, num_inference_steps=4)."""
    from _pipeline_fixtures import echo_label_map

    original = pipe.scheduler
    try:
        pipe.scheduler = BMapConsistencyScheduler.from_config(original.config, original_inference_steps=10)
        calls = []
        forward = pipe.unet.forward

        def counting(*args, **kwargs):
            calls.append(1)
            return forward(*args, **kwargs)

        pipe.unet.forward = counting
        images = pipe(echo_label_map(), num_inference_steps=4, guidance_scale=1.0, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    finally:
        pipe.unet.forward = forward
        pipe.scheduler = original
    assert np.asarray(images).shape == (1, 16, 16, 1) and np.isfinite(np.asarray(images)).all()
    assert len(calls) == 4
