# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Few-step (consistency-model) sampling for the per-pixel B-map forward process.

A consistency model distilled from a B-map diffusion model (``training/train_consistency_distillation.py``) maps
any point ``x_t`` of a probability-flow trajectory to the trajectory's origin. With the per-pixel signal level
``a_t(p) = abar_t * Bbar_t(p)`` of :class:`~ultrasound_diffusers.schedulers.BMapAttenuationScheduler` its
parametrisation is, pixel by pixel,

    f(x_t, t)(p) = c_skip(t) x_t(p) + c_out(t) x0_hat(x_t, t)(p),
    x0_hat(p)    = the network's prediction converted to x_0 with the pixel's own a_t(p)
                   (v: sqrt(a_t(p)) x_t(p) - sqrt(1 - a_t(p)) v(p); eps: (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)),
    c_skip(t)    = sigma_data^2 / ((s t)^2 + sigma_data^2),   c_out(t) = s t / sqrt((s t)^2 + sigma_data^2),

with ``sigma_data = 0.5`` and ``s = timestep_scaling`` (10, as the latent consistency models). The boundary
condition of a consistency model, ``f(x, t_min) = x``, must hold at every pixel; at ``t_min = 0`` it does:
``c_skip(0) = 1`` and ``c_out(0) = 0`` for every pixel, whatever its depth. The B-map enters in two places only:
the conversion to x_0 and the re-noising between steps. Multistep sampling ("denoise, then re-noise to the next
level") draws, per pixel,

    x_{tau_{i+1}}(p) = sqrt(a_{tau_{i+1}}(p)) f(x_{tau_i}, tau_i)(p) + sqrt(1 - a_{tau_{i+1}}(p)) z(p),  z ~ N(0, I),

so that each intermediate sample has exactly the marginal of the B-map forward process at ``tau_{i+1}`` (deeper
pixels noisier); the last step returns ``f`` itself. With ``bmap_min = 1`` every pixel has the level ``abar_t``
and one step is exactly diffusers' :class:`~diffusers.LCMScheduler` step (``tests/test_scheduler_fewstep.py``).
The derivation and the measurements are in ``docs/fewstep.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..geometry import CAMUS_FAN_APEX, CAMUS_FAN_HALF_ANGLE_DEG, CAMUS_FAN_RADII
from .diffusion_math import original_from_model_output
from .scheduling_bmap_attenuation import PREDICTION_TYPES, VARIANCE_TYPES, BMapAttenuationScheduler, compatible_scheduler_classes

__all__ = ["BMapConsistencyScheduler", "BMapConsistencySchedulerOutput", "consistency_scalings", "lcm_timesteps"]

#: sigma_data of the boundary scalings (images in [-1, 1]; the value of the consistency-model papers).
SIGMA_DATA = 0.5


@dataclass
class BMapConsistencySchedulerOutput(BaseOutput):
    """Output of :meth:`BMapConsistencyScheduler.step`.

    Args:
        prev_sample (`torch.Tensor` [B, C, H, W]): the input of the next step (the final image after the last).
        denoised (`torch.Tensor` [B, C, H, W]): the consistency function's estimate f(x_t, t) of the clean image.
    """

    prev_sample: torch.Tensor
    denoised: Optional[torch.Tensor] = None


def consistency_scalings(timesteps: torch.Tensor, timestep_scaling: float = 10.0,
                         sigma_data: float = SIGMA_DATA) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boundary scalings ``(c_skip, c_out)`` of the consistency function at integer train steps.

    ``c_skip = sigma_data^2 / ((s t)^2 + sigma_data^2)``, ``c_out = s t / sqrt((s t)^2 + sigma_data^2)``, so
    ``c_skip(0) = 1`` and ``c_out(0) = 0`` (the boundary condition f(x, 0) = x at every pixel).

    Args:
        timesteps: tensor of train steps (any shape; values >= 0).
        timestep_scaling: s.
        sigma_data: the data scale (0.5 for images in [-1, 1]).

    Returns:
        two float64 tensors of the shape of ``timesteps``.
    """
    scaled = torch.as_tensor(timesteps, dtype=torch.float64) * float(timestep_scaling)
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip, c_out


def lcm_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000,
                  original_inference_steps: int = 50) -> np.ndarray:
    """The sampling steps of a model distilled on the ``original_inference_steps`` grid (LCM's rule).

    The grid is ``k, 2k, ..., T`` minus 1 with ``k = T // original_inference_steps`` (19, 39, ..., 999 for
    T = 1000, 50); ``num_inference_steps`` of its points are taken evenly from the top (1 step: [999];
    4 steps: [999, 759, 499, 259]).

    Returns:
        int64 array [num_inference_steps], strictly decreasing.
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) or not (
        1 <= int(num_inference_steps) <= original_inference_steps
    ):
        raise ValueError(
            f"`num_inference_steps` must be an integer in [1, original_inference_steps={original_inference_steps}] "
            f"(the steps are a subset of the distillation grid), got {num_inference_steps!r}"
        )
    k = num_train_timesteps // original_inference_steps
    grid = (np.arange(1, original_inference_steps + 1) * k - 1)[::-1]
    index = np.floor(np.linspace(0, len(grid), num=int(num_inference_steps), endpoint=False)).astype(np.int64)
    return grid[index].astype(np.int64).copy()


