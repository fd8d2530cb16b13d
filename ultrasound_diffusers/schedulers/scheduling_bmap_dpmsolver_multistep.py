# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""DPM-Solver++ (multistep, orders 1-3, ODE and SDE) for the per-pixel B-map forward process.

The B-map forward process (:class:`~ultrasound_diffusers.schedulers.BMapAttenuationScheduler`) is DDPM with a
per-pixel signal level ``a_t(p)``: ``q(x_t | x_0) = N(alpha_t(p) x_0, sigma_t(p)^2 I)`` with

    alpha_t(p) = sqrt(a_t(p)),   sigma_t(p) = sqrt(1 - a_t(p)),   lambda_t(p) = log(alpha_t(p) / sigma_t(p)).

Its drift and diffusion are diagonal, so the probability-flow ODE (and the reverse SDE) splits into one scalar
equation per pixel, each with its own noise schedule. DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095) then
applies pixel by pixel: the exponential-integrator step from ``s`` to ``t`` uses the per-pixel step
``h(p) = lambda_t(p) - lambda_s(p)`` and the multistep corrections use the per-pixel ratios
``r(p) = h_prev(p) / h(p)`` of consecutive steps. Only the network couples the pixels, exactly as in the scalar
case. With ``bmap_min = 1`` every pixel has the same schedule and this is diffusers'
``DPMSolverMultistepScheduler``; order 1 is the per-pixel DDIM (eta = 0) update.

The per-pixel signal levels come from a :class:`BMapAttenuationScheduler` built from the same config (no second
copy of the B-map math); a few recent steps are cached per sample size, so each step costs O(H*W).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..geometry import CAMUS_FAN_APEX, CAMUS_FAN_HALF_ANGLE_DEG, CAMUS_FAN_RADII, FanGeometry
from ..samplers import SAMPLERS, sampler_recipe
from .diffusion_math import working_dtype
from .scheduling_bmap_attenuation import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    BMapAttenuationScheduler,
    BMapSchedulerOutput,
    compatible_scheduler_classes,
)

ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
#: Variance types whose networks return 2C channels (C predictions, then C variance values the solver drops).
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")

#: Names accepted by :func:`scheduler_for_sampler` (and the ``--scheduler`` option of the CLI).
#: the sampler names (one home: :mod:`ultrasound_diffusers.samplers`)
SAMPLER_CHOICES = SAMPLERS

# Per-step (alpha, sigma, lambda) maps kept per sample shape; a multistep update needs up to four of them.
_LEVEL_CACHE_SIZE = 8


