"""Training losses for (B-map) diffusion models: the simple MSE and the hybrid MSE + VB objective.

The hybrid objective is the one of Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic
Models" (2021), used by the Semantic Diffusion Model and by the B-map ultrasound paper:

    L_hybrid = L_simple + lambda * L_vlb,      lambda = ``vb_weight`` (0.001 in the papers)

* ``L_simple`` is the mean squared error of the network output against its target: the noise
  (``prediction_type="epsilon"``), the clean image (``"sample"``) or the velocity (``"v_prediction"``).
* ``L_vlb = L_0 + L_1 + ... + L_{T-1}`` is the variational bound. With ``t`` drawn uniformly,
  ``T * L_t`` is an unbiased estimate of it, so the loss uses ``vb_weight * T * L_t``. At ``T = 1000``
  and ``vb_weight = 0.001`` this is exactly improved-diffusion's ``mse + vb`` (and, for any ``T``, its
  default ``RESCALED_MSE`` weighting ``vb * T / 1000``).
* ``L_t`` (t > 0) is ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` in bits per dimension, with the
  per-pixel Gaussian posterior of the scheduler (``q_posterior_mean_variance``) and the model's mean and
  learned per-pixel variance. ``L_0`` is the negative log-likelihood of ``x_0`` under the discretised
  Gaussian decoder (256 bins on [-1, 1]), also in bits per dimension.
* As in improved-diffusion, the VB term only trains the variance: the model's mean enters it through a
  stop-gradient (``detach``), so the mean is trained by ``L_simple`` alone.

Everything per pixel works unchanged for the B-map forward process, whose signal level ``a_t(p)``
varies over the image: the scheduler supplies the per-pixel posterior and the learned-range variance.

The scheduler is the one source of the settings: its ``prediction_type`` says what the network predicts and its
``variance_type`` whether the output carries variance channels (``"learned"`` / ``"learned_range"``: [B, 2C, H, W];
any fixed type: [B, C, H, W]). A 2C output with a fixed-variance scheduler is refused: its VB term would enter the
loss yet send no gradient to the variance channels. The x_0 / eps / v conversions are those of
:mod:`ultrasound_diffusers.schedulers.diffusion_math`.

Scheduler contract (``BMapAttenuationScheduler``; diffusers' DDPM math is the special case ``bmap_min = 1``):
``config.num_train_timesteps``, ``config.prediction_type``, ``config.variance_type``,
``q_posterior_mean_variance(x_start, x_t, t)``
-> (mean, variance, log_variance_clipped), ``predict_start_from_noise(x_t, t, noise)``,
``model_log_variance(var_values, t, shape)``, ``signal_level(t, shape, device=, dtype=)``,
``get_velocity(sample, noise, t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .schedulers.diffusion_math import PREDICTION_TYPES, original_from_model_output, working_dtype

__all__ = [
    "HybridLossOutput",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "prediction_target",
    "predict_start_from_model_output",
    "variational_bound_terms",
    "hybrid_loss",
]

#: Variance types whose network output carries variance channels ([B, 2C, H, W]).
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
_LOG2 = math.log(2.0)


@dataclass
class HybridLossOutput:
    """Result of :func:`hybrid_loss`.

    Attributes:
        loss: scalar tensor, the batch mean of ``mse + vb_weight * T * vb`` (what to back-propagate).
        mse: [B] per-sample mean squared error of the prediction (``L_simple``).
        vb: [B] per-sample variational-bound term ``L_t`` in bits/dim (KL for t > 0, decoder NLL for t = 0);
            zeros when the variance is not learned.
    """

    loss: torch.Tensor
    mse: torch.Tensor
    vb: torch.Tensor


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: [B, ...] -> [B]."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats (tensors broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """Elementwise log-likelihood (nats) of data ``x`` under a Gaussian discretised into ``num_bins`` bins.

    ``x`` holds images scaled to [-1, 1] (uint8 values map to bin centres ``2 k / 255 - 1``). Bin ``k``
    covers ``x +- 1 / (num_bins - 1)``; the first and last bins extend to -inf / +inf. Uses the exact normal
    CDF (``torch.special.ndtr`` / ``log_ndtr``; improved-diffusion uses a tanh approximation of it).

    Args:
        x: [B, C, H, W] data in [-1, 1].
        means, log_scales: the Gaussian's mean and log standard deviation (broadcast against ``x``).

    Returns:
        Tensor of the broadcast shape with ``log p(x)`` per element (<= 0).
    """
    half_bin = 1.0 / (num_bins - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    upper = inv_std * (centered + half_bin)
    lower = inv_std * (centered - half_bin)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X <= x + half_bin)
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X >= x - half_bin)
    delta = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    log_delta = torch.log(delta.clamp(min=1e-12))
    edge = 1.0 - half_bin / 2.0  # 0.998... for 256 bins: below/above it x is the first/last bin
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_delta))


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def prediction_target(
    scheduler, prediction_type: str, x_start: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The regression target of ``L_simple``: ``noise``, ``x_start`` or the velocity
    ``sqrt(a_t) noise - sqrt(1 - a_t) x_start`` (``scheduler.get_velocity``), all [B, C, H, W]."""
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x_start
    return scheduler.get_velocity(x_start, noise, timesteps)


