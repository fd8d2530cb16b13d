"""Fast physics-based ultrasound phantoms: (B-mode image, label map) pairs as a ``datasets.Dataset``.

Each example is built in four steps:

1. **Anatomy.** A random but plausible scene (:func:`sample_scene`) is drawn from the example's own
   random stream: an apical echocardiographic view (LV, myocardium, left atrium, right heart, pericardium,
   mitral leaflets) for ``"echo"``, a transverse neck view (thyroid lobe, carotid artery, jugular vein,
   muscles, trachea) for ``"thyroid"``, or a homogeneous tissue block for ``"homogeneous"`` (calibration).
   The scene gives the label map and a map of tissue types.
2. **Scatterers.** On a simulation grid in beam/depth coordinates (the polar grid of the fan for a
   sector probe, the pixel grid for a linear probe) every cell receives a Poisson number of scatterers
   with a class-dependent density; their summed complex amplitude has the tissue's echogenicity
   (backscatter power in dB relative to myocardium), modulated by a slowly varying texture.
3. **Imaging.** The scatterer field is attenuated along each beam by the round-trip loss
   ``2 alpha f0 z`` (tissue-dependent ``alpha`` in dB/cm/MHz, integrated along the path, so blood gives
   posterior enhancement and air a shadow), convolved with the point spread function (Gaussian pulse
   along the beam whose length follows from the bandwidth; Gaussian beam across it whose width follows
   from wavelength, aperture and focus, so it grows with distance from the focus and, for a sector, the
   physical width also grows with depth), electronic noise is added, a time-gain compensation is applied,
   and the envelope is detected. The simulation runs in complex baseband (IQ): the envelope ``|IQ|``
   equals the Hilbert envelope of the RF signal.
4. **Display.** Log compression to a dynamic range, a grey map (``grey_gamma``) and, for the sector,
   scan conversion from beam/depth coordinates to the image by bilinear interpolation, with zeros outside
   the fan.

Steps 2-4 run on a rendering grid ``render_scale`` times finer than the output (tissue map, scatterers,
PSF, display), and the displayed image is then area-averaged to the output size, as a real scan resampled
to a small image; the label map is always evaluated on the output grid, so labels do not depend on the
rendering. Physics a user sees in real scans (issue 19): soft tissue boundaries (``boundary_blur_px``),
weakly scattering blood (-42 dB), near-field reverberation bands (``reverberation_db``), rib shadows in the
echo near field (``rib_shadow_probability``), posterior enhancement behind blood and shadowing behind air
(tissue attenuation), a TGC that leaves a far-field fall-off (:data:`DEFAULT_TGC`) and a fan edge that rolls
off (``fan_edge_rolloff``). The defaults are calibrated so the echo phantoms' grey-level statistics fall in
the ranges measured on real scans (:mod:`ultrasound_diffusers.evaluation.realism`).

Physical scale: the probe's ``depth_cm`` is the depth of the deepest image point (the fan's outer radius
or the bottom row), which fixes cm per pixel. Physical PSF sizes are floored at ``min_psf_px`` rendering
pixels, so the speckle is at least about a rendering pixel wide.

The default echo fan is the CAMUS fan of :mod:`ultrasound_diffusers.schedulers.bmaps` (apex (0.5, 0),
radii (0, 250/256), half-angle 32.1 degrees, lengths in units of the image width), so label 0 marks
exactly the pixels outside ``fan_mask`` and the B-map scheduler's convex geometry matches.

Determinism: example ``i`` of a call with ``seed`` uses ``numpy.random.SeedSequence([seed, i])``; its
first child drives the anatomy, its second the scatterers. Datasets of different sizes share prefixes,
and :func:`phantom_label_maps` returns exactly the labels of :func:`generate_phantoms`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.fft
import scipy.sparse

from ..geometry import (
    CAMUS_FAN_APEX,
    CAMUS_FAN_HALF_ANGLE_DEG,
    CAMUS_FAN_RADII,
    FanGeometry,
    fan_mask,
    fan_polar_coordinates,
)
from ..image_processor import parse_size as _parse_size
from .labels import NUM_ECHO_CLASSES, NUM_THYROID_CLASSES

#: Phantoms rendered as B-mode images with label maps (this module).
IMAGE_ANATOMIES = ("echo", "thyroid", "homogeneous")
#: Phantoms that are property maps with no label map: the lung seed's 8 x 256 maps (:mod:`.lung_media`).
MAP_ANATOMIES = ("lung",)
#: Every built-in phantom anatomy: the one registry that ``phantoms:ANATOMY`` sources and ``phantoms --anatomy`` read.
ANATOMIES = IMAGE_ANATOMIES + MAP_ANATOMIES
NUM_CLASSES = {"echo": NUM_ECHO_CLASSES, "thyroid": NUM_THYROID_CLASSES, "homogeneous": NUM_ECHO_CLASSES, "lung": 0}

SizeLike = Union[int, Sequence[int]]

# --------------------------------------------------------------------------------------------------
# Tissues: echogenicity (dB, backscatter power relative to myocardium), scatterer density (mean number
# per simulation cell), attenuation (dB/cm/MHz), texture amplitude (dB) and texture kind (0 isotropic,
# 1 striated / fibrillar).
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tissue:
    name: str
    echogenicity_db: float
    density: float
    attenuation_db_cm_mhz: float
    texture_db: float = 0.0
    texture_kind: int = 0


TISSUES: Tuple[Tissue, ...] = (
    Tissue("none", -200.0, 0.0, 0.0),
    Tissue("tissue", -14.0, 3.0, 0.5, 5.0),
    Tissue("blood", -42.0, 0.5, 0.15),
    Tissue("myocardium", -3.0, 4.0, 0.52, 2.0, 1),
    Tissue("pericardium", 6.0, 4.0, 0.6, 2.0),
    Tissue("valve", 3.0, 4.0, 0.5),
    Tissue("clutter", -26.0, 1.0, 0.2, 4.0),
    Tissue("chest_wall", -6.0, 3.0, 0.8, 5.0, 1),
    Tissue("fat", -15.0, 2.0, 0.6, 5.0),
    Tissue("muscle", -18.0, 3.0, 1.0, 4.0, 1),
    Tissue("thyroid", -2.0, 6.0, 0.6, 1.5),
    Tissue("skin", 2.0, 4.0, 0.8, 2.0),
    Tissue("vessel_wall", 4.0, 4.0, 0.6),
    Tissue("cartilage", -18.0, 2.0, 1.0),
    Tissue("air", 20.0, 4.0, 40.0),
    Tissue("connective", -15.0, 3.0, 0.6, 5.0),
    Tissue("homogeneous", 0.0, 10.0, 0.5, 0.0),
)
_TISSUE_INDEX = {t.name: i for i, t in enumerate(TISSUES)}
_ECHO_DB = np.array([t.echogenicity_db for t in TISSUES], dtype=np.float32)
_DENSITY = np.array([t.density for t in TISSUES], dtype=np.float32)
_ATTEN = np.array([t.attenuation_db_cm_mhz for t in TISSUES], dtype=np.float32)
_TEXTURE_DB = np.array([t.texture_db for t in TISSUES], dtype=np.float32)
_TEXTURE_KIND = np.array([t.texture_kind for t in TISSUES], dtype=np.int64)


def _t(name: str) -> int:
    return _TISSUE_INDEX[name]


# --------------------------------------------------------------------------------------------------
# Probe and physics parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeGeometry:
    """Probe and scan geometry.

    Attributes:
        geometry: ``"convex"`` (sector scan from a phased / curvilinear probe; beams fan out from ``apex``)
            or ``"linear"`` (parallel beams, one per image column).
        apex, radii, half_angle_deg: the fan, in units of the image width (as in
            :func:`ultrasound_diffusers.geometry.fan_mask`); convex only.
        depth_cm: physical depth of the deepest image point (outer fan radius, or the bottom row).
        center_frequency_mhz: transmit centre frequency f0.
        fractional_bandwidth: -6 dB bandwidth as a fraction of f0 (sets the pulse length).
        aperture_cm: active aperture (sets the lateral beam width with the focus).
        focus_cm: transmit focal depth.
    """

    geometry: str = "convex"
    apex: Tuple[float, float] = CAMUS_FAN_APEX
    radii: Tuple[float, float] = CAMUS_FAN_RADII
    half_angle_deg: float = CAMUS_FAN_HALF_ANGLE_DEG
    depth_cm: float = 15.0
    center_frequency_mhz: float = 2.5
    fractional_bandwidth: float = 0.6
    aperture_cm: float = 2.0
    focus_cm: float = 8.0

    def __post_init__(self):
        try:  # the fan follows the one rule of ultrasound_diffusers.geometry
            fan = FanGeometry(self.geometry, self.apex, self.radii, self.half_angle_deg)
        except ValueError as error:
            raise ValueError(f"`probe`: {error}") from error
        object.__setattr__(self, "apex", fan.apex)
        object.__setattr__(self, "radii", fan.radii)
        object.__setattr__(self, "half_angle_deg", fan.half_angle_deg)
        for name in ("depth_cm", "center_frequency_mhz", "fractional_bandwidth", "aperture_cm", "focus_cm"):
            if not float(getattr(self, name)) > 0.0:
                raise ValueError(f"`probe.{name}` must be positive, got {getattr(self, name)!r}")

    @property
    def fan(self) -> FanGeometry:
        """The scan geometry alone (:class:`ultrasound_diffusers.geometry.FanGeometry`), as the schedulers see it."""
        return FanGeometry(self.geometry, self.apex, self.radii, self.half_angle_deg)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


#: Default probes per anatomy: a phased array on the CAMUS fan for the heart, a linear probe for the neck.
DEFAULT_PROBES: Dict[str, ProbeGeometry] = {
    "echo": ProbeGeometry(),
    "homogeneous": ProbeGeometry(),
    "thyroid": ProbeGeometry(
        geometry="linear", depth_cm=4.5, center_frequency_mhz=10.0, fractional_bandwidth=0.7, aperture_cm=1.5, focus_cm=2.0
    ),
}


@dataclass(frozen=True)
class PhysicsParameters:
    """Imaging physics.

    Attributes:
        speed_of_sound_m_s: c.
        attenuation_db_cm_mhz: None for the tissue-dependent values (blood 0.15, myocardium 0.52, soft
            tissue 0.5, muscle 1.0, air 40); a number uses that value for every tissue; 0 disables attenuation.
        tgc: time-gain compensation: a fraction in [0, 1] of the nominal loss ``2 * tgc_reference *
            f0 * z`` compensated at each depth z, or a sequence of gains in dB at equally spaced depths from
            the surface to the deepest point (linearly interpolated), or None for the anatomy's calibrated
            setting :data:`DEFAULT_TGC` (echo 0.5: the far field keeps fading, as in real scans, although
            the blood pool attenuates less than the nominal 0.5 dB/cm/MHz; thyroid 1.0: neck muscle and
            thyroid attenuate more than nominal at 10 MHz, so full nominal compensation still leaves a fall-off).
        tgc_reference_db_cm_mhz: the nominal attenuation the fractional TGC compensates.
        dynamic_range_db: displayed dynamic range of the log compression.
        gain_db: overall gain before log compression, or None for the anatomy's calibrated setting
            (:data:`ANATOMY_PHYSICS`: echo +5 dB, which makes up for the beam-spreading loss away from the focus).
        reference_db: envelope level (dB, relative to myocardium at the surface) shown as white.
        noise_db: electronic noise power (dB relative to myocardium at the surface) added before the TGC;
            None disables it.
        scatterer_density: multiplies every tissue's scatterer density.
        texture: multiplies the tissue texture amplitudes (0 gives homogeneous tissues).
        min_psf_px: floor (axial, lateral) of the PSF standard deviation in rendering pixels (pixels of the
            ``render_scale`` times finer rendering grid).
        oversample: simulation samples per rendering pixel along the beam and, at the deepest point,
            across it (convex probes only; a linear probe simulates on the rendering pixel grid).
        fft_workers: threads for scipy.fft.
        render_scale: tissues, speckle and display are rendered on a grid this many times finer in each
            direction, then area-averaged to the output size (as a real scan resampled to a small image:
            the PSF is resolved, and the grain and grey std scale with the image). Labels always come from
            the output grid, so they do not depend on it.
        grey_gamma: grey map after log compression, ``grey ** grey_gamma`` (> 1 darkens mid-greys as a
            scanner's post-processing curve does, giving the dark, right-skewed histogram of real scans).
        boundary_blur_px: Gaussian blur (output pixels) of the echogenicity map in dB: soft tissue boundaries.
        reverberation_db: level (dB relative to myocardium, before attenuation) of near-field reverberation:
            incoherent clutter in bands at multiples of a random 0.4-0.9 cm spacing (the echo of the chest
            wall or skin bouncing between probe and layer), decaying by 6 dB per band; None disables it.
        fan_edge_rolloff: fraction of the sector's beams on each side over which the transmit/receive
            sensitivity tapers (raised cosine down to -12 dB at the edge beam); 0 gives a hard fan edge.
            Convex probes only.
        lateral_smoothing_px: Gaussian smoothing (standard deviation in output pixels) of the displayed image
            across the image rows (lateral direction), as a scanner's lateral line interpolation and
            spatial compounding lower the speckle contrast and widen the lateral grain; 0 disables it.
        rib_shadow_probability: chance that an echo example (convex probe) has a rib in the near field: a
            strong reflector 1-2.5 cm deep across a random 4-10 % of the beams, with 8-20 dB of extra
            round-trip loss behind it (an acoustic shadow). Drawn from the example's speckle stream, so the
            label maps are unchanged.
        beam_spreading: None for the anatomy's setting (:data:`ANATOMY_PHYSICS`: echo 2, thyroid 0), or how the focused beam's width changes the echo of diffuse scatterers with depth: their
            power is multiplied by ``(w(z_f) / w(z)) ** beam_spreading`` (:func:`beam_spreading_loss_db`), with
            ``w`` the Gaussian beam width of :func:`lateral_psf_sigma_cm` and ``z_f`` the transmit focus. Energy
            conservation makes a beam ``k`` times wider ``k`` times weaker per unit area, so speckle, which fills
            the beam, returns ``1 / k`` of the power per focused dimension: 2 counts the transmit beam in the
            scan plane (receive focusing is dynamic) and the fixed elevation focus of the lens (both modelled
            with the scan plane's beam). 0 disables it (the look before issue 32). Not compensated by the TGC,
            which follows the nominal attenuation only: the far field fades past the focus, as on real scans.
            The thyroid's linear probe uses 0: a linear array's dynamic receive focusing and transmit focal
            zones keep its beam near the focal width over the 4.5 cm it images (a single-focus Gaussian beam
            at 10 MHz and F/1.3 would widen 30-fold there).

    Calibration (issue 19): the defaults (60 dB dynamic range, white at +14 dB, grey gamma 2, TGC 0.5 of
    0.5 dB/cm/MHz so the far field still fades, texture 0.3, render scale 2, blood at -42 dB) put the echo
    phantoms' grey-level statistics inside the ranges measured on real scans by
    :mod:`ultrasound_diffusers.evaluation.realism`. The pre-calibration look is ``tgc=0.85,
    dynamic_range_db=50, reference_db=6, texture=1, min_psf_px=(0.7, 1), oversample=1.5, render_scale=1,
    grey_gamma=1, boundary_blur_px=0`` (blood was -50 dB).
    """

    speed_of_sound_m_s: float = 1540.0
    attenuation_db_cm_mhz: Optional[float] = None
    tgc: Union[None, float, Tuple[float, ...]] = None
    tgc_reference_db_cm_mhz: float = 0.5
    dynamic_range_db: float = 60.0
    gain_db: Optional[float] = None
    reference_db: float = 14.0
    noise_db: Optional[float] = -70.0
    scatterer_density: float = 1.0
    texture: float = 0.3
    min_psf_px: Tuple[float, float] = (0.35, 0.5)
    oversample: float = 1.0
    fft_workers: int = 1
    render_scale: int = 2
    grey_gamma: float = 2.0
    boundary_blur_px: float = 0.7
    reverberation_db: Optional[float] = -12.0
    fan_edge_rolloff: float = 0.08
    rib_shadow_probability: float = 0.3
    lateral_smoothing_px: float = 0.0
    beam_spreading: Optional[float] = None

    def __post_init__(self):
        if not self.speed_of_sound_m_s > 0:
            raise ValueError(f"`speed_of_sound_m_s` must be positive, got {self.speed_of_sound_m_s!r}")
        if self.attenuation_db_cm_mhz is not None and not float(self.attenuation_db_cm_mhz) >= 0:
            raise ValueError(f"`attenuation_db_cm_mhz` must be None or >= 0, got {self.attenuation_db_cm_mhz!r}")
        if self.tgc is None:
            pass
        elif isinstance(self.tgc, (int, float, np.floating)):
            if not 0.0 <= float(self.tgc) <= 1.0:
                raise ValueError(f"`tgc` as a fraction must lie in [0, 1], got {self.tgc!r}")
            object.__setattr__(self, "tgc", float(self.tgc))
        else:
            curve = tuple(float(v) for v in self.tgc)
            if len(curve) < 1 or not all(math.isfinite(v) for v in curve):
                raise ValueError(f"`tgc` must be a fraction in [0, 1] or a non-empty sequence of gains in dB, got {self.tgc!r}")
            object.__setattr__(self, "tgc", curve)
        if not self.dynamic_range_db > 0:
            raise ValueError(f"`dynamic_range_db` must be positive, got {self.dynamic_range_db!r}")
        if not self.scatterer_density > 0:
            raise ValueError(f"`scatterer_density` must be positive, got {self.scatterer_density!r}")
        if not self.texture >= 0:
            raise ValueError(f"`texture` must be >= 0, got {self.texture!r}")
        psf = tuple(float(v) for v in self.min_psf_px)
        if len(psf) != 2 or min(psf) <= 0:
            raise ValueError(f"`min_psf_px` must be (axial, lateral) > 0, got {self.min_psf_px!r}")
        object.__setattr__(self, "min_psf_px", psf)
        if int(self.render_scale) != self.render_scale or not 1 <= int(self.render_scale) <= 4:
            raise ValueError(f"`render_scale` must be an integer in [1, 4], got {self.render_scale!r}")
        object.__setattr__(self, "render_scale", int(self.render_scale))
        if not self.grey_gamma > 0:
            raise ValueError(f"`grey_gamma` must be positive, got {self.grey_gamma!r}")
        if not float(self.lateral_smoothing_px) >= 0.0:
            raise ValueError(f"`lateral_smoothing_px` must be >= 0, got {self.lateral_smoothing_px!r}")
        if self.gain_db is not None and not math.isfinite(float(self.gain_db)):
            raise ValueError(f"`gain_db` must be None or a finite gain in dB, got {self.gain_db!r}")
        if self.beam_spreading is not None and not (math.isfinite(float(self.beam_spreading)) and 0.0 <= float(self.beam_spreading) <= 4.0):
            raise ValueError(f"`beam_spreading` must lie in [0, 4], got {self.beam_spreading!r}")
        if not 0.0 <= float(self.rib_shadow_probability) <= 1.0:
            raise ValueError(f"`rib_shadow_probability` must lie in [0, 1], got {self.rib_shadow_probability!r}")
        if not 0.0 <= float(self.fan_edge_rolloff) < 0.5:
            raise ValueError(f"`fan_edge_rolloff` must lie in [0, 0.5), got {self.fan_edge_rolloff!r}")
        if self.reverberation_db is not None and not math.isfinite(float(self.reverberation_db)):
            raise ValueError(f"`reverberation_db` must be None or a finite level in dB, got {self.reverberation_db!r}")
        if not self.boundary_blur_px >= 0:
            raise ValueError(f"`boundary_blur_px` must be >= 0, got {self.boundary_blur_px!r}")
        if not 1.0 <= self.oversample <= 8.0:
            raise ValueError(f"`oversample` must lie in [1, 8], got {self.oversample!r}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


#: Calibrated per-anatomy physics, used for the :class:`PhysicsParameters` fields left None: the fractional TGC
#: (echo 0.5; thyroid 1.0: neck muscle and thyroid attenuate more than nominal at 10 MHz), the beam-spreading
#: exponent (echo 2: one transmit focus at 8 cm; thyroid 0, see ``beam_spreading``) and the overall gain (echo
#: +5 dB). Issue 32 added the last two: with them the echo phantoms' tissue fades past the focus as on real scans
#: (``far_field_ratio`` 0.90 at 128 px, 1.20 before) with the grey level statistics still in the real ranges.
ANATOMY_PHYSICS: Dict[str, Dict[str, float]] = {
    "echo": {"tgc": 0.5, "beam_spreading": 2.0, "gain_db": 5.0},
    "homogeneous": {"tgc": 0.5, "beam_spreading": 2.0, "gain_db": 5.0},
    "thyroid": {"tgc": 1.0, "beam_spreading": 0.0, "gain_db": 0.0},
}

#: The fractional TGC of :data:`ANATOMY_PHYSICS` per anatomy.
DEFAULT_TGC: Dict[str, float] = {anatomy: values["tgc"] for anatomy, values in ANATOMY_PHYSICS.items()}


def resolve_anatomy_physics(phys: PhysicsParameters, anatomy: str) -> PhysicsParameters:
    """``phys`` with each field left None that :data:`ANATOMY_PHYSICS` sets (``tgc``, ``beam_spreading``,
    ``gain_db``) replaced by the anatomy's calibrated value."""
    _check_anatomy(anatomy)
    missing = {k: v for k, v in ANATOMY_PHYSICS[anatomy].items() if getattr(phys, k) is None}
    return dataclasses.replace(phys, **missing) if missing else phys


def resolve_probe(anatomy: str, probe=None) -> ProbeGeometry:
    """The probe for ``anatomy``: None (the anatomy default), ``"convex"`` / ``"linear"`` (the default with
    that geometry), a dict of :class:`ProbeGeometry` fields overriding the default, or a ProbeGeometry."""
    _check_anatomy(anatomy)
    default = DEFAULT_PROBES[anatomy]
    if probe is None:
        return default
    if isinstance(probe, ProbeGeometry):
        return probe
    if isinstance(probe, str):
        if probe not in ("convex", "linear"):
            raise ValueError(f"`probe` must be 'convex', 'linear', a dict or a ProbeGeometry, got {probe!r}")
        return dataclasses.replace(default, geometry=probe)
    if isinstance(probe, dict):
        unknown = set(probe) - {f.name for f in dataclasses.fields(ProbeGeometry)}
        if unknown:
            raise ValueError(f"`probe` has unknown keys {sorted(unknown)}")
        return dataclasses.replace(default, **probe)
    raise ValueError(f"`probe` must be None, 'convex', 'linear', a dict or a ProbeGeometry, got {type(probe).__name__}")


def resolve_physics(physics: Optional[PhysicsParameters] = None, **overrides) -> PhysicsParameters:
    """Build :class:`PhysicsParameters` from keyword overrides; unknown names raise ValueError."""
    base = physics if physics is not None else PhysicsParameters()
    unknown = set(overrides) - {f.name for f in dataclasses.fields(PhysicsParameters)}
    if unknown:
        raise ValueError(f"unknown physical parameters {sorted(unknown)}; expected names of PhysicsParameters")
    return dataclasses.replace(base, **overrides) if overrides else base


def _check_anatomy(anatomy: str, maps: bool = False) -> None:
    """ValueError unless ``anatomy`` is a registered anatomy; map anatomies (lung) only where ``maps`` is True."""
    if anatomy in MAP_ANATOMIES and not maps:
        raise ValueError(f"`anatomy` {anatomy!r} phantoms are property maps without B-mode images or label maps; "
                         "use generate_phantoms / iter_phantom_batches or ultrasound_diffusers.data.lung_media")
    if anatomy not in ANATOMIES:
        raise ValueError(f"`anatomy` must be one of {ANATOMIES}, got {anatomy!r}")


def _map_size(anatomy: str, size) -> Tuple[int, int]:
    """The size of a map anatomy's phantoms: None or the seed's 8 x 256 (they are made at that size only)."""
    from .lung_media import POOLED_SHAPE

    if size is not None and parse_size(size) != tuple(POOLED_SHAPE):
        raise ValueError(f"`size` of {anatomy!r} phantoms must be {POOLED_SHAPE[0]}x{POOLED_SHAPE[1]} (the lung seed's "
                         f"pooled maps) or None, got {size!r}")
    return tuple(POOLED_SHAPE)


def parse_size(size: SizeLike) -> Tuple[int, int]:
    """``64`` -> (64, 64); ``(48, 64)`` -> (48, 64) as (height, width); sizes must be >= 8
    (:func:`ultrasound_diffusers.image_processor.parse_size`, the package's one size rule)."""
    if size is None:
        raise ValueError("`size` must be an int or (height, width), got None")
    return _parse_size(size, as_pair=True, minimum=8)


# --------------------------------------------------------------------------------------------------
# Scenes: layers painted in order; shapes evaluated on normalised coordinates
# (convex: (x - apex) / R, (y - apex) / R with R the deepest visible radius; linear: (x - W/2) / H, y / H).
# --------------------------------------------------------------------------------------------------


def _ellipse(cx, cy, a, b, angle=0.0, modes=(), cut=None):
    """Mask function of a rotated ellipse with optional radial Fourier perturbation and a half-plane cut.

    ``modes``: (k, amplitude, phase) tuples; the boundary radius is ``1 + sum amp cos(k phi + phase)``.
    ``cut``: (px, py, nx, ny): keep only points with ``(p - P) . n <= 0``.
    """
    c, s = math.cos(angle), math.sin(angle)

    def fn(X, Y):
        dx, dy = X - cx, Y - cy
        u = (c * dx + s * dy) / a
        v = (-s * dx + c * dy) / b
        rho2 = u * u + v * v
        if modes:
            phi = np.arctan2(v, u)
            bound = 1.0
            for k, amp, ph in modes:
                bound = bound + amp * np.cos(k * phi + ph)
            m = rho2 <= bound * bound
        else:
            m = rho2 <= 1.0
        if cut is not None:
            px, py, nx, ny = cut
            m &= (X - px) * nx + (Y - py) * ny <= 0.0
        return m

    return fn


def _band(y_top, y_bottom, curvature=0.0, x_min=-np.inf, x_max=np.inf):
    def fn(X, Y):
        yy = Y - curvature * X * X
        return (yy >= y_top) & (yy < y_bottom) & (X >= x_min) & (X <= x_max)

    return fn


def _segment(x0, y0, x1, y1, half_thickness):
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy

    def fn(X, Y):
        t = np.clip(((X - x0) * dx + (Y - y0) * dy) / length2, 0.0, 1.0)
        ex, ey = X - (x0 + t * dx), Y - (y0 + t * dy)
        return ex * ex + ey * ey <= half_thickness * half_thickness

    return fn


def _union(*fns):
    def fn(X, Y):
        m = fns[0](X, Y)
        for f in fns[1:]:
            m |= f(X, Y)
        return m

    return fn


@dataclass
class Scene:
    """A phantom scene: layers ``(mask_fn, label or None, tissue index or None)`` painted in order."""

    anatomy: str
    default_label: int
    default_tissue: int
    layers: List[Tuple[Any, Optional[int], Optional[int]]] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)

    def add(self, fn, label: Optional[int], tissue: Optional[str]):
        self.layers.append((fn, label, None if tissue is None else _t(tissue)))

    def evaluate(self, X: np.ndarray, Y: np.ndarray, tissues: bool = True):
        """Labels (uint8) and, if ``tissues``, tissue indices (uint8) at normalised points ``X, Y``."""
        label = np.full(X.shape, self.default_label, dtype=np.uint8)
        tissue = np.full(X.shape, self.default_tissue, dtype=np.uint8) if tissues else None
        for fn, lab, tis in self.layers:
            if lab is None and (not tissues or tis is None):
                continue
            m = fn(X, Y)
            if lab is not None:
                label[m] = lab
            if tissues and tis is not None:
                tissue[m] = tis
        return label, tissue


def _modes(rng, amp, kmax=4):
    return tuple((k, float(rng.uniform(0, amp)), float(rng.uniform(0, 2 * math.pi))) for k in range(2, kmax + 1))


def _echo_scene(rng: np.random.Generator) -> Scene:
    """Apical 2- or 4-chamber view, labels in the echo coding (LV 1, tissue 2, myocardium 3, LA 4)."""
    view = "4CH" if rng.random() < 0.5 else "2CH"
    phase = "ED" if rng.random() < 0.5 else "ES"
    es = phase == "ES"
    scene = Scene("echo", default_label=2, default_tissue=_t("tissue"), info={"view": view, "phase": phase})

    for _ in range(50):  # draw the LV until its epicardium fits inside a 29-degree sector
        tilt = math.radians(rng.uniform(-12, 12))
        ax_x, ax_y = math.sin(tilt), math.cos(tilt)  # unit vector from the LV apex to the base
        lat_x, lat_y = ax_y, -ax_x  # lateral unit vector (towards +x for no tilt)
        apex_x, apex_y = rng.uniform(-0.06, 0.08), rng.uniform(0.10, 0.20)
        length = rng.uniform(0.46, 0.58) * (rng.uniform(0.82, 0.92) if es else 1.0)
        a = rng.uniform(0.11, 0.16) * (rng.uniform(0.72, 0.84) if es else 1.0)
        beta = rng.uniform(0.5, 0.7)
        b = length / (1.0 + beta)
        thick = rng.uniform(0.035, 0.055) * (rng.uniform(1.2, 1.4) if es else 1.0)
        phi = np.linspace(0.0, 2.0 * math.pi, 48)
        u, v = (a + thick) * np.cos(phi), (b + thick) * np.sin(phi)
        px = apex_x + b * ax_x + u * lat_x + v * ax_x
        py = apex_y + b * ax_y + u * lat_y + v * ax_y
        if np.all(np.abs(px) <= 0.55 * py):
            break
    cx, cy = apex_x + b * ax_x, apex_y + b * ax_y  # LV ellipse centre
    base_x, base_y = cx + beta * b * ax_x, cy + beta * b * ax_y  # centre of the mitral plane
    lv_angle = math.atan2(lat_y, lat_x)  # ellipse local u along the lateral axis
    cavity_modes = _modes(rng, 0.035)
    outer_modes = tuple((k, amp + rng.uniform(0, 0.02), ph) for k, amp, ph in cavity_modes)
    base_half = a * math.sqrt(1.0 - beta * beta)
    cut_lv = (base_x, base_y, ax_x, ax_y)  # keep the apex side of the mitral plane
    cut_la = (base_x, base_y, -ax_x, -ax_y)

    # near field: chest wall
    scene.add(_band(-1.0, rng.uniform(0.05, 0.09)), None, "chest_wall")

    # pericardium around the heart (bright shell)
    heart_cx = cx - (0.09 if view == "4CH" else 0.0) * lat_x
    heart_cy = cy + 0.08 * ax_y
    heart_a = a + thick + (0.2 if view == "4CH" else 0.08)
    heart_b = b + 0.22
    peri = rng.uniform(0.02, 0.035)
    scene.add(_ellipse(heart_cx, heart_cy, heart_a + peri, heart_b + peri, lv_angle, _modes(rng, 0.03)), None, "pericardium")
    scene.add(_ellipse(heart_cx, heart_cy, heart_a, heart_b, lv_angle), None, "tissue")

    # descending aorta behind the left atrium
    if rng.random() < 0.5:
        r_ao = rng.uniform(0.035, 0.05)
        d = length + rng.uniform(0.3, 0.36)
        ox, oy = apex_x + d * ax_x + rng.uniform(0.05, 0.15) * lat_x, apex_y + d * ax_y
        scene.add(_ellipse(ox, oy, r_ao + 0.015, r_ao + 0.015), None, "vessel_wall")
        scene.add(_ellipse(ox, oy, r_ao, r_ao), 2, "blood")

    if view == "4CH":
        # right ventricle and right atrium on the septal side (-lateral)
        a_rv = rng.uniform(0.07, 0.1)
        b_rv = b * rng.uniform(0.65, 0.8)
        off = a + thick + a_rv * 0.85
        rv_cx = cx - off * lat_x + (b - b_rv) * 0.6 * ax_x
        rv_cy = cy - off * lat_y + (b - b_rv) * 0.6 * ax_y
        cut_rv = (base_x, base_y, ax_x, ax_y)
        scene.add(_ellipse(rv_cx, rv_cy, a_rv + 0.03, b_rv + 0.03, lv_angle, cut=cut_rv), 2, "myocardium")
        scene.add(_ellipse(rv_cx, rv_cy, a_rv, b_rv, lv_angle, _modes(rng, 0.05), cut=cut_rv), 2, "blood")
        a_ra, b_ra = rng.uniform(0.08, 0.11), rng.uniform(0.07, 0.11) * (1.1 if es else 1.0)
        ra_x = base_x - (base_half + thick + a_ra * 0.9) * lat_x + b_ra * ax_x
        ra_y = base_y - (base_half + thick + a_ra * 0.9) * lat_y + b_ra * ax_y
        scene.add(_ellipse(ra_x, ra_y, a_ra + 0.02, b_ra + 0.02, lv_angle, cut=cut_la), 2, "myocardium")
        scene.add(_ellipse(ra_x, ra_y, a_ra, b_ra, lv_angle, _modes(rng, 0.05), cut=cut_la), 2, "blood")

    # left atrium (beyond the mitral plane)
    la_tilt = lv_angle + math.radians(rng.uniform(-10, 10))
    a_la = base_half * rng.uniform(1.0, 1.35)
    b_la = rng.uniform(0.08, 0.12) * (rng.uniform(1.1, 1.3) if es else 1.0)
    la_x, la_y = base_x + b_la * 0.95 * ax_x, base_y + b_la * 0.95 * ax_y
    scene.add(_ellipse(la_x, la_y, a_la + 0.02, b_la + 0.02, la_tilt, cut=cut_la), 2, "myocardium")
    scene.add(_ellipse(la_x, la_y, a_la, b_la, la_tilt, _modes(rng, 0.05), cut=cut_la), 4, "blood")

    # LV myocardium and cavity (apex side of the mitral plane)
    scene.add(_ellipse(cx, cy, a + thick, b + 0.8 * thick, lv_angle, outer_modes, cut=cut_lv), 3, "myocardium")
    cavity = _ellipse(cx, cy, a, b, lv_angle, cavity_modes, cut=cut_lv)
    scene.add(cavity, 1, "blood")
    # apical clutter / trabeculation haze inside the cavity (tissue type only; the label stays LV)
    haze = _ellipse(apex_x + 0.05 * ax_x, apex_y + 0.05 * ax_y, a * 0.6, 0.06, lv_angle)
    scene.add(_intersect(haze, cavity), None, "clutter")

    # mitral leaflets from both annulus points: open (into the LV) at ED, closed (towards each other) at ES
    leaf = base_half * rng.uniform(0.75, 0.95)
    half_t = rng.uniform(0.004, 0.007)
    segs = []
    for side in (-1.0, 1.0):
        px, py = base_x + side * base_half * lat_x, base_y + side * base_half * lat_y
        if es:
            ang = math.radians(rng.uniform(5, 20))  # slightly bowed into the LA
            dxl, dyl = -side * math.cos(ang) * lat_x + math.sin(ang) * ax_x, -side * math.cos(ang) * lat_y + math.sin(ang) * ax_y
        else:
            ang = math.radians(rng.uniform(10, 25))  # open, pointing towards the apex
            dxl, dyl = -math.cos(ang) * ax_x - side * math.sin(ang) * lat_x, -math.cos(ang) * ax_y - side * math.sin(ang) * lat_y
        segs.append(_segment(px, py, px + leaf * dxl, py + leaf * dyl, half_t))
    scene.add(_union(*segs), None, "valve")
    return scene


def _intersect(f, g):
    return lambda X, Y: f(X, Y) & g(X, Y)


def _thyroid_scene(rng: np.random.Generator) -> Scene:
    """Transverse view of one thyroid lobe (labels: tissue 0, thyroid 1, carotid 2, jugular 3)."""
    side = "right" if rng.random() < 0.5 else "left"
    m = 1.0 if side == "right" else -1.0  # +1: the trachea is on the left of the picture
    scene = Scene("thyroid", default_label=0, default_tissue=_t("connective"), info={"view": side, "phase": ""})

    y_skin = rng.uniform(0.02, 0.035)
    y_fat = y_skin + rng.uniform(0.04, 0.08)
    y_strap = y_fat + rng.uniform(0.06, 0.1)
    curv = rng.uniform(0.0, 0.25)
    scene.add(_band(-1.0, y_skin), None, "skin")
    scene.add(_band(y_skin, y_fat, curv), None, "fat")

    def mx(fn):  # mirror the x axis for the other side
        return lambda X, Y: fn(m * X, Y)

    scene.add(mx(_band(y_fat, y_strap, curv, x_max=0.3)), None, "muscle")  # strap muscles
    scm_x, scm_y = rng.uniform(0.25, 0.4), y_fat + rng.uniform(0.06, 0.1)
    scene.add(mx(_ellipse(scm_x, scm_y, rng.uniform(0.2, 0.28), rng.uniform(0.05, 0.08), math.radians(rng.uniform(-20, 0)))), None, "muscle")

    # thyroid lobe
    tx, ty = rng.uniform(-0.14, 0.0), y_strap + rng.uniform(0.14, 0.2)
    ta, tb = rng.uniform(0.16, 0.23), rng.uniform(0.1, 0.15)
    t_angle = math.radians(rng.uniform(-12, 12))
    scene.add(mx(_ellipse(tx, ty + tb + 0.25, 0.22, 0.07)), None, "muscle")  # longus colli
    scene.add(mx(_ellipse(tx, ty, ta, tb, t_angle, _modes(rng, 0.06))), 1, "thyroid")
    # isthmus towards the trachea
    scene.add(mx(_ellipse(tx - ta * 0.9, ty - tb * 0.55, ta * 0.7, tb * 0.3, math.radians(rng.uniform(-15, 5)))), 1, "thyroid")

    # trachea (medial): cartilage ring and air (strong interface, shadow below)
    r_tr = rng.uniform(0.15, 0.2)
    trx, try_ = tx - ta - r_tr * rng.uniform(0.55, 0.8), ty + rng.uniform(-0.02, 0.04)
    scene.add(mx(_ellipse(trx, try_, r_tr + 0.03, r_tr + 0.02)), 0, "cartilage")
    scene.add(mx(_ellipse(trx, try_ + 0.01, r_tr, r_tr * 0.9)), 0, "air")

    # carotid artery lateral to the lobe, jugular vein antero-lateral to it
    r_c = rng.uniform(0.07, 0.1)
    cx, cy = tx + ta * 0.85 + r_c + rng.uniform(0.0, 0.04), ty + rng.uniform(0.0, 0.06)
    scene.add(mx(_ellipse(cx, cy, r_c + 0.018, r_c + 0.018)), 0, "vessel_wall")
    scene.add(mx(_ellipse(cx, cy, r_c, r_c)), 2, "blood")
    ja, jb = rng.uniform(0.08, 0.13), rng.uniform(0.035, 0.07)
    j_angle = math.radians(rng.uniform(-15, 10))
    direction = math.radians(rng.uniform(15, 60))  # up and lateral from the carotid centre
    dcx, dcy = math.cos(direction), -math.sin(direction)
    extent = 1.0 / math.sqrt((dcx / ja) ** 2 + (dcy / jb) ** 2)
    dist = r_c + 0.03 + extent + 0.012 * ja / jb  # the walls touch at most; margin for the tilt
    jx, jy = cx + dist * dcx, cy + dist * dcy
    scene.add(mx(_ellipse(jx, jy, ja + 0.01, jb + 0.01, j_angle)), 0, "vessel_wall")
    scene.add(mx(_ellipse(jx, jy, ja, jb, j_angle, _modes(rng, 0.08))), 3, "blood")
    return scene


def _homogeneous_scene(rng: np.random.Generator) -> Scene:
    del rng
    return Scene("homogeneous", default_label=2, default_tissue=_t("homogeneous"), info={"view": "", "phase": ""})


_SCENES = {"echo": _echo_scene, "thyroid": _thyroid_scene, "homogeneous": _homogeneous_scene}


def sample_scene(anatomy: str, rng: np.random.Generator) -> Scene:
    """Draw a random scene for ``anatomy`` from ``rng``."""
    _check_anatomy(anatomy)
    return _SCENES[anatomy](rng)


def _example_rngs(seed: int, index: int) -> Tuple[np.random.Generator, np.random.Generator]:
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"`seed` and the example index must be non-negative, got seed={seed}, index={index}")
    shape_ss, speckle_ss = np.random.SeedSequence([int(seed), int(index)]).spawn(2)
    return np.random.default_rng(shape_ss), np.random.default_rng(speckle_ss)


