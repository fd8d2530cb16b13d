"""The probe has one home (ultrasound_diffusers.geometry): one validation rule, one depth map, one set of flags."""

import argparse
import math

import numpy as np
import pytest
import torch

from ultrasound_diffusers.geometry import (
    CAMUS_FAN_APEX,
    CAMUS_FAN_HALF_ANGLE_DEG,
    CAMUS_FAN_RADII,
    FanGeometry,
    add_geometry_arguments,
    depth_map,
    geometry_from_args,
)


def test_camus_fan_depth_matches_the_definition():
    g = FanGeometry()
    depth, inside = g.depth_map(64, 64)
    assert depth.dtype == torch.float64 and inside.dtype == torch.bool
    # the apex pixel column at the top row has depth 0; the outer radius along the axis has depth 1
    r_out = CAMUS_FAN_RADII[1] * 64
    row = int(math.floor(r_out))
    assert bool(inside[row, 32]) and depth[row, 32].item() == pytest.approx(row / r_out)
    # a pixel beyond the half-angle is outside and does not attenuate
    assert not bool(inside[5, 0]) and depth[5, 0].item() == 0.0
    assert float(depth.max()) <= 1.0 and float(depth.min()) >= 0.0


def test_linear_probe_depth_is_the_row():
    depth, inside = FanGeometry.linear().depth_map(5, 3)
    assert bool(inside.all())
    assert torch.allclose(depth[:, 0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))


def test_config_round_trip_and_scheduler_view():
    from ultrasound_diffusers.schedulers import BMapAttenuationScheduler, BMapDPMSolverMultistepScheduler

    g = FanGeometry(apex=(0.5, -0.1), radii=(0.1, 0.9), half_angle_deg=40.0)
    sched = BMapAttenuationScheduler(num_train_timesteps=10, **g.to_config())
    assert sched.geometry == g and FanGeometry.from_config(sched.config) == g and FanGeometry.from_config(sched) == g
    assert torch.equal(sched.depth_map(16, 16)[0], g.depth_map(16, 16)[0])
    dpm = BMapDPMSolverMultistepScheduler(num_train_timesteps=10, **g.to_config())
    assert dpm.geometry == g
    # diffusers' own schedulers carry no probe: a linear one (or the given default)
    from diffusers import DDPMScheduler

    assert FanGeometry.from_config(DDPMScheduler()) == FanGeometry.linear()
    assert FanGeometry.from_config(DDPMScheduler(), default=FanGeometry.camus()) == FanGeometry()
    assert FanGeometry.from_dict(g.to_dict()) == g and FanGeometry.from_dict(g.to_config()) == g


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(half_angle_deg=90.0), "fan_half_angle_deg"),
        (dict(half_angle_deg=0.0), "fan_half_angle_deg"),
        (dict(half_angle_deg=120.0), "fan_half_angle_deg"),
        (dict(radii=(0.5, 0.2)), "fan_radii"),
        (dict(apex=(0.5, float("nan"))), "fan_apex"),
        (dict(probe_geometry="phased"), "probe_geometry"),
    ],
)
def test_one_validation_rule_everywhere(kwargs, match):
    """The scheduler, the phantoms' probe, the operators, the channel-data acquisition and the evaluation refuse the
    same fans with the same words."""
    from ultrasound_diffusers.acoustics.simulation import ChannelAcquisition
    from ultrasound_diffusers.data.phantoms import ProbeGeometry
    from ultrasound_diffusers.operators import DepthAttenuation, MissingScanLines, shadow_mask
    from ultrasound_diffusers.schedulers import BMapAttenuationScheduler

    with pytest.raises(ValueError, match=match):
        FanGeometry(**kwargs)
    config = FanGeometry().to_config()
    for key, value in kwargs.items():
        config[{"apex": "fan_apex", "radii": "fan_radii", "half_angle_deg": "fan_half_angle_deg"}.get(key, key)] = value
    with pytest.raises(ValueError, match=match):
        BMapAttenuationScheduler(num_train_timesteps=10, **config)
    loose = {k: v for k, v in config.items()}
    if config["probe_geometry"] == "convex":  # the operators take the same loose keywords
        with pytest.raises(ValueError, match=match):
            MissingScanLines(2, **loose)
        with pytest.raises(ValueError, match=match):
            DepthAttenuation(**loose)
        with pytest.raises(ValueError, match=match):
            shadow_mask((16, 16), **loose)
    probe_kwargs = {"geometry": config["probe_geometry"], "apex": config["fan_apex"], "radii": config["fan_radii"],
                    "half_angle_deg": config["fan_half_angle_deg"]}
    with pytest.raises(ValueError, match=match):
        ProbeGeometry(**probe_kwargs)
    if match != "probe_geometry":
        with pytest.raises(ValueError, match=match):
            ChannelAcquisition(fan_apex=config["fan_apex"], fan_radii=config["fan_radii"],
                               fan_half_angle_deg=config["fan_half_angle_deg"])


