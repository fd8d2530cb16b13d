# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
r"""Channel-data measurement operator and delay-and-sum (DAS) beamforming, in torch.

The linear model (first-order Born approximation, 2-D, a point reflector per image point): a complex
reflectivity ``r(p)`` at image points ``p`` (a pixel grid or scatterer positions) produces, after transmit k,
on receive element e, the I/Q (complex base-band) channel sample at fast time ``t_n = t0 + n / fs``

    y[k, e, n] = sum_p  w_ke(p) r(p) g(t_n - tau_ke(p)) exp(-i 2 pi fc tau_ke(p))

with ``tau_ke(p) = (d_TX,k(p) + d_RX,e(p)) / c`` the round-trip time (transmit wave front to p, p back to the
element), ``g`` the base-band envelope of the two-way pulse (a Gaussian whose -6 dB spectrum width is the probe's
pulse-echo bandwidth, or a pulse given as samples), and ``w`` optional amplitude weights (receive directivity
and 2-D spreading). The transmit distance is computed as in MUST's ``dasmtx``: the smallest ``c * delay + distance``
over the (4x interpolated) transmitting elements, i.e. the arrival of the transmitted wave front.

Numerically ``A = C S``: ``S`` places ``w r exp(-i wc tau)`` at the fractional sample ``(tau - t0) fs`` with linear
interpolation weights (a sparse matrix with 2 entries per (k, e, p)), ``C`` convolves every channel with ``g``
along fast time. The adjoint ``A^H = S^H C^H`` is a matched filter followed by ``S^H``, and ``S^H`` (with
``w = 1``) *is* delay-and-sum: linear interpolation of the I/Q samples at ``tau`` times ``exp(+i wc tau)``,
summed over elements and transmits -- the same matrix as pymust's ``dasmtx`` for I/Q data (tested).

Sparse acquisitions are sub-sets: fewer transmits (``transmits=``), a sparse receive aperture (``receive_elements=``)
and channel noise (``ChannelDataOperator.measure``).

:class:`ChannelDataOperator` links this to a diffusion model's **B-mode** image ``x`` in [-1, 1] (see its docstring
for the choice of the mapped quantity): the image is mapped back to an envelope amplitude by inverting the log
compression, combined with a fixed phase (the phase the probe measured, from DAS of the data), and sent through
``A``. It is a :class:`~ultrasound_diffusers.operators.ForwardOperator`, so
``UltrasoundReconstructionPipeline`` can run DPS with it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..operators import ForwardOperator, check_image, jtj_power_iteration
from ..operators import image_size as _image_hw
from .probes import ArrayProbe, get_probe

__all__ = [
    "ChannelDataOperator",
    "ChannelOperator",
    "complex_to_real",
    "envelope_to_image",
    "gaussian_pulse",
    "image_to_envelope",
    "real_to_complex",
    "transmit_distances",
    "travel_times",
]


# ------------------------------------------------------------------------------------------------ pure functions
def complex_to_real(z: torch.Tensor) -> torch.Tensor:
    """Complex tensor [...] -> real [..., 2] (real, imaginary)."""
    return torch.view_as_real(z) if z.is_complex() else z


def real_to_complex(y: torch.Tensor) -> torch.Tensor:
    """Real tensor [..., 2] -> complex [...]."""
    if y.is_complex():
        return y
    if y.shape[-1] != 2:
        raise ValueError(f"a real representation of complex data must end with a dimension of 2, got {tuple(y.shape)}")
    return torch.view_as_complex(y.contiguous())


def image_to_envelope(x: torch.Tensor, dynamic_range_db: float) -> torch.Tensor:
    """Invert the log compression: model image ``x`` in [-1, 1] (brightness ``b = (x + 1) / 2``) -> envelope
    amplitude ``10^((b - 1) DR / 20)`` in ``[10^(-DR/20), 1]`` (white = 1)."""
    b = (x + 1.0) / 2.0
    return torch.pow(10.0, (b - 1.0) * (float(dynamic_range_db) / 20.0))


def envelope_to_image(envelope: torch.Tensor, dynamic_range_db: float, reference: float = 1.0) -> torch.Tensor:
    """Log compression to model units: ``b = clip(1 + 20 log10(env / reference) / DR, 0, 1)``, returns ``2 b - 1``."""
    db = 20.0 * torch.log10(envelope.abs().clamp(min=1e-30) / float(reference))
    b = (1.0 + db / float(dynamic_range_db)).clamp(0.0, 1.0)
    return 2.0 * b - 1.0


def gaussian_pulse(probe: ArrayProbe, num_sigma: float = 4.0) -> np.ndarray:
    """Base-band envelope of the two-way pulse sampled at ``fs``, centred: float64 [2 L + 1], peak 1."""
    sigma = probe.pulse_sigma_time() * probe.sampling_frequency
    half = max(1, int(math.ceil(num_sigma * sigma)))
    n = np.arange(-half, half + 1, dtype=np.float64)
    return np.exp(-0.5 * (n / sigma) ** 2)


def transmit_distances(probe: ArrayProbe, delays: np.ndarray, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Distance travelled by the transmitted wave front when it reaches (x, z): float64 [K, P].

    ``min_e (c delay_e + |p - e|)`` over the transmitting elements (NaN delays = off), with element positions
    and delays linearly interpolated to 4 points per element, as in MUST's ``dasmtx``.
    """
    delays = np.atleast_2d(np.asarray(delays, np.float64))
    if delays.shape[1] != probe.num_elements:
        raise ValueError(f"`delays` must be [K, {probe.num_elements}] (one delay per element), got {delays.shape}")
    xe, ze, _ = probe.element_positions()
    x = np.asarray(x, np.float64).reshape(-1)
    z = np.asarray(z, np.float64).reshape(-1)
    out = np.empty((delays.shape[0], x.size))
    for k, row in enumerate(delays):
        on = np.flatnonzero(~np.isnan(row))
        if on.size == 0:
            raise ValueError(f"transmit {k} has no active element")
        if on.size > 1:
            u = np.linspace(0, on.size - 1, 4 * on.size)
            base = np.arange(on.size)
            xt, zt, dt = (np.interp(u, base, v[on]) for v in (xe, ze, row))
        else:
            xt, zt, dt = xe[on], ze[on], row[on]
        best = np.full(x.size, np.inf)
        for start in range(0, xt.size, 64):  # chunks keep the memory at 64 x P
            sl = slice(start, start + 64)
            d = dt[sl, None] * probe.speed_of_sound + np.hypot(x[None] - xt[sl, None], z[None] - zt[sl, None])
            best = np.minimum(best, d.min(axis=0))
        out[k] = best
    return out


