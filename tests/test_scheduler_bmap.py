"""Tests of BMapAttenuationScheduler against an independent float64 implementation of REFERENCE.md §1."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ultrasound_diffusers import BMapAttenuationScheduler

# --------------------------------------------------------------------------------------------- reference model
# Written from the equations, with loops and numpy, deliberately unlike the package code.


def ref_b(name, T, buffer=False):
    if buffer:
        n = int(0.05 * T)
        return np.concatenate([np.full(n, 1e-8), ref_b(name, T - n)])
    out = np.zeros(T)
    for t in range(T):
        if name == "linear":
            out[t] = t / (T - 1)
        elif name == "cosine":
            out[t] = (1 - math.cos(((t + 0.008) / (1.008 * T)) * math.pi / 2)) ** 2
        elif name == "normal_cosine":
            out[t] = (1 - math.cos(math.pi * t / (T - 1))) / 2
        elif name == "sqrt":
            out[t] = math.sqrt(t / (T - 1))
    return out


def ref_depth(H, W, geometry, apex=(0.5, 0.0), radii=(0.0, 250 / 256), half=32.1003690834937):
    d = np.zeros((H, W))
    inside = np.zeros((H, W), bool)
    for y in range(H):
        for x in range(W):
            if geometry == "linear":
                d[y, x] = y / (H - 1)
                inside[y, x] = True
                continue
            dx, dy = x - apex[0] * W, y - apex[1] * W
            r = math.hypot(dx, dy)
            ang = math.degrees(math.atan2(dx, dy))
            if abs(ang) <= half and radii[0] * W <= r <= radii[1] * W:
                inside[y, x] = True
                d[y, x] = (r - radii[0] * W) / ((radii[1] - radii[0]) * W)
    return d, inside


def ref_M(H, W, geometry, b, eps, preserve=False):
    """[T, H, W] per-step B-maps."""
    d, inside = ref_depth(H, W, geometry)
    T = len(b)
    M = np.ones((T, H, W))
    for t in range(T):
        lb = 1 - b[t] * (1 - eps)
        if not preserve:
            M[t] = np.sqrt(1 - d * (1 - lb))
        elif geometry == "linear":
            P = int(H * (1 - b[t]))
            col = np.ones(H)
            if H - P > 1:
                col[P:] = np.linspace(1, lb, H - P)
            M[t] = np.sqrt(col)[:, None] * np.ones((1, W))
        else:
            pr = 1 - b[t]
            for y in range(H):
                for x in range(W):
                    if inside[y, x] and d[y, x] >= pr:
                        M[t, y, x] = math.sqrt(1 - (d[y, x] - pr) / (1 - pr) * (1 - lb))
    return M


def ref_signal(abar, M):
    """a_t = abar_t * prod_{s<=t} M_s, with abar_t taken from diffusers' DDPMScheduler (same betas)."""
    abar = np.asarray(abar, dtype=np.float64)
    return abar[:, None, None] * np.cumprod(M, axis=0)


def ddpm_abar(s):
    c = s.config
    return DDPMScheduler(c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule).alphas_cumprod.numpy()


def make(**kw):
    base = dict(num_train_timesteps=50, beta_schedule="linear", beta_start=1e-3, beta_end=0.2, clip_sample=False)
    base.update(kw)
    return BMapAttenuationScheduler(**base)