def test_phantoms_scheduler_and_operators_share_the_fan():
    from ultrasound_diffusers.data.phantoms import ProbeGeometry, make_phantom
    from ultrasound_diffusers.operator_registry import make_operator
    from ultrasound_diffusers.operators import MissingScanLines
    from ultrasound_diffusers.schedulers import BMapAttenuationScheduler

    sched = BMapAttenuationScheduler.from_preset("camus-sdm")
    assert ProbeGeometry().fan == sched.geometry == FanGeometry.camus()
    op = make_operator("missing_lines:2", scheduler=sched)
    assert isinstance(op, MissingScanLines) and op.geometry == sched.geometry and op.probe_geometry == "convex"
    # the phantom's zero region is exactly the outside of the scheduler's fan
    image, _, _ = make_phantom("echo", size=48, seed=3)
    inside = sched.geometry.fan_mask(48, 48).numpy()
    assert np.all(np.asarray(image)[~inside] == 0)


def test_operators_built_directly_default_to_a_linear_probe():
    from ultrasound_diffusers.operators import DepthAttenuation, MissingScanLines, shadow_mask

    assert MissingScanLines(2).geometry == FanGeometry.linear()
    assert DepthAttenuation().geometry == FanGeometry.linear()
    linear = shadow_mask((16, 16))
    assert torch.equal(linear, shadow_mask((16, 16), geometry=FanGeometry.linear()))
    sector = shadow_mask((16, 16), geometry=FanGeometry())
    assert not torch.equal(linear, sector)


def test_cli_flags_build_one_geometry():
    parser = argparse.ArgumentParser()
    add_geometry_arguments(parser)
    args = parser.parse_args([])
    assert geometry_from_args(args) == FanGeometry()
    args = parser.parse_args(["--probe_geometry", "convex", "--fan_half_angle_deg", "40", "--fan_radii", "0.1", "0.8"])
    g = geometry_from_args(args)
    assert g.half_angle_deg == 40.0 and g.radii == (0.1, 0.8) and g.apex == CAMUS_FAN_APEX
    args = parser.parse_args(["--probe_geometry", "linear"])
    assert geometry_from_args(args).probe_geometry == "linear"
    unset = argparse.ArgumentParser()
    add_geometry_arguments(unset, default_probe=None)
    base = FanGeometry(half_angle_deg=20.0)
    assert geometry_from_args(unset.parse_args([]), base=base) == base


def test_evaluate_and_bmaps_commands_use_the_flags(tmp_path):
    from ultrasound_diffusers.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["evaluate", "--real", "a", "--generated", "b", "--out", "c", "--fan_half_angle_deg", "30"])
    assert geometry_from_args(args).half_angle_deg == 30.0
    out = tmp_path / "b.png"
    args = parser.parse_args(["bmaps", "--size", "16", "--num", "2", "--fan_half_angle_deg", "20", "--out", str(out)])
    assert args.func(args) == 0 and out.is_file()


def test_module_level_functions_match_the_object():
    g = FanGeometry(half_angle_deg=CAMUS_FAN_HALF_ANGLE_DEG)
    d1, i1 = depth_map(20, 30)
    d2, i2 = g.depth_map(20, 30)
    assert torch.equal(d1, d2) and torch.equal(i1, i2)
    lateral = g.lateral_position(20, 30)
    assert float(lateral[i1].abs().max()) <= 0.5 + 1e-12