class BMapDPMSolverMultistepScheduler(SchedulerMixin, ConfigMixin):
    """DPM-Solver++ multistep sampling for B-map (per-pixel attenuation) diffusion models.

    A drop-in replacement of diffusers' ``DPMSolverMultistepScheduler`` for models trained with
    :class:`BMapAttenuationScheduler`: ``pipe.scheduler = BMapDPMSolverMultistepScheduler.from_config(
    pipe.scheduler.config)`` keeps the model's B-map process and samples in 10-25 network calls.

    Solver options (diffusers' names and meanings):

    Args:
        solver_order (`int`, defaults to 2): 1 (per-pixel DDIM, eta = 0), 2 or 3. 2 is recommended with guidance.
        algorithm_type (`str`, defaults to `"dpmsolver++"`): `"dpmsolver++"` (data-prediction ODE solver),
            `"sde-dpmsolver++"` (the stochastic variant: per-pixel noise ``sigma_t(p) sqrt(1 - exp(-2 h(p)))``)
            or `"dpmsolver"` (noise-prediction ODE solver; needs ``final_sigmas_type="sigma_min"``).
        solver_type (`str`, defaults to `"midpoint"`): `"midpoint"` or `"heun"` form of the second-order term.
        lower_order_final (`bool`, defaults to `True`): use lower orders in the last steps when there are fewer
            than 15 steps.
        euler_at_final (`bool`, defaults to `False`): first-order last step.
        final_sigmas_type (`str`, defaults to `"zero"`): where the last step lands: `"zero"` (the clean image,
            a = 1 everywhere) or `"sigma_min"` (the per-pixel signal level of train step 0).
        lambda_min_clipped (`float`, defaults to -inf): drop the first train steps whose (B-map-free) lambda is
            below this value when choosing the timesteps (diffusers' option for the cosine schedule).
        variance_type (`str`, *optional*): the model's variance type; with `"learned"` / `"learned_range"`
            a [B, 2C, H, W] output is split and the variance channels are dropped (ODE solvers need only the
            mean). The fixed types of :class:`BMapAttenuationScheduler` are accepted and change nothing.
        prediction_type (`str`, defaults to `"epsilon"`): `"epsilon"`, `"sample"` or `"v_prediction"`.
        thresholding, dynamic_thresholding_ratio, sample_max_value: dynamic thresholding of the data prediction.
        clip_sample (`bool`, defaults to `False`), clip_sample_range (`float`, 1.0): clamp the data prediction
            to [-range, range] (the static form of thresholding; `BMapAttenuationScheduler` configs carry it).
        timestep_spacing (`str`, defaults to `"linspace"`), steps_offset (`int`): diffusers' DPM-Solver spacing
            rules (the last step goes from the smallest kept timestep to the final level).

    Noise-schedule and B-map options: `num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`,
    `trained_betas`, `rescale_betas_zero_snr`, `bmap_schedule`, `bmap_min`, `bmap_buffer`, `preserve_length`,
    `probe_geometry`, `fan_apex`, `fan_radii`, `fan_half_angle_deg`: exactly as in
    :class:`BMapAttenuationScheduler` (`bmap_min=1.0` gives back the plain DPM-Solver++).

    Samples are tensors [B, C, H, W] (also [B, C, ..., H, W]) in [-1, 1], of any float dtype (bfloat16 / float16
    pipelines included); the per-pixel levels are computed in float64 on the CPU, the update runs in float64 on
    devices that have it (float32 on MPS; see :func:`~.diffusion_math.working_dtype` for why) and returns the
    sample's dtype.

    Which variant: models whose prediction at high noise is poor (the bundled demo model predicts a grey x_0
    outside the fan for t >= 500) end hazy on every deterministic path (DDIM, DPM-Solver++ ODE), because a
    deterministic step carries the whole predicted noise forward and so keeps that early estimate in the
    trajectory; ``"sde-dpmsolver++"`` renews part of the noise at every step (per pixel), as ancestral sampling
    does, so early errors decay and the later predictions correct them (``benchmarks/benchmark_solvers.py``).
    """

    _compatibles = sorted(
        {e.name for e in KarrasDiffusionSchedulers}
        | {"DPMSolverMultistepScheduler", "BMapAttenuationScheduler", "BMapConsistencyScheduler", "DDPMScheduler",
           "DDIMScheduler"}
    )
    order = 1

    @classmethod
    def _get_compatibles(cls) -> list:
        """diffusers' compatible classes plus this package's, so that ``from_config`` of a
        :class:`BMapAttenuationScheduler` config keeps its ``sampler`` / ``ddim_eta`` silently as hidden entries
        (:func:`~ultrasound_diffusers.schedulers.scheduling_bmap_attenuation.compatible_scheduler_classes`)."""
        return compatible_scheduler_classes(cls, super()._get_compatibles())

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Optional[str] = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        bmap_schedule: str = "cosine",
        bmap_min: float = 0.97,
        bmap_buffer: bool = False,
        preserve_length: bool = False,
        probe_geometry: str = "convex",
        fan_apex: Tuple[float, float] = CAMUS_FAN_APEX,
        fan_radii: Tuple[float, float] = CAMUS_FAN_RADII,
        fan_half_angle_deg: float = CAMUS_FAN_HALF_ANGLE_DEG,
    ):
        if solver_order not in (1, 2, 3) or isinstance(solver_order, bool):
            raise ValueError(f"`solver_order` must be 1, 2 or 3, got {solver_order!r}")
        _check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
        _check_choice("solver_type", solver_type, SOLVER_TYPES)
        _check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if variance_type is not None:
            _check_choice("variance_type", variance_type, tuple(VARIANCE_TYPES) + ("learned",))
        if algorithm_type == "dpmsolver" and final_sigmas_type == "zero":
            raise ValueError(
                "`final_sigmas_type='zero'` needs a data-prediction solver (`algorithm_type` 'dpmsolver++' or "
                "'sde-dpmsolver++'); use final_sigmas_type='sigma_min' with algorithm_type='dpmsolver'"
            )
        if not isinstance(lambda_min_clipped, (int, float)) or math.isnan(float(lambda_min_clipped)):
            raise ValueError(f"`lambda_min_clipped` must be a number (or -inf), got {lambda_min_clipped!r}")

        # The B-map process itself (validates the schedule, B-map and geometry options; all per-pixel math).
        self.bmap_scheduler = BMapAttenuationScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
            bmap_schedule=bmap_schedule,
            bmap_min=bmap_min,
            bmap_buffer=bmap_buffer,
            preserve_length=preserve_length,
            probe_geometry=probe_geometry,
            fan_apex=fan_apex,
            fan_radii=fan_radii,
            fan_half_angle_deg=fan_half_angle_deg,
        )
        inner = self.bmap_scheduler.config
        # JSON types in the config, as BMapAttenuationScheduler stores them (a save / load round trip is exact)
        self.register_to_config(
            fan_apex=list(inner.fan_apex), fan_radii=list(inner.fan_radii),
            **({"trained_betas": list(inner.trained_betas)} if inner.trained_betas is not None else {}),
        )
        if beta_schedule == "linear_small" and trained_betas is None:
            # stored as the equivalent linear schedule, as BMapAttenuationScheduler does
            self.register_to_config(beta_start=inner.beta_start, beta_end=inner.beta_end, beta_schedule=inner.beta_schedule)

        self.betas = self.bmap_scheduler.betas
        self.alphas = self.bmap_scheduler.alphas
        self.alphas_cumprod = self.bmap_scheduler.alphas_cumprod.clone()
        if rescale_betas_zero_snr:
            # as diffusers does: a tiny non-zero terminal signal level keeps lambda finite
            self.alphas_cumprod[-1] = 2**-24
        self.init_noise_sigma = 1.0

        self.num_inference_steps = None
        self.custom_timesteps = False
        self.timesteps = torch.from_numpy(np.arange(num_train_timesteps)[::-1].copy().astype(np.int64))
        self._levels: List[int] = []  # train step of each level; -1 = the clean image (a = 1)
        self.model_outputs: List[Optional[torch.Tensor]] = [None] * solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._level_cache: "OrderedDict[tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]" = OrderedDict()

    # ------------------------------------------------------------------------------------------------ per-pixel levels
    def signal_level(self, timesteps, shape: Sequence[int], device=None, dtype=None) -> torch.Tensor:
        """Per-pixel signal level a_t(p) at train steps, [B, 1, H, W] (see
        :meth:`BMapAttenuationScheduler.signal_level`; t = -1 gives 1)."""
        a = self.bmap_scheduler.signal_level(timesteps, shape, device=device, dtype=dtype)
        if self.config.rescale_betas_zero_snr:
            # diffusers replaces the zero terminal abar by 2**-24; the B-map factor stays per pixel
            steps = torch.as_tensor(np.asarray(timesteps.cpu() if torch.is_tensor(timesteps) else timesteps)).reshape(-1)
            last = (steps == self.config.num_train_timesteps - 1).to(a.device)
            if bool(last.any()):
                last = last.expand(a.shape[0]) if last.numel() == 1 else last
                floor = 2**-24 * self.bmap_scheduler.cumulative_bmap(timesteps, shape, device=a.device, dtype=a.dtype)
                a = torch.where(last.view(-1, *([1] * (a.dim() - 1))), floor, a)
        return a

    def cumulative_bmap(self, timesteps, shape: Sequence[int], device=None, dtype=None) -> torch.Tensor:
        """Cumulative B-map Bbar_t(p), [B, 1, H, W] (see :meth:`BMapAttenuationScheduler.cumulative_bmap`)."""
        return self.bmap_scheduler.cumulative_bmap(timesteps, shape, device=device, dtype=dtype)

    def bmap(self, timesteps, shape: Sequence[int], device=None, dtype=None) -> torch.Tensor:
        """Per-step B-map M_t(p), [B, 1, H, W] (see :meth:`BMapAttenuationScheduler.bmap`)."""
        return self.bmap_scheduler.bmap(timesteps, shape, device=device, dtype=dtype)

    @property
    def geometry(self) -> FanGeometry:
        """The probe of this scheduler's config (:class:`ultrasound_diffusers.geometry.FanGeometry`)."""
        return FanGeometry.from_config(self.config)

    def depth_map(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised depth (float64 [H, W]) and mask of attenuated pixels (bool [H, W])."""
        return self.bmap_scheduler.depth_map(height, width)

    def _level(self, index: int, sample: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha, sigma, lambda) of level ``index`` (0 .. num_inference_steps) as working-precision tensors
        [1, 1, (...,) H, W] on the sample's device; the clean level gives alpha = 1, sigma = 0, lambda = +inf."""
        dtype = _work_dtype(sample)
        shape = (1,) + tuple(sample.shape[1:])
        key = (index, shape, sample.device, dtype)
        cached = self._level_cache.get(key)
        if cached is not None:
            self._level_cache.move_to_end(key)
            return cached
        t = self._levels[index]
        if t < 0:
            alpha = torch.ones((1,) * sample.dim(), device=sample.device, dtype=dtype)
            sigma = torch.zeros_like(alpha)
            lam = torch.full_like(alpha, float("inf"))
        else:
            a = self.signal_level(t, shape)  # float64 on the CPU: 1 - a and the logs before any rounding
            alpha, sigma = a.sqrt(), (1.0 - a).sqrt()
            lam = torch.log(alpha) - torch.log(sigma)
            alpha, sigma, lam = (v.to(sample.device, dtype) for v in (alpha, sigma, lam))
        self._level_cache[key] = (alpha, sigma, lam)
        while len(self._level_cache) > _LEVEL_CACHE_SIZE:
            self._level_cache.popitem(last=False)
        return alpha, sigma, lam

    # ------------------------------------------------------------------------------------------------ timesteps
    @property
    def step_index(self) -> Optional[int]:
        """Index of the current timestep; grows by one after each :meth:`step`."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """Index of the first timestep (set by pipelines with :meth:`set_begin_index`)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the solver at ``self.timesteps[begin_index]`` (image-to-image pipelines)."""
        self._begin_index = int(begin_index)

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Optional[Union[str, torch.device]] = None,
        timesteps: Optional[List[int]] = None,
    ) -> None:
        """Choose the sampling steps with DPM-Solver's spacing rules and reset the multistep history.

        Args:
            num_inference_steps: number of solver steps (network calls), spaced by ``timestep_spacing`` over
                ``[0, T - 1]``; the last step goes from the smallest kept timestep to the final level
                (``final_sigmas_type``). Exclusive with ``timesteps``.
            device: where ``self.timesteps`` lives.
            timesteps: custom strictly decreasing train steps in [0, T - 1].
        """
        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of `num_inference_steps` and `timesteps`")
        if timesteps is not None:
            steps = np.asarray(list(timesteps), dtype=np.int64)
            if steps.ndim != 1 or len(steps) == 0:
                raise ValueError(f"`timesteps` must be a non-empty list of integers, got {timesteps!r}")
            if np.any(np.diff(steps) >= 0):
                raise ValueError("`timesteps` must be strictly decreasing")
            if steps[0] >= T or steps[-1] < 0:
                raise ValueError(f"`timesteps` must lie in [0, {T - 1}], got {steps[0]}..{steps[-1]}")
            self.custom_timesteps = True
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
                raise ValueError(f"`num_inference_steps` must be an integer, got {num_inference_steps!r}")
            n = int(num_inference_steps)
            if not 1 <= n <= T:
                raise ValueError(f"`num_inference_steps` must lie in [1, {T}], got {n}")
            self.custom_timesteps = False
            steps = self._spaced_timesteps(n)
        self.timesteps = torch.from_numpy(steps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(steps)
        final = -1 if self.config.final_sigmas_type == "zero" else 0
        self._levels = [int(t) for t in steps] + [final]
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._level_cache.clear()

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """diffusers' DPM-Solver spacing (n + 1 points, the last one dropped), honouring lambda_min_clipped."""
        T = self.config.num_train_timesteps
        abar = self.alphas_cumprod
        lambdas = torch.log(torch.sqrt(abar)) - torch.log(torch.sqrt(1 - abar))  # float32, as diffusers
        clipped = int(torch.searchsorted(torch.flip(lambdas, [0]), self.config.lambda_min_clipped))
        last = T - clipped
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            steps = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = last // (n + 1)
            steps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + self.config.steps_offset
        else:  # trailing
            steps = np.arange(last, 0, -T / n).round().copy().astype(np.int64) - 1
        if len(steps) == 0 or steps.max() >= T or steps.min() < 0:
            raise ValueError(
                f"num_inference_steps={n} with timestep_spacing={spacing!r}, steps_offset={self.config.steps_offset} "
                f"and lambda_min_clipped={self.config.lambda_min_clipped} gives no valid timesteps in [0, {T - 1}]"
            )
        return steps

    def index_for_timestep(self, timestep: Union[int, torch.Tensor], schedule_timesteps=None) -> int:
        """Index of ``timestep`` in the schedule (the second match if it occurs twice, the last index if never)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        matches = (schedule == torch.as_tensor(timestep).to(schedule.device)).nonzero()
        if len(matches) == 0:
            return len(self.timesteps) - 1
        return int(matches[1 if len(matches) > 1 else 0].item())

    def _init_step_index(self, timestep) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    # ------------------------------------------------------------------------------------------------ model output
    def _split_variance(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        channels = sample.shape[1]
        if model_output.shape[1] == 2 * channels and self.config.variance_type in LEARNED_VARIANCE_TYPES:
            return model_output[:, :channels]
        if model_output.shape[1] != channels:
            hint = " (or twice that with variance_type='learned_range')"
            raise ValueError(
                f"`model_output` has {model_output.shape[1]} channels for a {channels}-channel `sample`; "
                f"expected {channels}{hint if self.config.variance_type not in LEARNED_VARIANCE_TYPES else ' or ' + str(2 * channels)}"
            )
        return model_output

    def _limit(self, x0: torch.Tensor) -> torch.Tensor:
        if self.config.thresholding:
            return self.bmap_scheduler._threshold_sample(x0)
        if self.config.clip_sample:
            r = float(self.config.clip_sample_range)
            return x0.clamp(-r, r)
        return x0

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """What the solver integrates: the data prediction x_0 (``dpmsolver++`` types) or the noise prediction
        (``dpmsolver``), per pixel, at the current step.

        Args:
            model_output (`torch.Tensor` [B, C, H, W] or [B, 2C, H, W]): the network output (variance channels of
                a learned-sigma network are dropped).
            sample (`torch.Tensor` [B, C, H, W]): x_t.

        Returns:
            working-precision tensor [B, C, H, W] (x_0 after thresholding / clipping, or epsilon).
        """
        if self._step_index is None:
            raise ValueError("call `step` (or `set_timesteps` then `step`) before `convert_model_output`")
        out = _work(self._split_variance(model_output, sample))
        x = _work(sample)
        alpha, sigma, _ = self._level(self._step_index, sample)
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0, eps = (x - sigma * out) / alpha, out
        elif kind == "sample":
            x0, eps = out, None
        else:  # v_prediction
            x0, eps = alpha * x - sigma * out, None
        if self.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            return self._limit(x0)
        if eps is None:
            eps = (x - alpha * x0) / sigma
        if self.config.thresholding or self.config.clip_sample:
            x0 = self._limit(x0)
            eps = (x - alpha * x0) / sigma
        return eps

    # ------------------------------------------------------------------------------------------------ updates
    def _coefficients(self, sample: torch.Tensor, order: int):
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._level(i + 1, sample)
        past = [self._level(i - k, sample) for k in range(order)]  # s0, s1, s2
        return alpha_t, sigma_t, lambda_t, past

    def dpm_solver_first_order_update(self, model_output: torch.Tensor, sample: torch.Tensor, noise=None) -> torch.Tensor:
        """First-order step (per-pixel DDIM for ``dpmsolver++``). ``model_output``: converted, [B, C, H, W]."""
        alpha_t, sigma_t, lambda_t, ((alpha_s, sigma_s, lambda_s),) = self._coefficients(sample, 1)
        h = lambda_t - lambda_s
        kind = self.config.algorithm_type
        if kind == "dpmsolver++":
            return (sigma_t / sigma_s) * sample - (alpha_t * torch.expm1(-h)) * model_output
        if kind == "dpmsolver":
            return (alpha_t / alpha_s) * sample - (sigma_t * torch.expm1(h)) * model_output
        return (
            (sigma_t / sigma_s * torch.exp(-h)) * sample
            - (alpha_t * torch.expm1(-2.0 * h)) * model_output
            + sigma_t * torch.sqrt(-torch.expm1(-2.0 * h)) * noise
        )

    def multistep_dpm_solver_second_order_update(self, model_output_list, sample: torch.Tensor, noise=None) -> torch.Tensor:
        """Second-order multistep step with per-pixel h and r = h_prev / h. Inputs [B, C, H, W]."""
        alpha_t, sigma_t, lambda_t, past = self._coefficients(sample, 2)
        (alpha_s0, sigma_s0, lambda_s0), (_, _, lambda_s1) = past
        m0, m1 = model_output_list[-1], model_output_list[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        kind, heun = self.config.algorithm_type, self.config.solver_type == "heun"
        if kind == "dpmsolver++":
            phi = torch.expm1(-h)
            x = (sigma_t / sigma_s0) * sample - (alpha_t * phi) * D0
            return x + (alpha_t * (phi / h + 1.0)) * D1 if heun else x - 0.5 * (alpha_t * phi) * D1
        if kind == "dpmsolver":
            phi = torch.expm1(h)
            x = (alpha_t / alpha_s0) * sample - (sigma_t * phi) * D0
            return x - (sigma_t * (phi / h - 1.0)) * D1 if heun else x - 0.5 * (sigma_t * phi) * D1
        phi = -torch.expm1(-2.0 * h)  # 1 - exp(-2h)
        x = (sigma_t / sigma_s0 * torch.exp(-h)) * sample + (alpha_t * phi) * D0
        x = x + (alpha_t * (phi / (-2.0 * h) + 1.0)) * D1 if heun else x + 0.5 * (alpha_t * phi) * D1
        return x + sigma_t * torch.sqrt(phi) * noise

    def multistep_dpm_solver_third_order_update(self, model_output_list, sample: torch.Tensor, noise=None) -> torch.Tensor:
        """Third-order multistep step with per-pixel h, r0 = h_0 / h and r1 = h_1 / h. Inputs [B, C, H, W]."""
        alpha_t, sigma_t, lambda_t, past = self._coefficients(sample, 3)
        (alpha_s0, sigma_s0, lambda_s0), (_, _, lambda_s1), (_, _, lambda_s2) = past
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        kind = self.config.algorithm_type
        if kind == "dpmsolver++":
            phi = torch.expm1(-h)
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * phi) * m0
                + (alpha_t * (phi / h + 1.0)) * D1
                - (alpha_t * ((phi + h) / h**2 - 0.5)) * D2
            )
        if kind == "dpmsolver":
            phi = torch.expm1(h)
            return (
                (alpha_t / alpha_s0) * sample
                - (sigma_t * phi) * m0
                - (sigma_t * (phi / h - 1.0)) * D1
                - (sigma_t * ((phi - h) / h**2 - 0.5)) * D2
            )
        phi = -torch.expm1(-2.0 * h)
        return (
            (sigma_t / sigma_s0 * torch.exp(-h)) * sample
            + (alpha_t * phi) * m0
            + (alpha_t * (phi / (-2.0 * h) + 1.0)) * D1
            + (alpha_t * ((phi - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
            + sigma_t * torch.sqrt(phi) * noise
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[BMapSchedulerOutput, Tuple[torch.Tensor, torch.Tensor]]:
        """One solver step from ``timestep`` to the next level, pixel by pixel.

        Args:
            model_output (`torch.Tensor` [B, C, H, W] or [B, 2C, H, W]): the network output at ``timestep``.
            timestep (`int` or `torch.Tensor`): the current step (one of ``self.timesteps``).
            sample (`torch.Tensor` [B, C, H, W]): x_t.
            generator (`torch.Generator`, *optional*): for the noise of ``sde-dpmsolver++``.
            variance_noise (`torch.Tensor` [B, C, H, W], *optional*): that noise, given instead of drawn.
            return_dict (`bool`): return a :class:`BMapSchedulerOutput` rather than a tuple.

        Returns:
            ``prev_sample`` [B, C, H, W] (the sample's dtype) and ``pred_original_sample``, the data prediction of
            this step.
        """
        if self.num_inference_steps is None:
            raise ValueError("`num_inference_steps` is None: call `set_timesteps` before `step`")
        if sample.dim() < 3:
            raise ValueError(f"`sample` must have shape [B, C, H, W], got {tuple(sample.shape)}")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= self.num_inference_steps:
            raise ValueError(
                f"`step` was called {self._step_index + 1} times for {self.num_inference_steps} timesteps; call "
                "`set_timesteps` again to start a new sampling loop"
            )
        if self._step_index > 0 and int(timestep) == int(self.timesteps[self._step_index - 1]):
            raise ValueError(
                f"`step` was called twice at timestep {int(timestep)}: {type(self).__name__} is a multistep solver "
                "whose history moves forward only (RePaint-style resampling, e.g. the reconstruction pipeline's "
                "num_resample > 0, needs a single-step scheduler such as BMapAttenuationScheduler)"
            )
        n = len(self.timesteps)
        last = self._step_index == n - 1
        lower_order_final = last and (
            self.config.euler_at_final
            or (self.config.lower_order_final and n < 15)
            or self.config.final_sigmas_type == "zero"
        )
        lower_order_second = self._step_index == n - 2 and self.config.lower_order_final and n < 15

        converted = self.convert_model_output(model_output, sample)
        for i in range(self.config.solver_order - 1):
            self.model_outputs[i] = self.model_outputs[i + 1]
        self.model_outputs[-1] = converted

        x = _work(sample)
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            if variance_noise is None:
                noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
            elif tuple(variance_noise.shape) != tuple(sample.shape):
                raise ValueError(f"`variance_noise` must have shape {tuple(sample.shape)}, got {tuple(variance_noise.shape)}")
            else:
                noise = variance_noise
            noise = _work(noise.to(sample.device))

        order = self.config.solver_order
        if order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev = self.dpm_solver_first_order_update(converted, x, noise)
        elif order == 2 or self.lower_order_nums < 2 or lower_order_second:
            prev = self.multistep_dpm_solver_second_order_update(self.model_outputs, x, noise)
        else:
            prev = self.multistep_dpm_solver_third_order_update(self.model_outputs, x, noise)
        if self.lower_order_nums < order:
            self.lower_order_nums += 1

        if self.config.algorithm_type == "dpmsolver":
            alpha, sigma, _ = self._level(self._step_index, sample)
            x0 = self._limit((x - sigma * converted) / alpha)
        else:
            x0 = converted
        self._step_index += 1
        prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return (prev, x0)
        return BMapSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    # ------------------------------------------------------------------------------------------------ q(x_t|x_0)
    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """No scaling is needed; present for interchangeability with other schedulers."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """q(x_t | x_0) at train steps, pixelwise: sqrt(a_t) x_0 + sqrt(1 - a_t) noise. Shapes [B, C, H, W]."""
        x0, eps = _work(original_samples), _work(noise)
        a = self.signal_level(timesteps, original_samples.shape, device=x0.device, dtype=x0.dtype)
        return (a.sqrt() * x0 + (1.0 - a).sqrt() * eps).to(original_samples.dtype)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


# ---------------------------------------------------------------------------------------------------- functions
def scheduler_for_sampler(name: str, config, **overrides):
    """A scheduler for one of :data:`SAMPLER_CHOICES`, built from a pipeline's scheduler config.

    * ``"ddpm"``: :class:`BMapAttenuationScheduler` with ancestral sampling (the B-map posterior);
    * ``"ddim"``: :class:`BMapAttenuationScheduler` with the per-pixel DDIM update, eta = 0;
    * ``"dpm++"``: :class:`BMapDPMSolverMultistepScheduler`, second-order DPM-Solver++ (ODE);
    * ``"sde-dpm++"``: the same with ``algorithm_type="sde-dpmsolver++"`` (stochastic, per-pixel noise).

    A config without B-map keys (a plain diffusers scheduler) gets ``bmap_min=1.0``, i.e. no attenuation, so
    the swap never changes the forward process the model was trained with. ``overrides`` go to ``from_config``.
    """
    cls, keys = sampler_recipe(name)
    config = dict(config)
    extra = {} if "bmap_min" in config else {"bmap_min": 1.0}
    extra.update(keys)
    if cls == BMapAttenuationScheduler.__name__:
        if config.get("variance_type") not in VARIANCE_TYPES:
            extra["variance_type"] = "fixed_small"
        if config.get("timestep_spacing") not in TIMESTEP_SPACINGS:
            extra["timestep_spacing"] = "leading"
        extra.update(overrides)
        return BMapAttenuationScheduler.from_config(config, **extra)
    extra.update(overrides)
    return BMapDPMSolverMultistepScheduler.from_config(config, **extra)


def _check_choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return working_dtype(x.device)


def _work(x: torch.Tensor) -> torch.Tensor:
    """The tensor in the working precision (:func:`~.diffusion_math.working_dtype`: float64, float32 on MPS)."""
    return x.to(_work_dtype(x))
