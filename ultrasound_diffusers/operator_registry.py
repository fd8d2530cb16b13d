# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""The operator texts of the CLI (``"missing_lines:4"``, ``"channels:elements=4"``, ...) and :func:`make_operator`.

One row per spelling in :data:`OPERATOR_BUILDERS`: the kind before the first ``:``, a one-line help text and a
builder ``builder(arg, size, scheduler, noise_std) -> ForwardOperator`` that gets the text after the ``:``. The
table lives in its own module, above both :mod:`ultrasound_diffusers.operators` (the image-domain operators) and
:mod:`ultrasound_diffusers.acoustics` (channel data, whose operator derives from ``ForwardOperator``), so that
neither of those imports the other back. A new spelling is a new builder function and a new row here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional

import numpy as np

from .geometry import FanGeometry
from .operators import AreaDownsample, DepthAttenuation, ForwardOperator, Mask, MissingScanLines, SizeLike
from .operators import image_size, shadow_mask

__all__ = ["OPERATOR_BUILDERS", "OPERATOR_SPECS", "OperatorSpelling", "make_operator", "operator_kinds"]


class OperatorSpelling(NamedTuple):
    """One operator text: its ``usage`` (e.g. ``"missing_lines:K"``), ``help`` and ``build(arg, size, scheduler,
    noise_std)``; ``aliases`` are other kinds that name it."""

    usage: str
    help: str
    build: Callable[..., ForwardOperator]
    aliases: tuple = ()


def _probe(scheduler) -> FanGeometry:
    """The probe of a B-map scheduler's config (a linear probe for any other scheduler, or none)."""
    return FanGeometry.from_config(scheduler)


def _noise(noise_std: Optional[float], default: float = 0.0) -> float:
    return default if noise_std is None else float(noise_std)


def _missing_lines(arg: str, size, scheduler, noise_std) -> ForwardOperator:
    text = (arg or "2").strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"K (keep every K-th scan line) must be one integer >= 1, got {text!r}; expected missing_lines:K")
    return MissingScanLines(int(text), noise_std=_noise(noise_std), geometry=_probe(scheduler))


def _downsample(arg: str, size, scheduler, noise_std) -> ForwardOperator:
    parts = (arg or "4").lower().split("x")
    if len(parts) > 2:
        raise ValueError("the factor is F or FHxFW")
    factor = (int(parts[0]), int(parts[-1]))
    return AreaDownsample(factor, noise_std=_noise(noise_std))


def _attenuation(compensated: bool) -> Callable[..., ForwardOperator]:
    def build(arg: str, size, scheduler, noise_std) -> ForwardOperator:
        values = [float(v) for v in arg.split(":") if v] if arg else []
        if len(values) > 3:
            raise ValueError("at most ALPHA:FREQ_MHZ:DEPTH_CM")
        keys = ("attenuation_db_cm_mhz", "frequency_mhz", "depth_cm")
        return DepthAttenuation(
            **dict(zip(keys, values)), noise_std=_noise(noise_std, 0.02), compensated=compensated,
            geometry=_probe(scheduler),
        )

    return build


def _mask(arg: str, size, scheduler, noise_std) -> ForwardOperator:
    if size is None:
        raise ValueError("a mask operator needs the image `size`")
    if arg in ("", "shadow"):
        return Mask.from_region(shadow_mask(size, geometry=_probe(scheduler)), noise_std=_noise(noise_std))
    path = Path(arg)
    if not path.is_file():
        raise ValueError(f"mask file {path} does not exist")
    if path.suffix.lower() == ".npy":
        region = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as im:
            region = np.asarray(im.convert("L"))
    region = np.squeeze(region) != 0
    if region.shape != image_size(size):
        raise ValueError(f"mask file {path} is {region.shape}, the images are {image_size(size)}")
    return Mask.from_region(region, noise_std=_noise(noise_std))


def _channels(arg: str, size, scheduler, noise_std) -> ForwardOperator:
    from .acoustics.simulation import operator_from_spec  # heavy: only where channel data are asked for

    return operator_from_spec(arg, size, scheduler=scheduler, noise_std=noise_std)


def _fmc(arg: str, size, scheduler, noise_std) -> ForwardOperator:
    from .acoustics.multistatic import fmc_operator_from_spec  # heavy: only where lung RF data are asked for

    return fmc_operator_from_spec(arg, size, noise_std=noise_std)


