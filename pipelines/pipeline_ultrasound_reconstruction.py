# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Measurement-guided reconstruction: sample images that fit both a trained diffusion prior and measurements.

Given measurements ``y = A(x) + n`` of an unknown image ``x`` (sparse scan lines, a low-resolution map, an
attenuated noisy image, an image with a shadow; see :mod:`ultrasound_diffusers.operators`), the pipeline runs the
reverse diffusion of a trained (label-conditioned or unconditional) network and steers every step towards the
measurements:

* ``method="dps"``: diffusion posterior sampling (Chung et al., ICLR 2023) with the squared, noise-weighted
  misfit. At step t the network's estimate ``x0_hat(x_t)`` gives
  ``L = 1/2 (y - A(x0_hat))^T K_t (y - A(x0_hat))``, and after the scheduler's step

      x_{t-1} <- x_{t-1} - zeta_t * sqrt(a_t(p) a_{t-1}(p)) * R_t(p) * grad_{x_t} L

  (the gradient runs through the network). ``K_t = (A R_t A^T + S)^-1`` is the Gaussian-conditional gain with
  the per-pixel prior variance ``R_t = 1 - a_t(p)`` and the measurement noise variance ``S`` (which changes with
  depth for time-gain-compensated attenuation). Since ``x0_hat`` depends on ``x_t(p)`` through
  ``1 / sqrt(a_t(p))`` and ``x_{t-1}(p)`` feeds the next estimate through ``1 / sqrt(a_{t-1}(p))``, the factor
  ``sqrt(a_t a_{t-1})`` makes ``zeta = 1`` one full Gauss-Newton step on x0 at every pixel, whatever the
  depth-dependent signal level of the B-map process: noise-free measurements are then fitted in one step,
  noisy ones only while the prior is less certain than the measurement (so the misfit stops at the noise
  level). Operators without a cheap ``A R A^T`` (user functions) use ``K = W / ||A||^2`` with relative noise
  weights W and ``R = 1``. ``zeta`` above 2 overshoots.
* ``method="projection"``: data consistency for operators with a cheap projection. ``x0_hat`` is replaced by
  the Gaussian conditional mean ``x0 + R A^T (A R A^T + S)^-1 (y - A(x0))`` with the per-pixel prior variance
  ``R = 1 - a_t(p)`` (the variance of x0 given x_t for unit-variance data) and the measurement noise variance
  ``S``: noise-free measurements replace the measured part of x0 outright, noisy ones are weighed against the
  prior, deep (noisier) pixels trusting the measurement sooner. The step is then taken with the noise
  ``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`` that this x0 implies, so that the scheduler re-noises
  consistently (DDPM posterior, DDIM, or their B-map versions).
* ``method="none"``: plain sampling from the prior, reporting the data misfit (a reference).