def predict_start_from_model_output(
    scheduler, prediction_type: str, x_t: torch.Tensor, timesteps: torch.Tensor, prediction: torch.Tensor
) -> torch.Tensor:
    """``x_0`` implied by the network's prediction at the noisy sample ``x_t`` (all [B, C, H, W]).

    ``epsilon``: ``x_t / sqrt(a_t) - sqrt(1 / a_t - 1) eps``; ``sample``: the prediction itself;
    ``v_prediction``: ``sqrt(a_t) x_t - sqrt(1 - a_t) v``, with the per-pixel signal level ``a_t``.
    """
    _check_prediction_type(prediction_type)
    if prediction_type == "sample":
        return prediction
    work = working_dtype(x_t.device)  # float64, float32 on MPS
    a_t = scheduler.signal_level(timesteps, tuple(x_t.shape), device=x_t.device, dtype=work)
    x0 = original_from_model_output(prediction.to(work), x_t.to(work), a_t, prediction_type)
    return x0.to(x_t.dtype)


def variational_bound_terms(
    scheduler,
    prediction: torch.Tensor,
    var_values: torch.Tensor,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: Optional[str] = None,
    detach_mean: bool = True,
) -> torch.Tensor:
    """Per-sample variational-bound term ``L_t`` in bits per dimension.

    Args:
        scheduler: a scheduler implementing the train-time helpers of the module docstring.
        prediction: [B, C, H, W] mean part of the network output (eps, x0 or v).
        var_values: [B, C, H, W] variance part of the network output (``learned_range``: v in about [-1, 1]).
        x_start: [B, C, H, W] clean images in [-1, 1].
        x_t: [B, C, H, W] noisy samples ``scheduler.add_noise(x_start, noise, timesteps)``.
        timesteps: [B] integer train timesteps in [0, T).
        prediction_type: defaults to ``scheduler.config.prediction_type``.
        detach_mean: stop the gradient through the model's mean (improved-diffusion); the term then
            trains only the variance.

    Returns:
        [B] float tensor: ``KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) / log 2`` averaged over pixels for t > 0,
        the discretised-Gaussian decoder NLL of ``x_0`` (bits/dim) for t = 0.
    """
    if prediction_type is None:
        prediction_type = scheduler.config.prediction_type
    if prediction.shape != x_start.shape or var_values.shape != x_start.shape or x_t.shape != x_start.shape:
        raise ValueError(
            "`prediction`, `var_values`, `x_t` and `x_start` must share one shape [B, C, H, W], got "
            f"{tuple(prediction.shape)}, {tuple(var_values.shape)}, {tuple(x_t.shape)}, {tuple(x_start.shape)}"
        )
    frozen = prediction.detach() if detach_mean else prediction
    pred_x0 = predict_start_from_model_output(scheduler, prediction_type, x_t, timesteps, frozen)
    model_mean = scheduler.q_posterior_mean_variance(pred_x0, x_t, timesteps)[0]
    model_log_variance = scheduler.model_log_variance(var_values, timesteps, tuple(x_start.shape))
    true_mean, _, true_log_variance = scheduler.q_posterior_mean_variance(x_start, x_t, timesteps)

    kl = mean_flat(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)) / _LOG2
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, model_mean, 0.5 * model_log_variance)) / _LOG2
    return torch.where(timesteps.to(kl.device) == 0, decoder_nll, kl)


def scheduler_learns_variance(scheduler) -> bool:
    """True when the scheduler's ``variance_type`` reads variance channels from the network output."""
    return getattr(scheduler.config, "variance_type", "fixed_small") in LEARNED_VARIANCE_TYPES


def _scheduler_prediction_type(scheduler, prediction_type: Optional[str]) -> str:
    configured = getattr(scheduler.config, "prediction_type", None)
    if prediction_type is None:
        prediction_type = configured
    _check_prediction_type(prediction_type)
    if configured is not None and prediction_type != configured:
        raise ValueError(
            f"`prediction_type={prediction_type!r}` contradicts the scheduler's prediction_type={configured!r}; "
            "the scheduler decides what the network predicts"
        )
    return prediction_type