# --------------------------------------------------------------------------------------------- equations
@pytest.mark.parametrize("name", ["linear", "cosine", "normal_cosine", "sqrt"])
@pytest.mark.parametrize("buffer", [False, True])
def test_time_schedules_match_reference(name, buffer):
    s = make(bmap_schedule=name, bmap_buffer=buffer, num_train_timesteps=100)
    np.testing.assert_allclose(s.bmap_b.numpy(), ref_b(name, 100, buffer), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", ["linear", "convex"])
@pytest.mark.parametrize("preserve", [False, True])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_signal_level_and_bmaps_match_reference(geometry, preserve, schedule):
    H, W, eps = 12, 16, 0.6
    s = make(bmap_schedule=schedule, bmap_min=eps, probe_geometry=geometry, preserve_length=preserve)
    M = ref_M(H, W, geometry, ref_b(schedule, 50), eps, preserve)
    a = ref_signal(ddpm_abar(s), M)
    for t in [0, 1, 17, 30, 49]:
        np.testing.assert_allclose(s.bmap(t, (1, 1, H, W))[0, 0].numpy(), M[t], rtol=1e-10)
        np.testing.assert_allclose(s.signal_level(t, (1, 1, H, W))[0, 0].numpy(), a[t], rtol=1e-6)
    # out of order, repeated and per-batch requests go through the cache paths
    got = s.signal_level(torch.tensor([49, 3, 49, 25]), (4, 2, H, W))
    for i, t in enumerate([49, 3, 49, 25]):
        np.testing.assert_allclose(got[i, 0].numpy(), a[t], rtol=1e-6)


def test_depth_grows_and_outside_fan_is_untouched():
    s = make(bmap_min=0.5)
    d, inside = s.depth_map(64, 64)
    rd, rin = ref_depth(64, 64, "convex")
    assert torch.equal(inside, torch.from_numpy(rin))
    np.testing.assert_allclose(d.numpy(), rd, atol=1e-12)
    c = s.cumulative_bmap(49, (1, 1, 64, 64))[0, 0]
    assert torch.all(c[~inside] == 1.0)
    col = c[:, 32]
    assert torch.all(col[1:60] <= col[:59])  # deeper pixels lose more signal along the central beam
    assert col[60] < 0.5 * col[0]


def test_posterior_matches_reference_formulas():
    H, W, eps = 10, 10, 0.7
    s = make(bmap_min=eps, probe_geometry="linear", variance_type="learned_range")
    M = ref_M(H, W, "linear", ref_b("cosine", 50), eps)
    a = ref_signal(ddpm_abar(s), M)
    # alpha_t = abar_t / abar_{t-1} with diffusers' float32 abar (what DDPMScheduler uses as current_alpha_t)
    abar = ddpm_abar(s)
    alpha = abar / np.concatenate([[1.0], abar[:-1]])
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(3, 1, H, W, generator=g, dtype=torch.float64), torch.randn(3, 1, H, W, generator=g, dtype=torch.float64)
    ts = torch.tensor([0, 7, 49])
    mean, var, logvar = s.q_posterior_mean_variance(x0, xt, ts)
    v = torch.rand(3, 1, H, W, generator=g, dtype=torch.float64) * 2 - 1
    mlv = s.model_log_variance(v, ts)
    for i, t in enumerate(ts.tolist()):
        ap = a[t - 1] if t > 0 else np.ones((H, W))
        am = alpha[t] * M[t]
        c0 = (1 - am) * np.sqrt(ap) / (1 - a[t])
        ct = (1 - ap) * np.sqrt(am) / (1 - a[t])
        pv = (1 - am) * (1 - ap) / (1 - a[t])
        np.testing.assert_allclose(mean[i, 0].numpy(), c0 * x0[i, 0].numpy() + ct * xt[i, 0].numpy(), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(var[i, 0].numpy(), pv, rtol=1e-6, atol=1e-15)
        if t == 0:  # clipped to the t = 1 value, as improved-diffusion
            am1 = alpha[1] * M[1]
            pv = (1 - am1) * (1 - a[0]) / (1 - a[1])
        np.testing.assert_allclose(logvar[i, 0].numpy(), np.log(pv), rtol=1e-6)
        f = (v[i, 0].numpy() + 1) / 2
        np.testing.assert_allclose(mlv[i, 0].numpy(), f * np.log(1 - am) + (1 - f) * np.log(pv), rtol=1e-6)
    assert torch.isfinite(logvar).all()
    # eps <-> x0 conversions invert each other and match add_noise
    noise = torch.randn_like(x0)
    xt2 = s.add_noise(x0, noise, ts)
    torch.testing.assert_close(s.predict_start_from_noise(xt2, ts, noise), x0)
    torch.testing.assert_close(s.predict_noise_from_start(xt2, ts, x0), noise)


def test_respaced_step_keeps_signal_levels():
    """A respaced ancestral step uses the per-pixel factor a_t / a_prev between kept steps."""
    H, W = 8, 8
    s = make(bmap_min=0.5, probe_geometry="linear", timestep_spacing="linspace", variance_type="fixed_small")
    s.set_timesteps(6)
    assert s.timesteps.tolist() == list(np.linspace(0, 49, 6).round()[::-1].astype(int))
    M = ref_M(H, W, "linear", ref_b("cosine", 50), 0.5)
    a = ref_signal(ddpm_abar(s), M)
    x = torch.randn(1, 1, H, W, dtype=torch.float64)
    eps = torch.randn_like(x)
    noise = torch.randn_like(x)
    t, tp = int(s.timesteps[1]), int(s.timesteps[2])
    out = s.step(eps, t, x, variance_noise=noise).prev_sample[0, 0].numpy()
    at, ap = a[t], a[tp]
    x0 = (x[0, 0].numpy() - np.sqrt(1 - at) * eps[0, 0].numpy()) / np.sqrt(at)
    beta = 1 - at / ap
    mean = beta * np.sqrt(ap) / (1 - at) * x0 + (1 - ap) * np.sqrt(at / ap) / (1 - at) * x[0, 0].numpy()
    std = np.sqrt(beta * (1 - ap) / (1 - at))
    np.testing.assert_allclose(out, mean + std * noise[0, 0].numpy(), rtol=1e-6, atol=1e-9)
    # DDIM-style update with eta = 0 uses the same per-pixel levels
    out = s.step(eps, t, x, eta=0.0).prev_sample[0, 0].numpy()
    np.testing.assert_allclose(out, np.sqrt(ap) * x0 + np.sqrt(1 - ap) * eps[0, 0].numpy(), rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------------- diffusers equivalence
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_bmap_min_one_is_ddpm(variance_type, prediction_type, beta_schedule):
    kw = dict(variance_type=variance_type, prediction_type=prediction_type, beta_schedule=beta_schedule)
    ours, ddpm = BMapAttenuationScheduler(bmap_min=1.0, **kw), DDPMScheduler(**kw)
    ours.set_timesteps(25)
    ddpm.set_timesteps(25)
    assert torch.equal(ours.timesteps, ddpm.timesteps)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 12, 20, generator=g) * 2 - 1
    noise = torch.randn(3, 2, 12, 20, generator=g)
    ts = torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, ts), ddpm.add_noise(x0, noise, ts), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.get_velocity(x0, noise, ts), ddpm.get_velocity(x0, noise, ts), rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 2, 12, 20, generator=g)
    channels = 4 if variance_type == "learned_range" else 2
    for t in ours.timesteps:
        out = torch.randn(3, channels, 12, 20, generator=g)
        a = ours.step(out, t, x, generator=torch.Generator().manual_seed(int(t)))
        b = ddpm.step(out, t, x, generator=torch.Generator().manual_seed(int(t)))
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-4, atol=2e-5)
        x = b.prev_sample


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_bmap_min_one_is_ddim(prediction_type, eta):
    ours = BMapAttenuationScheduler(bmap_min=1.0, prediction_type=prediction_type)
    ddim = DDIMScheduler(prediction_type=prediction_type)
    ours.set_timesteps(10)
    ddim.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 9, 9, generator=g)
    for t in ours.timesteps:
        out = torch.randn(2, 1, 9, 9, generator=g)
        noise = torch.randn(2, 1, 9, 9, generator=g)
        a = ours.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        b = ddim.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)
        x = b


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_bmap_min_one_with_clipped_model_output_is_ddim(prediction_type, tmp_path):
    """use_clipped_model_output (a step argument, or the configured default) matches DDIMScheduler's; outputs
    large enough that x_0 is clipped, where it changes the step."""
    ddim = DDIMScheduler(prediction_type=prediction_type)
    configured = BMapAttenuationScheduler(bmap_min=1.0, prediction_type=prediction_type, use_clipped_model_output=True)
    configured.save_pretrained(tmp_path)
    assert BMapAttenuationScheduler.from_pretrained(tmp_path).config.use_clipped_model_output is True
    per_call = BMapAttenuationScheduler(bmap_min=1.0, prediction_type=prediction_type)
    for s in (ddim, configured, per_call):
        s.set_timesteps(10)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 9, 9, generator=g)
    changed = 0.0
    for t in ddim.timesteps:
        out = 3.0 * torch.randn(2, 1, 9, 9, generator=g)
        b = ddim.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(configured.step(out, t, x, eta=0.0).prev_sample, b, rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(per_call.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample, b,
                                   rtol=1e-4, atol=2e-5)
        changed = max(changed, float((per_call.step(out, t, x, eta=0.0).prev_sample - b).abs().max()))
        x = b
    assert changed > 1e-2  # the default (False) is diffusers' plain DDIM step, which differs where x_0 is clipped
    with pytest.raises(ValueError, match="use_clipped_model_output"):
        BMapAttenuationScheduler(use_clipped_model_output="yes")


def test_sampler_config_selects_ddim():
    s = BMapAttenuationScheduler(sampler="ddim")
    s.set_timesteps(5)
    x, out = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    t = s.timesteps[0]
    torch.testing.assert_close(s.step(out, t, x).prev_sample, s.step(out, t, x, eta=0.0).prev_sample)
    # ancestral DDPM differs from DDIM and is random
    s2 = BMapAttenuationScheduler()
    s2.set_timesteps(5)
    assert not torch.allclose(s2.step(out, t, x).prev_sample, s.step(out, t, x).prev_sample)


# --------------------------------------------------------------------------------------------- diffusers API
def test_save_load_round_trip_and_from_config(tmp_path):
    s = BMapAttenuationScheduler(
        bmap_min=0.9, bmap_schedule="sqrt", probe_geometry="linear", preserve_length=True, bmap_buffer=True,
        variance_type="learned_range", beta_schedule="linear_small",
    )
    s.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert cfg["_class_name"] == "BMapAttenuationScheduler" and cfg["bmap_min"] == 0.9 and cfg["preserve_length"]
    loaded = BMapAttenuationScheduler.from_pretrained(tmp_path)
    for sched in (s, loaded):
        sched.set_timesteps(4)
    x, out = torch.randn(2, 1, 8, 32), torch.randn(2, 2, 8, 32)
    for t in s.timesteps:
        a = s.step(out, t, x, generator=torch.Generator().manual_seed(3)).prev_sample
        b = loaded.step(out, t, x, generator=torch.Generator().manual_seed(3)).prev_sample
        assert torch.equal(a, b)
    # swapping schedulers the diffusers way
    ddpm = DDPMScheduler.from_config(s.config)
    assert ddpm.config.num_train_timesteps == 1000 and ddpm.config.variance_type == "learned_range"
    back = BMapAttenuationScheduler.from_config(DDIMScheduler().config)
    assert back.config.bmap_min == 0.97 and back.config.probe_geometry == "convex"
    assert "DDPMScheduler" in [c.__name__ for c in s.compatibles]


def test_linear_small_betas():
    s = BMapAttenuationScheduler(num_train_timesteps=500, beta_schedule="linear_small")
    torch.testing.assert_close(s.betas[[0, -1]], torch.tensor([0.0002, 0.002]))
    # stored as the equivalent linear schedule, which diffusers' DDPMScheduler can load
    assert s.config.beta_schedule == "linear"
    torch.testing.assert_close(DDPMScheduler.from_config(s.config).betas, s.betas)


def test_add_noise_timestep_forms_and_dtypes():
    s = BMapAttenuationScheduler()
    x0 = torch.rand(3, 3, 16, 24)
    noise = torch.randn_like(x0)
    a = s.add_noise(x0, noise, 400)
    b = s.add_noise(x0, noise, torch.tensor([400]))
    c = s.add_noise(x0, noise, torch.tensor([400, 400, 400]))
    assert torch.equal(a, b) and torch.equal(a, c)
    half = s.add_noise(x0.half(), noise.half(), torch.tensor(400))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), a, atol=2e-3, rtol=1e-2)
    with pytest.raises(ValueError, match="timesteps"):
        s.add_noise(x0, noise, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="timesteps"):
        s.add_noise(x0, noise, 1000)


