"""The per-pixel diffusion math has one home (schedulers/diffusion_math.py): the scheduler, the losses and the
reconstruction pipeline agree with it and with the equations, and the VB misconfiguration is refused."""

import pytest
import torch

from ultrasound_diffusers.losses import hybrid_loss, predict_start_from_model_output, prediction_target
from ultrasound_diffusers.schedulers import BMapAttenuationScheduler
from ultrasound_diffusers.schedulers.diffusion_math import (
    SignalLevels,
    forward_transition,
    model_output_from_original,
    noise_from_model_output,
    original_from_model_output,
    posterior_terms,
    velocity,
)

KINDS = ("epsilon", "sample", "v_prediction")


def _batch(seed=0, shape=(2, 1, 12, 12)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_conversions_follow_the_equations(kind):
    """x_t = sqrt(a) x0 + sqrt(1 - a) eps, v = sqrt(a) eps - sqrt(1 - a) x0: every conversion recovers x0 and eps."""
    x0, eps = _batch(1)
    a = torch.linspace(0.05, 0.95, 12, dtype=torch.float64).view(1, 1, 1, 12)  # a per-pixel level
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[kind]
    assert torch.allclose(original_from_model_output(target, x_t, a, kind), x0, atol=1e-12)
    assert torch.allclose(noise_from_model_output(target, x_t, a, kind), eps, atol=1e-12)
    assert torch.allclose(model_output_from_original(x0, x_t, a, kind), target, atol=1e-10)
    assert torch.allclose(velocity(x0, eps, a), a.sqrt() * eps - (1 - a).sqrt() * x0)


@pytest.mark.parametrize("kind", KINDS)
def test_scheduler_losses_and_pipeline_agree(kind):
    from pipelines.pipeline_ultrasound_reconstruction import original_from_prediction, signal_level

    sched = BMapAttenuationScheduler(num_train_timesteps=50, prediction_type=kind, bmap_min=0.9, probe_geometry="convex")
    x0, eps = _batch(2)
    t = torch.tensor([7, 31])
    x_t = sched.add_noise(x0, eps, t)
    target = prediction_target(sched, kind, x0, eps, t)
    want = x0
    assert torch.allclose(sched.predict_original_sample(target, x_t, t), want, atol=1e-10)
    assert torch.allclose(predict_start_from_model_output(sched, kind, x_t, t, target), want, atol=1e-10)
    for i, step in enumerate(t.tolist()):
        a = signal_level(sched, step, x_t[i : i + 1].shape, dtype=torch.float64)
        assert torch.allclose(a, sched.signal_level(step, x_t[i : i + 1].shape))
        got = original_from_prediction(target[i : i + 1], x_t[i : i + 1], a, kind)
        assert torch.allclose(got, want[i : i + 1], atol=1e-10)
    # the scheduler's own step uses the same x0 (pred_original_sample) when x0 is not clipped
    free = BMapAttenuationScheduler(num_train_timesteps=50, prediction_type=kind, bmap_min=0.9, clip_sample=False)
    x_t1 = free.add_noise(x0[:1], eps[:1], torch.tensor([20]))
    tgt1 = prediction_target(free, kind, x0[:1], eps[:1], torch.tensor([20]))
    out = free.step(tgt1, 20, x_t1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.pred_original_sample, x0[:1], atol=1e-8)


def test_signal_levels_adapter_gives_diffusers_schedulers_the_same_view():
    from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

    ddpm = DDPMScheduler(num_train_timesteps=100)
    view = SignalLevels(ddpm)
    assert not view.is_per_pixel
    assert view.signal_level(40, (1, 1, 8, 8)).shape == (1, 1, 1, 1)
    assert float(view.signal_level(40, (1, 1, 8, 8))) == pytest.approx(float(ddpm.alphas_cumprod[40]))
    assert float(view.signal_level(-1, (1, 1, 8, 8))) == 1.0
    plain = BMapAttenuationScheduler(num_train_timesteps=100, beta_schedule="linear", bmap_min=1.0)
    a = SignalLevels(plain).signal_level(40, (1, 1, 8, 8), dtype=torch.float64)
    assert SignalLevels(plain).is_per_pixel and torch.allclose(a, torch.full_like(a, float(ddpm.alphas_cumprod[40])), atol=1e-7)
    assert SignalLevels(DDIMScheduler(prediction_type="v_prediction")).prediction_type == "v_prediction"

    class SigmaOnly:
        config = {}

    with pytest.raises(ValueError, match="alphas_cumprod"):
        SignalLevels(SigmaOnly())
    assert EulerDiscreteScheduler is not None


def test_forward_transition_matches_the_scheduler_marginals():
    """Going from t_prev to t with q(x_t | x_prev) keeps the marginal N(sqrt(a_t) x0, 1 - a_t) per pixel."""
    sched = BMapAttenuationScheduler(num_train_timesteps=50, bmap_min=0.8)
    shape = (4000, 1, 6, 6)
    a_prev, a_t = sched.signal_level(10, shape), sched.signal_level(11, shape)
    x0 = torch.full(shape, 0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * torch.randn(shape, generator=g, dtype=torch.float64)
    x_t = forward_transition(x_prev, a_prev, a_t, torch.randn(shape, generator=g, dtype=torch.float64))
    assert torch.allclose(x_t.mean(0), (a_t.sqrt() * 0.5)[0], atol=0.05)
    assert torch.allclose(x_t.var(0), (1 - a_t)[0], atol=0.06)


def test_posterior_terms_reduce_to_ddpm():
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler(num_train_timesteps=100)
    ac = ddpm.alphas_cumprod.double()
    terms = posterior_terms(ac[30], ac[29])
    beta = ddpm.betas.double()[30]
    assert float(terms["coef_x0"]) == pytest.approx(float(beta * ac[29].sqrt() / (1 - ac[30])), rel=1e-5)  # abar in float32
    assert float(terms["variance"]) == pytest.approx(float((1 - ac[29]) / (1 - ac[30]) * beta), rel=1e-5)


def test_two_channel_output_with_a_fixed_variance_scheduler_is_refused():
    """The VB defect: a fixed-variance scheduler with a 2C output used to add a VB term that sends no gradient."""
    fixed = BMapAttenuationScheduler(num_train_timesteps=20, variance_type="fixed_small")
    x0, eps = _batch(3, (2, 1, 8, 8))
    x0, eps = x0.float(), eps.float()
    t = torch.tensor([3, 9])
    x_t = fixed.add_noise(x0, eps, t)
    with pytest.raises(ValueError, match="variance_type='fixed_small'.*no gradient"):
        hybrid_loss(fixed, torch.zeros(2, 2, 8, 8), x0, eps, x_t, t)
    with pytest.raises(ValueError, match="learn_sigma=True"):
        hybrid_loss(fixed, torch.zeros(2, 1, 8, 8), x0, eps, x_t, t, learn_sigma=True)
    learned = BMapAttenuationScheduler(num_train_timesteps=20, variance_type="learned_range")
    with pytest.raises(ValueError, match="model_output"):
        hybrid_loss(learned, torch.zeros(2, 1, 8, 8), x0, eps, x_t, t)
    out = torch.zeros(2, 2, 8, 8, requires_grad=True)
    hybrid_loss(learned, out, x0, eps, x_t, t).loss.backward()
    assert float(out.grad[:, 1:].abs().sum()) > 0  # the variance channels learn
    with pytest.raises(ValueError, match="prediction_type"):
        hybrid_loss(learned, out, x0, eps, x_t, t, prediction_type="sample")


def test_published_preset_is_the_one_source():
    from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import SCHEDULER_PRESETS, preset_config

    sched = BMapAttenuationScheduler.from_preset("camus-sdm")
    for key, value in SCHEDULER_PRESETS["camus-sdm"].items():
        got = sched.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (list(value) if isinstance(value, (list, tuple)) else value)
    assert BMapAttenuationScheduler.from_preset("camus-sdm", bmap_min=1.0).config.bmap_min == 1.0
    assert preset_config("camus-sdm") is not preset_config("camus-sdm")
    with pytest.raises(ValueError, match="preset"):
        BMapAttenuationScheduler.from_preset("thyroid-gan")
