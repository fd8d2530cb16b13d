# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Physical simulation path: label map -> scatterers -> I/Q channel data -> delay-and-sum -> B-mode.

1. :func:`draw_scatterers`: scatterers at uniformly random positions in the scan area (``scatterers_per_mm2``),
   each with a zero-mean Gaussian amplitude whose variance is the echogenicity of its class (the tissue table of
   :mod:`ultrasound_diffusers.data.phantoms`: blood -50 dB, soft tissue -14 dB, myocardium -3 dB). Many scatterers
   per resolution cell give fully developed speckle.
2. :func:`simulate_channels`: RF channel data of every transmit (diverging waves for a phased / convex array,
   plane waves for a linear array) with pymust's ``simus`` (``simulator="pymust"``, optional extra), I/Q
   demodulated with ``rf2iq``; or the linear Born model of :class:`~.beamforming.ChannelOperator`
   (``simulator="born"``, no extra needed, validated against ``simus`` in the tests).
3. :func:`beamform_bmode`: pixel-based delay-and-sum at the centres of the output pixels (so the scan conversion to
   the CAMUS fan is part of the beamforming), coherent compounding of the transmits, envelope, time-gain
   compensation of the 2-D spreading (gain ``r / 1 cm``), log compression with ``dynamic_range_db`` and a reference
   ``reference_db`` above the RMS envelope of the brightest class (myocardium), as the built-in phantoms do.

:func:`simulate_channel_phantom` does all of it for one example; :func:`write_channel_phantoms` writes a dataset of
them (``phantoms --simulator pymust|born``); :func:`channel_data_operator` builds the matching measurement operator
(sparse transmits, sparse receive aperture, channel noise) for reconstruction, and :func:`operator_from_spec` the
one of ``make_operator("channels:...")``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..geometry import CAMUS_FAN_APEX, CAMUS_FAN_HALF_ANGLE_DEG, CAMUS_FAN_RADII, FanGeometry, check_fan
from .beamforming import ChannelDataOperator, ChannelOperator, envelope_to_image
from .probes import ArrayProbe, diverging_wave_delays, get_probe, plane_wave_delays, to_pymust_param

__all__ = [
    "ECHO_CLASS_ECHOGENICITY_DB",
    "ChannelAcquisition",
    "beamform_bmode",
    "channel_data_operator",
    "draw_scatterers",
    "image_points",
    "phantom_echogenicity",
    "require_pymust",
    "simulate_channel_phantom",
    "simulate_channels",
    "operator_from_spec",
    "sparse_receive_elements",
    "write_channel_phantoms",
]

#: Echogenicity (dB) of the echo label classes: 1 LV cavity (blood), 2 soft tissue, 3 myocardium, 4 left atrium.
ECHO_CLASS_ECHOGENICITY_DB: Dict[int, float] = {1: -50.0, 2: -14.0, 3: -3.0, 4: -50.0}
SIMULATORS = ("pymust", "born")


def require_pymust():
    """Import pymust or raise an ImportError saying what to install."""
    try:
        import pymust
    except ImportError as error:
        raise ImportError(
            "the pymust simulator is an optional extra: pip install './ultrasound-diffusers[simulation]' "
            "(or pip install pymust); simulator='born' needs nothing extra"
        ) from error
    return pymust


