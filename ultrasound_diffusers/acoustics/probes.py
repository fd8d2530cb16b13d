# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Array probes and transmit sequences for channel-data simulation and beamforming.

A :class:`ArrayProbe` is a uniform linear or convex array (element pitch, width, count, centre frequency,
pulse-echo bandwidth, radius of curvature). Coordinates follow the MUST / pymust convention: x along the array
(0 at its centre, increasing from the first to the last element), z the depth (0 at the array, or at the chord
of a convex array). All lengths in metres, times in seconds.

Presets (:data:`PROBES`, :func:`get_probe`) copy the published parameters of three Verasonics probes (the same
numbers as pymust's ``getparam``): ``"L11-5v"`` (128-element 7.6 MHz linear array), ``"P4-2v"`` (64-element
2.72 MHz phased array) and ``"C5-2v"`` (128-element 3.57 MHz convex array).

Transmit sequences: :func:`plane_wave_delays` (tilted plane waves, linear arrays) and
:func:`diverging_wave_delays` (circular waves from a virtual source behind the array, phased / convex arrays).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Sequence, Tuple

import numpy as np

__all__ = [
    "PROBES",
    "ArrayProbe",
    "diverging_wave_delays",
    "get_probe",
    "plane_wave_delays",
    "to_pymust_param",
]

SPEED_OF_SOUND = 1540.0


