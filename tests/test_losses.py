"""Tests of ultrasound_diffusers.losses against an independent float64 computation of the B-map posterior."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ultrasound_diffusers.losses import (
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    normal_kl,
    variational_bound_terms,
)
from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler

T = 40
HALF_ANGLE = 32.1003690834937


def make_scheduler(**kwargs):
    config = dict(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=0.001,
        beta_end=0.2,
        variance_type="learned_range",
        bmap_schedule="cosine",
        bmap_min=0.5,
        probe_geometry="convex",
    )
    config.update(kwargs)
    return BMapAttenuationScheduler(**config)


# ---------------------------------------------------------------------------------------------------- reference
def reference_signal_levels(height, width, beta_start, beta_end, bmap_min):
    """a_t(p) and alpha_t M_t(p), float64 [T, H, W], straight from the formulas (convex CAMUS fan, cosine b_t)."""
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    t = np.arange(T, dtype=np.float64)
    b = (1.0 - np.cos((t + 0.008) / (1.008 * T) * math.pi / 2)) ** 2
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = xs - 0.5 * width, ys
    r = np.hypot(dx, dy)
    r_out = 250.0 / 256.0 * width
    angle = np.degrees(np.abs(np.arctan2(dx, dy)))
    inside = (angle <= HALF_ANGLE) & (r <= r_out)
    depth = np.where(inside, r / r_out, 0.0)
    M = np.sqrt(1.0 - depth[None] * b[:, None, None] * (1.0 - bmap_min))  # [T, H, W]
    a = abar[:, None, None] * np.cumprod(M, axis=0)
    step_alpha = alphas[:, None, None] * M
    return a, step_alpha


def reference_vb(x0, xt, eps_hat, v, steps, a, step_alpha):
    """Per-sample L_t in bits/dim, float64, written independently of the package."""
    out = []
    for i, t in enumerate(steps):
        at, st = a[t], step_alpha[t]
        aprev = a[t - 1] if t > 0 else np.ones_like(at)
        c0 = (1 - st) * np.sqrt(aprev) / (1 - at)
        ct = (1 - aprev) * np.sqrt(st) / (1 - at)
        var = (1 - st) * (1 - aprev) / (1 - at)
        var1 = (1 - step_alpha[1]) * (1 - a[0]) / (1 - a[1])
        log_var_clipped = np.log(var1) if t == 0 else np.log(var)
        x0_hat = xt[i] / np.sqrt(at) - np.sqrt(1 / at - 1) * eps_hat[i]
        mean_q = c0 * x0[i] + ct * xt[i]
        mean_p = c0 * x0_hat + ct * xt[i]
        frac = (v[i] + 1) / 2
        log_var_p = frac * np.log(1 - st) + (1 - frac) * log_var_clipped
        if t == 0:
            sd = np.exp(0.5 * log_var_p)
            lo = np.where(x0[i] < -0.999, -np.inf, x0[i] - 1 / 255)
            hi = np.where(x0[i] > 0.999, np.inf, x0[i] + 1 / 255)
            p = norm.cdf(hi, loc=mean_p, scale=sd) - norm.cdf(lo, loc=mean_p, scale=sd)
            out.append(-np.mean(np.log(p)) / math.log(2))
        else:
            s1, s2 = np.exp(0.5 * log_var_clipped), np.exp(0.5 * log_var_p)
            kl = np.log(s2 / s1) + (s1**2 + (mean_q - mean_p) ** 2) / (2 * s2**2) - 0.5
            out.append(np.mean(kl) / math.log(2))
    return np.array(out)


def random_batch(steps, channels=1, height=16, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(steps)
    # x_0 on the uint8 grid in [-1, 1], including the two edge bins.
    levels = torch.randint(0, 256, (b, channels, height, width), generator=g)
    levels[:, :, 0, 0] = 0
    levels[:, :, 0, 1] = 255
    x0 = levels.double() / 127.5 - 1.0
    noise = torch.randn(b, channels, height, width, generator=g, dtype=torch.float64)
    eps_hat = noise + 0.3 * torch.randn(b, channels, height, width, generator=g, dtype=torch.float64)
    v = torch.rand(b, channels, height, width, generator=g, dtype=torch.float64) * 2 - 1
    return x0, noise, eps_hat, v


# ---------------------------------------------------------------------------------------------------- tests
def test_vb_matches_independent_float64_computation():
    sched = make_scheduler()
    steps = [0, 1, 7, 20, T - 1]
    x0, noise, eps_hat, v = random_batch(steps, channels=2)
    t = torch.tensor(steps)
    xt = sched.add_noise(x0, noise, t)
    a, step_alpha = reference_signal_levels(16, 16, 0.001, 0.2, 0.5)

    # the noisy sample itself follows q(x_t | x_0) with the reference a_t
    a_b = torch.from_numpy(a[steps])[:, None]
    assert torch.allclose(xt, a_b.sqrt() * x0 + (1 - a_b).sqrt() * noise, atol=1e-5)

    got = variational_bound_terms(sched, eps_hat, v, x0, xt, t, prediction_type="epsilon")
    want = reference_vb(x0.numpy(), xt.numpy(), eps_hat.numpy(), v.numpy(), steps, a, step_alpha)
    assert got.shape == (len(steps),)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-4, atol=1e-6)
    # the B-map really matters here: the plain DDPM posterior gives different terms
    plain = variational_bound_terms(make_scheduler(bmap_min=1.0), eps_hat, v, x0, xt, t, prediction_type="epsilon")
    assert not np.allclose(plain.double().numpy(), want, rtol=1e-2)


def test_hybrid_loss_combines_mse_and_scaled_vb():
    sched = make_scheduler()
    steps = [0, 3, 11, T - 1]
    x0, noise, eps_hat, v = random_batch(steps, seed=1)
    t = torch.tensor(steps)
    xt = sched.add_noise(x0, noise, t).float()
    out = torch.cat([eps_hat, v], dim=1).float()
    res = hybrid_loss(sched, out, x0.float(), noise.float(), xt, t, vb_weight=0.001)
    a, step_alpha = reference_signal_levels(16, 16, 0.001, 0.2, 0.5)
    vb = reference_vb(x0.numpy(), xt.double().numpy(), eps_hat.float().double().numpy(),
                      v.float().double().numpy(), steps, a, step_alpha)
    mse = ((eps_hat - noise) ** 2).mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(res.mse.double().numpy(), mse, rtol=1e-5)
    np.testing.assert_allclose(res.vb.double().numpy(), vb, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(float(res.loss), float(np.mean(mse + 0.001 * T * vb)), rtol=1e-3)
    # vb_weight scales only the VB part
    res0 = hybrid_loss(sched, out, x0.float(), noise.float(), xt, t, vb_weight=0.0)
    np.testing.assert_allclose(float(res0.loss), float(mse.mean()), rtol=1e-5)


def test_vb_trains_only_the_variance():
    sched = make_scheduler()
    steps = [0, 5, 30]
    x0, noise, eps_hat, v = random_batch(steps, seed=2)
    t = torch.tensor(steps)
    xt = sched.add_noise(x0, noise, t).float()
    out = torch.cat([eps_hat, v], dim=1).float().requires_grad_(True)
    res = hybrid_loss(sched, out, x0.float(), noise.float(), xt, t, vb_weight=1.0)
    res.vb.sum().backward()
    assert torch.count_nonzero(out.grad[:, :1]) == 0  # stop-gradient on the mean
    assert torch.count_nonzero(out.grad[:, 1:]) > 0
    out.grad = None
    res = hybrid_loss(sched, out, x0.float(), noise.float(), xt, t, vb_weight=1.0)
    res.loss.backward()
    expected_mean_grad = 2 * (eps_hat.float() - noise.float()) / (16 * 16) / len(steps)
    assert torch.allclose(out.grad[:, :1], expected_mean_grad, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_perfect_prediction_gives_zero_loss_for_t_positive(prediction_type):
    sched = make_scheduler(prediction_type=prediction_type)
    steps = [1, 9, 25, T - 1]
    x0, noise, _, _ = random_batch(steps, seed=3)
    x0, noise = x0.float(), noise.float()
    t = torch.tensor(steps)
    xt = sched.add_noise(x0, noise, t)
    target = {"epsilon": noise, "sample": x0, "v_prediction": sched.get_velocity(x0, noise, t)}[prediction_type]
    out = torch.cat([target, -torch.ones_like(target)], dim=1)  # v = -1: the (clipped) posterior variance
    res = hybrid_loss(sched, out, x0, noise, xt, t)
    assert torch.allclose(res.mse, torch.zeros_like(res.mse))
    assert res.vb.abs().max() < 1e-4
    # a wrong prediction raises the KL
    res_bad = hybrid_loss(sched, out + 0.5, x0, noise, xt, t)
    assert bool((res_bad.vb > res.vb + 1e-5).all())


def test_velocity_target_matches_diffusers_ddpm_when_bmap_is_off():
    from diffusers import DDPMScheduler

    sched = make_scheduler(bmap_min=1.0, prediction_type="v_prediction", variance_type="fixed_small")
    ddpm = DDPMScheduler(num_train_timesteps=T, beta_start=0.001, beta_end=0.2, prediction_type="v_prediction")
    x0, noise, _, _ = random_batch([3, 17], seed=4)
    x0, noise = x0.float(), noise.float()
    t = torch.tensor([3, 17])
    xt = sched.add_noise(x0, noise, t)
    assert torch.allclose(xt, ddpm.add_noise(x0, noise, t), atol=1e-6)
    target = ddpm.get_velocity(x0, noise, t)
    res = hybrid_loss(sched, target, x0, noise, xt, t)  # no variance channels: MSE only
    assert torch.allclose(res.mse, torch.zeros(2), atol=1e-10)
    assert torch.count_nonzero(res.vb) == 0


def test_discretized_gaussian_is_a_distribution_over_256_bins():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    for mean, log_scale in [(0.1, -2.0), (-0.95, -4.0), (0.999, -1.0), (0.0, 1.5)]:
        ll = discretized_gaussian_log_likelihood(
            levels, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64)
        )
        assert bool((ll <= 0).all())
        assert abs(float(ll.exp().sum()) - 1.0) < 1e-9
    # a very sharp Gaussian on a bin centre puts all the mass there
    ll = discretized_gaussian_log_likelihood(levels[100:101], levels[100:101], torch.tensor([-12.0], dtype=torch.float64))
    assert abs(float(ll)) < 1e-9


def test_normal_kl_closed_form():
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([0.1, 2.0])
    lv1, lv2 = torch.tensor([-1.0, 0.5]), torch.tensor([0.2, -0.3])
    kl = normal_kl(m1, lv1, m2, lv2)
    s1, s2 = torch.exp(0.5 * lv1), torch.exp(0.5 * lv2)
    want = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert torch.allclose(kl, want, atol=1e-6)
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros(2))


def test_bad_shapes_raise_value_error():
    sched = make_scheduler()
    x0 = torch.zeros(2, 1, 8, 8)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="model_output"):
        hybrid_loss(sched, torch.zeros(2, 3, 8, 8), x0, x0, x0, t)
    with pytest.raises(ValueError, match="model_output"):
        hybrid_loss(sched, torch.zeros(2, 1, 8, 8), x0, x0, x0, t, learn_sigma=True)
    with pytest.raises(ValueError, match="timesteps"):
        hybrid_loss(sched, torch.zeros(2, 2, 8, 8), x0, x0, x0, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="prediction_type"):
        hybrid_loss(sched, torch.zeros(2, 2, 8, 8), x0, x0, x0, t, prediction_type="x0")
