"""Pure functions for the B-map (depth attenuation) forward process.

Reference: Domínguez et al., "Diffusion as Sound Propagation: Physics-inspired
Model for Ultrasound Image Generation", MICCAI 2024.

Notation (T train steps, t = 0..T-1):

* ``b_t`` in [0, 1]: the B-map *time* schedule (:func:`bmap_time_schedule`).
* ``d(p)`` in [0, 1]: normalised depth of pixel ``p`` (:func:`depth_map`).
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
import numbers
from typing import Sequence, Tuple

import torch

#: The published CAMUS fan, in units of the image width: apex (x, y), radii (inner, outer), half-opening angle.
CAMUS_FAN_APEX: Tuple[float, float] = (0.5, 0.0)
CAMUS_FAN_RADII: Tuple[float, float] = (0.0, 250.0 / 256.0)
CAMUS_FAN_HALF_ANGLE_DEG: float = 32.1003690834937

BMAP_SCHEDULES = ("linear", "cosine", "normal_cosine", "sqrt")
PROBE_GEOMETRIES = ("linear", "convex")
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


def fan_polar_coordinates(
    height: int,
    width: int,
    apex: Sequence[float] = CAMUS_FAN_APEX,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Distance (in pixels) and angle from the downward vertical of every pixel relative to the fan apex.

    Pixel (x, y) sits at integer coordinates (x = column, y = row). The apex is given in units of
    the image *width*: ``apex = (0.5, 0)`` is pixel (W/2, 0).

    Returns:
        ``(r, theta)``: float64 tensors of shape [H, W]; ``theta`` in radians, 0 straight down,
        positive towards larger x.
    """
    ys = torch.arange(height, dtype=torch.float64).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float64).view(1, -1)
    dx = xs - float(apex[0]) * width
    dy = ys - float(apex[1]) * width
    r = torch.sqrt(dx**2 + dy**2)
    theta = torch.atan2(dx, dy)
    return r, theta


def fan_mask(
    height: int,
    width: int,
    apex: Sequence[float] = CAMUS_FAN_APEX,
    radii: Sequence[float] = CAMUS_FAN_RADII,
    half_angle_deg: float = CAMUS_FAN_HALF_ANGLE_DEG,
) -> torch.Tensor:
    """Boolean [H, W] mask of the pixels inside a sector (convex / phased probe) fan.

    ``apex`` and ``radii`` are in units of the image width (every length scales with W);
    ``half_angle_deg`` is measured from the downward vertical through the apex.
    """
    _check_fan(apex, radii, half_angle_deg)
    r, theta = fan_polar_coordinates(height, width, apex)
    r_in, r_out = float(radii[0]) * width, float(radii[1]) * width
    return (theta.abs() <= math.radians(half_angle_deg)) & (r >= r_in) & (r <= r_out)


def depth_map(
    height: int,
    width: int,
    probe_geometry: str = "convex",
    apex: Sequence[float] = CAMUS_FAN_APEX,
    radii: Sequence[float] = CAMUS_FAN_RADII,
    half_angle_deg: float = CAMUS_FAN_HALF_ANGLE_DEG,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised depth ``d(p)`` in [0, 1] of every pixel, and the mask of pixels that attenuate.

    * ``"linear"`` probe: ``d = row / (H - 1)`` (0 for a single row); every pixel attenuates.
    * ``"convex"`` probe: ``d = (r - r_in) / (r_out - r_in)`` with ``r`` the distance to the fan apex;
      pixels outside the fan get ``d = 0`` and ``inside = False`` (their B-map is 1).

    Returns:
        ``(depth, inside)``: float64 [H, W] and bool [H, W].

    Raises:
        ValueError: unknown ``probe_geometry``, non-positive sizes, or a fan that misses the image.
    """
    if probe_geometry not in PROBE_GEOMETRIES:
        raise ValueError(f"`probe_geometry` must be one of {PROBE_GEOMETRIES}, got {probe_geometry!r}")
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"sample height and width must be positive, got {(height, width)}")
    if probe_geometry == "linear":
        rows = torch.arange(height, dtype=torch.float64) / max(height - 1, 1)
        return rows.view(-1, 1).expand(height, width).clone(), torch.ones(height, width, dtype=torch.bool)
    inside = fan_mask(height, width, apex, radii, half_angle_deg)
    if not bool(inside.any()):
        raise ValueError(
            f"the convex fan (fan_apex={tuple(apex)}, fan_radii={tuple(radii)}, fan_half_angle_deg={half_angle_deg}) "
            f"contains no pixel of a {height}x{width} sample"
        )
    r, _ = fan_polar_coordinates(height, width, apex)
    r_in, r_out = float(radii[0]) * width, float(radii[1]) * width
    depth = torch.where(inside, (r - r_in) / (r_out - r_in), torch.zeros_like(r))
    return depth, inside


def _finite_numbers(name: str, values, count: int, what: str) -> Tuple[float, ...]:
    """``values`` as ``count`` finite floats; ValueError naming ``name`` for strings, bools, NaN, infinities."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != count:
        raise ValueError(f"`{name}` must be {what} ({count} numbers), got {values!r}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"`{name}` must be {what} ({count} numbers), got {values!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"`{name}` must hold finite numbers, got {values!r}")
        out.append(value)
    return tuple(out)


def _check_fan(apex: Sequence[float], radii: Sequence[float], half_angle_deg: float) -> None:
    _finite_numbers("fan_apex", apex, 2, "(x, y) in units of the image width")
    inner, outer = _finite_numbers("fan_radii", radii, 2, "(inner, outer) in units of the image width")
    if not (0.0 <= inner < outer):
        raise ValueError(f"`fan_radii` must be (inner, outer) with 0 <= inner < outer, got {radii!r}")
    if isinstance(half_angle_deg, bool) or not isinstance(half_angle_deg, numbers.Real):
        raise ValueError(f"`fan_half_angle_deg` must be a number of degrees, got {half_angle_deg!r}")
    if not (0.0 < float(half_angle_deg) <= 180.0):
        raise ValueError(f"`fan_half_angle_deg` must lie in (0, 180], got {half_angle_deg!r}")


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