@dataclasses.dataclass(frozen=True)
class ChannelAcquisition:
    """Probe, transmit sequence and image geometry of a channel-data acquisition.

    Attributes:
        probe: preset name (``"P4-2v"`` phased array, ``"C5-2v"`` convex, ``"L11-5v"`` linear) .
        depth: depth of the deepest image point (m): the outer fan radius (sector) or the bottom row (linear).
            The default 3 cm makes a 64 x 64 sector grid sample the P4-2v I/Q image near its Nyquist rate
            (pixel 0.48 mm; axial c / (2 B) = 0.38 mm, lateral resolution 0.5-0.9 mm), so that one pixel is about
            one resolution cell and the B-mode pixel is a fair stand-in for the reflectivity of its cell.
        angles_deg: steering angles of the diverging waves (phased / convex array) or plane waves (linear array).
        scatterers_per_mm2: scatterer density of the medium.
        dynamic_range_db, reference_db: log compression (white = RMS envelope of the brightest class + reference_db).
        geometry: ``"sector"`` (the CAMUS fan of the built-in echo phantoms, apex at the array centre) or
            ``"linear"`` (a rectangle as wide as the array).
        fan_apex, fan_radii, fan_half_angle_deg: the fan, in units of the image width (as the schedulers).
    """

    probe: str = "P4-2v"
    depth: float = 0.03
    angles_deg: Tuple[float, ...] = (-15.0, 0.0, 15.0)
    scatterers_per_mm2: float = 8.0
    dynamic_range_db: float = 50.0
    reference_db: float = 6.0
    geometry: str = "sector"
    fan_apex: Tuple[float, float] = CAMUS_FAN_APEX
    fan_radii: Tuple[float, float] = CAMUS_FAN_RADII
    fan_half_angle_deg: float = CAMUS_FAN_HALF_ANGLE_DEG

    def __post_init__(self):
        get_probe(self.probe)
        if self.geometry not in ("sector", "linear"):
            raise ValueError(f"`geometry` must be 'sector' or 'linear', got {self.geometry!r}")
        check_fan(self.fan_apex, self.fan_radii, self.fan_half_angle_deg)
        for name in ("depth", "scatterers_per_mm2", "dynamic_range_db"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)!r}")
        object.__setattr__(self, "angles_deg", tuple(float(a) for a in np.atleast_1d(self.angles_deg)))
        if not self.angles_deg:
            raise ValueError("`angles_deg` must name at least one transmit")

    @property
    def array(self) -> ArrayProbe:
        return get_probe(self.probe)

    @property
    def fan(self) -> FanGeometry:
        """The image region as a :class:`~ultrasound_diffusers.geometry.FanGeometry` (a linear probe for ``"linear"``)."""
        if self.geometry == "linear":
            return FanGeometry.linear()
        return FanGeometry("convex", self.fan_apex, self.fan_radii, self.fan_half_angle_deg)

    def delays(self) -> np.ndarray:
        """Transmit delays [K, E] (s): plane waves for a linear array in a rectangle, diverging waves otherwise."""
        angles = np.radians(self.angles_deg)
        if self.geometry == "linear" and self.array.is_linear:
            return plane_wave_delays(self.array, angles)
        return diverging_wave_delays(self.array, angles)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ geometry
def image_points(size: Tuple[int, int], acquisition: ChannelAcquisition):
    """Physical positions of the image pixels that lie in the scan area.

    Returns:
        ``(x, z, pixel_index, inside)``: float64 [P] (m), int64 [P] flat indices ``row * W + col``, bool [H, W].
        Sector: pixel (row, col) sits at ``((col - apex_x W), (row - apex_y W))`` times ``depth / (r_out W)``, the
        apex at the array centre. Linear: the columns span the array, rows span [0, depth].
    """
    h, w = int(size[0]), int(size[1])
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    if acquisition.geometry == "sector":
        inside = acquisition.fan.fan_mask(h, w).numpy()
        scale = acquisition.depth / (acquisition.fan_radii[1] * w)
        x = (cols - acquisition.fan_apex[0] * w) * scale
        z = (rows - acquisition.fan_apex[1] * w) * scale
    else:
        inside = np.ones((h, w), dtype=bool)
        aperture = acquisition.array.aperture
        x = ((cols + 0.5) / w - 0.5) * aperture
        z = (rows + 0.5) / h * acquisition.depth
    index = np.flatnonzero(inside.ravel())
    return x.ravel()[index], z.ravel()[index], index, inside


def _tgc(x: np.ndarray, z: np.ndarray, acquisition: ChannelAcquisition) -> np.ndarray:
    """Time-gain compensation of 2-D spreading: ``max(r, 5 mm) / 1 cm`` (r: distance to the array centre)."""
    r = np.hypot(x, z) if acquisition.geometry == "sector" else np.asarray(z, np.float64)
    return np.maximum(r, 5e-3) / 1e-2


