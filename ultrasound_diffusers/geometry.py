"""The probe: where the fan is and how deep every pixel lies.

One concept, one home. The B-map schedulers (per-pixel attenuation by depth), the phantoms (where the scan lines
run), the measurement operators (which beams are kept, where a shadow falls), the evaluation (depth profiles, the
outside-fan signal) and every command-line flag (``--probe_geometry``, ``--fan_apex``, ``--fan_radii``,
``--fan_half_angle_deg``) describe the probe with :class:`FanGeometry` and share its one validation rule.

Conventions (those of the published code, Domínguez et al. 2024):

* ``probe_geometry="convex"``: a sector scan (phased or curvilinear probe). The beams fan out from ``apex``;
  ``apex`` (x, y) and ``radii`` (inner, outer) are in units of the image *width* (pixel (x, y) sits at column x,
  row y), ``half_angle_deg`` is measured from the downward vertical through the apex. The normalised depth of a
  pixel is ``(r - r_in) / (r_out - r_in)``; pixels outside the fan have depth 0 and do not attenuate.
* ``probe_geometry="linear"``: parallel beams, one per image column; depth = ``row / (H - 1)``; every pixel is
  inside.

The CAMUS fan constants are the published ones: apex (0.5, 0), radii (0, 250/256), half-angle 32.1 degrees.
All maps are computed in float64 on the CPU; ``[H, W]`` shapes throughout.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "CAMUS_FAN_APEX",
    "CAMUS_FAN_HALF_ANGLE_DEG",
    "CAMUS_FAN_RADII",
    "CONFIG_KEYS",
    "FanGeometry",
    "PROBE_GEOMETRIES",
    "add_geometry_arguments",
    "check_fan",
    "depth_map",
    "fan_mask",
    "fan_polar_coordinates",
    "geometry_from_args",
]

#: The published CAMUS fan, in units of the image width: apex (x, y), radii (inner, outer), half-opening angle.
CAMUS_FAN_APEX: Tuple[float, float] = (0.5, 0.0)
CAMUS_FAN_RADII: Tuple[float, float] = (0.0, 250.0 / 256.0)
CAMUS_FAN_HALF_ANGLE_DEG: float = 32.1003690834937

PROBE_GEOMETRIES = ("linear", "convex")
#: The scheduler-config keys that hold the probe (``BMapAttenuationScheduler``, ``BMapDPMSolverMultistepScheduler``).
CONFIG_KEYS = ("probe_geometry", "fan_apex", "fan_radii", "fan_half_angle_deg")


# ----------------------------------------------------------------------------------------------------------------
# Validation (the one rule)
# ----------------------------------------------------------------------------------------------------------------


def _finite_numbers(name: str, values, count: int, what: str) -> Tuple[float, ...]:
    """``values`` as ``count`` finite floats; ValueError naming ``name`` for strings, bools, NaN, infinities."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != count:
        raise ValueError(f"`{name}` must be {what} ({count} numbers), got {values!r}")
    out = []
    for value in values:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"`{name}` must be {what} ({count} numbers), got {values!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"`{name}` must hold finite numbers, got {values!r}")
        out.append(value)
    return tuple(out)


def check_fan(apex: Sequence[float], radii: Sequence[float], half_angle_deg: float) -> None:
    """Refuse a fan that cannot be a probe's: ``apex`` two finite numbers, ``radii`` with ``0 <= inner < outer``,
    ``half_angle_deg`` in (0, 90) degrees (a sector opens less than a half plane). Errors name the argument."""
    _finite_numbers("fan_apex", apex, 2, "(x, y) in units of the image width")
    inner, outer = _finite_numbers("fan_radii", radii, 2, "(inner, outer) in units of the image width")
    if not (0.0 <= inner < outer):
        raise ValueError(f"`fan_radii` must be (inner, outer) with 0 <= inner < outer, got {tuple(radii)!r}")
    if isinstance(half_angle_deg, bool) or not isinstance(half_angle_deg, (numbers.Real, np.floating)):
        raise ValueError(f"`fan_half_angle_deg` must be a number of degrees, got {half_angle_deg!r}")
    if not (0.0 < float(half_angle_deg) < 90.0):
        raise ValueError(f"`fan_half_angle_deg` must lie in (0, 90) degrees, got {half_angle_deg!r}")


