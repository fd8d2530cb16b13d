"""Pure functions for the B-map (depth attenuation) forward process.

Reference: Domínguez et al., "Diffusion as Sound Propagation: Physics-inspired
Model for Ultrasound Image Generation", MICCAI 2024.

Notation (T train steps, t = 0..T-1):

* ``b_t`` in [0, 1]: the B-map *time* schedule (:func:`bmap_time_schedule`).
* ``d(p)`` in [0, 1]: normalised depth of pixel ``p`` (:func:`ultrasound_diffusers.geometry.depth_map`).
* ``M_t(p) = sqrt(1 - d(p) b_t (1 - eps))``: the per-step B-map, ``eps = bmap_min``
  (:func:`bmap_values`).
* ``Bbar_t(p) = prod_{s<=t} M_s(p)``: the cumulative B-map; the per-pixel signal
  level of the forward process is ``a_t(p) = abar_t * Bbar_t(p)``.

``M_t`` depends on the pixel only through its depth, so everything here works
on a vector of (unique) depth values; memory is O(T + H*W), never O(T*H*W).
All functions compute in float64 on the CPU.
"""

from __future__ import annotations

import math

import torch

BMAP_SCHEDULES = ("linear", "cosine", "normal_cosine", "sqrt")
#: b value of the buffer steps (the published code uses 1e-8 rather than 0).
BUFFER_VALUE = 1e-8
#: Fraction of the steps that form the buffer when ``buffer=True``.
BUFFER_FRACTION = 0.05


def bmap_time_schedule(name: str, num_train_timesteps: int, buffer: bool = False) -> torch.Tensor:
    """B-map time schedule ``b_t`` for ``t = 0..T-1``.

    Args:
        name: ``"linear"`` (t/(T-1)), ``"cosine"`` ((1 - cos((t+0.008)/(1.008 T) pi/2))^2, the published
            default), ``"normal_cosine"`` ((1 - cos(pi t/(T-1)))/2) or ``"sqrt"`` (sqrt(t/(T-1))).
        num_train_timesteps: T, at least 2.
        buffer: if True the first ``int(0.05 T)`` steps get ``b = 1e-8`` and the named schedule is computed
            over the remaining steps.

    Returns:
        float64 tensor of shape [T] with values in [0, 1].
    """
    if name not in BMAP_SCHEDULES:
        raise ValueError(f"`bmap_schedule` must be one of {BMAP_SCHEDULES}, got {name!r}")
    T = int(num_train_timesteps)
    if T < 2:
        raise ValueError(f"`num_train_timesteps` must be at least 2, got {num_train_timesteps}")
    if buffer:
        n_buffer = int(BUFFER_FRACTION * T)
        if T - n_buffer < 2:
            raise ValueError(f"`bmap_buffer` leaves fewer than 2 steps for num_train_timesteps={T}")
        rest = bmap_time_schedule(name, T - n_buffer, buffer=False)
        return torch.cat([torch.full((n_buffer,), BUFFER_VALUE, dtype=torch.float64), rest])
    t = torch.arange(T, dtype=torch.float64)
    if name == "linear":
        return t / (T - 1)
    if name == "cosine":
        return (1.0 - torch.cos((t + 0.008) / (1.008 * T) * (math.pi / 2))) ** 2
    if name == "normal_cosine":
        return (1.0 - torch.cos(math.pi * t / (T - 1))) / 2.0
    return torch.sqrt(t / (T - 1))


def bmap_values(
    depth: torch.Tensor,
    b: torch.Tensor,
    bmap_min: float,
    preserve_length: bool = False,
    linear_rows: int | None = None,
) -> torch.Tensor:
    """Per-step B-map ``M_t`` for depth values ``depth`` at B-map times ``b``.

    Args:
        depth: float64 tensor [..., N] (or [N]) of normalised depths in [0, 1].
        b: float64 tensor [S] of ``b_t`` values (one per step to evaluate).
        bmap_min: eps in (0, 1]; the per-step factor lies in [sqrt(eps), 1].
        preserve_length: the published "preserve length" variant: pixels shallower than ``1 - b_t`` stay at 1.
        linear_rows: for a linear probe with ``preserve_length``, the image height H: the top
            ``int(H (1 - b_t))`` rows stay at 1 and a linear ramp from 1 to ``lb_t`` covers the rows below
            (``depth`` must then be ``row / (H - 1)``).

    Returns:
        float64 tensor [S, N] with ``M`` per step and depth value.
    """
    depth = depth.reshape(1, -1).to(torch.float64)
    b = b.reshape(-1, 1).to(torch.float64)
    drop = b * (1.0 - float(bmap_min))  # 1 - lb_t
    if not preserve_length:
        return torch.sqrt(1.0 - depth * drop)
    if linear_rows is not None:
        H = int(linear_rows)
        row = torch.round(depth * max(H - 1, 1))
        kept = torch.floor(H * (1.0 - b) + 1e-9)  # int(H (1 - b_t)) rows stay at 1
        span = (H - 1) - kept
        ramp = torch.where(span > 0, (row - kept) / span.clamp(min=1), torch.zeros_like(row))
        ramp = torch.where(row >= kept, ramp, torch.zeros_like(ramp))
        return torch.sqrt(1.0 - ramp * drop)
    kept = 1.0 - b  # pr_t
    denom = (1.0 - kept).clamp(min=1e-12)
    ramp = torch.where(depth >= kept, (depth - kept) / denom, torch.zeros_like(depth))
    return torch.sqrt(1.0 - ramp.clamp(max=1.0) * drop)