Works with :class:`~ultrasound_diffusers.schedulers.scheduling_bmap_attenuation.BMapAttenuationScheduler`
(per-pixel ``a_t`` from ``signal_level``) and with diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` (``a_t`` =
``alphas_cumprod[t]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ultrasound_diffusers.operators import ForwardOperator, FunctionOperator
from ultrasound_diffusers.schedulers.diffusion_math import (
    forward_transition,
    model_output_from_original,
    original_from_model_output,
    signal_levels,
)

from .pipeline_utils import (
    DiffusionPipeline,
    as_count,
    check_callback_inputs,
    check_finite_result,
    check_generation_size,
    check_generator,
    check_guidance_scale,
    check_output_type,
    denoise_step_output,
    guided_segmap,
    label_feature_cache,
    postprocess_images,
    prepare_extra_step_kwargs,
    prepare_latents,
    prepare_segmap,
    prepare_timesteps,
    resolve_sample_size,
)

__all__ = [
    "UltrasoundReconstructionPipeline",
    "UltrasoundReconstructionPipelineOutput",
    "guidance_step_sizes",
    "original_from_prediction",
    "prediction_from_original",
    "signal_level",
]

METHODS = ("dps", "projection", "none")
GUIDANCE_SCHEDULES = ("constant", "linear_decay", "linear_increase")
#: Floor of the measurement noise standard deviation in the DPS weights (noise-free measurements get equal weights).
MIN_NOISE_STD = 1e-3
#: Floor of the prior variance 1 - a_t in the projection (keeps the update defined at a_t = 1).
MIN_PRIOR_VAR = 1e-6


# ------------------------------------------------------------------------------------------------ pure functions
def signal_level(scheduler, timestep, shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Per-pixel signal level a_t of ``q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)`` of any DDPM-type scheduler
    (see :class:`ultrasound_diffusers.schedulers.diffusion_math.SignalLevels`)."""
    return signal_levels(scheduler).signal_level(timestep, shape, device=device, dtype=dtype)


def original_from_prediction(prediction: torch.Tensor, sample: torch.Tensor, a_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x0 estimate from the network's prediction ([B, C, H, W]) of ``prediction_type``, with signal level a_t
    (:func:`ultrasound_diffusers.schedulers.diffusion_math.original_from_model_output`)."""
    return original_from_model_output(prediction, sample, a_t, prediction_type)


def prediction_from_original(x0: torch.Tensor, sample: torch.Tensor, a_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The network prediction of ``prediction_type`` that a given x0 implies at x_t = ``sample``
    (:func:`ultrasound_diffusers.schedulers.diffusion_math.model_output_from_original`)."""
    return model_output_from_original(x0, sample, a_t, prediction_type)


def guidance_step_sizes(
    step_size: float, schedule: Union[str, Sequence[float], Callable[[int, int], float]], timesteps: Sequence[int]
) -> List[float]:
    """DPS step size zeta_i for every inference step i.

    ``schedule``: ``"constant"`` (zeta), ``"linear_decay"`` (zeta (N - i) / N), ``"linear_increase"``
    (zeta (i + 1) / N), a sequence of N factors, or ``f(i, t) -> factor``; the factors multiply ``step_size``.
    """
    n = len(timesteps)
    if isinstance(schedule, str):
        if schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"`guidance_schedule` must be one of {GUIDANCE_SCHEDULES}, a sequence or a callable, got {schedule!r}")
        if schedule == "constant":
            factors = [1.0] * n
        elif schedule == "linear_decay":
            factors = [(n - i) / n for i in range(n)]
        else:
            factors = [(i + 1) / n for i in range(n)]
    elif callable(schedule):
        factors = [float(schedule(i, int(t))) for i, t in enumerate(timesteps)]
    else:
        factors = [float(v) for v in schedule]
        if len(factors) != n:
            raise ValueError(f"`guidance_schedule` has {len(factors)} values for {n} inference steps")
    sizes = [float(step_size) * f for f in factors]
    if any(not math.isfinite(s) or s < 0 for s in sizes):
        raise ValueError("`guidance_step_size` times the schedule must be finite and >= 0")
    return sizes


def _gain_terms(operator, method: str, image_shape, device, dtype):
    """``(S, W, ||A||^2)`` for :func:`_dps_terms`: the measurement noise variance ``S`` of images of
    ``image_shape``, the relative noise weights ``W`` (1 for the least noisy measurement) and, for DPS with an
    operator that has no cheap gram matrix, the squared operator norm (else 1)."""
    noise_var = operator.noise_std_map(image_shape, device=device, dtype=dtype) ** 2
    weights = noise_var.clamp(min=MIN_NOISE_STD**2).min() / noise_var.clamp(min=MIN_NOISE_STD**2)
    lipschitz = 1.0
    if method == "dps" and not operator.has_projection:
        lipschitz = max(operator.lipschitz(image_shape, device=device, dtype=dtype), 1e-12)
    return noise_var, weights, lipschitz


def _dps_terms(operator, noise_var, weights, lipschitz, prior_var, a_t, a_prev, step_size):
    """``(K_t, step scale)`` of one DPS step: the measurement-space gain ``K_t`` and the per-pixel factor
    ``zeta_t * sqrt(a_t a_{t-1}) * R_t`` of the update (module docstring). With a cheap gram matrix ``A R A^T``,
    ``K_t = (A R_t A^T + S)^-1`` and ``R_t`` is the prior variance; otherwise ``K = W^2 / ||A||^2`` and ``R = 1``."""
    if operator.has_projection:
        precondition = 1.0 / (operator.gram(prior_var) + noise_var).clamp(min=1e-20)
        pixel_scale = prior_var
    else:
        precondition = weights**2 / lipschitz
        pixel_scale = torch.ones_like(a_t)
    return precondition, step_size * (a_t * a_prev).sqrt() * pixel_scale


def _rms(residual: torch.Tensor) -> torch.Tensor:
    return residual.detach().flatten(1).double().pow(2).mean(1).sqrt()


# ------------------------------------------------------------------------------------------------ output
@dataclass
class UltrasoundReconstructionPipelineOutput(BaseOutput):
    """Output of :class:`UltrasoundReconstructionPipeline` (B measurements, S samples each, N steps).

    Args:
        images: the reconstruction, the mean of the S posterior samples: PIL images, a float array
            [B, H, W, C] in [0, 1] (``"np"``) or a tensor [B, C, H, W] in [0, 1] (``"pt"``).
        samples: the posterior samples: a list of B lists of S PIL images, an array [B, S, H, W, C] or a tensor
            [B, S, C, H, W], in [0, 1].
        uncertainty: per-pixel standard deviation of the samples, in the same [0, 1] units (zero for S = 1):
            an array [B, H, W, C] (``"np"`` and ``"pil"``) or a tensor [B, C, H, W] (``"pt"``).
        residuals: float64 array [B, S, N]: root mean square of ``y - A(x0_hat)`` at every step (model units,
            where the image range [-1, 1] has width 2), before any guidance of that step.
        final_residual: float64 array [B, S]: root mean square of ``y - A(sample)`` for the final samples.
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    samples: Union[List[List[PIL.Image.Image]], np.ndarray, torch.Tensor]
    uncertainty: Union[np.ndarray, torch.Tensor]
    residuals: np.ndarray
    final_residual: np.ndarray


# ------------------------------------------------------------------------------------------------ pipeline
class UltrasoundReconstructionPipeline(DiffusionPipeline):
    r"""Reconstruct ultrasound images from measurements with a diffusion prior (posterior sampling).

    Args:
        unet: the prior: ``SemanticUNet2DModel`` (label-conditioned, then ``segmap`` is required, or
            unconditional with ``num_classes=0``) or diffusers' ``UNet2DModel``; C or 2C (learned sigma) output
            channels.
        scheduler: ``BMapAttenuationScheduler`` or a diffusers DDPM / DDIM-type scheduler (one with
            ``alphas_cumprod`` and ``init_noise_sigma == 1``).

    Any saved :class:`SemanticUltrasoundPipeline` or :class:`UltrasoundPipeline` folder loads with
    ``UltrasoundReconstructionPipeline.from_pretrained(folder)``, or build one from a loaded pipeline with
    ``UltrasoundReconstructionPipeline(unet=pipe.unet, scheduler=pipe.scheduler)``.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "pred_original_sample"]

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.unet.config, "num_classes", 0) or 0)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # -------------------------------------------------------------------- input checks
    def _check_scheduler(self) -> None:
        sigma = float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        if abs(sigma - 1.0) > 1e-6:
            raise ValueError(
                f"{type(self.scheduler).__name__} works in sigma (variance-exploding) units (init_noise_sigma={sigma}); "
                "use BMapAttenuationScheduler, DDPMScheduler or DDIMScheduler"
            )
        signal_levels(self.scheduler)  # raises for a scheduler without alphas_cumprod or signal_level

    @staticmethod
    def _prepare_operator(operator) -> ForwardOperator:
        if isinstance(operator, ForwardOperator):
            return operator
        if callable(operator):
            return FunctionOperator(operator)
        raise ValueError(
            f"`operator` must be a ForwardOperator (ultrasound_diffusers.operators) or a differentiable callable, "
            f"got {type(operator).__name__}"
        )

    @staticmethod
    def _prepare_measurements(measurements, operator: ForwardOperator, image_shape, device, dtype) -> torch.Tensor:
        if isinstance(measurements, np.ndarray):
            measurements = torch.from_numpy(np.ascontiguousarray(measurements))
        if not torch.is_tensor(measurements):
            raise ValueError(f"`measurements` must be a torch tensor or numpy array, got {type(measurements).__name__}")
        expected = operator.measurement_shape(image_shape, device=device, dtype=dtype)
        y = measurements.to(device=device, dtype=dtype)
        if y.dim() == len(expected) - 1 and tuple(y.shape) == tuple(expected[1:]):
            y = y[None]
        if y.dim() != len(expected) or tuple(y.shape[1:]) != tuple(expected[1:]) or y.shape[0] < 1:
            raise ValueError(
                f"`measurements` must have shape [B, {', '.join(str(s) for s in expected[1:])}] for {operator!r} "
                f"on {tuple(image_shape[1:])} images (C, H, W); got {tuple(measurements.shape)}"
            )
        if not bool(torch.isfinite(y).all()):
            raise ValueError("`measurements` contain NaN or infinite values")
        return y

    def _model(self, sample: torch.Tensor, t, model_segmap: Optional[torch.Tensor], guidance_scale: float, channels: int):
        return denoise_step_output(self.unet, self.scheduler, sample, t, channels, segmap=model_segmap,
                                   guidance_scale=guidance_scale)

    # -------------------------------------------------------------------- call
    @staticmethod
    def check_inputs(method: str, num_samples: int, num_resample: int) -> None:
        """Raise a ValueError naming the argument for an unknown ``method`` or a bad sample / resample count."""
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"`num_samples` must be a positive integer, got {num_samples!r}")
        if not isinstance(num_resample, int) or num_resample < 0:
            raise ValueError(f"`num_resample` must be a non-negative integer, got {num_resample!r}")

    def _prepare_segmap(self, segmap, batch: int, samples: int, size, guidance_scale: float, device, dtype):
        """The network's label input for ``batch * samples`` images (None for an unconditional network): the
        label maps one-hot at ``size``, one per measurement (or one for all), each repeated ``samples`` times, with
        the unlabelled half of classifier-free guidance when ``guidance_scale`` is not 1."""
        if self.num_classes == 0:
            if segmap is not None:
                raise ValueError("`segmap` was given but the network is unconditional (num_classes=0)")
            return None
        if segmap is None:
            raise ValueError(f"`segmap` is required: the network is label-conditioned ({self.num_classes} classes)")
        one_hot, _ = prepare_segmap(segmap, self.num_classes, size, device=device, dtype=dtype)
        if one_hot.shape[0] == 1:
            one_hot = one_hot.expand(batch, *one_hot.shape[1:])
        if one_hot.shape[0] != batch:
            raise ValueError(f"`segmap` has {one_hot.shape[0]} label maps for {batch} measurements; pass 1 or {batch}")
        return guided_segmap(one_hot.repeat_interleave(samples, dim=0), guidance_scale)

    def _predict(self, x_t, t, a_t, levels, model_segmap, guidance_scale: float, operator, y, precondition=None):
        """One network evaluation at ``x_t`` [N, C, H, W]: ``(model output, x0_hat, residual y - A(x0_hat), grad)``,
        all detached; ``grad`` is the gradient of the preconditioned misfit ``1/2 r^T K r`` with respect to
        ``x_t`` through the network when ``precondition`` K is given (DPS), else None. ``x0_hat`` is clipped as
        the scheduler clips it, with the gradient passed straight through."""
        channels = x_t.shape[1]
        guided = precondition is not None
        x_in = x_t.detach().requires_grad_(guided)
        with torch.set_grad_enabled(guided):
            output = self._model(x_in, t, model_segmap, guidance_scale, channels)
            x0 = levels.original_from_model_output(output[:, :channels], x_in, a_t)
            if levels.clip_sample:
                r = levels.clip_sample_range
                x0 = x0 + (x0.detach().clamp(-r, r) - x0.detach())
            predicted = operator(x0)
            if tuple(predicted.shape) != tuple(y.shape):
                raise ValueError(
                    f"{operator!r} returned measurements of shape {tuple(predicted.shape)} for a batch of "
                    f"{x_t.shape[0]} images, but the measurements repeat to {tuple(y.shape)}"
                )
            residual = y - predicted
            grad = None
            if guided:
                (grad,) = torch.autograd.grad(0.5 * (residual.pow(2) * precondition).sum(), x_in)
        return output.detach(), x0.detach(), residual.detach(), None if grad is None else grad.detach()

    def _outputs(self, latents, y_rep, operator, batch: int, residuals, output_type: str, return_dict: bool):
        """Mean, samples, spread and residuals of the final ``latents`` [batch * samples, C, H, W] in the requested
        ``output_type``, as the output dataclass or the tuple."""
        samples = latents.shape[0] // batch
        channels, height, width = latents.shape[1:]
        check_finite_result(latents, "the reconstructions", unet=self.unet)  # before the clamp hides inf
        with torch.no_grad():
            final = latents.clamp(-1, 1)
            final_residual = _rms(y_rep - operator(final)).cpu().numpy().reshape(batch, samples)
        grouped = final.reshape(batch, samples, channels, height, width)
        mean = grouped.mean(dim=1)
        std = grouped.std(dim=1, unbiased=True) if samples > 1 else torch.zeros_like(mean)
        residual_array = torch.stack(residuals, dim=-1).numpy().reshape(batch, samples, -1)

        images = postprocess_images(mean, output_type)
        all_samples = postprocess_images(final, output_type)
        if output_type == "np":
            all_samples = all_samples.reshape(batch, samples, height, width, channels)
            uncertainty = (std / 2).float().cpu().permute(0, 2, 3, 1).numpy()
        elif output_type == "pt":
            all_samples = all_samples.reshape(batch, samples, channels, height, width)
            uncertainty = std / 2
        else:
            all_samples = [all_samples[b * samples : (b + 1) * samples] for b in range(batch)]
            uncertainty = (std / 2).float().cpu().permute(0, 2, 3, 1).numpy()
        if not return_dict:
            return (images, all_samples, uncertainty, residual_array, final_residual)
        return UltrasoundReconstructionPipelineOutput(
            images=images, samples=all_samples, uncertainty=uncertainty, residuals=residual_array,
            final_residual=final_residual,
        )

    def __call__(
        self,
        measurements: Union[torch.Tensor, np.ndarray],
        operator: Union[ForwardOperator, Callable[[torch.Tensor], torch.Tensor]],
        segmap=None,
        method: str = "dps",
        num_inference_steps: int = 50,
        guidance_step_size: float = 1.0,
        guidance_schedule: Union[str, Sequence[float], Callable[[int, int], float]] = "constant",
        guidance_scale: float = 1.0,
        num_samples: int = 1,
        num_resample: int = 0,
        eta: Optional[float] = None,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        timesteps: Optional[List[int]] = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[..., Dict[str, Any]]] = None,
        callback_on_step_end_tensor_inputs: Optional[List[str]] = None,
    ) -> Union[UltrasoundReconstructionPipelineOutput, tuple]:
        r"""Draw ``num_samples`` posterior samples for every measurement and return their mean and spread.

        Args:
            measurements (`torch.Tensor` or `np.ndarray`): ``y = A(x) + n`` for B images x in model units [-1, 1]
                (use ``2 * image - 1`` for images in [0, 1]), shaped [B, ...] like ``operator(x)`` (a single
                measurement may omit B); e.g. ``operator.measure(x)``.
            operator: a :class:`~ultrasound_diffusers.operators.ForwardOperator`, or any differentiable function
                ``fn(x [B, C, H, W]) -> y [B, ...]`` (wrapped in a noise-free ``FunctionOperator``).
            segmap: label maps for a label-conditioned network (as in ``SemanticUltrasoundPipeline``: [H, W],
                [B, H, W], [B, 1, H, W], PIL images, or one-hot [B, K, H, W]); one map or one per measurement.
            method (`str`, defaults to ``"dps"``): ``"dps"``, ``"projection"`` (operators with a projection only)
                or ``"none"`` (unguided prior samples; the residuals are still reported).
            num_inference_steps (`int`, defaults to 50): denoising steps.
            guidance_step_size (`float`, defaults to 1.0): DPS step size zeta, in units of a full Gauss-Newton step
                on the x0 estimate (see the module docstring), so it does not depend on the number of steps or
                measurements, the image size or the noise level. 1 fits noise-free measurements of a well-trained
                model in one step; use 0.3-1 for models that are far from the data, never more than 2.
            guidance_schedule: how zeta changes over the steps, see :func:`guidance_step_sizes`.
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance of a label-conditioned network
                (1 = off).
            num_samples (`int`, defaults to 1): posterior samples per measurement (their per-pixel standard
                deviation is the uncertainty map).
            num_resample (`int`, defaults to 0): extra passes per step (RePaint's resampling, Lugmayr et al. 2022):
                after a step, ``x_{t_prev}`` is noised back to step t with the scheduler's forward transition and
                the step is repeated, which lets the unmeasured part catch up with the measured one (mostly useful
                with ``method="projection"``). Costs ``num_resample + 1`` network passes per step.
            eta (`float`, *optional*): DDIM's eta (``None``: the scheduler's default).
            generator: torch generator(s); a list needs ``B * num_samples`` of them.
            latents (`torch.Tensor`, *optional*): initial noise [B * num_samples, C, H, W].
            height, width (`int`, *optional*): image size (default: the network's ``sample_size``).
            timesteps (`List[int]`, *optional*): custom timesteps.
            output_type (`str`, defaults to ``"np"``): ``"np"``, ``"pt"`` or ``"pil"``.
            return_dict (`bool`): return the output dataclass rather than a tuple
                ``(images, samples, uncertainty, residuals, final_residual)``.
            callback_on_step_end: ``f(pipeline, i, t, {"latents": ..., "pred_original_sample": ...}) -> dict``;
                a returned ``"latents"`` replaces the current ones.

        Returns:
            :class:`UltrasoundReconstructionPipelineOutput`.
        """
        tensor_inputs = check_callback_inputs(self, callback_on_step_end, callback_on_step_end_tensor_inputs or ["latents"])
        self.check_inputs(method, num_samples, num_resample)
        if timesteps is None:
            num_inference_steps = as_count("num_inference_steps", num_inference_steps)
        guidance_scale = check_guidance_scale(guidance_scale)
        check_output_type(output_type, latent=False)
        generator = check_generator(generator)
        self._check_scheduler()
        operator = self._prepare_operator(operator)
        if method == "projection" and not operator.has_projection:
            raise ValueError(f"{operator!r} has no data-consistency projection; use method='dps'")

        device = self._execution_device
        dtype = self.unet.dtype
        height, width = resolve_sample_size(self.unet.config.sample_size, height, width)
        channels = int(self.unet.config.in_channels)
        y = self._prepare_measurements(measurements, operator, (1, channels, height, width), device, dtype)
        batch, samples = y.shape[0], num_samples
        total = batch * samples
        check_generation_size(self.unet, (height, width), 2 * total)  # guidance keeps a graph: count twice
        y_rep = y.repeat_interleave(samples, dim=0)
        image_shape = (total, channels, height, width)
        gain_terms = _gain_terms(operator, method, image_shape, device, dtype)

        model_segmap = self._prepare_segmap(segmap, batch, samples, (height, width), guidance_scale, device, dtype)

        # timesteps, noise
        schedule = prepare_timesteps(self.scheduler, num_inference_steps, timesteps, device)
        self._num_timesteps = len(schedule)
        step_sizes = guidance_step_sizes(guidance_step_size, guidance_schedule, [int(t) for t in schedule])
        latents = prepare_latents(image_shape, generator, latents, device, dtype, self.scheduler.init_noise_sigma,
                                  what="B * num_samples")
        extra_step_kwargs = prepare_extra_step_kwargs(self.scheduler, generator, eta)
        levels = signal_levels(self.scheduler)

        level_shape = (1, channels, height, width)
        residuals = []
        # the label maps stay fixed: their SPADE features are computed once (gradients still reach x_t)
        with label_feature_cache(self.unet):
            for i, t in enumerate(self.progress_bar(schedule)):
                a_t = levels.signal_level(t, level_shape, device=device, dtype=dtype)
                t_prev = int(schedule[i + 1]) if i + 1 < len(schedule) else -1
                a_prev = levels.signal_level(t_prev, level_shape, device=device, dtype=dtype)
                guided = method == "dps" and step_sizes[i] > 0
                prior_var = (1.0 - a_t).clamp(min=MIN_PRIOR_VAR).expand(image_shape)
                precondition, step_scale = (
                    _dps_terms(operator, *gain_terms, prior_var, a_t, a_prev, step_sizes[i]) if guided else (None, None)
                )

                x_t = latents.detach()
                for repeat in range(num_resample + 1 if i + 1 < len(schedule) else 1):
                    if repeat > 0:
                        # RePaint-style resampling: back from t_prev to t with the forward transition of the
                        # scheduler (per-pixel factor a_t / a_prev for the B-map process), then step again
                        noise = randn_tensor(image_shape, generator=generator, device=device, dtype=dtype)
                        x_t = forward_transition(latents, a_prev, a_t, noise)
                    output, x0, residual, grad = self._predict(
                        x_t, t, a_t, levels, model_segmap, float(guidance_scale), operator, y_rep, precondition
                    )

                    if method == "projection":
                        x0 = operator.project(x0, y_rep, prior_var=prior_var)
                        new_prediction = levels.model_output_from_original(x0, x_t.detach(), a_t)
                        output = torch.cat([new_prediction, output[:, channels:]], dim=1)

                    latents = self.scheduler.step(output, t, x_t.detach(), **extra_step_kwargs).prev_sample
                    if guided:
                        latents = latents - step_scale * grad
                residuals.append(_rms(residual).cpu())

                if callback_on_step_end is not None:
                    local = {"latents": latents, "pred_original_sample": x0}
                    callback_outputs = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                    latents = callback_outputs.pop("latents", latents)

        latents = latents.detach()
        if method == "projection" and operator.is_noise_free:
            # exact consistency of the final samples (removes the round-off of the eps <-> x0 conversions)
            latents = operator.project(latents, y_rep)
        self.maybe_free_model_hooks()

        return self._outputs(latents, y_rep, operator, batch, residuals, output_type, return_dict)
