# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Forward operators of ultrasound inverse problems: measurements ``y = A(x) + n`` of an image ``x``.

Every operator is a small class called on a batch of images in the model's value range
(``x``: float tensor [B, C, H, W] in [-1, 1], -1 black) and returning the noise-free measurements ``A(x)``
(differentiably, so that diffusion posterior sampling can back-propagate through it). Besides ``__call__``:

* :meth:`ForwardOperator.measure`: ``A(x) + n`` with the operator's measurement noise;
* :meth:`ForwardOperator.noise_std_map`: the standard deviation of ``n`` (it may change with depth);
* :meth:`ForwardOperator.transpose`: the adjoint ``A^T`` of the (linear part of the) operator, where it has one;
* :meth:`ForwardOperator.project`: data consistency, ``x + R A^T (A R A^T + S)^-1 (y - A(x))``, where it is cheap
  (``R`` a per-pixel prior variance, ``S`` the noise variance; with ``R = I, S = 0`` the orthogonal projection
  onto ``{x : A(x) = y}``);
* :meth:`ForwardOperator.baseline`: a simple reconstruction without a prior (interpolation, inverse gain).

Operators:

* :class:`MissingScanLines`: sparse acquisition, every k-th column of a linear scan or every k-th beam of a sector.
* :class:`AreaDownsample`: area averaging to a lower resolution (the lung seed's 32 x 256 -> 8 x 256 maps).
* :class:`DepthAttenuation`: round-trip attenuation ``2 alpha f z`` (dB) with electronic noise, optionally after
  time-gain compensation (then the noise grows with depth).
* :class:`Mask`: a region without signal (acoustic shadows) to inpaint.
* :class:`FunctionOperator`: any differentiable user function.

:func:`ultrasound_diffusers.operator_registry.make_operator` builds one from a short text such as
``"missing_lines:4"`` (used by the CLI); the table of those texts lives there, above this module and
:mod:`ultrasound_diffusers.acoustics`, so that neither imports the other back.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import CAMUS_FAN_APEX, CAMUS_FAN_HALF_ANGLE_DEG, CAMUS_FAN_RADII, FanGeometry
from .utils.deprecation import deprecate

__all__ = [
    "AreaDownsample",
    "DepthAttenuation",
    "ForwardOperator",
    "FunctionOperator",
    "LinearOperator",
    "Mask",
    "MissingScanLines",
    "PixelSubsampling",
    "harmonic_inpainting",
    "check_image",
    "image_size",
    "jtj_power_iteration",
    "shadow_mask",
]

SizeLike = Union[int, Sequence[int]]
# Smallest denominator of the data-consistency update (avoids 0/0 where neither prior nor noise has variance).
_TINY = 1e-20


# ------------------------------------------------------------------------------------------------ helpers
def image_size(size: SizeLike) -> Tuple[int, int]:
    """(H, W) from an int, (H, W) or a full shape [..., H, W] (positive ints; ValueError naming `size` otherwise)."""
    if isinstance(size, int):
        return int(size), int(size)
    size = tuple(int(s) for s in size)
    if len(size) < 2:
        raise ValueError(f"`size` must be an int, (height, width) or a shape [..., height, width], got {size}")
    h, w = size[-2], size[-1]
    if h < 1 or w < 1:
        raise ValueError(f"`size` must be positive, got {(h, w)}")
    return h, w


def check_image(x: torch.Tensor, name: str = "x") -> None:
    """Refuse anything but a 4-D tensor [B, C, H, W] (ValueError naming `name`)."""
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"`{name}` must be a float tensor [B, C, H, W], got {shape}")


#: The loose fan keywords of earlier releases (now ``geometry=FanGeometry(...)``).
_FAN_KEYWORDS = ("fan_apex", "fan_radii", "fan_half_angle_deg")


def _probe(owner: str, geometry: Optional[FanGeometry], probe_geometry: str, fan_keywords: Dict[str, Any]) -> FanGeometry:
    """The operator's probe: ``geometry`` when given, else ``FanGeometry(probe_geometry)`` (CAMUS fan).

    ``fan_keywords`` are the loose ``fan_apex`` / ``fan_radii`` / ``fan_half_angle_deg`` of earlier releases: still
    read until 0.2.0 (with the FutureWarning of :func:`~ultrasound_diffusers.utils.deprecation.deprecate`, which
    gives the ``geometry=`` spelling); any other keyword is a TypeError, as for an ordinary signature."""
    unknown = sorted(set(fan_keywords) - set(_FAN_KEYWORDS))
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    if geometry is not None:
        if not isinstance(geometry, FanGeometry):
            raise ValueError(f"`geometry` must be a FanGeometry (ultrasound_diffusers.geometry), got {type(geometry).__name__}")
        if fan_keywords:
            raise ValueError(f"{owner}(): give the probe as `geometry` or as {sorted(fan_keywords)}, not both")
        return geometry
    if fan_keywords:
        deprecate(
            f"{owner}({', '.join(f'{k}=...' for k in sorted(fan_keywords))})", "0.2.0",
            "Pass geometry=FanGeometry(probe_geometry, apex, radii, half_angle_deg) (ultrasound_diffusers.geometry).",
            stacklevel=3,
        )
    return FanGeometry(
        probe_geometry,
        tuple(fan_keywords.get("fan_apex", CAMUS_FAN_APEX)),
        tuple(fan_keywords.get("fan_radii", CAMUS_FAN_RADII)),
        fan_keywords.get("fan_half_angle_deg", CAMUS_FAN_HALF_ANGLE_DEG),
    )