# --------------------------------------------------------------------------------------------------
# Geometry: simulation grid, normalised coordinates and scan conversion (cached per size and probe)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    height: int
    width: int
    geometry: str
    n_depth: int
    n_beams: int
    depth_cm: np.ndarray  # [n_depth] depth of each simulation row along the beam
    lateral_step_px: np.ndarray  # [n_depth] spacing between neighbouring beams, in output pixels
    axial_step_px: float
    cm_per_px: float
    pix_X: np.ndarray  # [H, W] normalised coordinates of the pixels
    pix_Y: np.ndarray
    inside: np.ndarray  # [H, W] bool: pixels inside the scan area
    sim_to_pixel: Optional[np.ndarray]  # [n_depth * n_beams] flat index of the nearest pixel (convex)
    scan_matrix: Optional[scipy.sparse.csr_matrix]  # [H*W, n_depth*n_beams] bilinear scan conversion


@functools.lru_cache(maxsize=16)
def _grid(height: int, width: int, probe: ProbeGeometry, oversample: float) -> _Grid:
    H, W = height, width
    if probe.geometry == "linear":
        cm_per_px = probe.depth_cm / H
        ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
        return _Grid(
            H, W, "linear", H, W,
            depth_cm=(np.arange(H) + 0.5) * cm_per_px,
            lateral_step_px=np.ones(H), axial_step_px=1.0, cm_per_px=cm_per_px,
            pix_X=((xs - (W - 1) / 2.0) / H).astype(np.float32), pix_Y=((ys + 0.5) / H).astype(np.float32),
            inside=np.ones((H, W), dtype=bool), sim_to_pixel=None, scan_matrix=None,
        )
    inside = fan_mask(H, W, probe.apex, probe.radii, probe.half_angle_deg).numpy()
    if not inside.any():
        raise ValueError(f"the probe fan (apex={probe.apex}, radii={probe.radii}) contains no pixel of a {H}x{W} image")
    r_pix, th_pix = (t.numpy() for t in fan_polar_coordinates(H, W, probe.apex))
    r_in, r_out = probe.radii[0] * W, probe.radii[1] * W
    r_max = float(r_pix[inside].max())
    half = math.radians(probe.half_angle_deg)
    n_r = int(math.ceil((r_max - r_in) * oversample)) + 1
    n_t = int(math.ceil(2 * half * r_max * oversample)) + 1
    r = np.linspace(r_in, r_max, n_r)
    th = np.linspace(-half, half, n_t)
    dr = r[1] - r[0]
    dth = th[1] - th[0]
    cm_per_px = probe.depth_cm / r_out
    ax, ay = probe.apex[0] * W, probe.apex[1] * W
    scale = r_max  # normalised units: the deepest visible radius is 1
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    # nearest pixel of each simulation point (scene properties are evaluated on the pixel grid)
    R, T = np.meshgrid(r, th, indexing="ij")
    sx = np.clip(np.rint(ax + R * np.sin(T)), 0, W - 1).astype(np.int64)
    sy = np.clip(np.rint(ay + R * np.cos(T)), 0, H - 1).astype(np.int64)
    sim_to_pixel = (sy * W + sx).ravel()
    # bilinear scan conversion matrix for the pixels inside the fan
    rows = np.flatnonzero(inside.ravel())
    fr = np.clip((r_pix.ravel()[rows] - r_in) / dr, 0, n_r - 1)
    ft = np.clip((th_pix.ravel()[rows] + half) / dth, 0, n_t - 1)
    i0 = np.minimum(np.floor(fr).astype(np.int64), n_r - 2)
    j0 = np.minimum(np.floor(ft).astype(np.int64), n_t - 2)
    wr, wt = fr - i0, ft - j0
    cols = np.stack([i0 * n_t + j0, i0 * n_t + j0 + 1, (i0 + 1) * n_t + j0, (i0 + 1) * n_t + j0 + 1], 1)
    vals = np.stack([(1 - wr) * (1 - wt), (1 - wr) * wt, wr * (1 - wt), wr * wt], 1)
    mat = scipy.sparse.csr_matrix(
        (vals.ravel().astype(np.float32), (np.repeat(rows, 4), cols.ravel())), shape=(H * W, n_r * n_t)
    )
    return _Grid(
        H, W, "convex", n_r, n_t,
        depth_cm=(r - r_in) * cm_per_px,
        lateral_step_px=np.maximum(r * dth, 1e-6), axial_step_px=float(dr), cm_per_px=cm_per_px,
        pix_X=((xs - ax) / scale).astype(np.float32), pix_Y=((ys - ay) / scale).astype(np.float32),
        inside=inside, sim_to_pixel=sim_to_pixel, scan_matrix=mat,
    )