def travel_times(probe: ArrayProbe, delays: np.ndarray, x: np.ndarray, z: np.ndarray,
                 receive_elements: Optional[Sequence[int]] = None) -> np.ndarray:
    """Round-trip times ``tau[k, e, p]`` (s), float64 [K, E_rx, P] (E_rx receive elements)."""
    xe, ze, _ = probe.element_positions()
    rx = np.arange(probe.num_elements) if receive_elements is None else np.asarray(receive_elements, np.int64)
    d_tx = transmit_distances(probe, delays, x, z)
    x = np.asarray(x, np.float64).reshape(-1)
    z = np.asarray(z, np.float64).reshape(-1)
    d_rx = np.hypot(x[None] - xe[rx, None], z[None] - ze[rx, None])
    return (d_tx[:, None, :] + d_rx[None, :, :]) / probe.speed_of_sound


def _check_indices(values, upper: int, name: str) -> np.ndarray:
    idx = np.asarray(values, dtype=np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= upper or np.unique(idx).size != idx.size:
        raise ValueError(f"`{name}` must be distinct indices in [0, {upper}), got {values!r}")
    return np.sort(idx)


# ------------------------------------------------------------------------------------------------ complex operator
class ChannelOperator:
    r"""Linear map from a complex reflectivity at P points to I/Q channel data, and its adjoint.

    Args:
        probe: an :class:`ArrayProbe` or a preset name (``"L11-5v"``, ``"P4-2v"``, ``"C5-2v"``).
        delays (array [K, E]): transmit delays (s) of the K transmits (see ``plane_wave_delays`` /
            ``diverging_wave_delays``); NaN = element off.
        x, z (arrays [P]): image points (m).
        num_samples (`int`): fast-time samples N per channel (sampled at ``probe.sampling_frequency`` from ``t0``).
        t0 (`float`, defaults to 0): time of the first sample (s).
        transmits (sequence of int, *optional*): keep only these transmits (fewer angles).
        receive_elements (sequence of int, *optional*): keep only these receive channels (sparse aperture).
        pulse: ``"gaussian"`` (default; see :func:`gaussian_pulse`), ``None`` (no pulse: ``A = S``, so the adjoint is
            exactly DAS) or a complex / real 1-D array of base-band pulse samples at fs, centred.
        weights: ``None`` (w = 1) or ``"physical"``: receive element directivity ``sinc(w sin a / lambda) cos a``
            times 2-D cylindrical spreading ``1 / sqrt(d_TX d_RX)`` (normalised to 1 at 1 cm; no transmit
            spreading for plane waves).
        fnumber (`float`, defaults to 0): receive f-number of the DAS aperture (0 = every element sees every point).
        dtype: float32 (default) or float64 for the real parts of the sparse matrices.

    Shapes: reflectivity ``r`` complex [B, P]; channel data ``y`` complex [B, K, E_rx, N].
    """

    def __init__(
        self,
        probe: Union[str, ArrayProbe],
        delays: np.ndarray,
        x: np.ndarray,
        z: np.ndarray,
        num_samples: int,
        t0: float = 0.0,
        transmits: Optional[Sequence[int]] = None,
        receive_elements: Optional[Sequence[int]] = None,
        pulse: Union[str, np.ndarray, None] = "gaussian",
        weights: Optional[str] = None,
        fnumber: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ):
        self.probe = get_probe(probe)
        delays = np.atleast_2d(np.asarray(delays, np.float64))
        if delays.ndim != 2 or delays.shape[1] != self.probe.num_elements:
            raise ValueError(f"`delays` must be [K, {self.probe.num_elements}], got {delays.shape}")
        self.transmits = np.arange(delays.shape[0]) if transmits is None else _check_indices(transmits, delays.shape[0], "transmits")
        self.receive_elements = (
            np.arange(self.probe.num_elements) if receive_elements is None
            else _check_indices(receive_elements, self.probe.num_elements, "receive_elements")
        )
        self.delays = delays[self.transmits]
        x = np.asarray(x, np.float64).reshape(-1)
        z = np.asarray(z, np.float64).reshape(-1)
        if x.shape != z.shape or x.size == 0:
            raise ValueError(f"`x` and `z` must be non-empty arrays of the same size, got {x.shape} and {z.shape}")
        if int(num_samples) < 2:
            raise ValueError(f"`num_samples` must be >= 2, got {num_samples!r}")
        if weights not in (None, "physical"):
            raise ValueError(f"`weights` must be None or 'physical', got {weights!r}")
        if not (isinstance(fnumber, (int, float)) and fnumber >= 0):
            raise ValueError(f"`fnumber` must be a number >= 0, got {fnumber!r}")
        self.x, self.z = x, z
        self.num_samples, self.t0 = int(num_samples), float(t0)
        self.weights, self.fnumber, self.dtype = weights, float(fnumber), dtype
        self.num_points = x.size
        self.shape = (len(self.transmits), len(self.receive_elements), self.num_samples)
        self.pulse = self._pulse(pulse)
        self._build()

    # ------------------------------------------------------------------ construction
    def _pulse(self, pulse) -> Optional[torch.Tensor]:
        if pulse is None:
            return None
        if isinstance(pulse, str):
            if pulse != "gaussian":
                raise ValueError(f"`pulse` must be 'gaussian', None or an array of samples, got {pulse!r}")
            samples = gaussian_pulse(self.probe)
        else:
            samples = np.asarray(pulse).reshape(-1)
            if samples.size % 2 == 0 or samples.size < 1:
                raise ValueError(f"a `pulse` array must have an odd length (centred), got {samples.size}")
        return torch.as_tensor(samples.astype(np.complex128)).to(torch.complex128 if self.dtype == torch.float64 else torch.complex64)

    def _build(self) -> None:
        probe = self.probe
        tau = travel_times(probe, self.delays, self.x, self.z, self.receive_elements)  # [K, E, P]
        K, E, P = tau.shape
        N = self.num_samples
        index = (tau - self.t0) * probe.sampling_frequency
        valid = (index >= 0) & (index <= N - 2)
        amplitude = np.ones_like(tau)
        xe, ze, the = probe.element_positions()
        xe, ze, the = xe[self.receive_elements], ze[self.receive_elements], the[self.receive_elements]
        dx = self.x[None, :] - xe[:, None]
        dz = self.z[None, :] - ze[:, None]
        d_rx = np.hypot(dx, dz)
        if self.fnumber > 0:
            if probe.is_linear:
                aperture = np.abs(dx) <= self.z[None, :] / (2.0 * self.fnumber)
            else:
                angle = np.arcsin(np.clip(dx / np.maximum(d_rx, 1e-12), -1, 1)) - the[:, None]
                aperture = np.abs(angle) <= math.atan(1.0 / 2.0 / self.fnumber)
            valid &= aperture[None]
        if self.weights == "physical":
            angle = np.arctan2(dx, dz) - the[:, None]
            d_tx = tau * probe.speed_of_sound - d_rx[None]
            # 2-D cylindrical spreading on receive; on transmit too unless the wave is plane (delays affine in
            # the element position: a plane wave does not spread)
            xe_all = probe.element_positions()[0]
            plane = np.zeros(len(self.delays), bool)
            for k, row in enumerate(self.delays):
                on = ~np.isnan(row)
                if on.sum() > 2 and probe.is_linear:
                    fit = np.polyval(np.polyfit(xe_all[on], row[on], 1), xe_all[on])
                    plane[k] = np.abs(fit - row[on]).max() < 1e-3 / probe.center_frequency
            d_tx_eff = np.where(plane[:, None, None], 1e-2, np.maximum(d_tx, 1e-4))
            spreading = 1e-2 / np.sqrt(np.maximum(d_rx[None], 1e-4) * d_tx_eff)
            amplitude = probe.directivity(np.sin(angle))[None] * spreading
        k_idx, e_idx, p_idx = np.nonzero(valid)
        idx = index[valid]
        n0 = np.floor(idx).astype(np.int64)
        frac = idx - n0
        phase = np.exp(-2j * math.pi * probe.center_frequency * tau[valid]) * amplitude[valid]
        row = (k_idx * E + e_idx) * N + n0
        rows = np.concatenate([row, row + 1])
        cols = np.concatenate([p_idx, p_idx])
        vals = np.concatenate([(1.0 - frac) * phase, frac * phase])
        size = (K * E * N, P)
        self.nnz = int(vals.size)

        def csr(r, c, v, shape):
            coo = torch.sparse_coo_tensor(torch.from_numpy(np.stack([r, c])), torch.from_numpy(v).to(self.dtype), shape)
            return coo.coalesce().to_sparse_csr()

        # S = Sr + i Si [M, P] and its transpose, stored as real CSR matrices
        self._sr = csr(rows, cols, vals.real, size)
        self._si = csr(rows, cols, vals.imag, size)
        self._srt = csr(cols, rows, vals.real, size[::-1])
        self._sit = csr(cols, rows, vals.imag, size[::-1])
        # with the pulse g (peak g0, neighbours g1): (1-f)^2 g0 + 2 f (1-f) g1 + f^2 g0 per channel
        g0, g1 = 1.0, 1.0
        if self.pulse is not None:
            half = (self.pulse.numel() - 1) // 2
            g0 = float(self.pulse[half].real)
            g1 = float(self.pulse[half + 1].real) if self.pulse.numel() > 1 else 0.0
        weight2 = np.abs(amplitude[valid]) ** 2
        gain = np.zeros(P)
        np.add.at(gain, p_idx, weight2 * (((1 - frac) ** 2 + frac**2) * g0 + 2 * frac * (1 - frac) * g1))
        #: diag(S^H C S) [P]: DAS of the data of a unit reflector at p (with the pulse), float64
        self.point_gain = gain
        count = np.zeros(P)
        np.add.at(count, p_idx, weight2 * ((1 - frac) ** 2 + frac**2))
        #: diag(S^H S) [P] (without the pulse): about the number of channels that see p
        self.point_weight = count

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _mm(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        # dense [B, n] -> [B, m] with matrix [m, n]
        return torch.sparse.mm(matrix, dense.transpose(0, 1)).transpose(0, 1)

    def _apply(self, mr, mi, v: torch.Tensor) -> torch.Tensor:
        real_dtype = self.dtype
        vr, vi = v.real.to(real_dtype), v.imag.to(real_dtype)
        out_r = self._mm(mr, vr) - self._mm(mi, vi)
        out_i = self._mm(mr, vi) + self._mm(mi, vr)
        return torch.complex(out_r, out_i)

    def _apply_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        real_dtype = self.dtype
        vr, vi = v.real.to(real_dtype), v.imag.to(real_dtype)
        out_r = self._mm(self._srt, vr) + self._mm(self._sit, vi)
        out_i = self._mm(self._srt, vi) - self._mm(self._sit, vr)
        return torch.complex(out_r, out_i)

    def _convolve(self, y: torch.Tensor, conjugate: bool) -> torch.Tensor:
        """Convolution of every channel [B, K, E, N] with the pulse (``conjugate``: its adjoint, correlation)."""
        if self.pulse is None:
            return y
        shape = y.shape
        flat = y.reshape(-1, 1, shape[-1])
        g = self.pulse.to(flat.dtype)
        # conv1d computes a correlation: correlating with flip(g) is the convolution with g; the adjoint of a
        # convolution with g is the correlation with conj(g)
        kernel = g.conj() if conjugate else torch.flip(g, [0])
        half = (g.numel() - 1) // 2
        kr, ki = kernel.real.reshape(1, 1, -1), kernel.imag.reshape(1, 1, -1)
        fr, fi = flat.real, flat.imag
        out_r = F.conv1d(fr, kr, padding=half) - F.conv1d(fi, ki, padding=half)
        out_i = F.conv1d(fr, ki, padding=half) + F.conv1d(fi, kr, padding=half)
        return torch.complex(out_r, out_i).reshape(shape)

    def _check_reflectivity(self, r: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(r) or r.dim() != 2 or r.shape[-1] != self.num_points:
            shape = tuple(r.shape) if torch.is_tensor(r) else type(r).__name__
            raise ValueError(f"the reflectivity must be a tensor [B, {self.num_points}], got {shape}")
        return r if r.is_complex() else torch.complex(r, torch.zeros_like(r))

    def _check_data(self, y: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(y):
            raise ValueError(f"channel data must be a tensor, got {type(y).__name__}")
        if not y.is_complex():
            y = real_to_complex(y)
        if y.dim() != 4 or tuple(y.shape[1:]) != self.shape:
            raise ValueError(f"channel data must be complex [B, {', '.join(map(str, self.shape))}], got {tuple(y.shape)}")
        return y

    # ------------------------------------------------------------------ public API
    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """Channel I/Q data ``A r``: complex [B, K, E_rx, N] from a reflectivity [B, P] (real or complex)."""
        r = self._check_reflectivity(r)
        y = self._apply(self._sr, self._si, r).reshape((r.shape[0],) + self.shape)
        return self._convolve(y, conjugate=False)

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^H y``: matched filter (correlation with the pulse) then delay-and-sum, complex [B, P]."""
        y = self._convolve(self._check_data(y), conjugate=True)
        return self._apply_adjoint(y.reshape(y.shape[0], -1))

    def das(self, y: torch.Tensor) -> torch.Tensor:
        """Delay-and-sum ``S^H y`` of I/Q channel data [B, K, E_rx, N] at the points: complex [B, P].

        Linear interpolation of every channel at the round-trip time, times ``exp(+i 2 pi fc tau)``, summed over
        elements and transmits (coherent compounding); with ``weights=None`` this is pymust's ``dasmtx``.
        """
        y = self._check_data(y)
        return self._apply_adjoint(y.reshape(y.shape[0], -1))

    def __repr__(self) -> str:
        return (
            f"ChannelOperator(probe={self.probe.name!r}, transmits={len(self.transmits)}, "
            f"receive_elements={len(self.receive_elements)}, num_samples={self.num_samples}, points={self.num_points})"
        )


# ------------------------------------------------------------------------------------------------ B-mode link
class ChannelDataOperator(ForwardOperator):
    r"""Channel I/Q data of a diffusion model's B-mode image: ``y = A(x) + n`` (real view [B, K, E_rx, N, 2]).

    **Which quantity is mapped.** The diffusion model generates a B-mode image: ``b = (x + 1) / 2`` is the
    log-compressed envelope of the (full-data) beamformed I/Q image ``z``, ``b = 1 + 20 log10(|z| / ref) / DR``.
    Channel data are linear in the complex reflectivity, not in ``b``. The operator therefore

    1. inverts the log compression: ``|z| = ref 10^((b - 1) DR / 20)`` (:func:`image_to_envelope`), an amplitude
       map that is exact for the displayed range (pixels clipped to black carry at most ``ref 10^(-DR/20)``);
    2. turns the envelope into a reflectivity amplitude at the image points by dividing by the DAS gain of the
       full acquisition (``diag(D_full A_full)``, the sum of channel weights that see each point): at this pixel
       size the pulse is shorter than a pixel, so ``D_full A_full`` is close to ``gain * I`` and ``|r| ~ |z| / gain``;
    3. gives it a fixed phase ``u = exp(i angle(z_meas))``, the phase the probe measured (delay-and-sum of the
       measured channel data, :meth:`set_phase_from`). Speckle is the interference of sub-resolution scatterers:
       its phase is uniform and carries nothing the B-mode prior models, and the B-mode image cannot supply it,
       so it is taken from the data;
    4. applies the linear channel model ``A`` (:class:`ChannelOperator`, sparse transmits / aperture) and a gain
       ``gain_y`` that puts the data in the caller's units.

    So ``A(x) = gain_y A(ref image_to_envelope(x) / (g_full tgc) * u)``: differentiable (the gradient of the DPS misfit
    runs through the exponential of step 1), non-linear in ``x``, linear in the envelope.
    What the model leaves out, and why the fit cannot be exact: the true medium has many scatterers per pixel
    (their channel data are not the data of one reflector per pixel), the measured phase is the phase of a blurred
    image, and the PSF blur between pixels is neglected in step 2. The residual therefore stays above the noise;
    DPS here is a regularised fit, not an exact inversion.

    Args:
        channel_operator (:class:`ChannelOperator`): the acquisition (its points are the image points).
        pixel_index (array [P]): flat index ``row * W + col`` of each operator point in the [H, W] image.
        image_size (H, W): size of the model's images.
        dynamic_range_db (`float`): DR of the log compression.
        reference (`float`): envelope ``ref`` displayed as white (in DAS units of the full acquisition).
        full_gain (array [P]): DAS gain of the full acquisition at the points (default: this operator's gain).
        data_gain (`float`, defaults to 1): ``gain_y``.
        tgc (array [P], *optional*): time-gain compensation applied to the DAS envelope before log compression
            (default 1); the operator divides it out in step 2.
        noise_std (`float`): channel noise standard deviation (per real and imaginary part, data units).
        phase (complex array [P], *optional*): the unit phase ``u``; default 1 until :meth:`set_phase_from`.
    """

    name = "channels"
    is_linear = False

    def __init__(
        self,
        channel_operator: ChannelOperator,
        pixel_index: np.ndarray,
        image_size: Tuple[int, int],
        dynamic_range_db: float = 50.0,
        reference: float = 1.0,
        full_gain: Optional[np.ndarray] = None,
        data_gain: float = 1.0,
        noise_std: float = 0.0,
        phase: Optional[np.ndarray] = None,
        tgc: Optional[np.ndarray] = None,
    ):
        super().__init__(noise_std)
        if not isinstance(channel_operator, ChannelOperator):
            raise TypeError(f"`channel_operator` must be a ChannelOperator, got {type(channel_operator).__name__}")
        self.channel_operator = channel_operator
        self.image_size = _image_hw(image_size)
        index = np.asarray(pixel_index, np.int64).reshape(-1)
        h, w = self.image_size
        if index.size != channel_operator.num_points or index.min() < 0 or index.max() >= h * w:
            raise ValueError(
                f"`pixel_index` must hold {channel_operator.num_points} flat pixel indices in [0, {h * w}), got "
                f"{index.size} values in [{index.min()}, {index.max()}]"
            )
        for name, value in (("dynamic_range_db", dynamic_range_db), ("reference", reference), ("data_gain", data_gain)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a positive number, got {value!r}")
        self.pixel_index = torch.from_numpy(index)
        self.dynamic_range_db, self.reference, self.data_gain = float(dynamic_range_db), float(reference), float(data_gain)
        gain = channel_operator.point_gain if full_gain is None else np.asarray(full_gain, np.float64).reshape(-1)
        if gain.size != channel_operator.num_points:
            raise ValueError(f"`full_gain` must have {channel_operator.num_points} values, got {gain.size}")
        self.full_gain = torch.from_numpy(np.maximum(gain, 1e-12 * max(gain.max(), 1e-30)))
        tgc = np.ones(channel_operator.num_points) if tgc is None else np.asarray(tgc, np.float64).reshape(-1)
        if tgc.size != channel_operator.num_points or not np.all(tgc > 0):
            raise ValueError(f"`tgc` must hold {channel_operator.num_points} positive gains, got {tgc.size} values")
        self.tgc = torch.from_numpy(tgc)
        self.phase = None
        self._linearisation = None
        self.set_phase(phase)

    # ------------------------------------------------------------------ phase
    def set_phase(self, phase: Optional[np.ndarray]) -> None:
        """Set the unit phase ``u`` [P] (None: 1)."""
        if phase is None:
            self.phase = torch.ones(self.channel_operator.num_points, dtype=torch.complex128)
            return
        u = torch.as_tensor(np.asarray(phase)).reshape(-1).to(torch.complex128)
        if u.numel() != self.channel_operator.num_points:
            raise ValueError(f"`phase` must have {self.channel_operator.num_points} values, got {u.numel()}")
        self.phase = torch.where(u.abs() > 0, u / u.abs().clamp(min=1e-30), torch.ones_like(u))

    def set_phase_from(self, y: torch.Tensor) -> None:
        """Take ``u`` from measurements ``y`` (one acquisition, [1, ...] or unbatched): the phase of their DAS."""
        y = real_to_complex(y)
        if y.dim() == 3:
            y = y[None]
        if y.shape[0] != 1:
            raise ValueError(f"`set_phase_from` takes the measurements of one image, got a batch of {y.shape[0]}")
        self.set_phase(self.channel_operator.das(y / self.data_gain)[0].detach().numpy())
        self._linearisation = self.baseline(y).detach().float()

    def prepare_measurements(self, y: torch.Tensor) -> None:
        """Hook used by the reconstruction command before sampling: sets the phase from the measurements."""
        self.set_phase_from(y)

    def lipschitz(self, image_shape, iterations: int = 30, seed: int = 0, device=None, dtype=torch.float32) -> float:
        """``||J||^2`` of the Jacobian at the DAS image of the measurements (set by :meth:`set_phase_from`).

        The inverse log compression makes the Jacobian scale with the envelope (18 times larger at white than at
        mid-grey for 50 dB), so it is linearised at a representative image, not at a grey one.
        """
        image_shape = tuple(int(s) for s in image_shape)
        x0 = self._linearisation
        if x0 is None:
            x0 = torch.zeros((1,) + image_shape[1:], dtype=dtype)
        x0 = x0.to(device=device, dtype=dtype)
        generator = torch.Generator().manual_seed(seed)
        v = torch.randn(x0.shape, generator=generator, dtype=dtype).to(x0.device)
        v = v / v.norm()

        return jtj_power_iteration(self.forward, x0, v, iterations)

    # ------------------------------------------------------------------ ForwardOperator API
    def reflectivity(self, x: torch.Tensor) -> torch.Tensor:
        """Complex reflectivity [B, P] at the operator's points of images ``x`` [B, 1, H, W] in [-1, 1]."""
        check_image(x)
        if tuple(x.shape[-2:]) != self.image_size or x.shape[1] != 1:
            raise ValueError(f"images must be [B, 1, {self.image_size[0]}, {self.image_size[1]}], got {tuple(x.shape)}")
        real = self.channel_operator.dtype
        values = x.reshape(x.shape[0], -1).index_select(1, self.pixel_index.to(x.device)).to(real)
        scale = self.reference / (self.full_gain * self.tgc)
        amplitude = image_to_envelope(values, self.dynamic_range_db) * scale.to(device=x.device, dtype=real)
        u = self.phase.to(device=x.device, dtype=torch.complex128 if real == torch.float64 else torch.complex64)
        return amplitude.to(u.dtype) * u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.channel_operator.forward(self.reflectivity(x)) * self.data_gain
        return complex_to_real(y).to(x.dtype)

    def measure(self, x: torch.Tensor, generator: Optional[torch.Generator] = None, snr_db: Optional[float] = None) -> torch.Tensor:
        """Simulated channel data of images ``x`` [1, 1, H, W] with the operator's own model (no gradient).

        The medium is one reflector per pixel with the envelope of ``x`` and a *random* phase (speckle; the
        measured phase is unknown to the model), then channel noise: ``snr_db`` (or the operator's ``snr_db``
        attribute) sets ``noise_std`` relative to the RMS of the noise-free data, otherwise ``noise_std`` is used.
        The phase of the operator is then set from the simulated data (:meth:`set_phase_from`), as for real data.
        This is a model-consistent simulation (the same model generates and inverts); the physical path
        (scatterers, pymust) is :mod:`ultrasound_diffusers.acoustics.simulation`.
        """
        check_image(x)
        if x.shape[0] != 1:
            raise ValueError(f"`measure` simulates one acquisition, got a batch of {x.shape[0]} images")
        snr_db = getattr(self, "snr_db", None) if snr_db is None else snr_db
        with torch.no_grad():
            saved = self.phase
            u = torch.rand(self.channel_operator.num_points, generator=generator, dtype=torch.float64)
            self.phase = torch.exp(2j * math.pi * u)
            try:
                y = self.channel_operator.forward(self.reflectivity(x)) * self.data_gain
            finally:
                self.phase = saved
            if snr_db is not None:
                self.noise_std = float(y.abs().pow(2).mean().sqrt() / math.sqrt(2.0) * 10.0 ** (-float(snr_db) / 20.0))
            std = float(self.noise_std) if not torch.is_tensor(self.noise_std) else float(self.noise_std.max())
            if std > 0:
                noise = torch.randn(y.shape + (2,), generator=generator, dtype=torch.float64)
                y = y + std * torch.view_as_complex(noise).to(y.dtype)
            out = complex_to_real(y).to(x.dtype)
        self.set_phase_from(out)
        return out

    def measurement_shape(self, image_shape, device=None, dtype=torch.float32):
        return (int(image_shape[0]),) + self.channel_operator.shape + (2,)

    def das_image(self, y: torch.Tensor) -> torch.Tensor:
        """DAS envelope of measurements (real view [B, K, E, N, 2] or complex), normalised by this acquisition's
        DAS gain so that it is in the units of the full acquisition, times the TGC: float [B, P]."""
        y = real_to_complex(y)
        env = self.channel_operator.das(y / self.data_gain).abs()
        own = torch.from_numpy(np.maximum(self.channel_operator.point_gain, 1e-30)).to(env.dtype)
        return env * (self.full_gain / own * self.tgc).to(env.dtype)

    def baseline(self, y: torch.Tensor, size=None) -> torch.Tensor:
        """DAS of the (sparse) data, gain-normalised, log-compressed: [B, 1, H, W] in [-1, 1] (-1 outside the points)."""
        env = self.das_image(y)
        values = envelope_to_image(env, self.dynamic_range_db, self.reference)
        h, w = self.image_size
        out = torch.full((env.shape[0], h * w), -1.0, dtype=values.dtype)
        out[:, self.pixel_index] = values
        return out.reshape(env.shape[0], 1, h, w)

    def to_image(self, y: torch.Tensor, size=None) -> torch.Tensor:
        return self.baseline(y, size)

    def __repr__(self) -> str:
        op = self.channel_operator
        return (
            f"ChannelDataOperator(probe={op.probe.name!r}, transmits={len(op.transmits)}, "
            f"receive_elements={len(op.receive_elements)}, dynamic_range_db={self.dynamic_range_db}, noise_std={self.noise_std})"
        )
