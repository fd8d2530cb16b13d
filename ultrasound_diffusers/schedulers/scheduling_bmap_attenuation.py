# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""B-map attenuation scheduler: a DDPM whose signal level decays faster with depth, as sound does.

The forward process of "Diffusion as Sound Propagation" (Domínguez et al., MICCAI 2024) is DDPM with a
per-pixel signal level

    a_t(p) = abar_t * Bbar_t(p),        Bbar_t(p) = prod_{s<=t} M_s(p),
    M_t(p) = sqrt(1 - d(p) * b_t * (1 - bmap_min)),

where ``d(p)`` in [0, 1] is the normalised depth of pixel ``p`` (rows for a linear probe, the distance to the
fan apex for a convex / phased probe) and ``b_t`` the B-map time schedule. With ``bmap_min = 1`` it is exactly
DDPM. Because ``M_t`` depends on the pixel only through its depth, the scheduler never stores a [T, H, W]
tensor: it keeps the T-long 1-D schedules and, per sample shape, the depth map, and computes ``Bbar_t`` on
demand in float64 (with a small cache of recently used steps, so sequential sampling costs O(H*W) per step).
Training batches (many random steps at once) read ``log Bbar_t`` from a [T, U] table over the U unique depths
(27 MB at 128 x 128 on the CAMUS fan, built once, copied once per device), when it fits in ``_TABLE_BYTES``.

Precision: the schedule is built on the CPU in float64 (log-space sums of the per-step B-maps); ``step``,
``add_noise`` and the train-time helpers run their per-pixel maths in float64 on devices that have it (CPU, CUDA)
and in float32 on Apple MPS, whatever the sample's dtype, and return the sample's dtype (a bfloat16 or float16
pipeline gets bfloat16 / float16 samples back). Why: ``1 - a_t`` and ``a_t / a_prev`` with ``a_t`` near 1 lose
most of their digits in float32 and all of them in bfloat16, and the cost is element-wise, negligible next to the
network (see :func:`~.diffusion_math.working_dtype`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..geometry import (
    CAMUS_FAN_APEX,
    CAMUS_FAN_HALF_ANGLE_DEG,
    CAMUS_FAN_RADII,
    PROBE_GEOMETRIES,
    FanGeometry,
    check_fan,
)
from .bmaps import BMAP_SCHEDULES, bmap_time_schedule, bmap_values
from .diffusion_math import (
    ddim_variance,
    learned_range_log_variance,
    noise_from_model_output,
    original_from_model_output,
    posterior_terms,
    velocity,
    working_dtype,
)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "linear_small", "sigmoid")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
SAMPLERS = ("ddpm", "ddim")

TimestepLike = Union[int, float, torch.Tensor, np.integer, Sequence[int]]

#: Published scheduler settings by name (``BMapAttenuationScheduler.from_preset``). ``"camus-sdm"``: the ultrasound
#: SDM of Domínguez et al. 2024 (T = 1000, cosine noise schedule, learned-range variance, epsilon prediction,
#: x_0 clipped, linspace respacing, cosine B-map schedule with eps = 0.97 on the CAMUS convex fan).
SCHEDULER_PRESETS: Dict[str, Dict[str, Any]] = {
    "camus-sdm": dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        prediction_type="epsilon",
        clip_sample=True,
        timestep_spacing="linspace",
        bmap_schedule="cosine",
        bmap_min=0.97,
        probe_geometry="convex",
        fan_apex=list(CAMUS_FAN_APEX),
        fan_radii=list(CAMUS_FAN_RADII),
        fan_half_angle_deg=CAMUS_FAN_HALF_ANGLE_DEG,
    ),
}


def preset_config(name: str = "camus-sdm", **overrides: Any) -> Dict[str, Any]:
    """The config dict of a published preset (:data:`SCHEDULER_PRESETS`) with ``overrides`` applied (a copy)."""
    if name not in SCHEDULER_PRESETS:
        raise ValueError(f"unknown scheduler preset {name!r}; expected one of {sorted(SCHEDULER_PRESETS)}")
    config = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in SCHEDULER_PRESETS[name].items()}
    config.update(overrides)
    return config

# Steps whose cumulative log B-map is kept per sample shape (each entry costs O(H*W)).
_ANCHOR_CACHE_SIZE = 8
# Sample shapes whose depth map is kept.
_GRID_CACHE_SIZE = 8
# Steps evaluated at once when accumulating the B-map product (bounds temporary memory to chunk * H*W).
_STEP_CHUNK = 64
# Training batches (many random steps at once) read log Bbar_t from a [T, U] table on the unique depths when it
# fits in this many bytes (float64; 27 MB at 128 x 128 with the CAMUS fan and T = 1000): a gather per batch instead
# of a sweep over up to T steps on the CPU (~50 ms per call at 128 px), kept per device so that a GPU never waits
# for the CPU. Larger grids (256 x 256 fan: ~100 MB) keep the sweep; sequential sampling never builds the table.
_TABLE_BYTES = 32 * 2**20


@dataclass
class BMapSchedulerOutput(BaseOutput):
    """Output of :meth:`BMapAttenuationScheduler.step`.

    Args:
        prev_sample (`torch.Tensor` [B, C, H, W]): x_{t-1}, the input of the next denoising step.
        pred_original_sample (`torch.Tensor` [B, C, H, W]): the model's estimate of x_0 (after clipping).
    """

    prev_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None