def hybrid_loss(
    scheduler,
    model_output: torch.Tensor,
    x_start: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    vb_weight: float = 0.001,
    prediction_type: Optional[str] = None,
    learn_sigma: Optional[bool] = None,
) -> HybridLossOutput:
    """The training loss ``mean_B(mse + vb_weight * T * vb)`` (see the module docstring).

    Args:
        scheduler: the (B-map) scheduler used to make ``x_t``; ``T = scheduler.config.num_train_timesteps``.
        model_output: [B, C, H, W] prediction, or [B, 2C, H, W] (prediction, variance values) when the
            variance is learned (``variance_type="learned_range"``).
        x_start: [B, C, H, W] clean images in [-1, 1]; ``noise``: the [B, C, H, W] standard normal noise;
        x_t: the noisy samples; timesteps: [B] integer timesteps.
        vb_weight: lambda of the hybrid objective (0.001 in the papers); ignored without a learned variance.
        prediction_type: kept for earlier callers; must equal the scheduler's ``prediction_type`` if given.
        learn_sigma: kept for earlier callers; must agree with the scheduler's ``variance_type`` if given.

    Raises:
        ValueError: a 2C output with a fixed-variance scheduler (or a C output with a learned one), a
            ``prediction_type`` / ``learn_sigma`` that contradicts the scheduler, or mismatched shapes.

    Returns:
        :class:`HybridLossOutput` (losses computed in float32 even under autocast).
    """
    prediction_type = _scheduler_prediction_type(scheduler, prediction_type)
    if x_start.ndim != 4 or noise.shape != x_start.shape or x_t.shape != x_start.shape:
        raise ValueError(
            "`x_start`, `noise` and `x_t` must share one shape [B, C, H, W], got "
            f"{tuple(x_start.shape)}, {tuple(noise.shape)}, {tuple(x_t.shape)}"
        )
    channels = x_start.shape[1]
    learned = scheduler_learns_variance(scheduler)
    if learn_sigma is not None and bool(learn_sigma) != learned:
        raise ValueError(
            f"`learn_sigma={learn_sigma}` contradicts the scheduler's variance_type="
            f"{scheduler.config.variance_type!r}; the scheduler decides (use 'learned_range' to learn the variance)"
        )
    if not learned and model_output.shape[1] == 2 * channels and model_output.shape[0] == x_start.shape[0]:
        raise ValueError(
            f"`model_output` has {model_output.shape[1]} channels (prediction and variance) but the scheduler's "
            f"variance_type={scheduler.config.variance_type!r} is fixed: the VB term would send no gradient to the "
            "variance channels. Use a scheduler with variance_type='learned_range', or a model without learned "
            "sigma (learn_sigma=False)"
        )
    learn_sigma = learned
    expected = 2 * channels if learn_sigma else channels
    if model_output.shape[0] != x_start.shape[0] or model_output.shape[1] != expected or model_output.shape[2:] != x_start.shape[2:]:
        raise ValueError(
            f"`model_output` must have shape {(x_start.shape[0], expected, *x_start.shape[2:])} "
            f"(learn_sigma={learn_sigma}), got {tuple(model_output.shape)}"
        )
    if timesteps.ndim != 1 or timesteps.shape[0] != x_start.shape[0]:
        raise ValueError(f"`timesteps` must have shape [{x_start.shape[0]}], got {tuple(timesteps.shape)}")

    # Float32 (float64 inside the scheduler's helpers) whatever the caller's autocast: a loss computed inside
    # `with torch.autocast(...)`, as diffusers' training examples do, runs none of its ops in the autocast dtype.
    with torch.autocast(device_type=x_start.device.type, enabled=False):
        model_output = model_output.float()
        x_start, noise, x_t = x_start.float(), noise.float(), x_t.float()
        if learn_sigma:
            prediction, var_values = model_output[:, :channels], model_output[:, channels:]
        else:
            prediction, var_values = model_output, None

        target = prediction_target(scheduler, prediction_type, x_start, noise, timesteps).float()
        mse = mean_flat((prediction - target) ** 2)
        if var_values is not None:
            vb = variational_bound_terms(
                scheduler, prediction, var_values, x_start, x_t, timesteps, prediction_type=prediction_type
            ).float()
            num_train_timesteps = int(scheduler.config.num_train_timesteps)
            total = mse + float(vb_weight) * num_train_timesteps * vb
        else:
            vb = torch.zeros_like(mse)
            total = mse
    return HybridLossOutput(loss=total.mean(), mse=mse, vb=vb)