# --------------------------------------------------------------------------------------------------
# Physics: pure functions
# --------------------------------------------------------------------------------------------------


def axial_psf_sigma_cm(probe: ProbeGeometry, speed_of_sound_m_s: float = 1540.0) -> float:
    """Standard deviation (cm) of the Gaussian pulse envelope along the beam (round trip).

    A Gaussian spectrum with -6 dB (half amplitude) width ``B f0`` has ``sigma_f = B f0 / 2.3548``; the
    pulse envelope has ``sigma_t = 1 / (2 pi sigma_f)`` and spans ``c sigma_t / 2`` in depth.
    """
    sigma_f = probe.fractional_bandwidth * probe.center_frequency_mhz * 1e6 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    sigma_t = 1.0 / (2.0 * math.pi * sigma_f)
    return speed_of_sound_m_s * sigma_t / 2.0 * 100.0


def lateral_psf_sigma_cm(depth_cm: np.ndarray, probe: ProbeGeometry, speed_of_sound_m_s: float = 1540.0) -> np.ndarray:
    """Standard deviation (cm) of the lateral beam profile at each depth (Gaussian beam).

    At the focus the -6 dB width is ``1.02 lambda F#`` (``F# = focus / aperture``); away from it the width
    grows as ``sqrt(1 + ((z - z_f) / z_R)^2)`` with the Rayleigh range ``z_R = pi w0^2 / lambda``,
    ``w0 = 2 sigma_focus``.
    """
    lam_cm = speed_of_sound_m_s / (probe.center_frequency_mhz * 1e6) * 100.0
    fwhm = 1.02 * lam_cm * probe.focus_cm / probe.aperture_cm
    sigma0 = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    z_r = math.pi * (2.0 * sigma0) ** 2 / lam_cm
    z = np.asarray(depth_cm, dtype=np.float64)
    return sigma0 * np.sqrt(1.0 + ((z - probe.focus_cm) / z_r) ** 2)