class _DepthGrid:
    """Depth map of one sample size, stored as unique depth values plus an index (memory O(H*W))."""

    def __init__(self, height: int, width: int, depth: torch.Tensor, inside: torch.Tensor, linear_rows: Optional[int]):
        self.height, self.width = height, width
        self.inside = inside
        self.depth = depth
        self.values, inverse = torch.unique(depth.reshape(-1), return_inverse=True)
        self.inverse = inverse.reshape(height, width)
        self.linear_rows = linear_rows
        self.anchors: "OrderedDict[int, torch.Tensor]" = OrderedDict()
        self.log_table: Optional[torch.Tensor] = None  # [T, U] log Bbar_t, built for training batches
        self.device_tables: Dict[Tuple[str, torch.dtype], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def to_image(self, per_value: torch.Tensor) -> torch.Tensor:
        """Map [..., U] values on the unique depths back to [..., H, W]."""
        return per_value[..., self.inverse]


class BMapAttenuationScheduler(SchedulerMixin, ConfigMixin):
    """DDPM / DDIM sampling with the per-pixel B-map attenuation of "Diffusion as Sound Propagation".

    Besides diffusers' DDPM options, the B-map options are:

    Args:
        bmap_schedule (`str`, defaults to `"cosine"`): time schedule b_t of the attenuation front:
            `"linear"`, `"cosine"` (published), `"normal_cosine"` or `"sqrt"`.
        bmap_min (`float`, defaults to 0.97): eps in (0, 1]; each step multiplies the deepest pixel's signal
            factor by at least sqrt(eps). `1.0` gives exactly DDPM.
        bmap_buffer (`bool`, defaults to `False`): the first 5 % of the steps carry no attenuation.
        preserve_length (`bool`, defaults to `False`): pixels shallower than 1 - b_t keep a factor of 1.
        probe_geometry (`str`, defaults to `"convex"`): `"linear"` (depth = row) or `"convex"` (depth = distance
            from the fan apex; pixels outside the fan are not attenuated).
        fan_apex (`(float, float)`, defaults to (0.5, 0.0)): apex (x, y) in units of the image width.
        fan_radii (`(float, float)`, defaults to (0, 250/256)): inner and outer radius in units of the width.
        fan_half_angle_deg (`float`): half-opening angle of the fan from the downward vertical.
        sampler (`str`, defaults to `"ddpm"`): what :meth:`step` does when called without `eta`: `"ddpm"`
            (ancestral sampling with the B-map posterior) or `"ddim"` (deterministic DDIM generalised to
            per-pixel signal levels, with `ddim_eta`).
        ddim_eta (`float`, defaults to 0.0): eta of the `"ddim"` sampler.
        use_clipped_model_output (`bool`, defaults to `False`): the default of :meth:`step`'s argument of that
            name (DDIM updates only): recompute the noise from the clipped x_0, so that each DDIM step is an exact
            step of one (x_0, noise) pair. `False` is diffusers' DDIM; `True` removes the grey haze outside the fan
            that deterministic DDIM leaves on the B-map models (docs/fewstep.md).

    The DDPM options (`num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`, `trained_betas`,
    `variance_type`, `clip_sample`, `prediction_type`, `thresholding`, `dynamic_thresholding_ratio`,
    `clip_sample_range`, `sample_max_value`, `timestep_spacing`, `steps_offset`, `rescale_betas_zero_snr`)
    have diffusers' names and meanings; `beta_schedule` also accepts the B-map fork's `"linear_small"`
    (beta from 0.0001 to 0.001, scaled by 1000 / T), which is stored in the config as the equivalent `"linear"`
    schedule with those ends so that diffusers' own schedulers can load it. As in DDPMScheduler,
    `beta_schedule="laplace"` is the Laplace schedule and `variance_type="learned"` reads the network's variance
    channels as the variance itself (`"learned_range"`, the published setting, reads them as the interpolation
    weight in [-1, 1]). `num_train_timesteps` must be at least 2 (the B-map time schedules divide by T - 1).

    Samples are tensors [B, C, H, W] (any H, W; also [B, C, ..., H, W]) in [-1, 1].
    """

    _compatibles = ["DDPMScheduler", "DDIMScheduler", "BMapDPMSolverMultistepScheduler", "BMapConsistencyScheduler"]
    order = 1

    @classmethod
    def _get_compatibles(cls) -> list:
        """diffusers' compatible classes plus this package's (see :func:`compatible_scheduler_classes`)."""
        return compatible_scheduler_classes(cls, super()._get_compatibles())

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        bmap_schedule: str = "cosine",
        bmap_min: float = 0.97,
        bmap_buffer: bool = False,
        preserve_length: bool = False,
        probe_geometry: str = "convex",
        fan_apex: Tuple[float, float] = CAMUS_FAN_APEX,
        fan_radii: Tuple[float, float] = CAMUS_FAN_RADII,
        fan_half_angle_deg: float = CAMUS_FAN_HALF_ANGLE_DEG,
        sampler: str = "ddpm",
        ddim_eta: float = 0.0,
        use_clipped_model_output: bool = False,
    ):
        _check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES, allow=trained_betas is not None)
        _check_choice("variance_type", variance_type, VARIANCE_TYPES)
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        _check_choice("bmap_schedule", bmap_schedule, BMAP_SCHEDULES)
        _check_choice("probe_geometry", probe_geometry, PROBE_GEOMETRIES)
        _check_choice("sampler", sampler, SAMPLERS)
        _check_config_values(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule if trained_betas is None else None, clip_sample=clip_sample,
            thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range, sample_max_value=sample_max_value, steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr, bmap_min=bmap_min, bmap_buffer=bmap_buffer,
            preserve_length=preserve_length, ddim_eta=ddim_eta, use_clipped_model_output=use_clipped_model_output,
        )
        check_fan(fan_apex, fan_radii, fan_half_angle_deg)
        # The config holds JSON types (lists, not tuples or arrays), so that a saved and reloaded scheduler has
        # exactly the same config: from_pretrained(save_pretrained(s)).config == s.config.
        json_values = {"fan_apex": [float(v) for v in fan_apex], "fan_radii": [float(v) for v in fan_radii]}
        if trained_betas is not None:
            try:
                json_values["trained_betas"] = [float(v) for v in np.asarray(trained_betas, dtype=np.float64).reshape(-1)]
            except (TypeError, ValueError) as error:
                raise ValueError(f"`trained_betas` must be a list of numbers, got {trained_betas!r}") from error
        self.register_to_config(**json_values)
        if beta_schedule == "linear_small" and trained_betas is None:
            # The fork's schedule is a linear one with T-scaled ends; store it as such so that the saved config
            # also loads into diffusers' own schedulers (DDPMScheduler.from_config).
            beta_start, beta_end, beta_schedule = 0.0001 * 1000 / num_train_timesteps, 0.001 * 1000 / num_train_timesteps, "linear"
            self.register_to_config(beta_start=beta_start, beta_end=beta_end, beta_schedule=beta_schedule)
            defaults = [k for k in self.config.get("_use_default_values", []) if k not in ("beta_start", "beta_end")]
            if "_use_default_values" in self.config:
                self.register_to_config(_use_default_values=defaults)

        self.betas = _make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)
        # The cumulative product is taken in float32 exactly as DDPMScheduler does, so that with bmap_min=1 the
        # two schedulers share abar_t bit for bit; all per-pixel math then runs in float64.
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self._abar = self.alphas_cumprod.to(torch.float64)
        self.bmap_b = bmap_time_schedule(bmap_schedule, num_train_timesteps, buffer=bool(bmap_buffer))
        self.init_noise_sigma = 1.0

        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self._grids: "OrderedDict[Tuple[int, int], _DepthGrid]" = OrderedDict()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder: Optional[str] = None, **kwargs):
        """Load from a folder (or Hub repo) written by ``save_pretrained``, as diffusers' ``SchedulerMixin``;
        a config value that is refused (see the class docstring) raises a ValueError that names the file."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except ValueError as error:
            import os

            where = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder or "", cls.config_name)
            if where in str(error):
                raise
            raise ValueError(f"{where}: {error}") from error

    @classmethod
    def from_preset(cls, name: str = "camus-sdm", **overrides: Any) -> "BMapAttenuationScheduler":
        """A scheduler with published settings (:data:`SCHEDULER_PRESETS`), e.g. ``from_preset("camus-sdm")``, the
        ultrasound SDM of Domínguez et al. 2024; keyword arguments override single keys."""
        return cls(**preset_config(name, **overrides))

    # ------------------------------------------------------------------------------------------------ geometry
    @property
    def geometry(self) -> FanGeometry:
        """The probe of this scheduler's config (:class:`ultrasound_diffusers.geometry.FanGeometry`)."""
        return FanGeometry.from_config(self.config)

    def depth_map(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised depth (float64 [H, W] in [0, 1]) and mask of attenuated pixels (bool [H, W])."""
        grid = self._grid(height, width)
        return grid.depth.clone(), grid.inside.clone()

    def _grid(self, height: int, width: int) -> _DepthGrid:
        key = (int(height), int(width))
        grid = self._grids.get(key)
        if grid is None:
            cfg = self.config
            depth, inside = self.geometry.depth_map(key[0], key[1])
            linear_rows = key[0] if (cfg.probe_geometry == "linear" and cfg.preserve_length) else None
            grid = _DepthGrid(key[0], key[1], depth, inside, linear_rows)
            self._grids[key] = grid
            while len(self._grids) > _GRID_CACHE_SIZE:
                self._grids.popitem(last=False)
        else:
            self._grids.move_to_end(key)
        return grid

    # ------------------------------------------------------------------------------------------------ B-maps
    def _log_bmap_steps(self, grid: _DepthGrid, start: int, stop: int) -> torch.Tensor:
        """log M_s on the unique depths for s in [start, stop): float64 [stop - start, U]."""
        b = self.bmap_b[start:stop]
        values = bmap_values(grid.values, b, self.config.bmap_min, self.config.preserve_length, grid.linear_rows)
        return torch.log(values)

    def _sum_log_bmaps(self, grid: _DepthGrid, start: int, stop: int) -> torch.Tensor:
        """sum_{s in [start, stop)} log M_s: float64 [U]."""
        total = torch.zeros_like(grid.values)
        for lo in range(start, stop, _STEP_CHUNK):
            total += self._log_bmap_steps(grid, lo, min(stop, lo + _STEP_CHUNK)).sum(0)
        return total

    def _log_cumulative(self, grid: _DepthGrid, steps: Sequence[int]) -> Dict[int, torch.Tensor]:
        """log Bbar_t on the unique depths for each t in ``steps`` (t = -1 gives 0)."""
        out: Dict[int, torch.Tensor] = {}
        wanted = sorted({int(t) for t in steps})
        for t in wanted:
            if t < 0:
                out[t] = torch.zeros_like(grid.values)
            elif t in grid.anchors:
                grid.anchors.move_to_end(t)
                out[t] = grid.anchors[t]
        missing = [t for t in wanted if t not in out]
        if len(missing) == 1:
            # Start from the nearest known step, above or below (sequential sampling moves one step at a time).
            t = missing[0]
            known = {-1: torch.zeros_like(grid.values), **grid.anchors}
            ref = min(known, key=lambda s: abs(s - t))
            if ref <= t:
                out[t] = known[ref] + self._sum_log_bmaps(grid, ref + 1, t + 1)
            else:
                out[t] = known[ref] - self._sum_log_bmaps(grid, t + 1, ref + 1)
        elif missing:
            # One upward sweep that records every requested step (training batches with random t).
            below = [s for s in grid.anchors if s <= missing[0]]
            pos = max(below) if below else -1
            acc = grid.anchors[pos].clone() if below else torch.zeros_like(grid.values)
            for t in missing:
                acc = acc + self._sum_log_bmaps(grid, pos + 1, t + 1)
                pos = t
                out[t] = acc
        for t in missing:
            grid.anchors[t] = out[t]
            grid.anchors.move_to_end(t)
        while len(grid.anchors) > _ANCHOR_CACHE_SIZE:
            grid.anchors.popitem(last=False)
        return out

    def _log_table(self, grid: _DepthGrid) -> Optional[torch.Tensor]:
        """log Bbar_t on the unique depths for every t: float64 [T, U] (a running sum of the per-step logs), or
        None when it would exceed ``_TABLE_BYTES``."""
        if grid.log_table is None:
            T = self.config.num_train_timesteps
            if T * grid.values.numel() * 8 > _TABLE_BYTES:
                return None
            rows, acc = [], torch.zeros_like(grid.values)
            for lo in range(0, T, _STEP_CHUNK):
                block = torch.cumsum(self._log_bmap_steps(grid, lo, min(T, lo + _STEP_CHUNK)), dim=0) + acc
                rows.append(block)
                acc = block[-1]
            grid.log_table = torch.cat(rows)
        return grid.log_table

    def _gather_levels(self, grid: _DepthGrid, steps: List[int], what: str, device) -> Optional[torch.Tensor]:
        """``what`` ("signal" or "cumulative") at ``steps`` as [len(steps), H, W] in the working precision of
        ``device``, gathered on that device from the [T, U] table; None when there is no table."""
        table = self._log_table(grid)
        if table is None:
            return None
        device = torch.device(device) if device is not None else table.device
        work = working_dtype(device)
        key = (str(device), work)
        cached = grid.device_tables.get(key)
        if cached is None:
            cached = (table.to(device, work), grid.inverse.to(device), self._abar.to(device, work))
            grid.device_tables[key] = cached
        log_table, inverse, abar = cached
        index = torch.tensor(steps, device=device)
        clean = (index < 0).unsqueeze(1)
        rows = torch.where(clean, 0.0, log_table[index.clamp(min=0)])  # [S, U]; t = -1: log 1 = 0
        if what == "signal":
            rows = rows + torch.where(clean, 0.0, torch.log(abar[index.clamp(min=0)]).unsqueeze(1))
        return torch.exp(rows)[:, inverse]

    def _per_pixel(self, grid: _DepthGrid, steps: List[int], what: str) -> torch.Tensor:
        """float64 [len(steps), H, W] of ``what`` in {"signal", "cumulative", "bmap"} at each step."""
        if what == "bmap":
            rows = []
            for t in steps:
                if t < 0:
                    rows.append(torch.zeros_like(grid.values))
                else:
                    rows.append(self._log_bmap_steps(grid, t, t + 1)[0])
            return grid.to_image(torch.exp(torch.stack(rows)))
        logs = self._log_cumulative(grid, steps)
        log_cum = torch.stack([logs[t] for t in steps])
        if what == "cumulative":
            return grid.to_image(torch.exp(log_cum))
        abar = torch.stack([self._abar[t] if t >= 0 else self._abar.new_tensor(1.0) for t in steps])
        return grid.to_image(abar.view(-1, 1) * torch.exp(log_cum))

    def _evaluate(
        self,
        what: str,
        timesteps: TimestepLike,
        shape: Sequence[int],
        device: Optional[Union[str, torch.device]],
        dtype: Optional[torch.dtype],
    ) -> torch.Tensor:
        batch, height, width, ndim = _split_shape(shape)
        steps = self._steps_for_batch(timesteps, batch)
        grid = self._grid(height, width)
        unique = sorted(set(steps))
        values = None
        if len(unique) > 1 and what != "bmap":  # a training batch: gather from the [T, U] table on the device
            values = self._gather_levels(grid, steps, what, device)
        if values is not None:
            values = _to(values, device, dtype)
        else:
            # float64 on the CPU; only the distinct steps travel to the device, where they are gathered per sample.
            table = _to(self._per_pixel(grid, unique, what), device, dtype)
            index = torch.tensor([unique.index(t) for t in steps], device=table.device)
            values = table[index]  # [B, H, W]
        return values.view(batch, *([1] * (ndim - 3)), height, width) if ndim >= 3 else values

    def signal_level(
        self,
        timesteps: TimestepLike,
        shape: Sequence[int],
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        """Per-pixel signal level a_t(p) = abar_t * Bbar_t(p) of q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I).

        Args:
            timesteps: an int, a 0-d / one-element tensor, or one step per batch element ([B]); t = -1 gives 1.
            shape: the sample shape [B, C, H, W] (or [B, C, ..., H, W]); only B, H and W matter.
            device, dtype: of the result (default: CPU, float64).

        Returns:
            Tensor [B, 1, H, W] with values in (0, 1].
        """
        return self._evaluate("signal", timesteps, shape, device, dtype)

    def cumulative_bmap(self, timesteps: TimestepLike, shape: Sequence[int], device=None, dtype=None) -> torch.Tensor:
        """Cumulative B-map Bbar_t(p) = prod_{s<=t} M_s(p), as [B, 1, H, W] (see :meth:`signal_level`)."""
        return self._evaluate("cumulative", timesteps, shape, device, dtype)

    def bmap(self, timesteps: TimestepLike, shape: Sequence[int], device=None, dtype=None) -> torch.Tensor:
        """Per-step B-map M_t(p) in [sqrt(bmap_min), 1], as [B, 1, H, W] (see :meth:`signal_level`)."""
        return self._evaluate("bmap", timesteps, shape, device, dtype)

    # ------------------------------------------------------------------------------------------------ q(x_t|x_0)
    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        """No scaling is needed; present for interchangeability with other schedulers."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: TimestepLike) -> torch.Tensor:
        """Sample q(x_t | x_0) pixelwise: sqrt(a_t) x_0 + sqrt(1 - a_t) noise. Shapes [B, C, H, W]."""
        x0, eps = _work(original_samples), _work(noise)
        a = self.signal_level(timesteps, original_samples.shape, device=x0.device, dtype=x0.dtype)
        return (a.sqrt() * x0 + (1.0 - a).sqrt() * eps).to(original_samples.dtype)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: TimestepLike) -> torch.Tensor:
        """v = sqrt(a_t) noise - sqrt(1 - a_t) x_0 (the v-prediction target), pixelwise."""
        x0, eps = _work(sample), _work(noise)
        a = self.signal_level(timesteps, sample.shape, device=x0.device, dtype=x0.dtype)
        return velocity(x0, eps, a).to(sample.dtype)

    def predict_start_from_noise(self, x_t: torch.Tensor, timesteps: TimestepLike, noise: torch.Tensor) -> torch.Tensor:
        """x_0 = x_t / sqrt(a_t) - sqrt(1 / a_t - 1) eps, pixelwise."""
        a = self.signal_level(timesteps, x_t.shape, device=x_t.device, dtype=_work_dtype(x_t))
        return original_from_model_output(_work(noise), _work(x_t), a, "epsilon").to(x_t.dtype)

    def predict_noise_from_start(self, x_t: torch.Tensor, timesteps: TimestepLike, x_start: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(a_t) x_0) / sqrt(1 - a_t), pixelwise."""
        a = self.signal_level(timesteps, x_t.shape, device=x_t.device, dtype=_work_dtype(x_t))
        return noise_from_model_output(_work(x_start), _work(x_t), a, "sample").to(x_t.dtype)

    def predict_original_sample(self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: TimestepLike) -> torch.Tensor:
        """x_0 implied by a network prediction of this scheduler's ``prediction_type`` at x_t = ``sample``
        (per pixel; shapes [B, C, H, W]; variance channels, if any, must be split off first)."""
        a = self.signal_level(timesteps, sample.shape, device=sample.device, dtype=_work_dtype(sample))
        kind = self.config.prediction_type
        return original_from_model_output(_work(model_output), _work(sample), a, kind).to(sample.dtype)

    # ------------------------------------------------------------------------------------------------ posterior
    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, timesteps: TimestepLike
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) at train-time steps.

        The log variance at t = 0 (where the variance is 0) is clipped to its t = 1 value, as improved-diffusion
        does. Inputs [B, C, H, W]; outputs: mean [B, C, H, W] (dtype of ``x_t``), variance and log variance
        [B, 1, H, W] (float64 on the device of ``x_t``).
        """
        terms, _ = self._train_posterior(timesteps, x_t.shape, x_t.device)
        mean = terms["coef_x0"] * _work(x_start) + terms["coef_xt"] * _work(x_t)
        return mean.to(x_t.dtype), terms["variance"], terms["log_variance_clipped"]

    def _train_posterior(self, timesteps: TimestepLike, shape, device) -> Tuple[Dict[str, torch.Tensor], List[int]]:
        batch = _split_shape(shape)[0]
        steps = self._steps_for_batch(timesteps, batch)
        # computed where the samples are, in the working precision of that device (float64 on CPU / CUDA)
        level = dict(device=device, dtype=working_dtype(device))
        a_t = self.signal_level(steps, shape, **level)
        a_prev = self.signal_level([t - 1 for t in steps], shape, **level)
        terms = posterior_terms(a_t, a_prev)
        # improved-diffusion: log variance at t = 0 taken from t = 1.
        if any(t == 0 for t in steps):
            a_1 = self.signal_level([max(t, 1) for t in steps], shape, **level)
            a_0 = self.signal_level([max(t, 1) - 1 for t in steps], shape, **level)
            var_1 = posterior_terms(a_1, a_0)["variance"]
            zero = torch.tensor([t == 0 for t in steps], device=a_t.device).view(-1, *([1] * (a_t.dim() - 1)))
            clipped = torch.where(zero, var_1, terms["variance"])
        else:
            clipped = terms["variance"]
        terms["log_variance_clipped"] = torch.log(clipped.clamp(min=1e-20))
        return terms, steps

    def model_log_variance(self, model_var_values: torch.Tensor, timesteps: TimestepLike, shape=None) -> torch.Tensor:
        """Per-pixel log variance of p(x_{t-1} | x_t) at train-time steps.

        For ``learned_range``: f log(1 - alpha_t M_t) + (1 - f) log(clipped posterior variance), f = (v + 1) / 2,
        with ``model_var_values`` v in [-1, 1] of shape [B, C, H, W]. For the fixed types the model values are
        ignored (``fixed_large`` uses 1 - alpha_t M_t, ``fixed_small`` the clipped posterior variance).
        Returns a float64 tensor broadcastable to [B, C, H, W].
        """
        shape = model_var_values.shape if shape is None else shape
        terms, _ = self._train_posterior(timesteps, shape, model_var_values.device)
        min_log = terms["log_variance_clipped"]
        max_log = torch.log(terms["step_beta"])
        variance_type = self.config.variance_type
        if variance_type == "learned_range":
            return learned_range_log_variance(_work(model_var_values), min_log, max_log)
        if variance_type == "learned":  # the network predicts the variance itself
            return torch.log(_check_learned_variance(_work(model_var_values)))
        if variance_type in ("fixed_large", "fixed_large_log"):
            return max_log
        return min_log

    # ------------------------------------------------------------------------------------------------ sampling
    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Optional[Union[str, torch.device]] = None,
        timesteps: Optional[List[int]] = None,
    ):
        """Choose the steps used at inference (diffusers' spacing rules); kept steps keep their a_t exactly.

        Args:
            num_inference_steps: number of steps, spaced by ``timestep_spacing`` (``"linspace"`` reproduces the
                published respacing). Exclusive with ``timesteps``.
            device: where ``self.timesteps`` lives.
            timesteps: custom strictly decreasing list of train steps.
        """
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass only one of `num_inference_steps` and `timesteps`")
        if timesteps is not None:
            if isinstance(timesteps, (str, bytes)) or not hasattr(timesteps, "__iter__"):
                raise ValueError(f"`timesteps` must be a non-empty list of integers, got {timesteps!r}")
            steps = np.asarray([_integral_timestep(v, "timesteps") for v in timesteps], dtype=np.int64)
            if steps.ndim != 1 or len(steps) == 0:
                raise ValueError(f"`timesteps` must be a non-empty list of integers, got {timesteps!r}")
            if np.any(np.diff(steps) >= 0):
                raise ValueError("`timesteps` must be strictly decreasing")
            if steps[0] >= T or steps[-1] < 0:
                raise ValueError(f"`timesteps` must lie in [0, {T - 1}], got {steps[0]}..{steps[-1]}")
            self.custom_timesteps = True
            self.num_inference_steps = len(steps)
        else:
            if (
                isinstance(num_inference_steps, (bool, np.bool_))
                or not isinstance(num_inference_steps, (int, np.integer))
                or not 1 <= int(num_inference_steps) <= T
            ):
                raise ValueError(f"`num_inference_steps` must be an integer in [1, {T}], got {num_inference_steps!r}")
            n = int(num_inference_steps)
            self.custom_timesteps = False
            self.num_inference_steps = n
            spacing = self.config.timestep_spacing
            if spacing == "linspace":
                steps = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
            elif spacing == "leading":
                ratio = T // n
                steps = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + self.config.steps_offset
            else:  # trailing
                steps = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
            if steps.max() >= T or steps.min() < 0:
                raise ValueError(f"`steps_offset`={self.config.steps_offset} moves the timesteps outside [0, {T - 1}]")
        self.timesteps = torch.from_numpy(steps).to(device)

    def previous_timestep(self, timestep: Union[int, torch.Tensor]) -> torch.Tensor:
        """The next step of the chain (the next kept step after respacing), or -1 after the last.

        Returns a 0-d int64 tensor (on the device of ``self.timesteps``), as :class:`~diffusers.DDPMScheduler`
        returns a tensor.
        """
        t = _integral_timestep(timestep, "timestep")
        device = self.timesteps.device
        if self.num_inference_steps is None and not self.custom_timesteps:
            return torch.tensor(t - 1, dtype=torch.int64, device=device)
        steps = self.timesteps.tolist()
        if t not in steps:
            raise ValueError(f"`timestep` {t} is not one of the scheduler's timesteps; call set_timesteps first")
        index = steps.index(t)
        prev = steps[index + 1] if index + 1 < len(steps) else -1
        return torch.tensor(prev, dtype=torch.int64, device=device)

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Imagen): clamp each sample to its `dynamic_thresholding_ratio` quantile."""
        batch, channels = sample.shape[:2]
        flat = sample.reshape(batch, -1)
        s = torch.quantile(flat.abs().float(), self.config.dynamic_thresholding_ratio, dim=1).to(flat.dtype)
        s = s.clamp(min=1.0, max=self.config.sample_max_value).unsqueeze(1)
        return (flat.clamp(-s, s) / s).reshape(sample.shape)

    def _predict_x0_eps(self, model_output, sample, a_t):
        kind = self.config.prediction_type
        return (original_from_model_output(model_output, sample, a_t, kind),
                noise_from_model_output(model_output, sample, a_t, kind))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        eta: Optional[float] = None,
        variance_noise: Optional[torch.Tensor] = None,
        use_clipped_model_output: Optional[bool] = None,
        return_dict: bool = True,
    ) -> Union[BMapSchedulerOutput, Tuple[torch.Tensor, torch.Tensor]]:
        """One reverse step x_t -> x_{t_prev} with per-pixel signal levels.

        Args:
            model_output (`torch.Tensor` [B, C, H, W] or [B, 2C, H, W]): the network output; with
                ``variance_type="learned_range"`` the second half of the channels are the variance values in [-1, 1].
            timestep (`int`): the current step (one of ``self.timesteps`` after :meth:`set_timesteps`).
            sample (`torch.Tensor` [B, C, H, W]): x_t.
            generator: random generator for the noise.
            eta (`float`, *optional*): None uses the configured ``sampler``; a float runs the DDIM-style update with
                that eta (0 = deterministic).
            variance_noise (`torch.Tensor` [B, C, H, W], *optional*): noise to use instead of drawing it.
            use_clipped_model_output (`bool`, *optional*): DDIM only: recompute epsilon from the clipped x_0;
                ``None`` uses the configured ``use_clipped_model_output`` (default False, as diffusers' DDIM).
            return_dict (`bool`): return a :class:`BMapSchedulerOutput` rather than a tuple.
        """
        if sample.dim() < 3:
            raise ValueError(f"`sample` must have shape [B, C, H, W], got {tuple(sample.shape)}")
        t = _integral_timestep(timestep, "timestep")
        if not 0 <= t < self.config.num_train_timesteps:
            raise ValueError(f"`timestep` must lie in [0, {self.config.num_train_timesteps - 1}], got {t}")
        prev_t = int(self.previous_timestep(t))
        channels = sample.shape[1]
        predicted_variance = None
        if model_output.shape[1] == 2 * channels and self.config.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, channels, dim=1)
        elif model_output.shape[1] != channels:
            raise ValueError(
                f"`model_output` has {model_output.shape[1]} channels; expected {channels}"
                + (" or twice that with variance_type='learned_range'" if channels else "")
            )
        if eta is None and self.config.sampler == "ddim":
            eta = self.config.ddim_eta
        if eta is not None and float(eta) < 0:
            raise ValueError(f"`eta` must be >= 0, got {eta}")

        out_dtype = sample.dtype
        x_t, out = _work(sample), _work(model_output)
        a_t = self.signal_level(t, sample.shape, device=x_t.device, dtype=x_t.dtype)
        a_prev = self.signal_level(prev_t, sample.shape, device=x_t.device, dtype=x_t.dtype)

        x0, eps = self._predict_x0_eps(out, x_t, a_t)
        if self.config.thresholding:
            x0 = self._threshold_sample(x0)
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = x0.clamp(-r, r)

        def draw_noise():
            if variance_noise is not None:
                if variance_noise.shape != sample.shape:
                    raise ValueError(f"`variance_noise` must have shape {tuple(sample.shape)}, got {tuple(variance_noise.shape)}")
                return _work(variance_noise)
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
            return _work(noise)

        if eta is None:  # ancestral DDPM with the B-map posterior
            terms = posterior_terms(a_t, a_prev)
            prev = terms["coef_x0"] * x0 + terms["coef_xt"] * x_t
            if prev_t >= 0:
                variance = terms["variance"].clamp(min=1e-20)
                vt = self.config.variance_type
                if vt in ("fixed_small", "fixed_small_log"):
                    std = variance.sqrt()
                elif vt in ("fixed_large", "fixed_large_log"):
                    std = terms["step_beta"].sqrt()
                elif predicted_variance is None:
                    raise ValueError(
                        f"variance_type={vt!r} needs a `model_output` with twice the sample's channels"
                    )
                elif vt == "learned":  # the network predicts the variance itself, as in DDPMScheduler
                    std = _check_learned_variance(_work(predicted_variance)) ** 0.5
                else:
                    log_var = learned_range_log_variance(
                        _work(predicted_variance), torch.log(variance), torch.log(terms["step_beta"])
                    )
                    std = torch.exp(0.5 * log_var)
                prev = prev + std * draw_noise()
        else:  # DDIM generalised to per-pixel signal levels
            if use_clipped_model_output is None:
                use_clipped_model_output = self.config.use_clipped_model_output
            if use_clipped_model_output:
                eps = noise_from_model_output(x0, x_t, a_t, "sample")
            variance = ddim_variance(a_t, a_prev)
            std = float(eta) * variance.clamp(min=0).sqrt()
            direction = (1.0 - a_prev - std**2).clamp(min=0).sqrt() * eps
            prev = a_prev.sqrt() * x0 + direction
            if float(eta) > 0:
                prev = prev + std * draw_noise()

        prev, x0 = prev.to(out_dtype), x0.to(out_dtype)
        if not return_dict:
            return (prev, x0)
        return BMapSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    # ------------------------------------------------------------------------------------------------ helpers
    def _steps_for_batch(self, timesteps: TimestepLike, batch: int) -> List[int]:
        if isinstance(timesteps, torch.Tensor):
            if timesteps.dtype == torch.bool:
                raise ValueError("`timesteps` must hold integer steps, got a bool tensor")
            steps = [_integral_timestep(v, "timesteps") for v in timesteps.detach().reshape(-1).cpu().tolist()]
        elif isinstance(timesteps, (list, tuple, np.ndarray)):
            steps = [_integral_timestep(v, "timesteps") for v in np.asarray(timesteps).reshape(-1).tolist()]
        else:
            steps = [_integral_timestep(timesteps, "timesteps")]
        if len(steps) == 1:
            steps = steps * batch
        if len(steps) != batch:
            raise ValueError(f"`timesteps` must be a scalar or hold one value per batch element ({batch}), got {len(steps)}")
        T = self.config.num_train_timesteps
        for t in steps:
            if not -1 <= t < T:
                raise ValueError(f"`timesteps` must lie in [0, {T - 1}] (or -1 for the clean image), got {t}")
        return steps

    def __len__(self) -> int:
        return self.config.num_train_timesteps


# ---------------------------------------------------------------------------------------------------- functions
#: The scheduler classes of this package, by name (``_compatibles`` entries that diffusers cannot resolve).
_PACKAGE_SCHEDULERS = ("BMapAttenuationScheduler", "BMapDPMSolverMultistepScheduler", "BMapConsistencyScheduler")


def compatible_scheduler_classes(cls, found: Sequence[type]) -> list:
    """``found`` (the classes diffusers resolves from ``cls._compatibles``: only those of the diffusers package)
    plus the classes of this package that ``cls._compatibles`` names.

    diffusers' ``ConfigMixin.extract_init_dict`` drops the ``__init__`` keys of every compatible class from a
    config before warning about unexpected keys, and keeps them as hidden config entries. Without our own classes
    in that list, ``BMapDPMSolverMultistepScheduler.from_config(bmap_scheduler.config)`` warned that
    ``{'sampler', 'ddim_eta'}`` "will be ignored" (and the reverse swap warned about the solver keys); with them,
    the swap is silent and the other scheduler's keys ride along in the config, so that swapping back restores them.
    """
    import importlib

    package = importlib.import_module(__name__.rsplit(".", 1)[0])  # ultrasound_diffusers.schedulers
    names = set(cls._compatibles) | {cls.__name__}
    ours = [getattr(package, name) for name in _PACKAGE_SCHEDULERS if name in names and hasattr(package, name)]
    return list(found) + [c for c in ours if c not in found]


def _integral_timestep(value, name: str) -> int:
    """``value`` (an int, a numpy integer, or a one-element integer or integral float tensor) as an int."""
    if isinstance(value, bool) or (torch.is_tensor(value) and value.dtype == torch.bool):
        raise ValueError(f"`{name}` must be an integer step, got the bool {value!r}")
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"`{name}` must be a single step, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    elif isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"`{name}` must be an integer step, got {value!r}")


def _check_choice(name: str, value, choices: Sequence[str], allow: bool = False) -> None:
    if not allow and (not isinstance(value, str) or value not in choices):
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")


def _check_learned_variance(variance: torch.Tensor) -> torch.Tensor:
    """The variances a ``variance_type="learned"`` network predicts, refused when negative or not finite."""
    if not bool(torch.isfinite(variance).all()) or bool((variance < 0).any()):
        raise ValueError(
            "variance_type='learned' reads the model's variance channels as variances, which must be finite and >= 0; "
            f"got values in [{float(variance.min())}, {float(variance.max())}] (networks with outputs in [-1, 1] "
            "need variance_type='learned_range')"
        )
    return variance


def _real(name: str, value) -> float:
    """``value`` as a finite float; ValueError naming ``name`` for bools, strings, None, NaN and infinities."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    return value


def _integer(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def _flag(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be true or false, got {type(value).__name__} {value!r}")


def _check_config_values(
    num_train_timesteps, beta_start, beta_end, beta_schedule, clip_sample, thresholding, dynamic_thresholding_ratio,
    clip_sample_range, sample_max_value, steps_offset, rescale_betas_zero_snr, bmap_min, bmap_buffer,
    preserve_length, ddim_eta, use_clipped_model_output=False,
) -> None:
    """Refuse settings that would break sampling (each error names the key and what was expected).

    ``beta_schedule`` is None when ``trained_betas`` are given (their range is checked with the betas).
    """
    T = _integer("num_train_timesteps", num_train_timesteps)
    if T < 2:
        raise ValueError(
            f"`num_train_timesteps` must be >= 2, got {T}: the B-map time schedules (b_t = t / (T - 1), ...) need "
            "at least two steps (DDPMScheduler accepts T = 1, a chain of one step, which this scheduler does not)"
        )
    start, end = _real("beta_start", beta_start), _real("beta_end", beta_end)
    if beta_schedule in ("linear", "scaled_linear", "sigmoid"):
        if not 0.0 < start < 1.0:
            raise ValueError(f"`beta_start` must lie in (0, 1) for beta_schedule={beta_schedule!r}, got {start!r}")
        if not 0.0 < end < 1.0:
            raise ValueError(
                f"`beta_end` must lie in (0, 1) for beta_schedule={beta_schedule!r}, got {end!r} "
                "(a beta of 1 or more leaves no signal: abar_t <= 0)"
            )
        if start > end:
            raise ValueError(f"`beta_start` ({start}) must not exceed `beta_end` ({end})")
    for name, value in (("clip_sample", clip_sample), ("thresholding", thresholding),
                        ("rescale_betas_zero_snr", rescale_betas_zero_snr), ("bmap_buffer", bmap_buffer),
                        ("preserve_length", preserve_length), ("use_clipped_model_output", use_clipped_model_output)):
        _flag(name, value)
    ratio = _real("dynamic_thresholding_ratio", dynamic_thresholding_ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"`dynamic_thresholding_ratio` is a quantile and must lie in [0, 1], got {ratio!r}")
    if _real("clip_sample_range", clip_sample_range) <= 0:
        raise ValueError(f"`clip_sample_range` must be > 0 (x_0 is clipped to [-range, range]), got {clip_sample_range!r}")
    if _real("sample_max_value", sample_max_value) <= 0:
        raise ValueError(f"`sample_max_value` must be > 0, got {sample_max_value!r}")
    if _integer("steps_offset", steps_offset) < 0:
        raise ValueError(f"`steps_offset` must be >= 0, got {steps_offset!r}")
    eps = _real("bmap_min", bmap_min)
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"`bmap_min` must lie in (0, 1] (1 = plain DDPM), got {bmap_min!r}")
    if _real("ddim_eta", ddim_eta) < 0.0:
        raise ValueError(f"`ddim_eta` must be >= 0, got {ddim_eta!r}")


def _make_betas(T: int, beta_start: float, beta_end: float, schedule: str, trained_betas) -> torch.Tensor:
    """float32 betas [T], computed as diffusers' DDPMScheduler computes them."""
    if trained_betas is not None:
        try:
            betas = torch.tensor(np.asarray(trained_betas, dtype=np.float64), dtype=torch.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"`trained_betas` must be a list of numbers, got {trained_betas!r}") from error
        if betas.shape != (T,):
            raise ValueError(f"`trained_betas` must have num_train_timesteps={T} values, got {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("`trained_betas` must lie in (0, 1)")
        return betas
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(T)
    if schedule == "laplace":  # as DDPMScheduler (Hang et al. 2024's Laplace noise schedule)
        return betas_for_alpha_bar(T, alpha_transform_type="laplace")
    # sigmoid (GeoDiff)
    return torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start


def _split_shape(shape: Sequence[int]) -> Tuple[int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        raise ValueError(f"sample shape must be [B, C, H, W] (batch, channels, height, width), got {shape}")
    batch, height, width = shape[0], shape[-2], shape[-1]
    if min(batch, height, width) < 1:
        raise ValueError(f"sample shape must have positive batch, height and width, got {shape}")
    return batch, height, width, len(shape)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return working_dtype(x.device)


def _work(x: torch.Tensor) -> torch.Tensor:
    """The tensor in the working precision (:func:`~.diffusion_math.working_dtype`: float64, float32 on MPS)."""
    return x.to(_work_dtype(x))


def _to(x: torch.Tensor, device, dtype) -> torch.Tensor:
    """``x`` on ``device`` (default: its own) in ``dtype`` (default: its own); float64 becomes float32 on devices
    without float64 kernels (:func:`~.diffusion_math.working_dtype`)."""
    device = device if device is not None else x.device
    dtype = dtype if dtype is not None else x.dtype
    if dtype == torch.float64:
        dtype = working_dtype(device)
    return x.to(device=device, dtype=dtype)
