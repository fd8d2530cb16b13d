"""Conformance of BMapAttenuationScheduler with what diffusers' SchedulerCommonTest checks.

Written for this project after the checks of diffusers' ``SchedulerCommonTest`` and ``DDPMSchedulerTest``:
config and output round trips through save_pretrained / from_pretrained, from_config across the compatible
schedulers, dict / tuple step outputs, determinism with generators, DDPM equality at ``bmap_min=1``, plus the
refusal of configs that would break sampling.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler

SHAPE = (2, 1, 8, 8)


def _public(config) -> dict:
    """The config without diffusers' metadata keys (``_use_default_values`` is dropped on save by diffusers for
    every scheduler, DDPMScheduler included)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _sample_and_output(seed: int = 0, channels: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.rand(SHAPE, generator=generator) * 2 - 1
    model_output = torch.randn(SHAPE[0], channels, *SHAPE[2:], generator=generator) * 0.5
    return sample, model_output


CONFIGS = [
    dict(),
    dict(fan_apex=(0.5, 0), fan_radii=(0, 1)),
    dict(fan_apex=[0.4, -0.1], fan_radii=[0.1, 0.9], fan_half_angle_deg=40),
    dict(probe_geometry="linear", bmap_schedule="linear", preserve_length=True),
    dict(beta_schedule="linear_small"),
    dict(trained_betas=np.linspace(1e-4, 0.02, 50), num_train_timesteps=50),
    dict(variance_type="learned_range", sampler="ddim", ddim_eta=0.5),
]


# ------------------------------------------------------------------------------------------------ save / load


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_config_survives_save_and_load(tmp_path, kwargs):
    scheduler = BMapAttenuationScheduler(**kwargs)
    scheduler.save_pretrained(tmp_path)
    loaded = BMapAttenuationScheduler.from_pretrained(tmp_path)
    assert _public(loaded.config) == _public(scheduler.config)
    # JSON types in the config: the tuples of the defaults are stored as lists
    assert isinstance(scheduler.config.fan_apex, list) and isinstance(scheduler.config.fan_radii, list)
    # and the config is plain JSON that loads back to the same values
    assert json.loads(scheduler.to_json_string())["fan_apex"] == scheduler.config.fan_apex


def test_from_config_round_trip_is_identity():
    scheduler = BMapAttenuationScheduler(fan_apex=(0.5, 0.1), bmap_min=0.9)
    again = BMapAttenuationScheduler.from_config(scheduler.config)
    assert _public(again.config) == _public(scheduler.config)


# ------------------------------------------------------------------------------------------------ previous_timestep


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_previous_timestep_is_a_tensor_like_ddpm(spacing):
    ours = BMapAttenuationScheduler(num_train_timesteps=100, timestep_spacing=spacing, bmap_min=1.0)
    ddpm = DDPMScheduler(num_train_timesteps=100, timestep_spacing=spacing)
    for scheduler in (ours, ddpm):
        scheduler.set_timesteps(10)
    assert torch.equal(ours.timesteps, ddpm.timesteps)
    for t in ours.timesteps:
        mine, theirs = ours.previous_timestep(t), ddpm.previous_timestep(t)
        assert torch.is_tensor(mine) and torch.is_tensor(theirs)
        assert mine.dtype == torch.int64 and int(mine) == int(theirs)
    assert int(ours.previous_timestep(ours.timesteps[-1])) == -1


def test_previous_timestep_custom_and_unset():
    scheduler = BMapAttenuationScheduler(num_train_timesteps=100)
    assert torch.is_tensor(scheduler.previous_timestep(50)) and int(scheduler.previous_timestep(50)) == 49
    scheduler.set_timesteps(timesteps=[90, 40, 7])
    assert [int(scheduler.previous_timestep(t)) for t in (90, 40, 7)] == [40, 7, -1]


# ------------------------------------------------------------------------------------------------ refused configs

NAN, INF = float("nan"), float("inf")
BAD_CONFIGS = [
    (dict(beta_end=2.0), "beta_end"),
    (dict(beta_end=1.0), "beta_end"),
    (dict(beta_start=-0.1), "beta_start"),
    (dict(beta_start=0.1, beta_end=0.01), "beta_start"),
    (dict(beta_start=NAN), "beta_start"),
    (dict(beta_end=INF), "beta_end"),
    (dict(beta_end="0.02"), "beta_end"),
    (dict(beta_schedule="squaredcos_cap_v2", beta_start=NAN), "beta_start"),
    (dict(clip_sample_range=0), "clip_sample_range"),
    (dict(clip_sample_range=-1.0), "clip_sample_range"),
    (dict(clip_sample_range=NAN), "clip_sample_range"),
    (dict(sample_max_value=INF), "sample_max_value"),
    (dict(dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio"),
    (dict(dynamic_thresholding_ratio=-0.1), "dynamic_thresholding_ratio"),
    (dict(dynamic_thresholding_ratio=NAN), "dynamic_thresholding_ratio"),
    (dict(fan_apex=("a", 0)), "fan_apex"),
    (dict(fan_apex="ab"), "fan_apex"),
    (dict(fan_apex=(0.5, NAN)), "fan_apex"),
    (dict(fan_radii="ab"), "fan_radii"),
    (dict(fan_radii=(0, INF)), "fan_radii"),
    (dict(fan_radii=(True, 1.0)), "fan_radii"),
    (dict(fan_half_angle_deg="30"), "fan_half_angle_deg"),
    (dict(fan_half_angle_deg=NAN), "fan_half_angle_deg"),
    (dict(bmap_min="abc"), "bmap_min"),
    (dict(bmap_min=True), "bmap_min"),
    (dict(bmap_min=NAN), "bmap_min"),
    (dict(bmap_min=0.0), "bmap_min"),
    (dict(ddim_eta=NAN), "ddim_eta"),
    (dict(ddim_eta=-1.0), "ddim_eta"),
    (dict(num_train_timesteps=True), "num_train_timesteps"),
    (dict(num_train_timesteps=100.0), "num_train_timesteps"),
    (dict(steps_offset=1.5), "steps_offset"),
    (dict(steps_offset=-1), "steps_offset"),
    (dict(clip_sample="false"), "clip_sample"),
    (dict(thresholding=1), "thresholding"),
    (dict(preserve_length="yes"), "preserve_length"),
    (dict(trained_betas=["a"] * 1000), "trained_betas"),
    (dict(trained_betas=[NAN] * 1000), "trained_betas"),
    (dict(variance_type=3), "variance_type"),
]


@pytest.mark.parametrize("kwargs, key", BAD_CONFIGS, ids=[",".join(f"{k}={v!r}"[:24] for k, v in kw.items()) for kw, _ in BAD_CONFIGS])
def test_configs_that_break_sampling_are_refused_at_construction(kwargs, key):
    with pytest.raises(ValueError, match=f"`{key}`"):
        BMapAttenuationScheduler(**kwargs)


@pytest.mark.parametrize("kwargs, key", [(dict(beta_end=2.0), "beta_end"), (dict(bmap_min="abc"), "bmap_min"),
                                         (dict(beta_start=-0.1), "beta_start"), (dict(fan_apex=["x", 0]), "fan_apex")])
def test_refused_config_from_a_folder_names_the_key_and_the_file(tmp_path, kwargs, key):
    BMapAttenuationScheduler().save_pretrained(tmp_path)
    path = tmp_path / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(kwargs)
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"scheduler_config.json.*`{key}`") as info:
        BMapAttenuationScheduler.from_pretrained(tmp_path)
    assert str(path) in str(info.value)


def test_refused_config_in_a_pipeline_folder_names_the_file(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _pipeline_fixtures import tiny_semantic_pipeline

    from ultrasound_diffusers import DiffusionPipeline

    tiny_semantic_pipeline().save_pretrained(tmp_path / "pipe")
    path = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["beta_end"] = 5.0
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"scheduler_config\.json: `beta_end` must lie in \(0, 1\)"):
        DiffusionPipeline.from_pretrained(tmp_path / "pipe")


@pytest.mark.parametrize("kwargs", [dict(beta_start=0.001, beta_end=0.001), dict(fan_apex=(np.float32(0.5), 0)),
                                    dict(num_train_timesteps=np.int64(50)), dict(dynamic_thresholding_ratio=1.0),
                                    dict(clip_sample=np.bool_(False)), dict(beta_schedule="squaredcos_cap_v2", beta_end=2.0)])
def test_valid_edge_values_are_accepted(kwargs):
    scheduler = BMapAttenuationScheduler(**kwargs)
    assert torch.isfinite(scheduler.alphas_cumprod).all()


# ------------------------------------------------------------------------------------------------ DDPM at bmap_min=1


def _ddpm_pair(**kwargs):
    ours = BMapAttenuationScheduler(num_train_timesteps=50, bmap_min=1.0, **kwargs)
    theirs = DDPMScheduler.from_config(ours.config)
    return ours, theirs


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(beta_schedule="laplace"), dict(variance_type="learned"), dict(variance_type="learned_range"),
     dict(variance_type="fixed_large"), dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")],
    ids=["default", "laplace", "learned", "learned_range", "fixed_large", "cosine-v"],
)
def test_step_equals_ddpm_at_bmap_min_1(kwargs):
    ours, theirs = _ddpm_pair(**kwargs)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, atol=0, rtol=0)
    learned = ours.config.variance_type.startswith("learned")
    sample, output = _sample_and_output(channels=2 if learned else 1)
    if ours.config.variance_type == "learned":
        output[:, 1:] = output[:, 1:].abs() * 0.01  # variances >= 0
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
    for t in ours.timesteps[:4]:
        a = ours.step(output, t, sample, generator=torch.Generator().manual_seed(int(t))).prev_sample
        b = theirs.step(output, t, sample, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_learned_variance_must_be_non_negative():
    scheduler = BMapAttenuationScheduler(num_train_timesteps=50, variance_type="learned")
    scheduler.set_timesteps(5)
    sample, output = _sample_and_output(channels=2)
    output[:, 1:] = -1.0
    with pytest.raises(ValueError, match="variance_type='learned'.*>= 0"):
        scheduler.step(output, scheduler.timesteps[0], sample, generator=torch.Generator().manual_seed(0))


def test_one_train_step_is_refused_with_the_reason():
    DDPMScheduler(num_train_timesteps=1)  # diffusers accepts it
    with pytest.raises(ValueError, match=r"`num_train_timesteps` must be >= 2.*T - 1"):
        BMapAttenuationScheduler(num_train_timesteps=1, bmap_min=1.0)


# ------------------------------------------------------------------------------------------------ SchedulerCommonTest


def _three_steps(scheduler, sample, output, seed=0, **step_kwargs):
    scheduler.set_timesteps(5)
    generator = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps[:3]:
        sample = scheduler.step(output, t, sample, generator=generator, **step_kwargs).prev_sample
    return sample


@pytest.mark.parametrize("kwargs", CONFIGS[:4] + CONFIGS[6:])
def test_outputs_survive_save_and_load(tmp_path, kwargs):
    scheduler = BMapAttenuationScheduler(**kwargs)
    scheduler.save_pretrained(tmp_path)
    loaded = BMapAttenuationScheduler.from_pretrained(tmp_path)
    channels = 2 if scheduler.config.variance_type == "learned_range" else 1
    sample, output = _sample_and_output(channels=channels)
    torch.testing.assert_close(_three_steps(loaded, sample, output), _three_steps(scheduler, sample, output), atol=0, rtol=0)


def test_step_dict_and_tuple_outputs_agree():
    scheduler = BMapAttenuationScheduler(num_train_timesteps=50)
    scheduler.set_timesteps(5)
    sample, output = _sample_and_output()
    t = scheduler.timesteps[1]
    as_dict = scheduler.step(output, t, sample, generator=torch.Generator().manual_seed(0))
    as_tuple = scheduler.step(output, t, sample, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_dict.prev_sample, as_tuple[0], atol=0, rtol=0)
    torch.testing.assert_close(as_dict.pred_original_sample, as_tuple[1], atol=0, rtol=0)
    assert as_dict.prev_sample.shape == sample.shape and as_dict.prev_sample.dtype == sample.dtype


def test_determinism_with_generators():
    scheduler = BMapAttenuationScheduler(num_train_timesteps=50)
    sample, output = _sample_and_output()
    first = _three_steps(scheduler, sample, output, seed=3)
    second = _three_steps(scheduler, sample, output, seed=3)
    other = _three_steps(scheduler, sample, output, seed=4)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert (first - other).abs().max() > 1e-3


@pytest.mark.parametrize("other_cls", [DDPMScheduler, DDIMScheduler])
def test_from_config_across_compatibles(other_cls):
    """Ours -> compatible -> ours keeps our config; the compatible scheduler gets the shared betas."""
    assert other_cls in BMapAttenuationScheduler._get_compatibles() or other_cls.__name__ in BMapAttenuationScheduler._compatibles
    ours = BMapAttenuationScheduler(num_train_timesteps=60, beta_schedule="squaredcos_cap_v2", bmap_min=0.9,
                                    fan_apex=(0.5, 0.1), timestep_spacing="linspace")
    other = other_cls.from_config(ours.config)
    torch.testing.assert_close(other.alphas_cumprod, ours.alphas_cumprod, atol=0, rtol=0)
    assert other.config.timestep_spacing == "linspace"
    back = BMapAttenuationScheduler.from_config(other.config)
    assert _public(back.config) == _public(ours.config)


def test_from_ddpm_config_at_bmap_min_1_is_ddpm():
    ddpm = DDPMScheduler(num_train_timesteps=40, beta_schedule="scaled_linear", variance_type="fixed_large")
    ours = BMapAttenuationScheduler.from_config(ddpm.config, bmap_min=1.0)
    sample, output = _sample_and_output()
    torch.testing.assert_close(_three_steps(ours, sample, output), _three_steps(ddpm, sample, output), atol=2e-5, rtol=1e-4)


def test_add_noise_and_timesteps_match_ddpm_at_bmap_min_1():
    ours, theirs = _ddpm_pair()
    sample, noise = _sample_and_output()
    t = torch.tensor([0, 49])
    torch.testing.assert_close(ours.add_noise(sample, noise, t), theirs.add_noise(sample, noise, t), atol=1e-6, rtol=1e-5)
    assert len(ours) == len(theirs) == 50
    assert ours.scale_model_input(sample, 3) is sample


# ------------------------------------------------------------------------------------------------ step counts, timesteps


@pytest.mark.parametrize("steps", [True, False, 2.5, 10.0, "10", None, np.float64(3)])
def test_num_inference_steps_must_be_an_integer(steps):
    with pytest.raises(ValueError, match="`num_inference_steps` must be an integer"):
        BMapAttenuationScheduler(num_train_timesteps=50).set_timesteps(steps)


@pytest.mark.parametrize("steps", [np.int64(7), np.int32(7), 7])
def test_numpy_integer_step_counts_are_accepted(steps):
    scheduler = BMapAttenuationScheduler(num_train_timesteps=50)
    scheduler.set_timesteps(steps)
    assert len(scheduler.timesteps) == 7 and scheduler.num_inference_steps == 7


@pytest.mark.parametrize("t", [10.5, torch.tensor(10.5), np.float32(9.25), True])
def test_non_integral_timesteps_are_refused_not_truncated(t):
    scheduler = BMapAttenuationScheduler(num_train_timesteps=50)
    sample, output = _sample_and_output()
    with pytest.raises(ValueError, match="must be an integer step"):
        scheduler.step(output, t, sample)
    with pytest.raises(ValueError, match="must be an integer step"):
        scheduler.add_noise(sample, output, t)
    with pytest.raises(ValueError, match="must be an integer step"):
        scheduler.set_timesteps(timesteps=[40, t, 3])


def test_integral_timesteps_of_any_type_are_accepted():
    scheduler = BMapAttenuationScheduler(num_train_timesteps=50)
    sample, output = _sample_and_output()
    reference = scheduler.add_noise(sample, output, torch.tensor([10, 10]))
    for t in (10, np.int64(10), torch.tensor(10), torch.tensor(10.0), 10.0, np.array([10, 10])):
        torch.testing.assert_close(scheduler.add_noise(sample, output, t), reference, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ public API


def test_public_api_and_step_shapes():
    scheduler = BMapAttenuationScheduler(num_train_timesteps=50)
    assert scheduler.init_noise_sigma == 1.0 and scheduler.order == 1
    sample, output = _sample_and_output()
    assert scheduler.scale_model_input(sample, 3).shape == sample.shape
    for steps in (5, 10):
        scheduler.set_timesteps(steps)
        t0, t1 = scheduler.timesteps[0], scheduler.timesteps[1]
        assert scheduler.step(output, t0, sample).prev_sample.shape == sample.shape
        assert scheduler.step(output, t1, sample).prev_sample.shape == sample.shape


def test_trained_betas_survive_save_and_load(tmp_path):
    betas = np.linspace(1e-4, 0.02, 30)
    scheduler = BMapAttenuationScheduler(num_train_timesteps=30, trained_betas=betas)
    scheduler.save_pretrained(tmp_path)
    loaded = BMapAttenuationScheduler.from_pretrained(tmp_path)
    assert loaded.betas.tolist() == scheduler.betas.tolist()


def test_config_attributes_are_read_through_config():
    scheduler = BMapAttenuationScheduler(num_train_timesteps=30, bmap_min=0.9)
    assert scheduler.config.bmap_min == 0.9 and scheduler.config["num_train_timesteps"] == 30
    assert BMapAttenuationScheduler.from_config(scheduler.config).config.bmap_min == 0.9


def test_add_noise_keeps_device_and_dtype():
    scheduler = BMapAttenuationScheduler(num_train_timesteps=30)
    sample = torch.rand(2, 1, 8, 8, dtype=torch.float16)
    noisy = scheduler.add_noise(sample, torch.randn_like(sample), torch.tensor([3, 20]))
    assert noisy.dtype == torch.float16 and noisy.device == sample.device and torch.isfinite(noisy).all()