@dataclasses.dataclass(frozen=True)
class ArrayProbe:
    """A uniform linear or convex array.

    Attributes:
        name: a label.
        num_elements: number of elements.
        center_frequency: centre frequency ``fc`` (Hz).
        pitch: element pitch (m).
        width: element width (m); ``pitch - width`` is the kerf.
        bandwidth: pulse-echo -6 dB fractional bandwidth (%, as in pymust).
        radius: radius of curvature (m); ``inf`` for a linear / phased array.
        sampling_factor: channel data are sampled at ``fs = sampling_factor * fc`` (>= 4, as pymust requires).
        speed_of_sound: c (m/s).
    """

    name: str
    num_elements: int
    center_frequency: float
    pitch: float
    width: float
    bandwidth: float = 75.0
    radius: float = math.inf
    sampling_factor: float = 4.0
    speed_of_sound: float = SPEED_OF_SOUND

    def __post_init__(self):
        if int(self.num_elements) < 1:
            raise ValueError(f"`num_elements` must be >= 1, got {self.num_elements!r}")
        for name in ("center_frequency", "pitch", "width", "bandwidth", "radius", "speed_of_sound"):
            value = float(getattr(self, name))
            if not value > 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)!r}")
        if self.width > self.pitch:
            raise ValueError(f"`width` ({self.width}) must not exceed `pitch` ({self.pitch})")
        if not self.sampling_factor >= 4.0:
            raise ValueError(f"`sampling_factor` must be >= 4 (fs >= 4 fc), got {self.sampling_factor!r}")

    # ------------------------------------------------------------------ derived quantities
    @property
    def is_linear(self) -> bool:
        return math.isinf(self.radius)

    @property
    def sampling_frequency(self) -> float:
        return float(self.sampling_factor * self.center_frequency)

    @property
    def wavelength(self) -> float:
        return self.speed_of_sound / self.center_frequency

    @property
    def aperture(self) -> float:
        """Length of the array (m): ``(num_elements - 1) * pitch + width``."""
        return (self.num_elements - 1) * self.pitch + self.width

    def element_positions(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, z, theta)``, float64 [num_elements] each: element centres and the angle of their normals with
        the z axis (0 for a linear array). For a convex array z = 0 at the chord, as in MUST."""
        n = int(self.num_elements)
        if self.is_linear:
            x = (np.arange(n) - (n - 1) / 2.0) * self.pitch
            return x, np.zeros(n), np.zeros(n)
        r = float(self.radius)
        half = math.asin(self.pitch / 2.0 / r) * (n - 1)
        chord = 2.0 * r * math.sin(half)
        apothem = math.sqrt(r * r - chord * chord / 4.0)
        theta = np.linspace(math.atan2(-chord / 2, apothem), math.atan2(chord / 2, apothem), n)
        return r * np.sin(theta), r * np.cos(theta) - apothem, theta

    def pulse_sigma_time(self) -> float:
        """Standard deviation (s) of the Gaussian envelope of the two-way (pulse-echo) pulse whose -6 dB
        spectrum width is ``bandwidth % * fc``: ``sigma_f = B fc / (2 sqrt(2 ln 2))``, ``sigma_t = 1 / (2 pi sigma_f)``."""
        sigma_f = self.bandwidth / 100.0 * self.center_frequency / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        return 1.0 / (2.0 * math.pi * sigma_f)

    def directivity(self, sin_angle: np.ndarray) -> np.ndarray:
        """Far-field element directivity at fc for a soft baffle: ``sinc(width sin(a) / lambda) cos(a)``."""
        s = np.clip(np.asarray(sin_angle, np.float64), -1.0, 1.0)
        return np.sinc(self.width / self.wavelength * s) * np.sqrt(1.0 - s * s)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


#: Verasonics probes (parameters as published by the manufacturer and in MUST's ``getparam``).
PROBES: Dict[str, ArrayProbe] = {
    "L11-5v": ArrayProbe("L11-5v", 128, 7.6e6, 0.3e-3, 0.27e-3, bandwidth=77.0),
    "P4-2v": ArrayProbe("P4-2v", 64, 2.72e6, 0.3e-3, 0.25e-3, bandwidth=74.0),
    "C5-2v": ArrayProbe("C5-2v", 128, 3.57e6, 0.508e-3, 0.46e-3, bandwidth=79.0, radius=49.57e-3),
}


def get_probe(probe) -> ArrayProbe:
    """An :class:`ArrayProbe` from a preset name (case-insensitive), a dict of fields or a probe."""
    if isinstance(probe, ArrayProbe):
        return probe
    if isinstance(probe, str):
        for name, value in PROBES.items():
            if name.lower() == probe.lower():
                return value
        raise ValueError(f"unknown probe {probe!r}; expected one of {list(PROBES)}")
    if isinstance(probe, dict):
        return ArrayProbe(**probe)
    raise TypeError(f"`probe` must be a preset name, a dict or an ArrayProbe, got {type(probe).__name__}")


def plane_wave_delays(probe: ArrayProbe, angles_rad: Sequence[float]) -> np.ndarray:
    """Transmit delays (s) of tilted plane waves, float64 [num_angles, num_elements], min 0 per row.

    Linear arrays only: the wave front leaves element x at ``x sin(angle) / c``.
    """
    if not probe.is_linear:
        raise ValueError("plane waves need a linear array; use diverging_wave_delays for convex arrays")
    angles = np.atleast_1d(np.asarray(angles_rad, np.float64))
    if np.any(np.abs(angles) >= math.pi / 2):
        raise ValueError(f"plane-wave angles must lie in (-pi/2, pi/2), got {angles}")
    x, _, _ = probe.element_positions()
    delays = x[None, :] * np.sin(angles)[:, None] / probe.speed_of_sound
    return delays - delays.min(axis=1, keepdims=True)


def diverging_wave_delays(probe: ArrayProbe, angles_rad: Sequence[float], source_depth: float = None) -> np.ndarray:
    """Transmit delays (s) of diverging (circular) waves, float64 [num_angles, num_elements], min 0 per row.

    Each wave seems to come from a virtual source at distance ``source_depth`` behind the array centre, rotated
    by the steering angle (default distance: half the aperture, which spreads the wave over about +-45 degrees).
    For a convex array the virtual source sits on the array's axis behind its centre of curvature's side.
    """
    angles = np.atleast_1d(np.asarray(angles_rad, np.float64))
    if np.any(np.abs(angles) >= math.pi / 2):
        raise ValueError(f"steering angles must lie in (-pi/2, pi/2), got {angles}")
    depth = probe.aperture / 2.0 if source_depth is None else float(source_depth)
    if not depth > 0:
        raise ValueError(f"`source_depth` must be positive, got {source_depth!r}")
    x, z, _ = probe.element_positions()
    zc = z.max() if not probe.is_linear else 0.0
    sx = -depth * np.sin(angles)
    sz = zc - depth * np.cos(angles)
    dist = np.hypot(x[None, :] - sx[:, None], z[None, :] - sz[:, None])
    delays = dist / probe.speed_of_sound
    return delays - delays.min(axis=1, keepdims=True)


def to_pymust_param(probe: ArrayProbe, attenuation: float = 0.0):
    """The probe as a ``pymust.utils.Param`` (requires the ``simulation`` extra: ``pip install pymust``)."""
    try:
        import pymust
    except ImportError as error:  # pragma: no cover - exercised without pymust
        raise ImportError(
            "this needs the optional simulator pymust: pip install './ultrasound-diffusers[simulation]' (or pip install pymust)"
        ) from error
    param = pymust.utils.Param()
    param.fc = float(probe.center_frequency)
    param.pitch = float(probe.pitch)
    param.width = float(probe.width)
    param.kerf = float(probe.pitch - probe.width)
    param.Nelements = int(probe.num_elements)
    param.bandwidth = float(probe.bandwidth)
    param.radius = float(probe.radius)
    param.c = float(probe.speed_of_sound)
    param.fs = float(probe.sampling_frequency)
    param.attenuation = float(attenuation)
    return param
