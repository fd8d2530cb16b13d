"""Conformance of BMapAttenuationScheduler with what diffusers' SchedulerCommonTest checks.

Written for this project after the checks of diffusers' ``SchedulerCommonTest`` and ``DDPMSchedulerTest``:
config and output round trips through save_pretrained / from_pretrained, from_config across the compatible
schedulers, dict / tuple step outputs, determinism with generators, DDPM equality at ``bmap_min=1``, plus the
refusal of configs that would break sampling.
"""

from __future__ import annotations

import json
import math

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