def check_probe_geometry(probe_geometry: Any) -> str:
    if probe_geometry not in PROBE_GEOMETRIES:
        raise ValueError(f"`probe_geometry` must be one of {PROBE_GEOMETRIES}, got {probe_geometry!r}")
    return probe_geometry


# ----------------------------------------------------------------------------------------------------------------
# Pure maps
# ----------------------------------------------------------------------------------------------------------------


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
    check_fan(apex, radii, half_angle_deg)
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
    check_probe_geometry(probe_geometry)
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


# ----------------------------------------------------------------------------------------------------------------
# The probe as one object
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FanGeometry:
    """The probe geometry: ``"convex"`` (sector fan, the CAMUS fan by default) or ``"linear"`` (image columns).

    Frozen and validated on construction (:func:`check_fan`); the fan fields are kept for a linear probe too (they
    are what a scheduler config stores) but only a convex probe uses them.

    Attributes:
        probe_geometry: ``"convex"`` or ``"linear"``.
        apex: (x, y) of the fan apex in units of the image width.
        radii: (inner, outer) fan radii in units of the image width.
        half_angle_deg: half-opening angle in degrees, in (0, 90).
    """

    probe_geometry: str = "convex"
    apex: Tuple[float, float] = CAMUS_FAN_APEX
    radii: Tuple[float, float] = CAMUS_FAN_RADII
    half_angle_deg: float = CAMUS_FAN_HALF_ANGLE_DEG

    def __post_init__(self) -> None:
        check_probe_geometry(self.probe_geometry)
        check_fan(self.apex, self.radii, self.half_angle_deg)
        object.__setattr__(self, "apex", tuple(float(v) for v in self.apex))
        object.__setattr__(self, "radii", tuple(float(v) for v in self.radii))
        object.__setattr__(self, "half_angle_deg", float(self.half_angle_deg))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def camus(cls) -> "FanGeometry":
        """The published CAMUS sector fan."""
        return cls()

    @classmethod
    def linear(cls) -> "FanGeometry":
        """A linear probe: one beam per image column, depth = row / (H - 1)."""
        return cls(probe_geometry="linear")

    @classmethod
    def from_config(cls, config: Any, default: Optional["FanGeometry"] = None) -> "FanGeometry":
        """The geometry stored in a scheduler config (a ``FrozenDict``, a dict, or anything with ``.config``).

        A config without ``probe_geometry`` (diffusers' own schedulers) gives ``default`` (a linear probe when
        None: no fan is known, so the image columns are the scan lines).
        """
        if isinstance(config, FanGeometry):
            return config
        config = getattr(config, "config", config)
        if config is None or not isinstance(config, Mapping) or "probe_geometry" not in config:
            return default if default is not None else cls.linear()
        return cls(
            probe_geometry=config["probe_geometry"],
            apex=tuple(config.get("fan_apex", CAMUS_FAN_APEX)),
            radii=tuple(config.get("fan_radii", CAMUS_FAN_RADII)),
            half_angle_deg=float(config.get("fan_half_angle_deg", CAMUS_FAN_HALF_ANGLE_DEG)),
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "FanGeometry":
        """Inverse of :meth:`to_dict` (also accepts the scheduler-config keys of :meth:`to_config`)."""
        if "fan_apex" in values or "fan_radii" in values or "fan_half_angle_deg" in values:
            return cls.from_config(dict(values))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown probe geometry keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**dict(values))

    # ------------------------------------------------------------------ views
    @property
    def is_convex(self) -> bool:
        return self.probe_geometry == "convex"

    def to_config(self) -> Dict[str, Any]:
        """The scheduler-config keys (JSON types): ``probe_geometry``, ``fan_apex``, ``fan_radii``, ``fan_half_angle_deg``."""
        return {("probe_geometry" if key == "probe_geometry" else f"fan_{key}"): value for key, value in self.to_dict().items()}

    def to_dict(self) -> Dict[str, Any]:
        """The dataclass fields as JSON types (as written in evaluation reports): ``probe_geometry``, ``apex``,
        ``radii`` (lists) and ``half_angle_deg``."""
        return {
            "probe_geometry": self.probe_geometry, "apex": list(self.apex), "radii": list(self.radii),
            "half_angle_deg": float(self.half_angle_deg),
        }

    def replace(self, **changes: Any) -> "FanGeometry":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ maps
    def depth_map(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(depth float64 [H, W] in [0, 1], inside bool [H, W])``, see :func:`depth_map`."""
        return depth_map(height, width, self.probe_geometry, self.apex, self.radii, self.half_angle_deg)

    def depth_and_mask(self, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
        """:meth:`depth_map` as numpy arrays (float64, bool)."""
        depth, inside = self.depth_map(height, width)
        return depth.numpy(), inside.numpy()

    def fan_mask(self, height: int, width: int) -> torch.Tensor:
        """Bool [H, W]: the pixels inside the scanned region (all of them for a linear probe)."""
        if not self.is_convex:
            return torch.ones(int(height), int(width), dtype=torch.bool)
        return fan_mask(height, width, self.apex, self.radii, self.half_angle_deg)

    def polar_coordinates(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(r [H, W] in pixels, theta [H, W] in radians)`` relative to the apex (see :func:`fan_polar_coordinates`)."""
        return fan_polar_coordinates(height, width, self.apex)

    def lateral_position(self, height: int, width: int) -> torch.Tensor:
        """Float64 [H, W] lateral coordinate in [-0.5, 0.5] across the scanned region: across the fan's opening
        angle for a convex probe (theta / (2 half-angle)), across the columns for a linear one."""
        h, w = int(height), int(width)
        if not self.is_convex:
            return (torch.arange(w, dtype=torch.float64) / max(w - 1, 1) - 0.5).view(1, -1).expand(h, w).clone()
        _, theta = fan_polar_coordinates(h, w, self.apex)
        return theta / (2 * math.radians(self.half_angle_deg))


# ----------------------------------------------------------------------------------------------------------------
# Command-line flags
# ----------------------------------------------------------------------------------------------------------------


def add_geometry_arguments(parser, default_probe: Optional[str] = "convex") -> None:
    """Add ``--probe_geometry``, ``--fan_apex X Y``, ``--fan_radii INNER OUTER`` and ``--fan_half_angle_deg`` to
    an argparse parser or group. Fan flags left out take the CAMUS fan; ``default_probe=None`` leaves
    ``--probe_geometry`` unset (None) so that a command can take the probe from elsewhere (a scheduler)."""
    parser.add_argument("--probe_geometry", choices=PROBE_GEOMETRIES, default=default_probe,
                        help="probe: convex (sector fan) or linear (image columns)"
                        + (f" (default: {default_probe})" if default_probe else ""))
    parser.add_argument("--fan_apex", type=float, nargs=2, default=None, metavar=("X", "Y"),
                        help=f"fan apex in units of the image width (default: CAMUS {CAMUS_FAN_APEX})")
    parser.add_argument("--fan_radii", type=float, nargs=2, default=None, metavar=("INNER", "OUTER"),
                        help="inner and outer fan radius in units of the image width (default: CAMUS 0, 250/256)")
    parser.add_argument("--fan_half_angle_deg", type=float, default=None,
                        help=f"fan half-opening angle in degrees (default: CAMUS {CAMUS_FAN_HALF_ANGLE_DEG:.4f})")


def geometry_from_args(args: argparse.Namespace, base: Optional[FanGeometry] = None) -> FanGeometry:
    """The :class:`FanGeometry` of the flags of :func:`add_geometry_arguments`; unset flags keep ``base``'s values
    (default: the CAMUS convex fan)."""
    geometry = base or FanGeometry()
    changes: Dict[str, Any] = {}
    if getattr(args, "probe_geometry", None) is not None:
        changes["probe_geometry"] = args.probe_geometry
    if getattr(args, "fan_apex", None) is not None:
        changes["apex"] = tuple(args.fan_apex)
    if getattr(args, "fan_radii", None) is not None:
        changes["radii"] = tuple(args.fan_radii)
    if getattr(args, "fan_half_angle_deg", None) is not None:
        changes["half_angle_deg"] = args.fan_half_angle_deg
    return geometry.replace(**changes) if changes else geometry