def _geometry_from_scheduler(scheduler) -> dict:
    """``{"geometry": FanGeometry}`` of a B-map scheduler's config (a linear probe for any other scheduler)."""
    return {"geometry": FanGeometry.from_config(scheduler)}


class _ProbeAttributes:
    """``probe_geometry``, ``fan_apex``, ``fan_radii`` and ``fan_half_angle_deg`` read from ``self.geometry``."""

    geometry: FanGeometry

    @property
    def probe_geometry(self) -> str:
        return self.geometry.probe_geometry

    @property
    def fan_apex(self) -> Tuple[float, float]:
        return self.geometry.apex

    @property
    def fan_radii(self) -> Tuple[float, float]:
        return self.geometry.radii

    @property
    def fan_half_angle_deg(self) -> float:
        return self.geometry.half_angle_deg


def harmonic_inpainting(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill unknown pixels with the membrane (harmonic) interpolation of the known ones.

    The unknown pixels solve the discrete Laplace equation (each is the mean of its 4 neighbours inside the
    image) with the known pixels as boundary values: smooth, exact for planes, and one sparse linear solve.

    Args:
        values (`torch.Tensor` [B, C, H, W]): images whose pixels are valid where ``known``.
        known (`torch.Tensor` bool [H, W]): the known pixels (at least one).

    Returns:
        float tensor [B, C, H, W]: ``values`` at known pixels, interpolated elsewhere.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    height, width = values.shape[-2:]
    known_np = known.detach().cpu().numpy().astype(bool)
    if known_np.shape != (height, width):
        raise ValueError(f"`known` must be a bool map of shape {(height, width)}, got {known_np.shape}")
    if not known_np.any():
        raise ValueError("`known` must contain at least one pixel")
    missing = ~known_np.reshape(-1)
    if not missing.any():
        return values.clone()
    flat = values.detach().to(torch.float64).cpu().reshape(-1, height * width).numpy().T.copy()  # [H*W, B*C]
    n = int(missing.sum())
    index = -np.ones(height * width, dtype=np.int64)
    index[missing] = np.arange(n)
    rows, cols = np.divmod(np.nonzero(missing)[0], width)
    eq_rows, eq_cols = [np.arange(n)], [np.arange(n)]
    eq_vals = []
    degree = np.zeros(n)
    rhs = np.zeros((n, flat.shape[1]))
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = rows + dy, cols + dx
        ok = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        me = index[(rows * width + cols)[ok]]
        neighbour = (ny * width + nx)[ok]
        degree[me] += 1
        unknown = missing[neighbour]
        eq_rows.append(me[unknown])
        eq_cols.append(index[neighbour[unknown]])
        eq_vals.append(-np.ones(int(unknown.sum())))
        np.add.at(rhs, me[~unknown], flat[neighbour[~unknown]])
    matrix = coo_matrix(
        (np.concatenate([degree] + eq_vals), (np.concatenate(eq_rows), np.concatenate(eq_cols))), shape=(n, n)
    ).tocsc()
    flat[missing] = splu(matrix).solve(rhs)
    out = torch.from_numpy(flat.T.copy()).reshape(values.shape)
    return out.to(device=values.device, dtype=values.dtype)


# ------------------------------------------------------------------------------------------------ base classes
def jtj_power_iteration(forward, x0: torch.Tensor, v: torch.Tensor, iterations: int) -> float:
    """Largest eigenvalue of ``J^T J`` (J the Jacobian of ``forward`` at ``x0``) by power iteration from the unit
    vector ``v``, with autograd only: ``J^T w`` is linear in ``w``, so differentiating ``<J^T w, v>`` with respect
    to ``w`` gives ``J v``."""
    value = 0.0
    with torch.enable_grad():
        x = x0.detach().clone().requires_grad_(True)
        out = forward(x)
        w = torch.zeros_like(out, requires_grad=True)
        (jtw,) = torch.autograd.grad(out, x, w, create_graph=True)
        for _ in range(max(1, int(iterations))):
            (jv,) = torch.autograd.grad(jtw, w, v, retain_graph=True)
            (jtjv,) = torch.autograd.grad(out, x, jv, retain_graph=True)
            value = float(jtjv.norm())
            if value == 0.0:
                break
            v = jtjv / value
    return value


class ForwardOperator:
    r"""Base class: a measurement ``y = A(x) + n`` of images ``x`` [B, C, H, W] in [-1, 1].

    Subclasses implement :meth:`forward` and, where they exist, :meth:`transpose`, :meth:`gram` (which enables
    :meth:`project`) and :meth:`baseline`.

    Args:
        noise_std (`float` or `torch.Tensor`): standard deviation of the measurement noise ``n`` in the units of
            ``y`` (model units: the image range [-1, 1] has width 2); a tensor must broadcast to the
            measurements [B, ...]. 0 means noise-free measurements.
    """

    #: True when ``A(x) = L x + c`` is affine and :meth:`transpose` gives ``L^T``.
    is_linear: bool = False
    name: str = "operator"

    def __init__(self, noise_std: Union[float, torch.Tensor] = 0.0):
        if torch.is_tensor(noise_std):
            if bool((noise_std < 0).any()):
                raise ValueError("`noise_std` must be >= 0")
        else:
            if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std >= 0):
                raise ValueError(f"`noise_std` must be a non-negative number, got {noise_std!r}")
            noise_std = float(noise_std)
        self.noise_std = noise_std

    # -------------------------------------------------------------------- the operator
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-free measurements ``A(x)`` (differentiable) of images ``x`` [B, C, H, W]."""
        check_image(x)
        return self.forward(x)

    def measurement_shape(self, image_shape: Sequence[int], device=None, dtype=torch.float32) -> Tuple[int, ...]:
        """Shape of ``A(x)`` for images of shape ``image_shape`` [B, C, H, W] (ValueError if A refuses it)."""
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 4:
            raise ValueError(f"`image_shape` must be [B, C, H, W], got {image_shape}")
        with torch.no_grad():
            try:
                out = self(torch.zeros(image_shape, device=device, dtype=dtype))
            except ValueError:
                raise
            except Exception as error:  # a user function failing on this size
                raise ValueError(f"{self!r} cannot be applied to images of shape {image_shape}: {error}") from error
        return tuple(out.shape)

    def noise_std_map(self, image_shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
        """Standard deviation of the measurement noise, a tensor broadcastable to ``A(x)`` for images of
        ``image_shape``."""
        std = self.noise_std if torch.is_tensor(self.noise_std) else torch.tensor(self.noise_std)
        return std.to(device=device, dtype=dtype)

    @property
    def is_noise_free(self) -> bool:
        std = self.noise_std
        return not bool((std > 0).any()) if torch.is_tensor(std) else std == 0.0

    def measure(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Simulated measurements ``A(x) + n`` with ``n ~ N(0, noise_std_map^2)`` (no gradient)."""
        with torch.no_grad():
            y = self(x)
            std = self.noise_std_map(x.shape, device=y.device, dtype=y.dtype)
            if bool((std > 0).any()):
                noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device="cpu").to(y.device)
                y = y + std * noise
        return y

    # -------------------------------------------------------------------- optional structure
    def transpose(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        """Adjoint ``A^T y`` [B, C, H, W] (of the linear part) for images of ``size`` (H, W)."""
        raise NotImplementedError(f"{type(self).__name__} has no transpose")

    adjoint = transpose

    def gram(self, prior_var: torch.Tensor) -> torch.Tensor:
        """diag(A diag(prior_var) A^T) in measurement space, for operators where this matrix is diagonal."""
        raise NotImplementedError(f"{type(self).__name__} has no cheap data-consistency projection")

    @property
    def has_transpose(self) -> bool:
        return type(self).transpose is not ForwardOperator.transpose

    @property
    def has_projection(self) -> bool:
        return type(self).gram is not ForwardOperator.gram

    def project(self, x: torch.Tensor, y: torch.Tensor, prior_var: Optional[torch.Tensor] = None) -> torch.Tensor:
        r"""Data consistency: ``x + R A^T (A R A^T + S)^{-1} (y - A(x))``.

        Args:
            x (`torch.Tensor` [B, C, H, W]): the current estimate (e.g. the network's x0).
            y (`torch.Tensor`): measurements, shaped like ``A(x)``.
            prior_var (`torch.Tensor`, *optional*): per-pixel variance R of ``x`` (broadcastable to ``x``), e.g.
                ``1 - a_t`` for a diffusion estimate at step t. ``None``: the exact projection onto
                ``{x : A(x) = y}`` (R = I, noise ignored), which is idempotent and gives ``A(x') = y``. With a
                prior variance, the noise variance S of :meth:`noise_std_map` weighs measurement against estimate
                (the Gaussian conditional mean); noise-free measurements are matched exactly either way.

        Returns:
            float tensor [B, C, H, W].
        """
        check_image(x)
        if not self.has_projection:
            raise NotImplementedError(f"{type(self).__name__} has no cheap data-consistency projection")
        residual = y - self(x)
        if prior_var is None:
            r = torch.ones_like(x)
            noise_var = torch.zeros((), dtype=x.dtype, device=x.device)
        else:
            r = prior_var.to(x.dtype).expand_as(x).clamp(min=0)
            noise_var = self.noise_std_map(x.shape, device=x.device, dtype=x.dtype) ** 2
        denom = self.gram(r) + noise_var
        gain = torch.where(denom > 0, residual / denom.clamp(min=_TINY), torch.zeros_like(residual))
        return x + r * self.transpose(gain, x.shape)

    def lipschitz(self, image_shape: Sequence[int], iterations: int = 30, seed: int = 0, device=None,
                  dtype=torch.float32) -> float:
        """``||J||^2``, the largest eigenvalue of ``J^T J`` for the Jacobian J of A (of its linear part).

        Exact (the largest entry of ``diag(A A^T)``) for operators with a projection; otherwise estimated by
        power iteration with automatic differentiation at a grey image of shape ``image_shape`` [B, C, H, W].
        Used to normalise the DPS step size.
        """
        image_shape = tuple(int(s) for s in image_shape)
        if self.has_projection:
            return float(self.gram(torch.ones((1,) + image_shape[1:], device=device, dtype=dtype)).max())
        generator = torch.Generator().manual_seed(seed)
        v = torch.randn((1,) + image_shape[1:], generator=generator, dtype=dtype).to(device)
        v = v / v.norm()
        return jtj_power_iteration(self.forward, torch.zeros_like(v), v, iterations)

    def baseline(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        """A reconstruction without any prior, [B, C, H, W] in [-1, 1]."""
        raise NotImplementedError(f"{type(self).__name__} has no baseline reconstruction")

    def measured_mask(self, size: SizeLike) -> Optional[torch.Tensor]:
        """bool [H, W] of the pixels measured directly (None when measurements mix pixels)."""
        return None

    def to_image(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        """The measurements drawn in image space [B, C, H, W] for figures (NaN where nothing was measured)."""
        return self.baseline(y, size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(noise_std={self.noise_std if not torch.is_tensor(self.noise_std) else 'tensor'})"


class LinearOperator(ForwardOperator):
    """Base class of affine operators ``A(x) = L x + c`` with a transpose."""

    is_linear = True


# ------------------------------------------------------------------------------------------------ pixel selection
class PixelSubsampling(LinearOperator):
    """Keep the pixels of a boolean mask: ``A(x) = x[..., mask]`` -> [B, C, N] (N = number of kept pixels).

    Subclasses define :meth:`mask` for a size. ``A`` selects pixels, so ``A A^T = I``, ``A^T`` fills zeros in,
    and the projection replaces the measured pixels by the measurements.
    """

    name = "pixels"

    def mask(self, size: SizeLike) -> torch.Tensor:
        """bool [H, W]: True where a pixel is measured."""
        raise NotImplementedError

    def _index(self, size: SizeLike, device) -> torch.Tensor:
        return torch.nonzero(self.mask(size).reshape(-1), as_tuple=False)[:, 0].to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self._index(x.shape, x.device)
        return x.flatten(-2).index_select(-1, idx)

    def _check_measurements(self, y: torch.Tensor, size: SizeLike) -> None:
        n = int(self.mask(size).sum())
        if y.dim() != 3 or y.shape[-1] != n:
            raise ValueError(
                f"measurements of {type(self).__name__} for {image_size(size)} images must have shape [B, C, {n}], "
                f"got {tuple(y.shape)}"
            )

    def transpose(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        h, w = image_size(size)
        self._check_measurements(y, (h, w))
        idx = self._index((h, w), y.device)
        out = y.new_zeros(y.shape[:-1] + (h * w,))
        out = out.index_copy(-1, idx, y)
        return out.reshape(y.shape[:-1] + (h, w))

    def gram(self, prior_var: torch.Tensor) -> torch.Tensor:
        return self.forward(prior_var)

    def measured_mask(self, size: SizeLike) -> torch.Tensor:
        return self.mask(size).clone()

    def to_image(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        image = self.transpose(y, size)
        keep = self.mask(size).to(image.device)
        return torch.where(keep, image, torch.full_like(image, float("nan")))

    def baseline(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        """Membrane (harmonic) interpolation of the measured pixels, see :func:`harmonic_inpainting`."""
        h, w = image_size(size)
        return harmonic_inpainting(self.transpose(y, (h, w)), self.mask((h, w))).clamp(-1, 1)


class Mask(PixelSubsampling):
    """Inpainting: pixels outside a region are measured, the region (an acoustic shadow, say) is not.

    Args:
        mask (bool array or tensor [H, W]): True where the image is measured.
        noise_std: measurement noise (see :class:`ForwardOperator`).

    Use :meth:`from_region` to give the missing region instead, and :func:`shadow_mask` for a rib shadow.
    """

    name = "mask"

    def __init__(self, mask, noise_std: Union[float, torch.Tensor] = 0.0):
        super().__init__(noise_std)
        m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
        if m.dim() != 2:
            raise ValueError(f"`mask` must be a boolean [H, W] map (True = measured), got shape {tuple(m.shape)}")
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise ValueError("`mask` must hold booleans or 0/1 values (True = measured)")
            m = m.bool()
        if not bool(m.any()):
            raise ValueError("`mask` measures no pixel")
        self._mask = m.cpu()

    @classmethod
    def from_region(cls, region, noise_std: Union[float, torch.Tensor] = 0.0) -> "Mask":
        """A mask that measures everything except ``region`` (bool [H, W], True = missing)."""
        r = torch.as_tensor(np.asarray(region) if not torch.is_tensor(region) else region).bool()
        return cls(~r, noise_std=noise_std)

    def mask(self, size: SizeLike) -> torch.Tensor:
        h, w = image_size(size)
        if (h, w) != tuple(self._mask.shape):
            raise ValueError(f"this Mask is {tuple(self._mask.shape)} but the images are {(h, w)}")
        return self._mask

    def __repr__(self) -> str:
        return f"Mask(shape={tuple(self._mask.shape)}, measured={int(self._mask.sum())}, noise_std={self.noise_std})"


class MissingScanLines(_ProbeAttributes, PixelSubsampling):
    """Sparse acquisition: only every ``keep_every``-th scan line is recorded.

    * ``probe_geometry="linear"``: scan lines are image columns; columns ``offset, offset + k, ...`` are kept and
      the measurements are the kept columns, [B, C, H, ceil((W - offset) / k)].
    * ``probe_geometry="convex"``: scan lines are the beams of the sector fan (the geometry of
      :func:`ultrasound_diffusers.geometry.fan_mask`), ``num_beams`` of them (default: W) evenly spread
      over the opening angle; every pixel of the fan belongs to its nearest beam, and the pixels of beams
      ``offset, offset + k, ...`` are kept. Pixels outside the fan carry no echo and count as measured (their
      known background value) unless ``measure_outside_fan=False``. Measurements are [B, C, N].

    Args:
        keep_every (`int`): k >= 1.
        offset (`int`): index of the first kept line, in [0, k).
        probe_geometry (`str`): ``"linear"`` (default, as every operator built directly) or ``"convex"`` with the
            CAMUS fan; ``geometry`` overrides it.
        geometry (`FanGeometry`, *optional*): the probe (:mod:`ultrasound_diffusers.geometry`), e.g. another fan.
            The loose ``fan_apex`` / ``fan_radii`` / ``fan_half_angle_deg`` keywords of earlier releases still
            work until 0.2.0, with a FutureWarning.
        num_beams (`int`, *optional*): beams of the full sector acquisition (convex only).
        measure_outside_fan (`bool`): count pixels outside the fan as measured (convex only).
        noise_std: measurement noise.

    :meth:`from_scheduler` takes the geometry from a ``BMapAttenuationScheduler``.
    """

    name = "missing_lines"

    def __init__(
        self,
        keep_every: int,
        offset: int = 0,
        probe_geometry: str = "linear",
        num_beams: Optional[int] = None,
        measure_outside_fan: bool = True,
        noise_std: Union[float, torch.Tensor] = 0.0,
        geometry: Optional[FanGeometry] = None,
        **fan_keywords: Any,
    ):
        super().__init__(noise_std)
        if not (isinstance(keep_every, (int, np.integer)) and keep_every >= 1):
            raise ValueError(f"`keep_every` must be an integer >= 1, got {keep_every!r}")
        if not (isinstance(offset, (int, np.integer)) and 0 <= offset < keep_every):
            raise ValueError(f"`offset` must be an integer in [0, keep_every={keep_every}), got {offset!r}")
        self.geometry = _probe("MissingScanLines", geometry, probe_geometry, fan_keywords)
        if num_beams is not None and not (isinstance(num_beams, (int, np.integer)) and num_beams >= 2):
            raise ValueError(f"`num_beams` must be an integer >= 2, got {num_beams!r}")
        self.keep_every, self.offset = int(keep_every), int(offset)
        self.num_beams = None if num_beams is None else int(num_beams)
        self.measure_outside_fan = bool(measure_outside_fan)
        self._cache = {}

    @classmethod
    def from_scheduler(cls, scheduler, keep_every: int, **kwargs) -> "MissingScanLines":
        """The probe geometry of a BMapAttenuationScheduler (a linear probe for other schedulers)."""
        return cls(keep_every, **{**_geometry_from_scheduler(scheduler), **kwargs})

    @property
    def fraction_kept(self) -> float:
        """Nominal fraction of the scan lines that are measured, 1 / k."""
        return 1.0 / self.keep_every

    def fraction_measured(self, size: SizeLike) -> float:
        """Fraction of the imaged pixels (inside the fan for a convex probe) that are measured."""
        inside, _, kept = self._beams(*image_size(size))
        return float(kept[inside].float().mean())

    def _beams(self, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inside bool [H, W], beam index long [H, W] (-1 outside), kept bool [H, W])."""
        key = (h, w)
        if key not in self._cache:
            if self.probe_geometry == "linear":
                beam = torch.arange(w).view(1, -1).expand(h, w).clone()
                inside = torch.ones(h, w, dtype=torch.bool)
            else:
                _, inside = self.geometry.depth_map(h, w)
                _, theta = self.geometry.polar_coordinates(h, w)
                n = self.num_beams or w
                half = math.radians(self.fan_half_angle_deg)
                beam = torch.round((theta + half) / (2 * half) * (n - 1)).long().clamp(0, n - 1)
                beam = torch.where(inside, beam, torch.full_like(beam, -1))
            kept_beam = (beam >= 0) & ((beam - self.offset) % self.keep_every == 0)
            if self.probe_geometry == "convex" and self.measure_outside_fan:
                kept = kept_beam | ~inside
            else:
                kept = kept_beam
            if not bool(kept.any()):
                raise ValueError(f"{self!r} keeps no pixel of a {h}x{w} image")
            self._cache[key] = (inside, beam, kept)
        return self._cache[key]

    def mask(self, size: SizeLike) -> torch.Tensor:
        h, w = image_size(size)
        return self._beams(h, w)[2]

    def _columns(self, w: int, device=None) -> torch.Tensor:
        return torch.arange(self.offset, w, self.keep_every, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.probe_geometry == "linear":
            if self.offset >= x.shape[-1]:
                raise ValueError(f"`offset`={self.offset} leaves no column of a width-{x.shape[-1]} image")
            return x.index_select(-1, self._columns(x.shape[-1], x.device))
        return super().forward(x)

    def transpose(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        h, w = image_size(size)
        if self.probe_geometry != "linear":
            return super().transpose(y, (h, w))
        cols = self._columns(w, y.device)
        if y.dim() != 4 or tuple(y.shape[-2:]) != (h, len(cols)):
            raise ValueError(
                f"measurements of MissingScanLines (linear, keep_every={self.keep_every}) for {(h, w)} images must "
                f"have shape [B, C, {h}, {len(cols)}], got {tuple(y.shape)}"
            )
        out = y.new_zeros(y.shape[:-1] + (w,))
        return out.index_copy(-1, cols, y)

    def baseline(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        """Linear interpolation across scan lines: along each row between kept columns (linear probe), or
        across beams in the fan's polar coordinates (convex probe)."""
        h, w = image_size(size)
        if self.probe_geometry == "linear":
            full = self.transpose(y, (h, w))
            cols = self._columns(w)
            if len(cols) == 1:
                return full.index_select(-1, cols.to(y.device)).expand(full.shape).clamp(-1, 1)
            j = torch.arange(w)
            right = torch.searchsorted(cols, j).clamp(1, len(cols) - 1)
            left_c, right_c = cols[right - 1], cols[right]
            frac = ((j - left_c).double() / (right_c - left_c).double()).clamp(0, 1).to(y.device, y.dtype)
            out = full.index_select(-1, left_c.to(y.device)) * (1 - frac) + full.index_select(-1, right_c.to(y.device)) * frac
            return out.clamp(-1, 1)
        return self._interpolate_beams(self.transpose(y, (h, w)), h, w).clamp(-1, 1)

    def _interpolate_beams(self, full: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Fill the dropped beams of the fan: each kept beam gives a profile against the radius (linear
        interpolation between its pixels), and a pixel of a dropped beam takes the linear interpolation, in
        angle, of the profiles of the two kept beams around it at its own radius (the nearest beam beyond the
        outermost ones)."""
        inside, beam, kept = self._beams(h, w)
        on_kept = (kept & inside).numpy().reshape(-1)
        target_idx = np.nonzero((inside & ~kept).numpy().reshape(-1))[0]
        beams = sorted(int(b) for b in np.unique(beam.numpy().reshape(-1)[on_kept]))
        if not beams or len(target_idx) == 0:
            return full
        r, theta = self.geometry.polar_coordinates(h, w)
        r_np, theta_np, beam_np = r.numpy().reshape(-1), theta.numpy().reshape(-1), beam.numpy().reshape(-1)
        values = full.detach().to(torch.float64).cpu().reshape(-1, h * w).numpy()  # [B*C, H*W]

        def profile(j: int, radius: np.ndarray) -> np.ndarray:
            pix = np.nonzero(on_kept & (beam_np == j))[0]
            pix = pix[np.argsort(r_np[pix], kind="stable")]
            rs, vals = r_np[pix], values[:, pix]
            if len(rs) == 1:
                return np.repeat(vals, len(radius), axis=1)
            right = np.clip(np.searchsorted(rs, radius), 1, len(rs) - 1)
            left = right - 1
            span = np.where(rs[right] > rs[left], rs[right] - rs[left], 1.0)
            frac = np.clip((radius - rs[left]) / span, 0.0, 1.0)
            return vals[:, left] * (1 - frac) + vals[:, right] * frac

        n = self.num_beams or w
        half = math.radians(self.fan_half_angle_deg)
        angles = np.array([-half + j * (2 * half) / (n - 1) for j in beams])
        t = np.clip(theta_np[target_idx], angles[0], angles[-1])
        upper = np.clip(np.searchsorted(angles, t), 0, len(beams) - 1)
        lower = np.clip(upper - 1, 0, len(beams) - 1)
        span = angles[upper] - angles[lower]
        frac = np.where(span > 0, (t - angles[lower]) / np.where(span > 0, span, 1.0), 1.0)
        filled = np.zeros((values.shape[0], len(target_idx)))
        for k, j in enumerate(beams):
            for side, weight in ((lower, 1.0 - frac), (upper, frac)):
                sel = np.nonzero(side == k)[0]
                if len(sel):
                    filled[:, sel] += weight[sel] * profile(j, r_np[target_idx[sel]])
        out = values.copy()
        out[:, target_idx] = filled
        return torch.from_numpy(out).reshape(full.shape).to(device=full.device, dtype=full.dtype)

    def __repr__(self) -> str:
        return (
            f"MissingScanLines(keep_every={self.keep_every}, offset={self.offset}, "
            f"probe_geometry={self.probe_geometry!r}, noise_std={self.noise_std})"
        )


def shadow_mask(
    size: SizeLike,
    center: float = 0.15,
    width: float = 0.2,
    start_depth: float = 0.35,
    probe_geometry: str = "linear",
    geometry: Optional[FanGeometry] = None,
    **fan_keywords: Any,
) -> torch.Tensor:
    """An acoustic shadow (behind a rib or a calcification): bool [H, W], True inside the shadow.

    The shadow covers the scan lines within ``width / 2`` of ``center`` (both in units of the lateral extent:
    -0.5..0.5 across the fan's opening angle for a convex probe, across the columns for a linear one) from the
    normalised depth ``start_depth`` down to the bottom. The probe is ``geometry`` (or ``probe_geometry`` with the
    CAMUS fan; a linear probe by default, as every operator built directly; ``make_operator("mask:shadow", scheduler=...)`` takes the
    scheduler's probe).
    """
    h, w = image_size(size)
    probe = _probe("shadow_mask", geometry, probe_geometry, fan_keywords)
    depth, inside = probe.depth_map(h, w)
    lateral = probe.lateral_position(h, w)
    return inside & ((lateral - center).abs() <= width / 2) & (depth >= start_depth)


# ------------------------------------------------------------------------------------------------ resolution
class AreaDownsample(LinearOperator):
    """Lower resolution: the mean over non-overlapping ``factor = (fh, fw)`` blocks, [B, C, H/fh, W/fw].

    ``AreaDownsample((4, 1))`` turns 32 x 256 depth maps into the lung seed's 8 x 256 ones. ``A A^T = I / (fh fw)``,
    so the projection spreads each block's residual evenly over its pixels. H and W must be multiples of the
    factors.
    """

    name = "downsample"

    def __init__(self, factor: Union[int, Sequence[int]] = 4, noise_std: Union[float, torch.Tensor] = 0.0):
        super().__init__(noise_std)
        f = (factor, factor) if isinstance(factor, (int, np.integer)) else tuple(factor)
        if len(f) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in f):
            raise ValueError(f"`factor` must be a positive integer or (fh, fw), got {factor!r}")
        self.factor = (int(f[0]), int(f[1]))

    @property
    def block(self) -> int:
        return self.factor[0] * self.factor[1]

    def _check_size(self, h: int, w: int) -> None:
        fh, fw = self.factor
        if h % fh or w % fw:
            raise ValueError(f"AreaDownsample(factor={self.factor}) needs image sizes divisible by it, got {(h, w)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(*x.shape[-2:])
        return F.avg_pool2d(x, kernel_size=self.factor, stride=self.factor)

    def _check_measurements(self, y: torch.Tensor, h: int, w: int) -> None:
        self._check_size(h, w)
        want = (h // self.factor[0], w // self.factor[1])
        if y.dim() != 4 or tuple(y.shape[-2:]) != want:
            raise ValueError(f"measurements of {self!r} for {(h, w)} images must be [B, C, {want[0]}, {want[1]}], got {tuple(y.shape)}")

    def _upsample(self, y: torch.Tensor) -> torch.Tensor:
        return y.repeat_interleave(self.factor[0], dim=-2).repeat_interleave(self.factor[1], dim=-1)

    def transpose(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        h, w = image_size(size)
        self._check_measurements(y, h, w)
        return self._upsample(y) / self.block

    def gram(self, prior_var: torch.Tensor) -> torch.Tensor:
        return self.forward(prior_var) / self.block

    def baseline(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        """Bilinear interpolation of the block means to the full size."""
        h, w = image_size(size)
        self._check_measurements(y, h, w)
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False).clamp(-1, 1)

    def to_image(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        h, w = image_size(size)
        self._check_measurements(y, h, w)
        return self._upsample(y)

    def __repr__(self) -> str:
        return f"AreaDownsample(factor={self.factor}, noise_std={self.noise_std})"


# ------------------------------------------------------------------------------------------------ attenuation
class DepthAttenuation(_ProbeAttributes, LinearOperator):
    r"""Depth-dependent attenuation with electronic noise.

    The echo of depth z has lost ``2 alpha f z`` dB on its way down and back (``alpha`` in dB/cm/MHz, ``f`` in
    MHz), i.e. an amplitude gain ``g(z) = 10^(-2 alpha f z / 20)``. The gain acts on the image brightness
    ``(x + 1) / 2`` in [0, 1], and the receiver adds noise of standard deviation ``noise_std`` (model units):

    * ``compensated=False``: ``y = g (x + 1) - 1 + n``: affine in x, constant noise.
    * ``compensated=True`` (time-gain compensation, what the scanner displays): ``y = x + n / g``: the image
      itself, with noise whose standard deviation ``noise_std / g(z)`` grows with depth.

    Args:
        attenuation_db_cm_mhz (`float`, defaults to 0.5): soft tissue; heart 0.52, liver 0.5, muscle 1-1.4.
        frequency_mhz (`float`, defaults to 2.5): transmit centre frequency.
        depth_cm (`float`, defaults to 15.0): depth of the deepest image point (normalised depth 1).
        noise_std (`float`, defaults to 0.01): receiver noise (model units).
        compensated (`bool`, defaults to False): see above.
        probe_geometry (`str`): ``"linear"`` (default) or ``"convex"`` with the CAMUS fan; ``geometry`` overrides it.
        geometry (`FanGeometry`, *optional*): the probe that defines the depth of each pixel (rows for a linear
            probe, distance from the apex for a convex one; outside the fan the depth is 0). The loose
            ``fan_*`` keywords of earlier releases still work until 0.2.0, with a FutureWarning.
    """

    name = "attenuation"

    def __init__(
        self,
        attenuation_db_cm_mhz: float = 0.5,
        frequency_mhz: float = 2.5,
        depth_cm: float = 15.0,
        noise_std: float = 0.01,
        compensated: bool = False,
        probe_geometry: str = "linear",
        geometry: Optional[FanGeometry] = None,
        **fan_keywords: Any,
    ):
        super().__init__(noise_std)
        for name, value in (("attenuation_db_cm_mhz", attenuation_db_cm_mhz), ("frequency_mhz", frequency_mhz), ("depth_cm", depth_cm)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a non-negative number, got {value!r}")
        self.geometry = _probe("DepthAttenuation", geometry, probe_geometry, fan_keywords)
        self.attenuation_db_cm_mhz, self.frequency_mhz = float(attenuation_db_cm_mhz), float(frequency_mhz)
        self.depth_cm = float(depth_cm)
        self.compensated = bool(compensated)
        self._cache = {}

    @classmethod
    def from_scheduler(cls, scheduler, **kwargs) -> "DepthAttenuation":
        """The probe geometry of a BMapAttenuationScheduler (a linear probe for other schedulers)."""
        return cls(**{**_geometry_from_scheduler(scheduler), **kwargs})

    def loss_db(self, size: SizeLike) -> torch.Tensor:
        """Round-trip loss ``2 alpha f z`` in dB, float64 [H, W]."""
        h, w = image_size(size)
        depth, _ = self.geometry.depth_map(h, w)
        return 2.0 * self.attenuation_db_cm_mhz * self.frequency_mhz * self.depth_cm * depth

    def gain(self, size: SizeLike, device=None, dtype=torch.float32) -> torch.Tensor:
        """Amplitude gain ``g(z)`` in (0, 1], [H, W]."""
        h, w = image_size(size)
        if (h, w) not in self._cache:
            self._cache[(h, w)] = 10.0 ** (-self.loss_db((h, w)) / 20.0)
        return self._cache[(h, w)].to(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compensated:
            return x * 1.0
        g = self.gain(x.shape, x.device, x.dtype)
        return g * (x + 1.0) - 1.0

    def noise_std_map(self, image_shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
        std = torch.as_tensor(self.noise_std, dtype=dtype, device=device)
        if self.compensated:
            return (std / self.gain(image_shape, device, dtype)).expand(1, 1, *image_size(image_shape))
        return std

    def _check_measurements(self, y: torch.Tensor, size) -> None:
        h, w = image_size(size)
        if y.dim() != 4 or tuple(y.shape[-2:]) != (h, w):
            raise ValueError(f"measurements of {self!r} for {(h, w)} images must be [B, C, {h}, {w}], got {tuple(y.shape)}")

    def transpose(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        self._check_measurements(y, size)
        if self.compensated:
            return y * 1.0
        return self.gain(size, y.device, y.dtype) * y

    def gram(self, prior_var: torch.Tensor) -> torch.Tensor:
        if self.compensated:
            return prior_var
        return self.gain(prior_var.shape, prior_var.device, prior_var.dtype) ** 2 * prior_var

    def baseline(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        """Time-gain compensation: divide the attenuation out (noise and all)."""
        self._check_measurements(y, size)
        if self.compensated:
            return y.clamp(-1, 1)
        return ((y + 1.0) / self.gain(size, y.device, y.dtype) - 1.0).clamp(-1, 1)

    def to_image(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        self._check_measurements(y, size)
        return y

    def __repr__(self) -> str:
        return (
            f"DepthAttenuation(attenuation_db_cm_mhz={self.attenuation_db_cm_mhz}, frequency_mhz={self.frequency_mhz}, "
            f"depth_cm={self.depth_cm}, noise_std={self.noise_std}, compensated={self.compensated}, "
            f"probe_geometry={self.probe_geometry!r})"
        )


# ------------------------------------------------------------------------------------------------ user function
class FunctionOperator(ForwardOperator):
    """Any differentiable function ``fn(x) -> y`` (x [B, C, H, W]; y with the same batch size B).

    Args:
        fn (`callable`): the forward model, written in torch so that gradients flow through it.
        noise_std: measurement noise (a number, or a tensor broadcastable to ``y``).
        linear (`bool`, defaults to False): ``fn`` is linear; then :meth:`transpose` is computed with autograd
            (the vector-Jacobian product) unless ``transpose_fn`` is given.
        transpose_fn (`callable`, *optional*): ``transpose_fn(y, size) -> x``, the adjoint.
        baseline_fn (`callable`, *optional*): ``baseline_fn(y, size) -> x``; by default :meth:`baseline` fits
            ``||fn(x) - y||^2`` by gradient descent from a grey image (``baseline_steps`` Adam steps).
        name (`str`, *optional*): a name for figures.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        noise_std: Union[float, torch.Tensor] = 0.0,
        linear: bool = False,
        transpose_fn: Optional[Callable] = None,
        baseline_fn: Optional[Callable] = None,
        baseline_steps: int = 200,
        name: Optional[str] = None,
    ):
        super().__init__(noise_std)
        if not callable(fn):
            raise ValueError(f"`fn` must be callable, got {type(fn).__name__}")
        self.fn, self.transpose_fn, self.baseline_fn = fn, transpose_fn, baseline_fn
        self.is_linear = bool(linear)
        self.baseline_steps = int(baseline_steps)
        self.name = name or getattr(fn, "__name__", "function")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fn(x)
        if not torch.is_tensor(y):
            raise ValueError(f"the operator function {self.name!r} must return a torch.Tensor, got {type(y).__name__}")
        if y.dim() < 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"the operator function {self.name!r} must keep the batch dimension: images {tuple(x.shape)} gave "
                f"measurements {tuple(y.shape)}"
            )
        return y

    @property
    def has_transpose(self) -> bool:
        return self.transpose_fn is not None or self.is_linear

    def transpose(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        h, w = image_size(size)
        if self.transpose_fn is not None:
            return self.transpose_fn(y, (h, w))
        if not self.is_linear:
            raise NotImplementedError(f"FunctionOperator {self.name!r} is not linear and has no transpose_fn")
        channels = size[-3] if not isinstance(size, int) and len(size) >= 3 else 1
        x = torch.zeros((y.shape[0], channels, h, w), dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            out = self.forward(x)
            if out.shape != y.shape:
                raise ValueError(f"`y` must have shape {tuple(out.shape)} for {(h, w)} images, got {tuple(y.shape)}")
            (grad,) = torch.autograd.grad(out, x, grad_outputs=y)
        return grad

    def baseline(self, y: torch.Tensor, size: SizeLike) -> torch.Tensor:
        """``baseline_fn`` if given, else a least-squares fit of ``fn(x) = y`` started from a grey image."""
        h, w = image_size(size)
        if self.baseline_fn is not None:
            return self.baseline_fn(y, (h, w))
        channels = size[-3] if not isinstance(size, int) and len(size) >= 3 else 1
        x = torch.zeros((y.shape[0], channels, h, w), dtype=y.dtype, device=y.device, requires_grad=True)
        optimizer = torch.optim.Adam([x], lr=0.05)
        with torch.enable_grad():
            for _ in range(self.baseline_steps):
                optimizer.zero_grad()
                loss = ((self.forward(x) - y) ** 2).sum()
                loss.backward()
                optimizer.step()
        return x.detach().clamp(-1, 1)

    def __repr__(self) -> str:
        return f"FunctionOperator({self.name!r}, linear={self.is_linear}, noise_std={self.noise_std})"