def test_rectangular_lung_maps_and_3d_channels():
    s = BMapAttenuationScheduler(probe_geometry="linear", num_train_timesteps=4000, bmap_schedule="linear")
    s.set_timesteps(8)
    x = torch.randn(2, 1, 8, 256)
    for t in s.timesteps:
        x = s.step(torch.randn(2, 1, 8, 256), t, x).prev_sample
    assert x.shape == (2, 1, 8, 256) and torch.isfinite(x).all()
    level = s.signal_level(3999, x.shape)[0, 0]
    assert torch.all(level[-1] < level[0])  # bottom rows lose more signal
    convex = BMapAttenuationScheduler()
    d, inside = convex.depth_map(64, 128)  # non-square fan: scales with the width, clipped by the height
    assert inside.any() and d.max() <= 1.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(bmap_schedule="exp"), "bmap_schedule"),
        (dict(beta_schedule="quadratic"), "beta_schedule"),
        (dict(bmap_min=0.0), "bmap_min"),
        (dict(bmap_min=1.5), "bmap_min"),
        (dict(probe_geometry="phased-array"), "probe_geometry"),
        (dict(variance_type="learned_wide"), "variance_type"),
        (dict(prediction_type="score"), "prediction_type"),
        (dict(fan_radii=(0.5, 0.2)), "fan_radii"),
        (dict(fan_half_angle_deg=0.0), "fan_half_angle_deg"),
        (dict(sampler="euler"), "sampler"),
    ],
)
def test_bad_configuration_names_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BMapAttenuationScheduler(**kwargs)