#: kind -> its spelling; the kinds in ``aliases`` name the same operator.
OPERATOR_BUILDERS: Dict[str, OperatorSpelling] = {
    "missing_lines": OperatorSpelling(
        "missing_lines:K", "keep every K-th scan line (columns for a linear probe, beams of the fan for a convex one)",
        _missing_lines, ("lines", "sparse"),
    ),
    "downsample": OperatorSpelling(
        "downsample:F or downsample:FHxFW", "area averaging over F x F (or FH x FW) blocks", _downsample, ("area",),
    ),
    "attenuation": OperatorSpelling(
        "attenuation[:ALPHA[:FREQ_MHZ[:DEPTH_CM]]]",
        "depth attenuation in dB/cm/MHz (defaults 0.5, 2.5 MHz, 15 cm)", _attenuation(False),
    ),
    "attenuation_tgc": OperatorSpelling(
        "attenuation_tgc[:...]", "the same after time-gain compensation (noise grows with depth)", _attenuation(True),
    ),
    "mask": OperatorSpelling(
        "mask:shadow or mask:FILE",
        "inpaint a rib shadow, or the region of a mask file (.npy / .png, nonzero = missing)", _mask,
    ),
    "channels": OperatorSpelling(
        "channels[:elements=K][:transmits=I,J|single][:snr=DB]",
        "channel I/Q data of a phased / linear array (ultrasound_diffusers.acoustics): sparse receive aperture, "
        "fewer transmits, channel noise", _channels,
    ),
    "fmc": OperatorSpelling(
        "fmc[:tx=K,rx=K,snr=DB]",
        "lung RF full-matrix capture (ultrasound_diffusers.acoustics.multistatic; 8 x 256 lung maps): K evenly "
        "spread transmitters / receivers of the 32 (default all), channel noise at SNR DB (default 20)", _fmc,
        ("multistatic",),
    ),
}

#: usage text -> help (the CLI's ``--operator`` help and error messages)
OPERATOR_SPECS = {row.usage: row.help for row in OPERATOR_BUILDERS.values()}


def operator_kinds() -> Dict[str, str]:
    """Every kind a text may start with (aliases included) -> the kind of its row in :data:`OPERATOR_BUILDERS`."""
    kinds = {}
    for kind, row in OPERATOR_BUILDERS.items():
        kinds[kind] = kind
        kinds.update({alias: kind for alias in row.aliases})
    return kinds


def _check_finite_numbers(spec: str, arg: str, noise_std: Optional[float]) -> None:
    """Refuse ``nan`` / ``inf`` (or a number that overflows to it, ``1e400``) in an operator text, and a noise level
    that is not a finite number >= 0, before anything is built."""
    import math
    import re

    words = re.findall(r"[A-Za-z_]+|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", arg or "")
    if any(w.lower() in ("nan", "inf", "infinity") for w in words) or any(
        w[-1:].isdigit() and not math.isfinite(float(w)) for w in words
    ):
        raise ValueError(f"bad operator spec {spec!r}: its numbers must be finite (no nan / inf)")
    if noise_std is not None and (isinstance(noise_std, bool) or not (math.isfinite(float(noise_std)) and float(noise_std) >= 0)):
        raise ValueError(f"`noise_std` must be a finite number >= 0, got {noise_std!r}")


def make_operator(
    spec: str, size: SizeLike = None, scheduler=None, noise_std: Optional[float] = None
) -> ForwardOperator:
    """Build an operator from a short text (see :data:`OPERATOR_SPECS`), with the probe geometry of ``scheduler``.

    Args:
        spec: e.g. ``"missing_lines:4"``, ``"downsample:4x1"``, ``"attenuation:0.5"``, ``"mask:shadow"``,
            ``"channels:elements=4"``.
        size: (H, W) of the images (needed for masks and channel data).
        scheduler: a ``BMapAttenuationScheduler`` whose probe geometry the operator uses (linear otherwise).
        noise_std: measurement noise (default 0; 0.02 for attenuation).

    Raises:
        ValueError: naming ``spec`` and the known spellings, for an unknown kind or a bad argument.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"`spec` must be a text such as 'missing_lines:4', got {spec!r}")
    kind, _, arg = spec.partition(":")
    kind = operator_kinds().get(kind.strip().lower())
    if kind is None:
        raise ValueError(
            f"unknown operator {spec.partition(':')[0].strip().lower()!r} in {spec!r}; "
            f"expected one of {list(OPERATOR_SPECS)}"
        )
    _check_finite_numbers(spec, arg, noise_std)
    try:
        return OPERATOR_BUILDERS[kind].build(arg, size, scheduler, noise_std)
    except ValueError as error:
        raise ValueError(f"bad operator spec {spec!r}: {error}") from error