def beam_spreading_loss_db(depth_cm: np.ndarray, probe: ProbeGeometry, exponent: float = 2.0, speed_of_sound_m_s: float = 1540.0) -> np.ndarray:
    """Loss (dB, >= 0, 0 at the transmit focus) of the echo of diffuse scatterers at ``depth_cm`` as the focused
    beam widens away from its focus: ``10 * exponent * log10(w(z) / w(z_f))`` with the Gaussian beam width of
    :func:`lateral_psf_sigma_cm` (one power of ``w`` per focused dimension; see
    :attr:`PhysicsParameters.beam_spreading`). float64 like ``depth_cm``."""
    z = np.asarray(depth_cm, dtype=np.float64)
    if exponent == 0:
        return np.zeros_like(z)
    width = lateral_psf_sigma_cm(z, probe, speed_of_sound_m_s)
    focus = lateral_psf_sigma_cm(np.asarray([probe.focus_cm]), probe, speed_of_sound_m_s)[0]
    return 10.0 * float(exponent) * np.log10(width / focus)


def round_trip_loss_db(attenuation_db_cm_mhz: np.ndarray, depth_step_cm: float, frequency_mhz: float, axis: int = -2) -> np.ndarray:
    """Round-trip attenuation loss ``2 f0 sum_{z' < z} alpha(z') dz`` (dB) at each sample along ``axis``."""
    alpha = np.asarray(attenuation_db_cm_mhz, dtype=np.float64)
    cum = np.cumsum(alpha, axis=axis) - 0.5 * alpha  # path up to the middle of each sample
    return 2.0 * frequency_mhz * depth_step_cm * cum