def num_fast_time_samples(acquisition: ChannelAcquisition, x: np.ndarray, z: np.ndarray) -> int:
    """Samples per channel that cover every echo of the scan area (plus the pulse)."""
    from .beamforming import gaussian_pulse, travel_times

    tau = travel_times(acquisition.array, acquisition.delays(), x, z)
    return int(math.ceil(tau.max() * acquisition.array.sampling_frequency)) + len(gaussian_pulse(acquisition.array)) + 2


# ------------------------------------------------------------------------------------------------ scatterers
def phantom_echogenicity(anatomy: str = "echo", size=64, seed: int = 0, index: int = 0, probe=None):
    """Label map and echogenicity map (dB) of example ``(seed, index)`` of the built-in phantoms.

    The same scene as ``make_phantom(anatomy, size, seed, index)`` (same labels), but instead of its fast
    PSF-convolution physics, the tissue echogenicity with its texture (``TISSUES`` of
    :mod:`ultrasound_diffusers.data.phantoms`: pericardium, valves, striated myocardium, clutter in the cavities),
    to be sampled by scatterers. Returns ``(labels uint8 [H, W], echogenicity_db float32 [H, W])``.
    """
    from ..data.phantoms import phantom_tissue_maps

    return phantom_tissue_maps(anatomy, size, seed, index, probe)


def draw_scatterers(labels: np.ndarray, acquisition: ChannelAcquisition, rng: np.random.Generator,
                    class_db: Optional[Dict[int, float]] = None, echogenicity_db: Optional[np.ndarray] = None):
    """Scatterers of a label map: positions (m) and real amplitudes, float64 [S] each.

    Positions are uniform in the scan area (``scatterers_per_mm2``); each takes the class of its nearest pixel and
    a Gaussian amplitude of variance ``10^(class_db / 10)`` (class 0 and unknown classes: no scatterer), or, with
    an ``echogenicity_db`` map [H, W] (e.g. from :func:`phantom_echogenicity`), ``10^(map / 10)`` of its pixel.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"`labels` must be a 2-D label map [H, W], got shape {labels.shape}")
    class_db = ECHO_CLASS_ECHOGENICITY_DB if class_db is None else class_db
    h, w = labels.shape
    a = acquisition
    if a.geometry == "sector":
        scale = a.depth / (a.fan_radii[1] * w)
        r_in, r_out = a.fan_radii[0] * w * scale, a.depth
        half = math.radians(a.fan_half_angle_deg)
        area = half * (r_out**2 - r_in**2)
        n = rng.poisson(area * 1e6 * a.scatterers_per_mm2)
        r = np.sqrt(rng.uniform(r_in**2, r_out**2, n))
        th = rng.uniform(-half, half, n)
        x, z = r * np.sin(th), r * np.cos(th)
        col = np.clip(np.rint(x / scale + a.fan_apex[0] * w), 0, w - 1).astype(np.int64)
        row = np.clip(np.rint(z / scale + a.fan_apex[1] * w), 0, h - 1).astype(np.int64)
    else:
        aperture = a.array.aperture
        n = rng.poisson(aperture * a.depth * 1e6 * a.scatterers_per_mm2)
        x = rng.uniform(-aperture / 2, aperture / 2, n)
        z = rng.uniform(0.0, a.depth, n)
        col = np.clip(np.floor((x / aperture + 0.5) * w), 0, w - 1).astype(np.int64)
        row = np.clip(np.floor(z / a.depth * h), 0, h - 1).astype(np.int64)
    classes = labels[row, col]
    power = np.zeros(n)
    if echogenicity_db is not None:
        echo = np.asarray(echogenicity_db, np.float64)
        if echo.shape != labels.shape:
            raise ValueError(f"`echogenicity_db` must have the label map's shape {labels.shape}, got {echo.shape}")
        power = np.where(classes > 0, 10.0 ** (echo[row, col] / 10.0), 0.0)
    else:
        for cls, db in class_db.items():
            power[classes == cls] = 10.0 ** (float(db) / 10.0)
    keep = power > 0
    amp = rng.standard_normal(int(keep.sum())) * np.sqrt(power[keep])
    return x[keep], z[keep], amp


# ------------------------------------------------------------------------------------------------ channel data
def simulate_channels(x: np.ndarray, z: np.ndarray, amplitude: np.ndarray, acquisition: ChannelAcquisition,
                      num_samples: int, simulator: str = "pymust") -> np.ndarray:
    """I/Q channel data of scatterers for every transmit: complex64 [K, E, N].

    ``"pymust"``: ``simus`` (2-D, no attenuation) per transmit, then ``rf2iq`` (needs the ``simulation`` extra);
    ``"born"``: the linear model of :class:`ChannelOperator` with physical weights (no extra needed).
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"`simulator` must be one of {SIMULATORS}, got {simulator!r}")
    probe = acquisition.array
    delays = acquisition.delays()
    if simulator == "born":
        op = ChannelOperator(probe, delays, x, z, num_samples, weights="physical")
        return op.forward(torch.from_numpy(np.asarray(amplitude, np.float32))[None])[0].numpy().astype(np.complex64)
    pymust = require_pymust()
    param = to_pymust_param(probe)
    options = pymust.utils.Options()
    options.WaitBar = False
    out = np.zeros((len(delays), probe.num_elements, num_samples), np.complex64)
    for k, row in enumerate(delays):
        rf, _ = pymust.simus(x.reshape(1, -1), z.reshape(1, -1), np.asarray(amplitude, np.float64).reshape(1, -1),
                             row.reshape(1, -1), param, options)
        iq = pymust.rf2iq(rf, param.fs, param.fc)  # [N_k, E]
        n = min(num_samples, iq.shape[0])
        out[k, :, :n] = iq[:n].T
    return out