def test_bad_samples_are_rejected():
    s = BMapAttenuationScheduler(fan_apex=(5.0, 5.0))
    with pytest.raises(ValueError, match="fan"):
        s.signal_level(10, (1, 1, 32, 32))
    s = BMapAttenuationScheduler()
    with pytest.raises(ValueError, match="shape"):
        s.signal_level(10, (32, 32))
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="channels"):
        s.step(torch.randn(1, 3, 8, 8), s.timesteps[0], torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="learned_range"):
        BMapAttenuationScheduler(variance_type="learned_range").step(torch.randn(1, 1, 8, 8), 5, torch.randn(1, 1, 8, 8))


def test_memory_is_linear_in_steps_plus_pixels():
    """At 256 x 256 and T = 1000 the schedule must hold a few MB, never T*H*W (4.7 GB in the published code)."""
    s = BMapAttenuationScheduler(num_train_timesteps=1000)
    s.set_timesteps(20)
    x = torch.zeros(1, 1, 256, 256)
    for t in s.timesteps:
        x = s.step(torch.zeros_like(x), t, x).prev_sample
    s.add_noise(torch.zeros(4, 1, 256, 256), torch.zeros(4, 1, 256, 256), torch.tensor([1, 300, 600, 999]))

    from ultrasound_diffusers.utils.memory import tensor_nbytes

    held = tensor_nbytes(s)
    assert held > 256 * 256 * 8  # the accounting does see the cached depth grid
    assert held < 16 * 2**20, f"scheduler holds {held / 2**20:.1f} MB"
    assert held < 1000 * 256 * 256 * 4 / 50  # far below one float32 [T, H, W] tensor