def tgc_gain_db(depth_cm: np.ndarray, tgc, max_depth_cm: float, frequency_mhz: float, reference_db_cm_mhz: float = 0.5) -> np.ndarray:
    """Time-gain compensation (dB) at ``depth_cm``.

    ``tgc`` is a fraction of the nominal loss ``2 reference f0 z`` or a sequence of gains in dB at equally
    spaced depths from 0 to ``max_depth_cm`` (linearly interpolated).
    """
    z = np.asarray(depth_cm, dtype=np.float64)
    if isinstance(tgc, (int, float, np.floating)):
        return float(tgc) * 2.0 * reference_db_cm_mhz * frequency_mhz * z
    curve = np.asarray(tgc, dtype=np.float64)
    if curve.size == 1:
        return np.full_like(z, curve[0])
    return np.interp(z, np.linspace(0.0, max_depth_cm, curve.size), curve)


def log_compress(envelope: np.ndarray, dynamic_range_db: float = 50.0, gain_db: float = 0.0, reference_db: float = 0.0) -> np.ndarray:
    """Log compression: ``clip(1 + (20 log10(envelope) + gain_db - reference_db) / dynamic_range_db, 0, 1)``.

    ``reference_db`` is the envelope level shown as white; levels ``dynamic_range_db`` below it are black.
    Returns float32 in [0, 1].
    """
    if not dynamic_range_db > 0:
        raise ValueError(f"`dynamic_range_db` must be positive, got {dynamic_range_db}")
    env = np.maximum(np.asarray(envelope, dtype=np.float32), np.float32(1e-12))
    db = 20.0 * np.log10(env)
    return np.clip(1.0 + (db + gain_db - reference_db) / dynamic_range_db, 0.0, 1.0).astype(np.float32)