class BMapConsistencyScheduler(SchedulerMixin, ConfigMixin):
    """Multistep consistency sampling (1-8 network calls) for models distilled from a B-map diffusion model.

    Build it from the teacher's config, which carries the noise schedule and the B-map options over::

        scheduler = BMapConsistencyScheduler.from_config(pipe.scheduler.config)

    Args:
        original_inference_steps (`int`, defaults to 50): the size of the distillation grid (the teacher's DDIM
            steps); the sampling steps are a subset of it (:func:`lcm_timesteps`).
        timestep_scaling (`float`, defaults to 10.0): s of the boundary scalings (:func:`consistency_scalings`).
        prediction_type (`str`, defaults to `"epsilon"`): what the network predicts (`"epsilon"`, `"sample"`,
            `"v_prediction"`); converted to x_0 with the per-pixel a_t(p).
        clip_sample (`bool`, defaults to `True`), clip_sample_range (`float`, 1.0): clamp x0_hat to
            [-range, range] before the boundary scalings.
        variance_type (`str`, *optional*): the model's variance type; a learned-variance network's [B, 2C, H, W]
            output is split and its variance channels are dropped (the sampler needs only the mean).

    Noise-schedule and B-map options (`num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`,
    `trained_betas`, `rescale_betas_zero_snr`, `bmap_schedule`, `bmap_min`, `bmap_buffer`, `preserve_length`,
    `probe_geometry`, `fan_apex`, `fan_radii`, `fan_half_angle_deg`) are exactly those of
    :class:`BMapAttenuationScheduler`, which computes every a_t(p) (no second copy of the B-map math).

    Samples are [B, C, H, W] in [-1, 1]; the update runs in float64 (float32 on MPS) and returns the sample's
    dtype.
    """

    _compatibles = ["BMapAttenuationScheduler", "BMapDPMSolverMultistepScheduler", "LCMScheduler"]
    order = 1

    @classmethod
    def _get_compatibles(cls) -> list:
        """diffusers' compatible classes plus this package's, so that ``from_config`` of another B-map scheduler's
        config keeps its keys (``sampler``, ``ddim_eta``, solver keys) silently as hidden entries."""
        return compatible_scheduler_classes(cls, super()._get_compatibles())

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "squaredcos_cap_v2",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        original_inference_steps: int = 50,
        timestep_scaling: float = 10.0,
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        variance_type: Optional[str] = None,
        rescale_betas_zero_snr: bool = False,
        bmap_schedule: str = "cosine",
        bmap_min: float = 0.97,
        bmap_buffer: bool = False,
        preserve_length: bool = False,
        probe_geometry: str = "convex",
        fan_apex: Tuple[float, float] = CAMUS_FAN_APEX,
        fan_radii: Tuple[float, float] = CAMUS_FAN_RADII,
        fan_half_angle_deg: float = CAMUS_FAN_HALF_ANGLE_DEG,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if variance_type is not None and variance_type not in VARIANCE_TYPES:
            raise ValueError(f"`variance_type` must be None or one of {VARIANCE_TYPES}, got {variance_type!r}")
        if isinstance(original_inference_steps, bool) or not isinstance(original_inference_steps, (int, np.integer)) \
                or not 1 <= int(original_inference_steps) <= int(num_train_timesteps):
            raise ValueError(
                f"`original_inference_steps` must be an integer in [1, num_train_timesteps={num_train_timesteps}], "
                f"got {original_inference_steps!r}"
            )
        if isinstance(timestep_scaling, bool) or not isinstance(timestep_scaling, (int, float)) or not (
            np.isfinite(timestep_scaling) and timestep_scaling > 0
        ):
            raise ValueError(f"`timestep_scaling` must be a positive number, got {timestep_scaling!r}")
        # The B-map process itself: validates the schedule / B-map / geometry options and computes a_t(p).
        self.bmap_scheduler = BMapAttenuationScheduler(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, prediction_type=prediction_type,
            clip_sample=clip_sample, clip_sample_range=clip_sample_range,
            rescale_betas_zero_snr=rescale_betas_zero_snr, bmap_schedule=bmap_schedule, bmap_min=bmap_min,
            bmap_buffer=bmap_buffer, preserve_length=preserve_length, probe_geometry=probe_geometry,
            fan_apex=fan_apex, fan_radii=fan_radii, fan_half_angle_deg=fan_half_angle_deg,
        )
        inner = self.bmap_scheduler.config
        # JSON types in the config (lists), so that a save / load round trip gives the same config
        self.register_to_config(
            fan_apex=list(inner.fan_apex), fan_radii=list(inner.fan_radii),
            **({"trained_betas": list(inner.trained_betas)} if inner.trained_betas is not None else {}),
        )
        if beta_schedule == "linear_small" and trained_betas is None:
            self.register_to_config(beta_start=inner.beta_start, beta_end=inner.beta_end, beta_schedule=inner.beta_schedule)
        self.alphas_cumprod = self.bmap_scheduler.alphas_cumprod
        self.init_noise_sigma = 1.0
        self.num_inference_steps: Optional[int] = None
        self.timesteps = torch.from_numpy(lcm_timesteps(int(original_inference_steps), int(num_train_timesteps),
                                                        int(original_inference_steps)))

    # ------------------------------------------------------------------------------------------------ levels
    def signal_level(self, timesteps, shape: Sequence[int], device=None, dtype=None) -> torch.Tensor:
        """Per-pixel a_t(p) ([B, 1, H, W], values in (0, 1]; t = -1 gives 1), as
        :meth:`BMapAttenuationScheduler.signal_level`."""
        return self.bmap_scheduler.signal_level(timesteps, shape, device=device, dtype=dtype)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """q(x_t | x_0) per pixel: sqrt(a_t) x_0 + sqrt(1 - a_t) noise ([B, C, H, W])."""
        return self.bmap_scheduler.add_noise(original_samples, noise, timesteps)

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        """No scaling is needed; present for interchangeability with other schedulers."""
        return sample

    def get_scalings_for_boundary_condition_discrete(self, timestep) -> Tuple[float, float]:
        """``(c_skip, c_out)`` at one train step (see :func:`consistency_scalings`), as floats."""
        c_skip, c_out = consistency_scalings(torch.tensor(float(timestep)), self.config.timestep_scaling)
        return float(c_skip), float(c_out)

    # ------------------------------------------------------------------------------------------------ timesteps
    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Optional[Union[str, torch.device]] = None,
        timesteps: Optional[List[int]] = None,
    ) -> None:
        """Choose the sampling steps: ``num_inference_steps`` points of the distillation grid
        (:func:`lcm_timesteps`), or a custom strictly decreasing list ``timesteps`` of train steps."""
        T = int(self.config.num_train_timesteps)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of `num_inference_steps` and `timesteps`")
        if timesteps is not None:
            steps = np.asarray(list(timesteps), dtype=np.float64)
            if steps.ndim != 1 or len(steps) == 0 or not np.all(np.isfinite(steps)) or not np.all(steps == np.round(steps)):
                raise ValueError(f"`timesteps` must be a non-empty list of integer train steps, got {timesteps!r}")
            steps = steps.astype(np.int64)
            if np.any(np.diff(steps) >= 0):
                raise ValueError(f"`timesteps` must be strictly decreasing, got {list(steps)}")
            if steps[0] >= T or steps[-1] < 0:
                raise ValueError(f"`timesteps` must lie in [0, {T - 1}], got {list(steps)}")
        else:
            steps = lcm_timesteps(num_inference_steps, T, int(self.config.original_inference_steps))
        self.num_inference_steps = len(steps)
        self.timesteps = torch.from_numpy(steps).to(device)

    def previous_timestep(self, timestep) -> int:
        """The next sampling step after ``timestep``, or -1 after the last (the final image)."""
        steps = [int(s) for s in self.timesteps.tolist()]
        t = int(timestep)
        if t not in steps:
            raise ValueError(f"`timestep` {t} is not one of the scheduler's timesteps {steps}; call set_timesteps first")
        index = steps.index(t)
        return steps[index + 1] if index + 1 < len(steps) else -1

    # ------------------------------------------------------------------------------------------------ sampling
    def denoise(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """The consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat (per pixel), in the work dtype.

        Args:
            model_output: [B, C, H, W] prediction (variance channels already removed); sample: x_t [B, C, H, W];
            timestep: an int train step, or a [B] tensor of them (training).

        Returns:
            float64 (float32 on MPS) [B, C, H, W].
        """
        x_t, out = _work(sample), _work(model_output)
        steps = torch.as_tensor(timestep).reshape(-1)
        a_t = self.signal_level(steps.tolist() if steps.numel() > 1 else int(steps), sample.shape)
        a_t = a_t.to(x_t.device, x_t.dtype)
        x0 = original_from_model_output(out, x_t, a_t, self.config.prediction_type)
        if self.config.clip_sample:
            r = float(self.config.clip_sample_range)
            x0 = x0.clamp(-r, r)
        c_skip, c_out = consistency_scalings(steps, self.config.timestep_scaling)
        view = (-1,) + (1,) * (sample.dim() - 1)
        c_skip = c_skip.to(x_t.device, x_t.dtype).view(view)
        c_out = c_out.to(x_t.device, x_t.dtype).view(view)
        return c_skip * x_t + c_out * x0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[BMapConsistencySchedulerOutput, Tuple[torch.Tensor, torch.Tensor]]:
        """One consistency step: denoise x_t to f(x_t, t), then re-noise it to the next step's a(p).

        Args:
            model_output (`torch.Tensor` [B, C, H, W] or [B, 2C, H, W]): the network output (a learned-variance
                network's second half of the channels is dropped).
            timestep (`int`): the current step, one of ``self.timesteps``.
            sample (`torch.Tensor` [B, C, H, W]): x_t.
            generator: random generator of the re-noising (not used at the last step).
            noise (`torch.Tensor` [B, C, H, W], *optional*): the re-noising noise instead of drawing it.
            return_dict: return a :class:`BMapConsistencySchedulerOutput` rather than ``(prev_sample, denoised)``.
        """
        if self.num_inference_steps is None:
            raise ValueError("call `set_timesteps` before `step`")
        if sample.dim() < 3:
            raise ValueError(f"`sample` must have shape [B, C, H, W], got {tuple(sample.shape)}")
        channels = sample.shape[1]
        if model_output.shape[1] == 2 * channels:
            model_output = model_output[:, :channels]
        elif model_output.shape[1] != channels:
            raise ValueError(f"`model_output` has {model_output.shape[1]} channels; expected {channels} (or {2 * channels})")
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        denoised = self.denoise(model_output, t, sample)
        if prev_t >= 0:
            a_prev = self.signal_level(prev_t, sample.shape).to(denoised.device, denoised.dtype)
            if noise is None:
                noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            elif noise.shape != sample.shape:
                raise ValueError(f"`noise` must have shape {tuple(sample.shape)}, got {tuple(noise.shape)}")
            prev = a_prev.sqrt() * denoised + (1.0 - a_prev).sqrt() * _work(noise)
        else:
            prev = denoised
        prev, denoised = prev.to(sample.dtype), denoised.to(sample.dtype)
        if not return_dict:
            return (prev, denoised)
        return BMapConsistencySchedulerOutput(prev_sample=prev, denoised=denoised)

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)


def _work(x: torch.Tensor) -> torch.Tensor:
    """The tensor in the working precision (float64; float32 on MPS, which has no float64)."""
    return x.to(torch.float32 if x.device.type == "mps" else torch.float64)