# ------------------------------------------------------------------------------------------------ beamforming
def beamform_bmode(iq: np.ndarray, acquisition: ChannelAcquisition, size: Tuple[int, int], labels=None,
                   reference: Optional[float] = None, operator: Optional[ChannelOperator] = None):
    """Delay-and-sum B-mode of full channel data at the pixel centres.

    Args:
        iq: complex [K, E, N] I/Q channel data.
        labels: label map [H, W] (used to set the reference when ``reference`` is None: RMS envelope of class 3,
            the myocardium, or of the whole scan area if absent, plus ``reference_db``).
        reference: the envelope shown as white (DAS units after TGC).
        operator: a :class:`ChannelOperator` on :func:`image_points` (built if None, ``pulse=None``).

    Returns:
        ``(image float32 [H, W] in [0, 1], envelope float64 [H, W] after TGC, reference)``.
    """
    h, w = int(size[0]), int(size[1])
    x, z, index, inside = image_points((h, w), acquisition)
    if operator is None:
        operator = ChannelOperator(acquisition.array, acquisition.delays(), x, z, iq.shape[-1], pulse=None)
    env = operator.das(torch.from_numpy(np.asarray(iq, np.complex64))[None])[0].abs().double().numpy()
    weight = np.maximum(operator.point_weight, 1e-30)
    env = env / weight * weight.mean() * _tgc(x, z, acquisition)
    full = np.zeros(h * w)
    full[index] = env
    if reference is None:
        region = np.zeros(h * w, bool)
        if labels is not None:
            region = np.asarray(labels).ravel() == 3
        region &= inside.ravel()
        if not region.any():
            region = inside.ravel()
        reference = float(np.sqrt(np.mean(full[region] ** 2))) * 10.0 ** (acquisition.reference_db / 20.0)
    image = (envelope_to_image(torch.from_numpy(full), acquisition.dynamic_range_db, reference).numpy() + 1.0) / 2.0
    image[~inside.ravel()] = 0.0
    return image.reshape(h, w).astype(np.float32), full.reshape(h, w), float(reference)