def _gaussian_transfer(n_fft: int, sigma: np.ndarray) -> np.ndarray:
    """Gaussian filter transfer functions [len(sigma), n_fft], normalised to unit output power for white input."""
    k = scipy.fft.fftfreq(n_fft)
    sig = np.atleast_1d(np.asarray(sigma, dtype=np.float64))[:, None]
    h = np.exp(-2.0 * (math.pi * sig * k[None, :]) ** 2)
    h /= np.sqrt(np.mean(h * h, axis=1, keepdims=True))
    return h


def draw_scatterers(power: np.ndarray, density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Complex scatterer amplitudes per simulation cell.

    Each cell holds ``n ~ Poisson(density)`` scatterers with random phases; their summed amplitude is
    complex Gaussian with variance ``power * n / density``, so the expected backscattered power is
    ``power`` whatever the density (cells with ``density == 0`` are empty). Returns complex64 like ``power``.
    """
    power = np.asarray(power, dtype=np.float32)
    density = np.asarray(density, dtype=np.float32)
    count = rng.poisson(np.maximum(density, 0.0)).astype(np.float32)
    scale = np.sqrt(power * np.divide(count, density, out=np.zeros_like(count), where=density > 0) * 0.5)
    z = rng.standard_normal(power.shape + (2,), dtype=np.float32)
    return (z[..., 0] * scale + 1j * (z[..., 1] * scale)).astype(np.complex64)


def psf_filter(iq: np.ndarray, sigma_axial: float, sigma_lateral: np.ndarray, workers: int = 1) -> np.ndarray:
    """Convolve complex scatterer fields with a Gaussian PSF on the beam/depth grid.

    Args:
        iq: complex [B, n_depth, n_beams] (or [n_depth, n_beams]).
        sigma_axial: pulse standard deviation in depth samples (the same at every depth).
        sigma_lateral: beam standard deviation in beam samples, scalar or [n_depth] (depth dependent; the
            lateral filtering is done row by row in the Fourier domain, so it may change with depth).

    Returns:
        complex64 array like ``iq``; each filter is normalised so white input of unit power gives unit
        output power (the echogenicity survives the PSF).
    """
    squeeze = iq.ndim == 2
    x = iq[None] if squeeze else iq
    _, n_r, n_t = x.shape
    pad_r = int(math.ceil(4 * sigma_axial)) + 1
    n_fr = scipy.fft.next_fast_len(n_r + 2 * pad_r)
    ha = _gaussian_transfer(n_fr, [sigma_axial])[0].astype(np.float32)
    X = scipy.fft.fft(x, n=n_fr, axis=1, workers=workers)
    X *= ha[None, :, None]
    x = scipy.fft.ifft(X, axis=1, workers=workers)[:, :n_r]
    sig_l = np.broadcast_to(np.asarray(sigma_lateral, dtype=np.float64), (n_r,))
    sig_l = np.minimum(sig_l, n_t / 6.0)
    pad_t = int(math.ceil(3 * sig_l.max())) + 1
    n_ft = scipy.fft.next_fast_len(n_t + 2 * pad_t)
    hl = _gaussian_transfer(n_ft, sig_l).astype(np.float32)
    X = scipy.fft.fft(x, n=n_ft, axis=2, workers=workers)
    X *= hl[None]
    out = scipy.fft.ifft(X, axis=2, workers=workers)[:, :, :n_t].astype(np.complex64)
    return out[0] if squeeze else out


def simulate_envelope(power: np.ndarray, density: np.ndarray, rng: np.random.Generator, sigma_axial: float = 1.5, sigma_lateral=2.0, workers: int = 1) -> np.ndarray:
    """Envelope of a speckle image on a beam/depth grid: scatterers -> PSF -> ``|IQ|`` (float32 [n_depth, n_beams]).

    In a homogeneous region with many scatterers per resolution cell the envelope is Rayleigh distributed
    (mean / std = 1.91) with ``E[envelope^2] = power``.
    """
    iq = psf_filter(draw_scatterers(power, density, rng), sigma_axial, sigma_lateral, workers)
    return np.abs(iq).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _texture_fields(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Two smooth unit-variance random fields on the pixel grid: isotropic and striated (horizontal streaks).

    Each is a sum of 8 random plane waves; ``cos(u x + v y + p)`` is expanded into products of 1-D
    cosines and sines so no transcendental function is evaluated per pixel.
    """
    H, W = grid.height, grid.width
    x = grid.pix_X[0].astype(np.float64)  # normalised coordinates are separable: X depends on the column,
    y = grid.pix_Y[:, 0].astype(np.float64)  # Y on the row
    fields = np.empty((2, H, W), dtype=np.float32)
    n = 8
    for kind in range(2):
        f = rng.uniform(3.0, 10.0, n) if kind == 0 else rng.uniform(8.0, 25.0, n)
        ang = rng.uniform(0, 2 * math.pi, n) if kind == 0 else math.pi / 2 + rng.uniform(-0.25, 0.25, n)
        ph = rng.uniform(0, 2 * math.pi, n)
        u = 2 * math.pi * f * np.cos(ang)
        v = 2 * math.pi * f * np.sin(ang)
        cx, sx = np.cos(np.outer(u, x)), np.sin(np.outer(u, x))  # [n, W]
        cy, sy = np.cos(np.outer(v, y) + ph[:, None]), np.sin(np.outer(v, y) + ph[:, None])  # [n, H]
        acc = cy.T @ cx - sy.T @ sx  # sum over the waves of cos(u x + v y + p)
        fields[kind] = acc * math.sqrt(2.0 / n)
    return fields


def tissue_echogenicity_db(tissues: np.ndarray, texture: np.ndarray, texture_scale: float = 1.0) -> np.ndarray:
    """Echogenicity (dB) of a tissue map: each tissue's ``echogenicity_db`` (:data:`TISSUES`) plus its texture
    (``texture_db`` times the isotropic or striated field of ``texture``, by the tissue's ``texture_kind``).

    Args:
        tissues: int [H, W] indices into :data:`TISSUES` (as ``Scene.evaluate`` returns them).
        texture: float [2, H, W] unit-variance fields (isotropic, striated).
        texture_scale: multiplies the texture (``PhysicsParameters.texture``; 0 = flat tissues).

    Returns:
        float32 [H, W] in dB (0 dB = the reference tissue).
    """
    kind = _TEXTURE_KIND[tissues]
    return _ECHO_DB[tissues] + texture_scale * _TEXTURE_DB[tissues] * np.where(kind == 1, texture[1], texture[0])


def phantom_tissue_maps(anatomy: str = "echo", size: SizeLike = 64, seed: int = 0, index: int = 0, probe=None):
    """The scene of example ``(seed, index)`` of ``make_phantom(anatomy, size, seed, index)`` as maps, without
    its image physics: ``(labels uint8 [H, W], echogenicity_db float32 [H, W])`` on the output grid (outside the
    scan area both 0 where ``make_phantom`` blanks it), for simulators that draw their own scatterers
    (:func:`ultrasound_diffusers.acoustics.simulation.phantom_echogenicity`)."""
    h, w = parse_size(size)
    probe = resolve_probe(anatomy, probe)
    grid = _grid(h, w, probe, PhysicsParameters().oversample)
    shape_rng, speckle_rng = _example_rngs(seed, index)
    scene = sample_scene(anatomy, shape_rng)
    labels, tissues = scene.evaluate(grid.pix_X, grid.pix_Y)
    if anatomy != "thyroid" or grid.geometry == "convex":
        labels = np.where(grid.inside, labels, 0)
        tissues = np.where(grid.inside, tissues, 0)
    echo_db = tissue_echogenicity_db(tissues, _texture_fields(grid, speckle_rng))
    return labels.astype(np.uint8), echo_db.astype(np.float32)


def _render(scenes: Sequence[Scene], rngs: Sequence[np.random.Generator], grid: _Grid, probe: ProbeGeometry, phys: PhysicsParameters, return_envelope: bool = False):
    """Images float32 [B, H, W] in [0, 1] and labels uint8 [B, H, W] for a batch of scenes
    (and, with ``return_envelope``, the envelope float32 [B, n_depth, n_beams] after TGC, on the
    simulation grid of the ``render_scale`` times finer rendering).

    Labels are evaluated on the output grid ``grid``; tissues, speckle and display on a grid
    ``phys.render_scale`` times finer in each direction, whose display image is then area-averaged down to
    the output size (as a real scan is resampled to a small image)."""
    if phys.tgc is None or phys.gain_db is None or phys.beam_spreading is None:
        raise ValueError("`phys` must have tgc, gain_db and beam_spreading set: pass it through resolve_anatomy_physics")
    B = len(scenes)
    H, W = grid.height, grid.width
    s = int(phys.render_scale)
    sim = grid if s == 1 else _grid(H * s, W * s, probe, float(phys.oversample))
    labels = np.empty((B, H, W), dtype=np.uint8)
    power = np.empty((B, sim.n_depth, sim.n_beams), dtype=np.float32)
    density = np.empty_like(power)
    alpha = np.empty_like(power)
    keep_inside = [scene.anatomy != "thyroid" or grid.geometry == "convex" for scene in scenes]
    for b, (scene, rng) in enumerate(zip(scenes, rngs)):
        if s == 1:
            lab, tis = scene.evaluate(grid.pix_X, grid.pix_Y)
        else:
            lab, _ = scene.evaluate(grid.pix_X, grid.pix_Y, tissues=False)
            _, tis = scene.evaluate(sim.pix_X, sim.pix_Y)
        if keep_inside[b]:
            lab = np.where(grid.inside, lab, 0).astype(np.uint8)
        labels[b] = lab
        echo_db = tissue_echogenicity_db(tis, _texture_fields(sim, rng), phys.texture)
        if phys.boundary_blur_px > 0:
            echo_db = _smooth2d(echo_db, phys.boundary_blur_px * s)
        if sim.sim_to_pixel is not None:
            flat_t = tis.ravel()[sim.sim_to_pixel]
            echo_db = echo_db.ravel()[sim.sim_to_pixel]
        else:
            flat_t = tis.ravel()
            echo_db = echo_db.ravel()
        shape = (sim.n_depth, sim.n_beams)
        power[b] = (10.0 ** (echo_db.astype(np.float32) / 10.0)).reshape(shape)
        density[b] = (_DENSITY[flat_t] * phys.scatterer_density).reshape(shape)
        if phys.attenuation_db_cm_mhz is None:
            alpha[b] = _ATTEN[flat_t].reshape(shape)
        else:
            alpha[b] = np.where(_DENSITY[flat_t] > 0, phys.attenuation_db_cm_mhz, 0.0).reshape(shape)

    if phys.reverberation_db is not None:
        # near-field reverberation: bands at multiples of a random layer depth, 6 dB weaker per bounce
        z = sim.depth_cm
        for b, rng in enumerate(rngs):
            spacing = rng.uniform(0.4, 0.9)
            k = z / spacing
            band = np.exp(-0.5 * ((k - np.rint(k)) * spacing / 0.12) ** 2) * (k > 0.5)
            level = 10.0 ** ((phys.reverberation_db - 6.0 * np.maximum(np.rint(k) - 1.0, 0.0)) / 10.0)
            power[b] += (band * level).astype(np.float32)[:, None] * (density[b] > 0)

    f0 = probe.center_frequency_mhz
    step_cm = sim.axial_step_px * sim.cm_per_px
    loss_db = round_trip_loss_db(alpha, step_cm, f0, axis=1).astype(np.float32)
    if sim.geometry == "convex" and phys.rib_shadow_probability > 0:
        for b, (scene, rng) in enumerate(zip(scenes, rngs)):
            if scene.anatomy != "echo" or rng.random() >= phys.rib_shadow_probability:
                continue
            width = rng.uniform(0.04, 0.10) * sim.n_beams
            centre = rng.uniform(0.1, 0.9) * sim.n_beams
            depth = rng.uniform(1.0, 2.5)
            shadow_db = rng.uniform(8.0, 20.0)
            beams = np.arange(sim.n_beams)
            lateral = np.clip(1.0 - np.abs(beams - centre) / (width / 2.0), 0.0, 1.0) ** 0.5  # soft rib edges
            behind = np.clip((sim.depth_cm - depth) / 0.3, 0.0, 1.0)  # the loss builds up across the rib
            rib = np.exp(-0.5 * ((sim.depth_cm - depth) / 0.15) ** 2)
            loss_db[b] += (shadow_db * behind[:, None] * lateral[None, :]).astype(np.float32)
            power[b] += (10.0 ** 0.5 * rib[:, None] * lateral[None, :]).astype(np.float32)  # bright rib surface
    if phys.beam_spreading > 0:
        loss_db += beam_spreading_loss_db(sim.depth_cm, probe, phys.beam_spreading, phys.speed_of_sound_m_s).astype(np.float32)[None, :, None]
    power *= 10.0 ** (-loss_db / 10.0)

    iq = np.empty(power.shape, dtype=np.complex64)
    for b, rng in enumerate(rngs):
        iq[b] = draw_scatterers(power[b], density[b], rng)
    sig_ax = max(axial_psf_sigma_cm(probe, phys.speed_of_sound_m_s) / sim.cm_per_px, phys.min_psf_px[0]) / sim.axial_step_px
    sig_lat_px = np.maximum(lateral_psf_sigma_cm(sim.depth_cm, probe, phys.speed_of_sound_m_s) / sim.cm_per_px, phys.min_psf_px[1])
    iq = psf_filter(iq, sig_ax, sig_lat_px / sim.lateral_step_px, workers=phys.fft_workers)
    if phys.noise_db is not None:
        amp = math.sqrt(10.0 ** (phys.noise_db / 10.0) / 2.0)
        for b, rng in enumerate(rngs):
            z = rng.standard_normal(iq.shape[1:] + (2,), dtype=np.float32)
            iq[b] += (z[..., 0] + 1j * z[..., 1]) * amp
    gain = tgc_gain_db(sim.depth_cm, phys.tgc, float(sim.depth_cm[-1]), f0, phys.tgc_reference_db_cm_mhz)
    env = np.abs(iq) * (10.0 ** (gain / 20.0)).astype(np.float32)[None, :, None]
    if sim.geometry == "convex" and phys.fan_edge_rolloff > 0:
        env *= fan_edge_taper(sim.n_beams, phys.fan_edge_rolloff)[None, None, :]
    disp = log_compress(env, phys.dynamic_range_db, phys.gain_db, phys.reference_db)
    if phys.grey_gamma != 1.0:
        disp = disp ** np.float32(phys.grey_gamma)
    if sim.scan_matrix is not None:
        images = (sim.scan_matrix @ disp.reshape(B, -1).T).T.reshape(B, H * s, W * s).astype(np.float32)
    else:
        images = disp
    if phys.lateral_smoothing_px > 0:
        import scipy.ndimage

        images = scipy.ndimage.gaussian_filter1d(images, phys.lateral_smoothing_px * s, axis=-1, mode="nearest", truncate=3.0)
    if s > 1:
        images = images.reshape(B, H, s, W, s).mean(axis=(2, 4))
    if grid.geometry == "convex":
        images = images * grid.inside[None]
    if return_envelope:
        return np.clip(images, 0.0, 1.0), labels, env
    return np.clip(images, 0.0, 1.0), labels


def fan_edge_taper(n_beams: int, rolloff: float, edge_db: float = -12.0) -> np.ndarray:
    """Amplitude weight float32 [n_beams] of each beam across the sector: 1 in the middle, a raised-cosine
    taper over ``rolloff`` of the beams on each side down to ``edge_db`` at the outermost beam."""
    u = np.abs(np.linspace(-1.0, 1.0, n_beams))
    t = np.clip((u - (1.0 - 2.0 * rolloff)) / (2.0 * rolloff), 0.0, 1.0) if rolloff > 0 else np.zeros(n_beams)
    db = edge_db * 0.5 * (1.0 - np.cos(np.pi * t))
    return (10.0 ** (db / 20.0)).astype(np.float32)


def _smooth2d(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (reflecting edges) of a 2-D array; soft tissue boundaries."""
    import scipy.ndimage

    return scipy.ndimage.gaussian_filter(a.astype(np.float32), sigma, mode="nearest", truncate=2.5)


def _metadata(scene: Scene, probe: ProbeGeometry, phys: PhysicsParameters, seed: int, index: int, H: int, W: int) -> Dict[str, Any]:
    convex = probe.geometry == "convex"
    tgc_fraction = phys.tgc if isinstance(phys.tgc, float) else None
    max_depth = probe.depth_cm
    return {
        "anatomy": scene.anatomy,
        "view": scene.info.get("view", ""),
        "phase": scene.info.get("phase", ""),
        "num_classes": NUM_CLASSES[scene.anatomy],
        "probe_geometry": probe.geometry,
        "fan_apex_x": probe.apex[0] if convex else None,
        "fan_apex_y": probe.apex[1] if convex else None,
        "fan_radius_inner": probe.radii[0] if convex else None,
        "fan_radius_outer": probe.radii[1] if convex else None,
        "fan_half_angle_deg": float(probe.half_angle_deg) if convex else None,
        "depth_cm": float(probe.depth_cm),
        "center_frequency_mhz": float(probe.center_frequency_mhz),
        "attenuation_db_cm_mhz": None if phys.attenuation_db_cm_mhz is None else float(phys.attenuation_db_cm_mhz),
        "tgc_fraction": tgc_fraction,
        "tgc_gain_db_at_max_depth": float(tgc_gain_db(np.array([max_depth]), phys.tgc, max_depth, probe.center_frequency_mhz, phys.tgc_reference_db_cm_mhz)[0]),
        "dynamic_range_db": float(phys.dynamic_range_db),
        "gain_db": float(phys.gain_db),
        "noise_db": None if phys.noise_db is None else float(phys.noise_db),
        "seed": int(seed),
        "index": int(index),
        "height": int(H),
        "width": int(W),
    }


def _make_one(anatomy, size, seed, index, probe, physics, envelope: bool):
    _check_anatomy(anatomy)
    H, W = parse_size(size)
    probe = resolve_probe(anatomy, probe)
    phys = resolve_anatomy_physics(resolve_physics(**physics), anatomy)
    grid = _grid(H, W, probe, float(phys.oversample))
    shape_rng, speckle_rng = _example_rngs(seed, index)
    scene = sample_scene(anatomy, shape_rng)
    out = _render([scene], [speckle_rng], grid, probe, phys, return_envelope=envelope)
    meta = _metadata(scene, probe, phys, seed, index, H, W)
    return out[0][0], out[1][0], meta, (out[2][0] if envelope else None)


def make_phantom(anatomy: str = "echo", size: SizeLike = 64, seed: int = 0, index: int = 0, probe=None, **physics):
    """One phantom example.

    Args:
        anatomy: ``"echo"``, ``"thyroid"`` or ``"homogeneous"``.
        size: int or (height, width).
        seed, index: the example is fully determined by ``(seed, index)`` (and the parameters); it equals
            example ``index`` of ``generate_phantoms(..., seed=seed)``.
        probe: see :func:`resolve_probe`.
        **physics: fields of :class:`PhysicsParameters`.

    Returns:
        ``(image, label, metadata)``: float32 [H, W] in [0, 1], uint8 [H, W], dict.
    """
    return _make_one(anatomy, size, seed, index, probe, physics, envelope=False)[:3]


def phantom_envelope(anatomy: str = "echo", size: SizeLike = 64, seed: int = 0, index: int = 0, probe=None, **physics) -> np.ndarray:
    """The detected envelope of the phantom example that :func:`make_phantom` renders with the same arguments
    (after time-gain compensation, before log compression), on the beam/depth simulation grid: float32
    [n_depth, n_beams] (rows: depth, columns: beams)."""
    return _make_one(anatomy, size, seed, index, probe, physics, envelope=True)[3]


def phantom_label_maps(num: int, anatomy: str = "echo", size: SizeLike = 64, seed: int = 0, probe=None, start: int = 0) -> np.ndarray:
    """Label maps only (no physics): ``uint8 [num, H, W]``, identical to the labels of :func:`generate_phantoms`.

    ``start`` offsets the example indices (examples ``start .. start + num - 1``).
    """
    _check_anatomy(anatomy)
    num = int(num)
    if num < 0:
        raise ValueError(f"`num` must be non-negative, got {num}")
    H, W = parse_size(size)
    probe = resolve_probe(anatomy, probe)
    grid = _grid(H, W, probe, PhysicsParameters().oversample)
    out = np.empty((num, H, W), dtype=np.uint8)
    for k in range(num):
        shape_rng, _ = _example_rngs(seed, start + k)
        lab, _ = sample_scene(anatomy, shape_rng).evaluate(grid.pix_X, grid.pix_Y, tissues=False)
        if anatomy != "thyroid" or grid.geometry == "convex":
            lab = np.where(grid.inside, lab, 0)
        out[k] = lab
    return out


def _png_bytes(array_u8: np.ndarray) -> Dict[str, Any]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array_u8, mode="L").save(buf, format="PNG", compress_level=1)
    return {"bytes": buf.getvalue(), "path": None}


def phantom_features():
    """The ``datasets.Features`` of :func:`generate_phantoms`."""
    import datasets

    f32, i64, s = datasets.Value("float32"), datasets.Value("int64"), datasets.Value("string")
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Image(),
            "anatomy": s, "view": s, "phase": s, "num_classes": i64, "probe_geometry": s,
            "fan_apex_x": f32, "fan_apex_y": f32, "fan_radius_inner": f32, "fan_radius_outer": f32,
            "fan_half_angle_deg": f32, "depth_cm": f32, "center_frequency_mhz": f32,
            "attenuation_db_cm_mhz": f32, "tgc_fraction": f32, "tgc_gain_db_at_max_depth": f32,
            "dynamic_range_db": f32, "gain_db": f32, "noise_db": f32,
            "seed": i64, "index": i64, "height": i64, "width": i64,
        }
    )


#: Peak working memory of the simulation per output pixel and image (measured about 350 B; with margin).
PHANTOM_BYTES_PER_PIXEL = 512


def check_phantom_size(size: SizeLike, batch_size: int, num_images: int) -> Tuple[int, int]:
    """(H, W) of ``size``; ValueError before anything is allocated when a batch would not fit in memory."""
    from ..utils.memory import check_image_size

    H, W = parse_size(size)
    check_image_size(H, W, bytes_per_pixel=PHANTOM_BYTES_PER_PIXEL, batch=max(1, min(int(batch_size), int(num_images))),
                     argument="size", what="the phantom simulation")
    return H, W


def iter_phantom_batches(num_images: int, anatomy: str = "echo", size: SizeLike = 64, seed: int = 0, probe=None, start: int = 0, batch_size: int = 32, **physics):
    """Yield ``(images float32 [B, H, W], labels uint8 [B, H, W], metadata list)`` for examples ``start ..``.

    For a map anatomy (``"lung"``) the images are the 8 x 256 maps of :func:`.lung_media.lung_maps` in [0, 1], the
    labels None and the metadata ``{"anatomy", "seed", "index", "category"}``."""
    _check_anatomy(anatomy, maps=True)
    if anatomy in MAP_ANATOMIES:
        yield from _iter_map_batches(num_images, anatomy, size, seed, start, batch_size)
        return
    num_images = int(num_images)
    if num_images < 0:
        raise ValueError(f"`num_images` must be non-negative, got {num_images}")
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}")
    H, W = check_phantom_size(size, batch_size, num_images)
    probe = resolve_probe(anatomy, probe)
    phys = resolve_anatomy_physics(resolve_physics(**physics), anatomy)
    grid = _grid(H, W, probe, float(phys.oversample))
    for b0 in range(start, start + num_images, batch_size):
        idx = range(b0, min(b0 + batch_size, start + num_images))
        scenes, rngs = [], []
        for i in idx:
            shape_rng, speckle_rng = _example_rngs(seed, i)
            scenes.append(sample_scene(anatomy, shape_rng))
            rngs.append(speckle_rng)
        images, labels = _render(scenes, rngs, grid, probe, phys)
        yield images, labels, [_metadata(sc, probe, phys, seed, i, H, W) for sc, i in zip(scenes, idx)]


def generate_phantoms(num_images: int, anatomy: str = "echo", size: Optional[SizeLike] = None, seed: int = 0, probe=None, start: int = 0, batch_size: int = 32, progress: bool = False, **physics):
    """A phantom dataset of ``num_images`` (image, label map) pairs.

    Args:
        num_images: number of examples N.
        anatomy: ``"echo"`` (apical view on the CAMUS fan; labels 0 outside fan, 1 LV cavity, 2 tissue,
            3 myocardium, 4 left atrium), ``"thyroid"`` (linear probe; 0 tissue, 1 thyroid, 2 carotid,
            3 jugular), ``"homogeneous"`` (tissue block; 0 outside the fan, 2 tissue) or ``"lung"`` (the lung
            seed's 8 x 256 maps, no label map: :func:`.lung_media.lung_dataset`'s columns).
        size: int or (height, width); None: 64 (8 x 256 for lung, its only size).
        seed: example ``i`` depends only on ``(seed, start + i)`` and the parameters.
        probe: None (anatomy default), ``"convex"``, ``"linear"``, a dict of overrides or a :class:`ProbeGeometry`.
        start: index of the first example (to extend a dataset or build a disjoint validation set).
        batch_size: examples simulated together (memory / speed trade-off; does not change the result).
        progress: show a tqdm progress bar.
        **physics: fields of :class:`PhysicsParameters` (e.g. ``dynamic_range_db=60``, ``tgc=0.5``).

    Returns:
        ``datasets.Dataset`` with columns ``image`` (grayscale "L"), ``label`` (uint8 "L" label map) and
        metadata (see :func:`phantom_features`).
    """
    import datasets
    from tqdm.auto import tqdm

    _check_anatomy(anatomy, maps=True)
    if anatomy in MAP_ANATOMIES:
        from .lung_media import lung_dataset

        _map_size(anatomy, size)
        if physics or probe is not None:
            raise ValueError(f"{anatomy!r} phantoms take no `probe` or physics keywords, got {sorted(physics) or 'probe'}")
        return lung_dataset(num_images, seed=seed, start=start, progress=progress)
    size = 64 if size is None else size
    check_phantom_size(size, batch_size, num_images)
    features = phantom_features()
    columns: Dict[str, list] = {name: [] for name in features}
    bar = tqdm(total=int(num_images), desc=f"{anatomy} phantoms", disable=not progress, unit="img")
    for images, labels, metas in iter_phantom_batches(num_images, anatomy, size, seed, probe, start, batch_size, **physics):
        u8 = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
        for img, lab, meta in zip(u8, labels, metas):
            columns["image"].append(_png_bytes(img))
            columns["label"].append(_png_bytes(lab))
            for key, value in meta.items():
                columns[key].append(value)
        bar.update(len(metas))
    bar.close()
    return datasets.Dataset.from_dict(columns, features=features)


def _iter_map_batches(num_images: int, anatomy: str, size, seed: int, start: int, batch_size: int):
    """:func:`iter_phantom_batches` for a map anatomy: ``(maps float32 [B, 8, 256] in [0, 1], None, metadata)``."""
    from .lung_media import LUNG_CATEGORIES, lung_maps

    _map_size(anatomy, size)
    num_images = int(num_images)
    if num_images < 0:
        raise ValueError(f"`num_images` must be non-negative, got {num_images}")
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}")
    for b0 in range(start, start + num_images, int(batch_size)):
        count = min(int(batch_size), start + num_images - b0)
        maps, cats = lung_maps(count, seed=seed, start=b0)
        yield maps, None, [{"anatomy": anatomy, "seed": int(seed), "index": b0 + k, "category": LUNG_CATEGORIES[int(c)]}
                           for k, c in enumerate(cats)]
