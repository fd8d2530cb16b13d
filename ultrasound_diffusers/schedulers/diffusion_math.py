"""The per-pixel Gaussian diffusion math shared by the schedulers, the training losses and the pipelines.

Every forward process here is ``q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)`` with a signal level ``a_t`` that may
differ per pixel: ``a_t(p) = abar_t * Bbar_t(p)`` for the B-map schedulers (Domínguez et al. 2024) and the scalar
``abar_t = alphas_cumprod[t]`` for diffusers' DDPM / DDIM schedulers. ``a_t`` is any tensor that broadcasts against
the samples (``[B, 1, H, W]`` or ``[1, 1, 1, 1]``), with values in (0, 1]. The functions are pure and written once;
the schedulers, :mod:`ultrasound_diffusers.losses` and the pipelines call them instead of keeping copies.

* :func:`original_from_model_output`, :func:`noise_from_model_output`, :func:`model_output_from_original`: the
  conversions between the network's prediction (``"epsilon"``, ``"sample"`` or ``"v_prediction"``), x_0 and eps.
* :func:`velocity`: the v-prediction target ``sqrt(a_t) eps - sqrt(1 - a_t) x_0``.
* :func:`posterior_terms`: ``q(x_prev | x_t, x_0)`` from the two signal levels (DDPM's posterior, per pixel).
* :func:`ddim_variance`: the DDIM (eta = 1) variance between two levels.
* :func:`learned_range_log_variance`: improved-diffusion's interpolation between the two log variances.
* :func:`forward_transition`: ``q(x_t | x_prev)``, one step of the forward process (RePaint's resampling).
* :class:`SignalLevels`: the per-pixel view of any DDPM-type scheduler (``signal_level(t, shape)``), so that no
  caller branches on the scheduler's type.
* :func:`working_dtype`: the precision of the per-pixel maths on a device.

Precision. The schedules (``abar_t``, the cumulative B-map products as sums of logs) are built on the CPU in
float64, and the per-pixel maths of the schedulers and of the training losses runs in :func:`working_dtype`:
float64 on devices with float64 kernels (CPU, CUDA, XPU), float32 on Apple MPS, which has none. Samples and model
outputs of any dtype (float32, bfloat16, float16) are cast into it and the results back to the sample's dtype, so
that ``scheduler.step(...).prev_sample.dtype == sample.dtype``. Why float64 and not the sample's dtype: the
posterior coefficients divide by ``1 - a_t`` and take ``a_t / a_prev`` with ``a_t`` within 1e-4 of 1 at the
first steps (float32 keeps ~3 significant digits of ``1 - a_t`` there, bfloat16 none), and the B-map products of
up to T factors are checked against float64 references and against DDPM (``bmap_min=1``) to 1e-6 - 1e-12.
Why it costs nothing that matters: this maths is a few dozen element-wise operations on [B, C, H, W] per step,
memory-bound even on GPUs with slow float64 units, against a UNet forward of 10^9 - 10^11 operations
(``benchmarks/gpu_benchmark.py`` prints the scheduler step in float64 and float32 next to the UNet step).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

__all__ = [
    "PREDICTION_TYPES",
    "SignalLevels",
    "ddim_variance",
    "forward_transition",
    "learned_range_log_variance",
    "model_output_from_original",
    "noise_from_model_output",
    "original_from_model_output",
    "posterior_terms",
    "signal_levels",
    "velocity",
    "working_dtype",
]

#: Device types without float64 kernels (the per-pixel maths runs in float32 there).
NO_FLOAT64_DEVICES = ("mps",)

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _check_prediction_type(prediction_type: Any) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def working_dtype(device=None) -> torch.dtype:
    """The dtype of the per-pixel schedule maths on ``device`` (a torch.device, its name, a tensor, or None for the
    CPU): float64, or float32 on devices without float64 kernels (:data:`NO_FLOAT64_DEVICES`: Apple MPS). See the
    module docstring for why."""
    if isinstance(device, torch.Tensor):
        device = device.device
    kind = torch.device(device).type if device is not None else "cpu"
    return torch.float32 if kind in NO_FLOAT64_DEVICES else torch.float64


# ------------------------------------------------------------------------------------------------ conversions
def original_from_model_output(
    model_output: torch.Tensor, sample: torch.Tensor, a_t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """x_0 implied by the network's prediction at ``sample`` = x_t.

    ``epsilon``: ``(x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``; ``sample``: the prediction; ``v_prediction``:
    ``sqrt(a_t) x_t - sqrt(1 - a_t) v``. Shapes [B, C, H, W]; ``a_t`` broadcastable.
    """
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return (sample - (1.0 - a_t).sqrt() * model_output) / a_t.sqrt()
    if prediction_type == "sample":
        return model_output
    return a_t.sqrt() * sample - (1.0 - a_t).sqrt() * model_output


def noise_from_model_output(
    model_output: torch.Tensor, sample: torch.Tensor, a_t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """eps implied by the network's prediction at ``sample`` = x_t.

    ``epsilon``: the prediction; ``sample``: ``(x_t - sqrt(a_t) x_0) / sqrt(1 - a_t)``; ``v_prediction``:
    ``sqrt(a_t) v + sqrt(1 - a_t) x_t``.
    """
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - a_t.sqrt() * model_output) / (1.0 - a_t).sqrt()
    return a_t.sqrt() * model_output + (1.0 - a_t).sqrt() * sample


def model_output_from_original(
    original: torch.Tensor, sample: torch.Tensor, a_t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The prediction of ``prediction_type`` that a given x_0 implies at ``sample`` = x_t (inverse of
    :func:`original_from_model_output`; ``1 - a_t`` is floored at 1e-12 so that a_t = 1 stays finite)."""
    _check_prediction_type(prediction_type)
    if prediction_type == "sample":
        return original
    eps = (sample - a_t.sqrt() * original) / (1.0 - a_t).clamp(min=1e-12).sqrt()
    if prediction_type == "epsilon":
        return eps
    return velocity(original, eps, a_t)


def velocity(original: torch.Tensor, noise: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The v-prediction target ``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0``."""
    return a_t.sqrt() * noise - (1.0 - a_t).sqrt() * original


# ------------------------------------------------------------------------------------------------ transitions
def posterior_terms(a_t: torch.Tensor, a_prev: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Coefficients of ``q(x_prev | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, variance)`` from two signal levels.

    With the per-step factor ``alpha = a_t / a_prev`` (``alpha_t M_t(p)`` for one B-map step, or the respaced
    factor) and ``beta = 1 - alpha``: ``coef_x0 = beta sqrt(a_prev) / (1 - a_t)``,
    ``coef_xt = (1 - a_prev) sqrt(alpha) / (1 - a_t)``, ``variance = beta (1 - a_prev) / (1 - a_t)``.

    Returns:
        dict with ``coef_x0``, ``coef_xt``, ``variance`` and ``step_beta`` (= beta), each of the broadcast shape.
    """
    step_alpha = a_t / a_prev
    step_beta = 1.0 - step_alpha
    coef_x0 = step_beta * a_prev.sqrt() / (1.0 - a_t)
    coef_xt = (1.0 - a_prev) * step_alpha.sqrt() / (1.0 - a_t)
    variance = step_beta * (1.0 - a_prev) / (1.0 - a_t)
    return {"coef_x0": coef_x0, "coef_xt": coef_xt, "variance": variance, "step_beta": step_beta}


def ddim_variance(a_t: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """DDIM's sigma^2 at eta = 1: ``(1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)`` (the posterior variance)."""
    return (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)


def learned_range_log_variance(values: torch.Tensor, min_log: torch.Tensor, max_log: torch.Tensor) -> torch.Tensor:
    """improved-diffusion's ``learned_range``: ``f max_log + (1 - f) min_log`` with ``f = (v + 1) / 2`` and the
    network's variance values v (about [-1, 1]); ``min_log`` is the (clipped) posterior log variance, ``max_log``
    the log of the per-step beta."""
    frac = (values + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def forward_transition(
    sample_prev: torch.Tensor, a_prev: torch.Tensor, a_t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Draw ``q(x_t | x_prev) = N(sqrt(a_t / a_prev) x_prev, (1 - a_t / a_prev) I)``: the forward process from the
    level ``a_prev`` to the noisier level ``a_t`` (per pixel; the factor is clamped to 1 where ``a_t > a_prev``
    by round-off). Used by RePaint's resampling to go back from ``t_prev`` to ``t``."""
    ratio = (a_t / a_prev).clamp(max=1.0)
    return ratio.sqrt() * sample_prev + (1.0 - ratio).sqrt() * noise


# ------------------------------------------------------------------------------------------------ adapter
class SignalLevels:
    """The per-pixel view of a scheduler: ``signal_level(t, shape)`` for any DDPM-type scheduler.

    B-map schedulers answer with their own per-pixel ``a_t(p)`` ([B, 1, H, W]); diffusers' schedulers that keep
    ``alphas_cumprod`` (DDPM, DDIM, ...) with the scalar ``abar_t`` shaped [1, 1, 1, 1]; ``t = -1`` is the clean
    level 1. Also carries the prediction type and the x_0 clipping of the scheduler's config.

    Raises:
        ValueError: for a scheduler that is neither (e.g. one in sigma units).
    """

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self._per_pixel = callable(getattr(scheduler, "signal_level", None))
        if not self._per_pixel and getattr(scheduler, "alphas_cumprod", None) is None:
            raise ValueError(
                f"{type(scheduler).__name__} has neither `signal_level` nor `alphas_cumprod`; use a DDPM/DDIM-type "
                "scheduler or a B-map scheduler"
            )
        config = getattr(scheduler, "config", {}) or {}
        self.prediction_type: str = config.get("prediction_type", "epsilon")
        self.clip_sample: bool = bool(config.get("clip_sample", False))
        self.clip_sample_range: float = float(config.get("clip_sample_range", 1.0))

    @property
    def is_per_pixel(self) -> bool:
        """True when the signal level changes over the pixels (a B-map scheduler)."""
        return self._per_pixel

    def signal_level(self, timestep, shape: Sequence[int], device=None, dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
        """``a_t`` for one timestep (int; -1 = clean) and samples of ``shape`` [B, C, H, W], broadcastable."""
        t = int(timestep)
        if self._per_pixel:
            return self.scheduler.signal_level(t, tuple(shape)).to(device=device, dtype=dtype)
        value = self.scheduler.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)
        return torch.as_tensor(value).to(device=device, dtype=dtype).reshape(1, 1, 1, 1)

    def original_from_model_output(self, model_output, sample, a_t) -> torch.Tensor:
        return original_from_model_output(model_output, sample, a_t, self.prediction_type)

    def model_output_from_original(self, original, sample, a_t) -> torch.Tensor:
        return model_output_from_original(original, sample, a_t, self.prediction_type)


def signal_levels(scheduler) -> SignalLevels:
    """:class:`SignalLevels` of ``scheduler`` (itself when it already is one)."""
    return scheduler if isinstance(scheduler, SignalLevels) else SignalLevels(scheduler)