def sparse_receive_elements(num_elements: int, keep_every: int) -> np.ndarray:
    """Every ``keep_every``-th element, centred on the array (a sparse receive aperture)."""
    if int(keep_every) < 1:
        raise ValueError(f"`keep_every` must be >= 1, got {keep_every!r}")
    k = int(keep_every)
    start = (num_elements - 1 - ((num_elements - 1) // k) * k) // 2
    return np.arange(start, num_elements, k)


def channel_data_operator(size: Tuple[int, int], acquisition: ChannelAcquisition, num_samples: int, reference: float,
                          transmits: Optional[Sequence[int]] = None, receive_elements: Optional[Sequence[int]] = None,
                          noise_std: float = 0.0, pulse="gaussian") -> ChannelDataOperator:
    """The :class:`ChannelDataOperator` of a (sparse) acquisition on the pixel grid of ``size``.

    Its DAS gain and TGC match :func:`beamform_bmode` of the full acquisition, so its ``baseline`` is the
    sparse-data DAS image on the same grey scale as the full-data image (same ``reference``).
    """
    x, z, index, _ = image_points(size, acquisition)
    delays = acquisition.delays()
    full = ChannelOperator(acquisition.array, delays, x, z, num_samples, pulse=pulse)
    sparse = ChannelOperator(acquisition.array, delays, x, z, num_samples, transmits=transmits,
                             receive_elements=receive_elements, pulse=pulse)
    # beamform_bmode divides the full-data DAS envelope by point_weight / mean(point_weight); the DAS of the data
    # of a reflector r is point_gain * r, so the displayed envelope is full_gain * |r| * tgc with
    full_gain = full.point_gain * full.point_weight.mean() / np.maximum(full.point_weight, 1e-30)
    return ChannelDataOperator(
        sparse, index, size, dynamic_range_db=acquisition.dynamic_range_db, reference=reference,
        full_gain=full_gain, noise_std=noise_std, tgc=_tgc(x, z, acquisition),
    )


# ------------------------------------------------------------------------------------------------ one example
def simulate_channel_phantom(labels: np.ndarray, acquisition: Optional[ChannelAcquisition] = None, seed: int = 0,
                             simulator: str = "pymust", class_db=None, echogenicity_db=None) -> Dict[str, Any]:
    """Label map [H, W] (optionally with an echogenicity map, see :func:`draw_scatterers`) -> scatterers ->
    channel data -> DAS B-mode.

    Returns a dict: ``image`` float32 [H, W] in [0, 1] (full-data DAS B-mode), ``labels``, ``iq`` complex64
    [K, E, N], ``envelope`` float64 [H, W] (after TGC), ``reference``, ``delays`` [K, E], ``num_scatterers``,
    ``acquisition`` (dict), ``simulator``.
    """
    acquisition = acquisition or ChannelAcquisition()
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    sx, sz, amp = draw_scatterers(labels, acquisition, rng, class_db, echogenicity_db)
    x, z, _, _ = image_points(labels.shape, acquisition)
    n = num_fast_time_samples(acquisition, x, z)
    iq = simulate_channels(sx, sz, amp, acquisition, n, simulator)
    image, envelope, reference = beamform_bmode(iq, acquisition, labels.shape, labels=labels)
    return {
        "image": image, "labels": labels.astype(np.uint8), "iq": iq, "envelope": envelope, "reference": reference,
        "delays": acquisition.delays(), "num_scatterers": int(sx.size), "acquisition": acquisition.to_dict(),
        "simulator": simulator,
    }


# ------------------------------------------------------------------------------------------------ datasets
def write_channel_phantoms(num_images: int, output_dir, anatomy: str = "echo", size=64, seed: int = 0, start: int = 0,
                           simulator: str = "pymust", acquisition: Optional[ChannelAcquisition] = None,
                           progress: bool = False) -> Dict[str, Any]:
    """Simulate ``num_images`` phantoms physically and write them (atomically) to ``output_dir``:

    * ``dataset/``: a ``datasets`` folder (``save_to_disk``) with ``image`` (full-data DAS B-mode) and ``label``
      columns plus ``channels`` (the file of the example's I/Q data), loadable by the training script
      (``--dataset_name OUTPUT_DIR/dataset``);
    * ``channels/NNNNNN.npz``: ``iq`` complex64 [K, E, N] I/Q channel data of all transmits and elements,
      ``delays`` [K, E] (s), ``reference`` (the envelope shown as white), ``labels``;
    * ``images/`` and ``labels/``: the same as PNG files; ``acquisition.json``: probe, transmits, geometry,
      simulator, timing.

    Examples are those of the built-in phantoms (``anatomy``, ``seed``, index ``start + i``: the same label maps),
    with their echogenicity maps sampled by scatterers (:func:`phantom_echogenicity`). Sector anatomies only
    (echo); returns the summary written to ``acquisition.json``.
    """
    import io
    import json
    import time
    from pathlib import Path

    import datasets
    from PIL import Image

    from ..utils.io import replace_directory

    if int(num_images) < 1:
        raise ValueError(f"`num_images` must be at least 1, got {num_images!r}")
    if anatomy != "echo":
        raise ValueError(f"channel-data phantoms are simulated for the sector anatomy 'echo', got {anatomy!r}")
    if simulator == "pymust":
        require_pymust()
    acquisition = acquisition or ChannelAcquisition()
    summary: Dict[str, Any] = {}

    def build(tmp: Path):
        for sub in ("channels", "images", "labels"):
            (tmp / sub).mkdir()
        rows = {"image": [], "label": [], "channels": [], "index": [], "seed": [], "reference": []}
        started = time.perf_counter()
        for i in range(int(num_images)):
            index = int(start) + i
            labels, echo = phantom_echogenicity(anatomy, size, seed, index)
            sim = simulate_channel_phantom(labels, acquisition, seed=int(np.random.SeedSequence([seed, index, 7]).generate_state(1)[0]),
                                           simulator=simulator, echogenicity_db=echo)
            name = f"{i:06d}"
            np.savez_compressed(tmp / "channels" / f"{name}.npz", iq=sim["iq"], delays=sim["delays"],
                                reference=np.float64(sim["reference"]), labels=labels)
            image = np.clip(np.rint(sim["image"] * 255), 0, 255).astype(np.uint8)
            Image.fromarray(image, mode="L").save(tmp / "images" / f"{name}.png")
            Image.fromarray(labels, mode="L").save(tmp / "labels" / f"{name}.png")
            for key, value in (("image", image), ("label", labels)):
                buf = io.BytesIO()
                Image.fromarray(value, mode="L").save(buf, format="PNG")
                rows[key].append({"bytes": buf.getvalue(), "path": None})
            rows["channels"].append(f"channels/{name}.npz")
            rows["index"].append(index)
            rows["seed"].append(int(seed))
            rows["reference"].append(float(sim["reference"]))
            if progress:
                print(f"[{i + 1}/{num_images}] {sim['num_scatterers']} scatterers, {time.perf_counter() - started:.1f} s", flush=True)
        features = datasets.Features({
            "image": datasets.Image(), "label": datasets.Image(), "channels": datasets.Value("string"),
            "index": datasets.Value("int64"), "seed": datasets.Value("int64"), "reference": datasets.Value("float64"),
        })
        datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp / "dataset"))
        elapsed = time.perf_counter() - started
        summary.update({
            "num_images": int(num_images), "anatomy": anatomy, "size": list(np.broadcast_to(size, (2,)).tolist()),
            "seed": int(seed), "start": int(start), "simulator": simulator, "acquisition": acquisition.to_dict(),
            "probe": acquisition.array.to_dict(), "seconds": round(elapsed, 2),
            "seconds_per_image": round(elapsed / int(num_images), 3),
        })
        (tmp / "acquisition.json").write_text(json.dumps(summary, indent=1))

    replace_directory(build, output_dir, kind="phantoms-channels")
    return summary


