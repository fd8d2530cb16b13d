"""Simulated 2-D chest media for the lung seed: full-resolution property maps and the seed's 8 x 256 maps.

Geometry (a linear probe on the chest, depth down the rows, the body's long axis across the columns):

* full resolution ``[H, W] = [64, 1024]`` by default: lateral pitch :data:`LATERAL_PITCH_M` = 37.5 um (1024
  columns = 38.4 mm, e.g. 32 elements at 1.2 mm), axial pitch :data:`AXIAL_PITCH_M` = 0.75 mm (64 rows = 48 mm);
* the seed keeps the first 32 rows (0-24 mm) and averages 4 x 4 blocks
  (:func:`ultrasound_diffusers.data.lung.preprocess_lung_map`): an ``8 x 256`` map of 3 mm x 0.15 mm pixels.

Anatomy from the skin down: skin (1.5-2.5 mm), subcutaneous fat, chest-wall muscle, the pleural line
(0.4 mm of connective tissue) at 6-13 mm, then lung. Ribs (cortical shell around trabecular bone, or costal
cartilage) sit above the pleura where the field of view crosses them (a longitudinal intercostal view; 20 %
of the maps are transverse intercostal views without ribs). Their acoustic shadow is not drawn into the
medium: it is what the rib's attenuation and impedance do to the wave (see :attr:`LungMedia.rib_shadow`
for the pixels under a rib). The lung's aeration ``phi`` (volume fraction of air) depends on the category:

* ``"normal"``: aerated lung, ``phi`` 0.82-0.92 (lung ultrasound score 0, A-lines);
* ``"interstitial"``: interstitial syndrome, background ``phi`` 0.75-0.88 with 3-8 B-line columns from the
  pleura down (full width at half maximum 1-4 mm, core ``phi`` 0.30-0.55, 14-40 mm long; score 1-2);
* ``"consolidation"``: non-aerated lung (score 3): in 70 % of the maps a subpleural consolidation (``phi``
  0-0.02, so 1500-1560 m/s, tissue-like; 12-38 mm wide, reaching 16-35 mm under the pleura with a ragged deep border) in aerated lung, in 30 %
  a pleural effusion (anechoic fluid, ``phi`` 0, 5-15 mm thick over the whole width) above compressed,
  atelectatic lung (``phi`` 0.02-0.15), together at least 16 mm thick.

Properties per material (speed m/s, attenuation dB/cm/MHz, density kg/m^3) are in :data:`MATERIALS`. Mixed
pixels (layer boundaries, the 0.4 mm pleura, rib edges) take volume-weighted slowness (``1/c``, the
time-average law), attenuation and density. Lung is a mixture of deflated lung tissue (``phi`` = 0; 1560 m/s,
0.8 dB/cm/MHz, 1050 kg/m^3) and an effective fully aerated foam (``phi`` = 1; :data:`C_MIN` = 550 m/s,
40 dB/cm/MHz, 1.2 kg/m^3), so ``phi`` = 0.9 gives about 590 m/s and 36 dB/cm/MHz, the order measured on
inflated lung.

The map the diffusion model learns (:func:`lung_map_values`) is the normalised slowness::

    m = (1 / C_MIN - 1 / c) / (1 / C_MIN - 1 / C_MAX),   C_MIN = 550 m/s, C_MAX = 3500 m/s

in [0, 1] (0: fully aerated lung; 0.768: deflated lung tissue; 0.74-0.79: soft tissue; 0.97: cortical bone).
Slowness is what travel times add up, and inside the lung ``m = M_LUNG_TISSUE * (1 - phi)`` is linear in
aeration, so :func:`map_to_aeration` reads aeration straight off a map (below the pleura). The inverses are
:func:`map_to_speed` and :func:`map_to_properties`.

Determinism: map ``i`` of a call with ``seed`` uses ``numpy.random.SeedSequence([seed, i])`` whatever the
batch, so datasets of different sizes share prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .lung import preprocess_lung_map

__all__ = [
    "AXIAL_PITCH_M", "C_MAX", "C_MIN", "DEFAULT_HEIGHT", "DEFAULT_WIDTH", "LATERAL_PITCH_M", "LUNG_CATEGORIES", "LUNG_PIPELINE_PATH",
    "LungMedia", "MATERIALS", "M_LUNG_TISSUE", "POOLED_SHAPE", "classify_lung_maps", "lung_dataset",
    "lung_features", "lung_map_values", "lung_maps", "map_to_aeration", "map_to_properties", "map_to_speed",
    "pooled_category_statistics", "simulate_lung_media", "speed_to_map",
]

LUNG_CATEGORIES: Tuple[str, ...] = ("normal", "interstitial", "consolidation")
#: The bundled unconditional lung model (an ``UltrasoundPipeline`` of 8 x 256 maps; card: model_cards/lung-phantom-8x256.md).
LUNG_PIPELINE_PATH = Path(__file__).resolve().parents[1] / "assets" / "lung-phantom-8x256"
DEFAULT_HEIGHT = 64
DEFAULT_WIDTH = 1024
LATERAL_PITCH_M = 37.5e-6
AXIAL_PITCH_M = 0.75e-3
#: The seed's preprocessing: first 32 rows, 4 x 4 mean.
KEEP_ROWS, POOL = 32, 4
POOLED_SHAPE = (KEEP_ROWS // POOL, DEFAULT_WIDTH // POOL)

#: (speed m/s, attenuation dB/cm/MHz, density kg/m^3); sources in docs/lung.md.
MATERIALS: Dict[str, Tuple[float, float, float]] = {
    "skin": (1615.0, 1.0, 1090.0),
    "fat": (1450.0, 0.6, 950.0),
    "muscle": (1580.0, 1.1, 1050.0),
    "pleura": (1600.0, 1.0, 1100.0),
    "cortical_bone": (3300.0, 14.0, 1900.0),
    "trabecular_bone": (1800.0, 8.0, 1200.0),
    "cartilage": (1665.0, 1.5, 1100.0),
    "fluid": (1520.0, 0.1, 1010.0),
    "lung_tissue": (1560.0, 0.8, 1050.0),  # deflated lung, phi = 0
    "aerated_foam": (550.0, 40.0, 1.2),  # effective fully aerated lung, phi = 1
}
C_MIN = MATERIALS["aerated_foam"][0]
C_MAX = 3500.0
_S_MIN, _S_MAX = 1.0 / C_MAX, 1.0 / C_MIN


def speed_to_map(speed) -> np.ndarray:
    """Speed of sound (m/s, any shape) -> normalised slowness ``(1/C_MIN - 1/c) / (1/C_MIN - 1/C_MAX)``,
    float32, clipped to [0, 1]."""
    c = np.asarray(speed, dtype=np.float64)
    return np.clip((_S_MAX - 1.0 / c) / (_S_MAX - _S_MIN), 0.0, 1.0).astype(np.float32)


def map_to_speed(values) -> np.ndarray:
    """Inverse of :func:`speed_to_map`: map values in [0, 1] (clipped) -> speed of sound float32 in
    [C_MIN, C_MAX] m/s."""
    m = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return (1.0 / (_S_MAX - m * (_S_MAX - _S_MIN))).astype(np.float32)


#: Map value of deflated lung tissue (phi = 0); aerated lung lies on [0, M_LUNG_TISSUE].
M_LUNG_TISSUE = float(speed_to_map(MATERIALS["lung_tissue"][0]))


def map_to_aeration(values) -> np.ndarray:
    """Aeration (air volume fraction) ``1 - m / M_LUNG_TISSUE`` clipped to [0, 1], float32, same shape.
    Exact for lung pixels (the lung mixture law is linear in slowness); tissue above the pleura reads 0-0.04."""
    m = np.asarray(values, dtype=np.float32)
    return np.clip(1.0 - m / M_LUNG_TISSUE, 0.0, 1.0).astype(np.float32)


def map_to_properties(values) -> Dict[str, np.ndarray]:
    """Physical properties a map implies (e.g. a predicted one), same shape as ``values``, float32.

    ``speed`` (m/s) is exact (:func:`map_to_speed`). Below :data:`M_LUNG_TISSUE` the pixel is read as lung of
    aeration :func:`map_to_aeration` (attenuation and density of the lung mixture); above it, as soft tissue
    blending towards cortical bone at ``m = speed_to_map(3300)`` (linear in ``m``). Returns
    ``{"speed", "attenuation", "density", "aeration"}``.
    """
    m = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    phi = map_to_aeration(m)
    c_t, a_t, r_t = MATERIALS["lung_tissue"]
    c_a, a_a, r_a = MATERIALS["aerated_foam"]
    c_b, a_b, r_b = MATERIALS["cortical_bone"]
    m_bone = float(speed_to_map(c_b))
    w = np.clip((m - M_LUNG_TISSUE) / (m_bone - M_LUNG_TISSUE), 0.0, 1.0)
    lung = m <= M_LUNG_TISSUE
    attenuation = np.where(lung, (1 - phi) * a_t + phi * a_a, (1 - w) * a_t + w * a_b)
    density = np.where(lung, (1 - phi) * r_t + phi * r_a, (1 - w) * r_t + w * r_b)
    return {"speed": map_to_speed(m), "attenuation": attenuation.astype(np.float32),
            "density": density.astype(np.float32), "aeration": phi}


@dataclass
class LungMedia:
    """A batch of simulated chest media, full resolution ``[N, H, W]`` (rows = depth from the skin).

    Attributes:
        speed: float32 speed of sound in m/s (550-3300).
        attenuation: float32 attenuation in dB/cm/MHz (0.1-40).
        density: float32 density in kg/m^3 (1.2-1900).
        aeration: float32 air volume fraction in [0, 1] (0 outside the lung).
        rib_shadow: bool, pixels below a rib (where a real scan shows the rib's acoustic shadow).
        category: int64 ``[N]`` index into :data:`LUNG_CATEGORIES`.
        effusion: bool ``[N]``, consolidation maps drawn as a pleural effusion.
        pleura_depth_m: float32 ``[N, W]`` depth of the pleural line per column.
        pixel_size_m: (lateral, axial) pitch in metres.
    """

    speed: np.ndarray
    attenuation: np.ndarray
    density: np.ndarray
    aeration: np.ndarray
    rib_shadow: np.ndarray
    category: np.ndarray
    effusion: np.ndarray
    pleura_depth_m: np.ndarray
    pixel_size_m: Tuple[float, float] = (LATERAL_PITCH_M, AXIAL_PITCH_M)

    def __len__(self) -> int:
        return int(self.category.shape[0])

    @property
    def impedance(self) -> np.ndarray:
        """Acoustic impedance ``density * speed`` in kg/(m^2 s) (rayl), float32 ``[N, H, W]``."""
        return (self.density * self.speed).astype(np.float32)


# ------------------------------------------------------------------------------------------------ helpers
def _smooth_profile(rng: np.random.Generator, x: np.ndarray, amplitude: float, max_cycles: int = 4) -> np.ndarray:
    """A smooth random curve over ``x`` in [0, 1]: sum of ``max_cycles`` sinusoids, |value| <= amplitude."""
    k = np.arange(1, max_cycles + 1)
    a = rng.uniform(-1.0, 1.0, max_cycles) / k
    phase = rng.uniform(0.0, 2 * np.pi, max_cycles)
    prof = (a[:, None] * np.sin(2 * np.pi * k[:, None] * x[None] + phase[:, None])).sum(0)
    return (amplitude * prof / np.abs(a).sum()).astype(np.float32)


def _below(boundary_mm: np.ndarray, z_top_mm: np.ndarray, dz_mm: float) -> np.ndarray:
    """Fraction of each row ``[H, 1]`` (top edges ``z_top_mm``) lying deeper than ``boundary_mm`` ``[W]``."""
    return np.clip((z_top_mm + dz_mm - boundary_mm[None]) / dz_mm, 0.0, 1.0)


def _ellipse_cover(X, Z, cx, cz, a, b, dx_mm, dz_mm) -> np.ndarray:
    """Approximate area fraction of each pixel inside the ellipse (centre cx, cz; half-axes a, b; mm)."""
    r = np.sqrt(((X - cx) / a) ** 2 + ((Z - cz) / b) ** 2)
    # signed distance ~ (r - 1) * local half-axis; pixel size along the normal ~ mix of dx and dz
    nx, nz = (X - cx) / a ** 2, (Z - cz) / b ** 2
    norm = np.maximum(np.hypot(nx, nz), 1e-9)
    dist = (r - 1.0) * r / norm  # first-order distance to the boundary (mm): (r - 1) / |grad r|
    extent = np.abs(nx / norm) * dx_mm + np.abs(nz / norm) * dz_mm
    return np.clip(0.5 - dist / np.maximum(extent, 1e-9), 0.0, 1.0)


def _draw_one(rng: np.random.Generator, category: int, H: int, W: int, dx_mm: float, dz_mm: float):
    """One medium: volume fractions -> (slowness, attenuation, density, aeration, rib_shadow, effusion, pleura)."""
    x = ((np.arange(W) + 0.5) * dx_mm).astype(np.float32)  # column centres (mm)
    xn = x / np.float32(W * dx_mm)
    z_top = (np.arange(H, dtype=np.float32) * np.float32(dz_mm))[:, None]  # row top edges (mm), [H, 1]
    Z = z_top + 0.5 * dz_mm
    X = x[None]

    # chest wall boundaries (mm), each a smooth curve across the field of view
    pleura = rng.uniform(7.0, 12.0) + _smooth_profile(rng, xn, rng.uniform(0.2, 1.0), 2)
    skin = rng.uniform(1.5, 2.5) + _smooth_profile(rng, xn, 0.15, 3)
    fat_mean = rng.uniform(2.0, max(2.5, pleura.mean() - skin.mean() - 3.0))
    fat = skin + fat_mean + _smooth_profile(rng, xn, 0.4 * fat_mean * rng.uniform(0.1, 0.5), 4)
    fat = np.minimum(fat, pleura - 2.0)
    pleura_thickness = 0.4
    f_skin = 1.0 - _below(skin, z_top, dz_mm)
    f_fat = _below(skin, z_top, dz_mm) - _below(fat, z_top, dz_mm)
    f_muscle = _below(fat, z_top, dz_mm) - _below(pleura, z_top, dz_mm)
    f_pleura = _below(pleura, z_top, dz_mm) - _below(pleura + pleura_thickness, z_top, dz_mm)
    f_below = _below(pleura + pleura_thickness, z_top, dz_mm)  # lung or pleural fluid

    # ribs: longitudinal view (80 %) crosses 1-2 ribs at a rib pitch of 18-26 mm
    f_cortex = np.zeros((H, W), np.float32)
    f_marrow = np.zeros((H, W), np.float32)
    f_cart = np.zeros((H, W), np.float32)
    rib_shadow = np.zeros((H, W), dtype=bool)
    if rng.random() < 0.8:
        pitch = rng.uniform(18.0, 26.0)
        first = rng.uniform(-pitch / 2, pitch / 2)
        cartilage = rng.random() < 0.2
        for cx in np.arange(first, W * dx_mm + pitch, pitch):
            a = rng.uniform(5.0, 7.0)
            if cx + a < 0 or cx - a > W * dx_mm:
                continue
            p_here = float(np.interp(np.clip(cx, x[0], x[-1]), x, pleura))
            bottom = p_here - rng.uniform(0.4, 1.2)
            top_limit = float(np.interp(np.clip(cx, x[0], x[-1]), x, fat)) - 1.0
            b = float(np.clip(rng.uniform(3.0, 4.5), 1.5, max(1.5, (bottom - top_limit) / 2)))
            cz = bottom - b
            cols = slice(max(0, int((cx - a) / dx_mm) - 2), min(W, int((cx + a) / dx_mm) + 3))
            Xw = X[:, cols]
            outer = _ellipse_cover(Xw, Z, cx, cz, a, b, dx_mm, dz_mm)
            if cartilage:
                f_cart[:, cols] = np.maximum(f_cart[:, cols], outer)
            else:
                inner = _ellipse_cover(Xw, Z, cx, cz, max(a - 1.2, 0.5), max(b - 1.0, 0.5), dx_mm, dz_mm)
                f_cortex[:, cols] = np.maximum(f_cortex[:, cols], outer - inner)
                f_marrow[:, cols] = np.maximum(f_marrow[:, cols], inner)
            rib_shadow[:, cols] |= (np.abs(Xw - cx) < a * 0.9) & (Z > cz)
    f_rib = f_cortex + f_marrow + f_cart
    scale = np.clip(1.0 - f_rib, 0.0, 1.0)
    f_skin, f_fat, f_muscle = f_skin * scale, f_fat * scale, f_muscle * scale
    f_pleura, f_below = f_pleura * scale, f_below * scale

    # lung aeration [H, W] (below the pleura) and pleural fluid fraction
    depth = Z - (pleura + pleura_thickness)[None]  # mm under the pleura
    texture = np.float32(0.02) * np.sin(2 * np.pi * (rng.uniform(1, 4) * xn[None] + rng.uniform(0.05, 0.2) * Z / dz_mm / 8
                                         + rng.uniform(0, 1)))
    effusion = False
    fluid = np.zeros((H, W), np.float32)
    if category == 0:
        phi = rng.uniform(0.82, 0.92) + texture
    elif category == 1:
        phi0 = rng.uniform(0.75, 0.88)
        phi = phi0 + texture
        for _ in range(int(rng.integers(3, 9))):
            cxb = rng.uniform(0.0, W * dx_mm)
            sigma = rng.uniform(1.0, 4.0) / 2.355
            core = rng.uniform(0.30, 0.55)
            length = rng.uniform(14.0, 40.0)
            cols = slice(max(0, int((cxb - 4 * sigma) / dx_mm)), min(W, int((cxb + 4 * sigma) / dx_mm) + 1))
            lateral = np.exp(-0.5 * ((X[:, cols] - cxb) / sigma) ** 2)
            along = np.clip((length - depth[:, cols]) / 2.0, 0.0, 1.0)
            phi[:, cols] = np.minimum(phi[:, cols], phi0 - (phi0 - core) * lateral * along + texture[:, cols])
    else:
        phi0 = rng.uniform(0.70, 0.88)
        phi = phi0 + texture
        if rng.random() < 0.3:
            effusion = True
            t_fluid = rng.uniform(5.0, 15.0) + _smooth_profile(rng, xn, 1.0, 2)
            t_atel = np.maximum(rng.uniform(8.0, 15.0), 16.5 - t_fluid) + _smooth_profile(rng, xn, 0.5, 3)
            fluid = np.clip(_below(pleura + pleura_thickness, z_top, dz_mm)
                            - _below(pleura + pleura_thickness + t_fluid, z_top, dz_mm), 0.0, 1.0)
            atel = _below(pleura + pleura_thickness + t_fluid + t_atel, z_top, dz_mm)
            phi = atel * phi + (1.0 - atel) * rng.uniform(0.02, 0.15)
        else:
            width = rng.uniform(12.0, W * dx_mm)
            x0 = rng.uniform(-0.2 * width, W * dx_mm - 0.8 * width)
            reach = rng.uniform(16.0, 35.0) + _smooth_profile(rng, xn, 2.5, 12)  # ragged (shred) deep border
            edge = 1.5
            lateral = np.clip((X - x0) / edge, 0, 1) * np.clip((x0 + width - X) / edge, 0, 1)
            inside = lateral * np.clip((reach[None] - depth) / 1.0, 0.0, 1.0)
            phi = inside * rng.uniform(0.0, 0.02) + (1.0 - inside) * phi
    phi = np.clip(phi, 0.0, 0.97).astype(np.float32)
    f_fluid = f_below * fluid
    f_lung = f_below - f_fluid

    fractions = {"skin": f_skin, "fat": f_fat, "muscle": f_muscle, "pleura": f_pleura, "cortical_bone": f_cortex,
                 "trabecular_bone": f_marrow, "cartilage": f_cart, "fluid": f_fluid}
    slowness = np.zeros((H, W), np.float32)
    atten = np.zeros((H, W), np.float32)
    dens = np.zeros((H, W), np.float32)
    for name, f in fractions.items():
        c, a, r = MATERIALS[name]
        slowness += f / c
        atten += f * a
        dens += f * r
    (c_t, a_t, r_t), (c_a, a_a, r_a) = MATERIALS["lung_tissue"], MATERIALS["aerated_foam"]
    slowness += f_lung * ((1 - phi) / c_t + phi / c_a)
    atten += f_lung * ((1 - phi) * a_t + phi * a_a)
    dens += f_lung * ((1 - phi) * r_t + phi * r_a)
    total = sum(fractions.values()) + f_lung  # 1 up to rounding of the partial-volume rules
    total = np.maximum(total, 1e-6)
    return (slowness / total, atten / total, dens / total, f_lung * phi / total, rib_shadow & (f_rib < 0.5),
            effusion, pleura)


def _check_categories(categories) -> Optional[np.ndarray]:
    if categories is None:
        return None
    if isinstance(categories, (str, int, np.integer)):
        categories = [categories]
    out = []
    for c in categories:
        if isinstance(c, str):
            if c not in LUNG_CATEGORIES:
                raise ValueError(f"`categories` entries must be one of {LUNG_CATEGORIES} or their indices, got {c!r}")
            out.append(LUNG_CATEGORIES.index(c))
        else:
            if not 0 <= int(c) < len(LUNG_CATEGORIES):
                raise ValueError(f"`categories` index {c!r} outside 0..{len(LUNG_CATEGORIES) - 1}")
            out.append(int(c))
    if not out:
        raise ValueError("`categories` must name at least one category")
    return np.array(out, dtype=np.int64)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}")
    return int(value)


def simulate_lung_media(
    num_maps: int,
    *,
    seed: int = 0,
    start: int = 0,
    categories=None,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    pixel_size_m: Tuple[float, float] = (LATERAL_PITCH_M, AXIAL_PITCH_M),
) -> LungMedia:
    """Simulate ``num_maps`` chest media at full resolution.

    Args:
        num_maps: N.
        seed: map ``i`` depends only on ``(seed, start + i)`` and the other arguments.
        start: index of the first map (to extend a set or draw a disjoint one).
        categories: None (map ``i`` gets category ``(start + i) % 3``, balanced), or one or more category names
            / indices; map ``i`` gets entry ``(start + i) % len(categories)``.
        height, width: rows (depth) and columns; at least 32 rows keep the seed's window.
        pixel_size_m: (lateral, axial) pitch in metres.

    Returns:
        :class:`LungMedia` with ``[N, height, width]`` property maps.
    """
    n = _check_count("num_maps", num_maps)
    start = _check_count("start", start)
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"`height` and `width` must be positive, got {height} x {width}")
    dx, dz = (float(v) for v in pixel_size_m)
    if not (dx > 0 and dz > 0):
        raise ValueError(f"`pixel_size_m` must be two positive pitches (lateral, axial), got {pixel_size_m!r}")
    cats = _check_categories(categories)
    H, W = int(height), int(width)
    out = {k: np.empty((n, H, W), np.float32) for k in ("speed", "attenuation", "density", "aeration")}
    shadow = np.empty((n, H, W), bool)
    category = np.empty(n, np.int64)
    effusion = np.empty(n, bool)
    pleura = np.empty((n, W), np.float32)
    for k in range(n):
        idx = start + k
        cat = int(cats[idx % len(cats)]) if cats is not None else idx % len(LUNG_CATEGORIES)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), idx]))
        s, a, r, phi, sh, eff, pl = _draw_one(rng, cat, H, W, dx * 1e3, dz * 1e3)
        out["speed"][k] = 1.0 / s
        out["attenuation"][k] = a
        out["density"][k] = r
        out["aeration"][k] = phi
        shadow[k], category[k], effusion[k], pleura[k] = sh, cat, eff, pl * 1e-3
    return LungMedia(rib_shadow=shadow, category=category, effusion=effusion, pleura_depth_m=pleura,
                     pixel_size_m=(dx, dz), **out)


def lung_map_values(media: LungMedia) -> np.ndarray:
    """THE map the lung model learns: normalised slowness :func:`speed_to_map` of ``media.speed``,
    float32 ``[N, H, W]`` in [0, 1] (invert with :func:`map_to_speed` / :func:`map_to_properties`)."""
    return speed_to_map(media.speed)


def lung_maps(num_maps: int, *, seed: int = 0, start: int = 0, categories=None, chunk: int = 64,
              **media_kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """The seed's pooled maps: ``(maps float32 [N, 8, 256] in [0, 1], category int64 [N])``.

    Each full-resolution :func:`lung_map_values` map goes through the seed's preprocessing
    (:func:`ultrasound_diffusers.data.lung.preprocess_lung_map`: first 32 rows, 4 x 4 mean). Media are
    simulated ``chunk`` at a time, so memory stays small for any N; the result equals one big call.
    """
    n = _check_count("num_maps", num_maps)
    if int(chunk) < 1:
        raise ValueError(f"`chunk` must be positive, got {chunk}")
    pooled, cats = [], []
    for s in range(0, n, int(chunk)):
        k = min(int(chunk), n - s)
        media = simulate_lung_media(k, seed=seed, start=start + s, categories=categories, **media_kwargs)
        values = lung_map_values(media)
        pooled.append(np.stack([preprocess_lung_map(v, KEEP_ROWS, POOL) for v in values]) if k else
                      np.empty((0,) + POOLED_SHAPE, np.float32))
        cats.append(media.category)
    if not pooled:
        w = int(media_kwargs.get("width", DEFAULT_WIDTH)) // POOL
        return np.empty((0, KEEP_ROWS // POOL, w), np.float32), np.empty(0, np.int64)
    return np.concatenate(pooled).astype(np.float32), np.concatenate(cats)


# -------------------------------------------------------------------------------------------- categories
#: Pooled rows read by the category rule: rows 5-6 (15-21 mm), always under the pleura (6-13.4 mm).
RULE_ROWS = (5, 7)
#: A column is non-aerated when its mean aeration over :data:`RULE_ROWS` is below this.
NON_AERATED_PHI = 0.25
#: A column is poorly aerated (a B-line) when its mean aeration is below this.
POORLY_AERATED_PHI = 0.62
#: Consolidation needs a contiguous run of non-aerated columns at least this wide (mm).
CONSOLIDATION_MIN_WIDTH_MM = 8.0


def pooled_category_statistics(maps: np.ndarray, lateral_pitch_m: float = POOL * LATERAL_PITCH_M) -> Dict[str, np.ndarray]:
    """Statistics of pooled maps ``[N, 8, W]`` in [0, 1] that the category rule reads, each ``[N]`` float64:
    ``lung_aeration`` (mean aeration of rows 5-6), ``poorly_aerated_fraction`` (fraction of columns below
    :data:`POORLY_AERATED_PHI`), ``non_aerated_run_mm`` (widest run of columns below :data:`NON_AERATED_PHI`)."""
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim != 3 or m.shape[1] < RULE_ROWS[1]:
        raise ValueError(f"`maps` must be pooled lung maps [N, 8, W], got shape {m.shape}")
    col = map_to_aeration(m[:, RULE_ROWS[0]:RULE_ROWS[1]]).mean(1)  # [N, W]
    low = col < NON_AERATED_PHI
    runs = np.zeros(m.shape[0])
    for i, row in enumerate(low):
        padded = np.concatenate([[0], row.astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(padded))
        if edges.size:
            runs[i] = (edges[1::2] - edges[0::2]).max()
    return {"lung_aeration": col.mean(1).astype(np.float64),
            "poorly_aerated_fraction": (col < POORLY_AERATED_PHI).mean(1).astype(np.float64),
            "non_aerated_run_mm": runs * lateral_pitch_m * 1e3}


def classify_lung_maps(maps: np.ndarray, lateral_pitch_m: float = POOL * LATERAL_PITCH_M) -> np.ndarray:
    """Category of each pooled map ``[N, 8, W]`` by a fixed rule on :func:`pooled_category_statistics`:
    ``consolidation`` when a run of non-aerated columns (aeration < 0.25 at 15-21 mm) is at least 8 mm wide,
    else ``interstitial`` when any column is poorly aerated (< 0.62, a B-line), else ``normal``. int64 ``[N]``."""
    st = pooled_category_statistics(maps, lateral_pitch_m)
    out = np.zeros(len(st["lung_aeration"]), np.int64)
    out[st["poorly_aerated_fraction"] > 0] = 1
    out[st["non_aerated_run_mm"] >= CONSOLIDATION_MIN_WIDTH_MM] = 2
    return out


# ------------------------------------------------------------------------------------------------ dataset
def lung_features(height: int = POOLED_SHAPE[0], width: int = POOLED_SHAPE[1]):
    """``datasets.Features`` of :func:`lung_dataset`: ``image`` (PNG "L"), ``values`` (float32 Array2D),
    ``category`` (ClassLabel of :data:`LUNG_CATEGORIES`), ``seed``, ``index``, ``height``, ``width``."""
    import datasets

    i64 = datasets.Value("int64")
    return datasets.Features({
        "image": datasets.Image(),
        "values": datasets.Array2D(shape=(int(height), int(width)), dtype="float32"),
        "category": datasets.ClassLabel(names=list(LUNG_CATEGORIES)),
        "seed": i64, "index": i64, "height": i64, "width": i64,
    })


def lung_dataset(num_maps: int, *, seed: int = 0, start: int = 0, categories=None, progress: bool = False,
                 **media_kwargs):
    """A ``datasets.Dataset`` of the seed's pooled lung maps, read like ``prepare lung`` output.

    Columns: ``image`` (the map as an 8-bit PNG, value ``v`` -> ``round(255 v)``), ``values`` (float32
    ``[8, 256]`` map in [0, 1], exact), ``category`` (ClassLabel: normal / interstitial / consolidation),
    ``seed``, ``index`` (the map's index ``start + i``), ``height``, ``width``.
    """
    import datasets
    from tqdm.auto import tqdm

    from .converters import encode_png, to_uint8

    n = _check_count("num_maps", num_maps)
    maps_list, cats_list = [], []
    step = 256
    for s in tqdm(range(0, n, step), desc="lung maps", disable=not progress, unit="chunk"):
        m, c = lung_maps(min(step, n - s), seed=seed, start=start + s, categories=categories, **media_kwargs)
        maps_list.append(m)
        cats_list.append(c)
    if maps_list:
        maps, cats = np.concatenate(maps_list), np.concatenate(cats_list)
    else:
        maps, cats = lung_maps(0, seed=seed, **media_kwargs)
    h, w = maps.shape[1:]
    columns = {
        "image": [encode_png(to_uint8(m, (0.0, 1.0))) for m in maps],
        "values": [m for m in maps],
        "category": [int(c) for c in cats],
        "seed": [int(seed)] * n, "index": list(range(start, start + n)), "height": [h] * n, "width": [w] * n,
    }
    return datasets.Dataset.from_dict(columns, features=lung_features(h, w))