# ------------------------------------------------------------------------------------------------ from text
CHANNEL_SPEC_HELP = (
    "channels[:elements=K][:transmits=I,J][:snr=DB][:depth=CM]: channel I/Q data (P4-2v phased array, 3 diverging "
    "waves, on the scheduler's fan; L11-5v plane waves for a linear scheduler) of every K-th receive element and the "
    "listed transmits (0, 1, 2 = -15, 0, +15 degrees; 'single' = 1), with channel noise at SNR DB (default 30)"
)


def _channel_option(key: str, value: str):
    """The value of one ``channels:`` option, checked: ``elements=K`` (keep every K-th receive element, K >= 1),
    ``transmits=I,J`` (transmit indices >= 0), ``snr=DB`` (any finite dB), ``depth=CM`` (> 0)."""
    expected = {"elements": "an integer K >= 1 (every K-th receive element)",
                "transmits": "comma-separated transmit indices >= 0", "snr": "a finite number of dB",
                "depth": "a depth in cm > 0"}[key]
    try:
        if key == "transmits":
            parsed = [int(v) for v in value.split(",") if v.strip()]
            ok = bool(parsed) and all(v >= 0 for v in parsed)
        elif key == "elements":
            parsed = int(value)
            ok = parsed >= 1
        else:
            parsed = float(value)
            ok = math.isfinite(parsed) and (key == "snr" or parsed > 0)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"channels option {key}={value!r}: expected {expected}")
    return parsed


def operator_from_spec(arg: str, size, scheduler=None, noise_std: Optional[float] = None) -> ChannelDataOperator:
    """Build a :class:`ChannelDataOperator` from the text after ``channels:`` (see :data:`CHANNEL_SPEC_HELP`).

    Examples: ``""`` (full data), ``"elements=4"`` (a quarter of the elements), ``"single"`` (one transmit),
    ``"elements=2:transmits=1:snr=20"``. The acquisition follows ``scheduler``'s probe geometry: its fan for a
    convex (sector) scheduler, a linear array otherwise. ``noise_std`` (absolute, data units) overrides the SNR.
    """
    if size is None:
        raise ValueError("a channels operator needs the image `size`")
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[-2]), int(size[-1]))
    options = {"elements": 1, "transmits": None, "snr": 30.0, "depth": None}
    for token in [t.strip() for t in str(arg or "").split(":") if t.strip()]:
        if token in ("single", "full"):
            options["transmits"] = [1] if token == "single" else None
            continue
        key, sep, value = token.partition("=")
        if not sep or key not in options:
            raise ValueError(f"unknown channels option {token!r}; expected elements=K, transmits=I,J, snr=DB, depth=CM, single or full")
        options[key] = _channel_option(key, value)
    # channel data need a transducer: without a B-map scheduler the phased array on the CAMUS fan
    fan = FanGeometry.from_config(scheduler, default=FanGeometry.camus())
    if fan.is_convex:
        acquisition = ChannelAcquisition(depth=(options["depth"] or 3.0) / 100.0, fan_apex=fan.apex, fan_radii=fan.radii,
                                         fan_half_angle_deg=fan.half_angle_deg)
    else:
        acquisition = ChannelAcquisition(probe="L11-5v", depth=(options["depth"] or 2.0) / 100.0, geometry="linear",
                                         angles_deg=(-10.0, 0.0, 10.0))
    x, z, _, _ = image_points((h, w), acquisition)
    elements = None
    if options["elements"] != 1:
        elements = sparse_receive_elements(acquisition.array.num_elements, options["elements"])
    op = channel_data_operator((h, w), acquisition, num_fast_time_samples(acquisition, x, z), reference=1.0,
                               transmits=options["transmits"], receive_elements=elements,
                               noise_std=0.0 if noise_std is None else float(noise_std))
    op.snr_db = None if noise_std is not None else options["snr"]
    op.acquisition = acquisition
    return op
