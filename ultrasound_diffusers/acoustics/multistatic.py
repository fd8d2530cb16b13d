# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
r"""Multistatic (full matrix capture) RF channel data of a lung map, its exact adjoint, and delay-and-sum.

**Acquisition.** A linear array of E (default 32) elements lies on the skin (z = 0) above the map; its aperture
spans the map's lateral extent (pitch = map width / E). Every element transmits in turn and all elements receive
(full matrix capture): the RF data are ``y[n, i, j]`` (fast-time sample n, transmitter i, receiver j), shape
(N, E, E), sampled at ``fs = sampling_factor * fc``. Default probe :data:`LUNG_PROBE`: 3 MHz centre frequency,
60 % pulse-echo bandwidth, fs = 12 MHz, c = 1540 m/s (the reference medium for the travel times).

**First-order Born model.** The map ``m`` in [0, 1] (H x W, the seed's pooled 8 x 256 grid of normalised slowness)
gives an effective reflectivity (:meth:`MultistaticOperator.reflectivity`)

    rho = T_edge (m - m_above) + s T_centre m

the first term the specular reflection of a layer interface (the reflection coefficient of an impedance step is
about ``dZ / 2Z``, so the strong pleural line is the large jump of the map at the pleura), the second a diffuse
backscatter proportional to the map (``s = scatter``, default 0.2); ``T`` is the two-way transmission through the
attenuation along the vertical path (:func:`two_way_transmission`), from the map itself
(:func:`map_attenuation`, non-linear in m) or from a fixed attenuation map (then the operator is affine in m).
``rho`` is averaged over ``lateral_pool`` columns to the reflectivity grid. Each reflector sends back the two-way
pulse (a Gaussian-modulated sinusoid, :func:`rf_pulse`) delayed by ``(|p - e_i| + |p - e_j|) / c`` with amplitude
``D(e_i, p) D(e_j, p)``, ``D`` = obliquity ``cos(theta)`` times 2-D spreading ``sqrt(1 cm / distance)``
(:func:`one_way_paths`; :class:`FullMatrixCapture` also takes an attenuation integrated along the oblique ray).

Numerically ``A = C S``: ``S`` places ``w rho`` at the fractional sample ``tau fs - n0`` with linear-interpolation
weights (a sparse matrix with two entries per (i, j, p)), ``C`` convolves every channel with the sampled pulse.
``A^T = S^T C^T`` (correlation, then the transposed sparse matrix): the exact adjoint (tested to 1e-6 in
float64). Subsets of transmitters / receivers are masks: the data keep the (N, E, E) shape with zeros in the
channels not recorded.

**Delay-and-sum** (:meth:`FullMatrixCapture.das`): the analytic signal of every channel (FFT Hilbert transform)
interpolated at the round-trip time of each image point and summed over all recorded (i, j) pairs, on a grid
finer in depth than the map (the pulse is much shorter than a pooled map row), the envelope then averaged back to
the map grid (:meth:`MultistaticOperator.das_envelope`).

**The measurement operator of the diffusion model** (:class:`MultistaticOperator`, on model images
``x = 2 m - 1`` in [-1, 1]): ``A(x) = gain * FMC(rho(x))``. With white Gaussian noise the data enter the posterior
only through ``FMC^T y`` and ``G = FMC^T FMC`` (P x P on the reflectivity grid):
:meth:`MultistaticOperator.compressed` returns the equivalent operator on the whitened coordinates
``z = Sigma^-1 V^T FMC^T y`` (``FMC = U Sigma V^T``), whose noise is white with the same standard deviation
(:class:`CompressedMultistaticOperator`; the lung reconstruction samples with it).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..operators import LinearOperator, check_image as _check_image
from ..operators import image_size as _size
from .probes import ArrayProbe

__all__ = [
    "DEFAULT_SNR_DB",
    "LUNG_DEPTH_M",
    "LUNG_WIDTH_M",
    "fmc_operator_from_spec",
    "lung_rf_operator",
    "parse_fmc_spec",
    "LUNG_PROBE",
    "CompressedMultistaticOperator",
    "FullMatrixCapture",
    "MultistaticOperator",
    "analytic_signal",
    "channel_mask",
    "lung_probe",
    "map_attenuation",
    "map_grid",
    "noise_std_for_snr",
    "one_way_paths",
    "two_way_transmission",
    "rf_pulse",
    "subset_indices",
]

#: 1 cm, the distance where the 2-D spreading factor is 1.
_REFERENCE_DISTANCE = 1e-2
_DB_TO_NEPER = math.log(10.0) / 20.0


# ------------------------------------------------------------------------------------------------ probe / grid
def lung_probe(width_m: float = 0.04, num_elements: int = 32, center_frequency: float = 3.0e6,
               bandwidth: float = 60.0, sampling_factor: float = 4.0, speed_of_sound: float = 1540.0) -> ArrayProbe:
    """The 32-element linear array over a map ``width_m`` wide: pitch = width / E, element width 0.9 pitch."""
    if not (isinstance(width_m, (int, float)) and width_m > 0):
        raise ValueError(f"`width_m` must be a positive length in metres, got {width_m!r}")
    if not (isinstance(num_elements, (int, np.integer)) and num_elements >= 2):
        raise ValueError(f"`num_elements` must be an integer >= 2, got {num_elements!r}")
    pitch = float(width_m) / int(num_elements)
    return ArrayProbe(f"lung-{int(num_elements)}", int(num_elements), float(center_frequency), pitch, 0.9 * pitch,
                      bandwidth=float(bandwidth), sampling_factor=float(sampling_factor),
                      speed_of_sound=float(speed_of_sound))


#: Default array: 32 elements, 1.25 mm pitch (a 4 cm wide map), 3 MHz, 60 % bandwidth, fs 12 MHz.
LUNG_PROBE = lung_probe()


def map_grid(size, width_m: float, depth_m: Union[float, Tuple[float, float]]) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an H x W map: ``x`` float64 [W] (m, centred on the array), ``z`` float64 [H] (m).

    ``depth_m``: the depth of the map's bottom edge (the top edge at the skin, z = 0) or ``(top, bottom)``.
    """
    h, w = _size(size)
    top, bottom = (0.0, float(depth_m)) if np.isscalar(depth_m) else (float(depth_m[0]), float(depth_m[1]))
    if not (bottom > top >= 0) or not (width_m > 0):
        raise ValueError(f"need width_m > 0 and 0 <= top < bottom, got width_m={width_m!r}, depth_m={depth_m!r}")
    x = ((np.arange(w) + 0.5) / w - 0.5) * float(width_m)
    z = top + (np.arange(h) + 0.5) / h * (bottom - top)
    return x, z


def rf_pulse(probe: ArrayProbe, num_sigma: float = 4.0) -> np.ndarray:
    """Two-way RF pulse sampled at fs, centred: ``exp(-t^2 / 2 sigma^2) cos(2 pi fc t)``, float64 [2 L + 1], peak 1.

    ``sigma`` is the probe's pulse-echo envelope width (``ArrayProbe.pulse_sigma_time``: the -6 dB spectrum is
    ``bandwidth % * fc`` wide)."""
    fs = probe.sampling_frequency
    sigma = probe.pulse_sigma_time()
    half = max(1, int(math.ceil(num_sigma * sigma * fs)))
    t = np.arange(-half, half + 1, dtype=np.float64) / fs
    return np.exp(-0.5 * (t / sigma) ** 2) * np.cos(2.0 * math.pi * probe.center_frequency * t)


def one_way_paths(probe: ArrayProbe, x: np.ndarray, z: np.ndarray, attenuation=0.0) -> Tuple[np.ndarray, np.ndarray]:
    """One-way travel time and amplitude from every element to every map pixel.

    Args:
        probe: the array (elements at z = 0).
        x (float64 [W]), z (float64 [H]): pixel centres (see :func:`map_grid`), z increasing.
        attenuation: dB/cm/MHz, a number or a map [H, W]; above the first row the first row's value holds.

    Returns:
        ``(tau, amplitude)``: float64 [E, H * W] each (row-major pixels), seconds and the factor
        ``cos(theta) sqrt(1 cm / d) 10^(-f_MHz L / 20)`` with L the attenuation (dB/MHz) along the ray.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    z = np.asarray(z, np.float64).reshape(-1)
    if np.any(np.diff(z) <= 0) or z[0] <= 0:
        raise ValueError("`z` must be positive and increasing (pixel-centre depths in metres)")
    h, w = z.size, x.size
    att = np.broadcast_to(np.asarray(attenuation, np.float64), (h, w))
    if not np.all(np.isfinite(att)) or np.any(att < 0):
        raise ValueError("`attenuation` must be finite and >= 0 (dB/cm/MHz)")
    edges = np.concatenate([[0.0], (z[1:] + z[:-1]) / 2.0])  # top edge of each row (the first from the skin)
    thickness_cm = np.diff(np.concatenate([edges, [z[-1] + (z[-1] - edges[-1])]])) * 100.0
    # attenuation (dB/MHz) from the skin to each pixel centre, straight down: full rows above, half of its own
    above = np.cumsum(att * thickness_cm[:, None], axis=0) - att * thickness_cm[:, None]
    own = att * (z - edges)[:, None] * 100.0
    vertical = (above + own).reshape(-1)  # [P]
    xe, _, _ = probe.element_positions()
    px = np.tile(x, h)
    pz = np.repeat(z, w)
    d = np.hypot(px[None, :] - xe[:, None], pz[None, :])  # [E, P]
    tau = d / probe.speed_of_sound
    cos = pz[None, :] / d
    loss_db = vertical[None, :] * (d / pz[None, :]) * (probe.center_frequency / 1e6)
    amplitude = cos * np.sqrt(_REFERENCE_DISTANCE / d) * np.exp(-_DB_TO_NEPER * loss_db)
    return tau, amplitude


# ------------------------------------------------------------------------------------------------ subsets / noise
def subset_indices(num_elements: int, count: Optional[int]) -> np.ndarray:
    """``count`` elements spread evenly over the array (all for None): int64 [count], e.g. 8 of 32 -> 0, 4, ..., 28
    shifted to the centre (2, 6, ..., 30)."""
    if count is None or int(count) == int(num_elements):
        return np.arange(int(num_elements))
    count = int(count)
    if not 1 <= count <= num_elements:
        raise ValueError(f"the element count must be in [1, {num_elements}], got {count}")
    step = num_elements / count
    return np.floor((np.arange(count) + 0.5) * step).astype(np.int64)


def channel_mask(num_elements: int, transmitters=None, receivers=None) -> np.ndarray:
    """bool [E, E]: True for the recorded (transmitter i, receiver j) pairs; ``None`` = all elements."""
    tx = np.arange(num_elements) if transmitters is None else _check_indices(transmitters, num_elements, "transmitters")
    rx = np.arange(num_elements) if receivers is None else _check_indices(receivers, num_elements, "receivers")
    mask = np.zeros((num_elements, num_elements), dtype=bool)
    mask[np.ix_(tx, rx)] = True
    return mask


def _check_indices(values, upper: int, name: str) -> np.ndarray:
    idx = np.asarray(values, dtype=np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= upper or np.unique(idx).size != idx.size:
        raise ValueError(f"`{name}` must be distinct element indices in [0, {upper}), got {values!r}")
    return np.sort(idx)


def noise_std_for_snr(clean: torch.Tensor, snr_db: float, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Noise standard deviation per example that gives ``snr_db = 20 log10(rms(signal) / std)``: float64 [B].

    ``clean``: noise-free data [B, N, E, E]; the RMS is taken over the recorded channels (``mask`` bool [E, E])."""
    if not (isinstance(snr_db, (int, float)) and math.isfinite(snr_db)):
        raise ValueError(f"`snr_db` must be a finite number of decibels, got {snr_db!r}")
    data = clean.detach().double()
    if mask is not None:
        data = data[:, :, mask]
    rms = data.pow(2).flatten(1).mean(1).sqrt()
    return rms * 10.0 ** (-float(snr_db) / 20.0)


def analytic_signal(y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Analytic signal (FFT Hilbert transform) of real ``y`` along ``dim``: complex, same shape."""
    n = y.shape[dim]
    spectrum = torch.fft.fft(y, dim=dim)
    h = torch.zeros(n, dtype=y.dtype, device=y.device)
    h[0] = 1
    if n % 2 == 0:
        h[n // 2] = 1
        h[1 : n // 2] = 2
    else:
        h[1 : (n + 1) // 2] = 2
    shape = [1] * y.dim()
    shape[dim] = n
    return torch.fft.ifft(spectrum * h.reshape(shape), dim=dim)


# ------------------------------------------------------------------------------------------------ RF operator
class FullMatrixCapture:
    r"""The linear map from a reflectivity at P points to full-matrix RF data, its adjoint and DAS.

    Args:
        probe (:class:`ArrayProbe`): the array (default :data:`LUNG_PROBE`).
        x (float64 [W]), z (float64 [H]): the reflectivity grid (pixel centres, m).
        attenuation: reference attenuation, dB/cm/MHz, a number or an [H, W] map (see :func:`one_way_paths`).
        transmitters, receivers (sequences of int, *optional*): the recorded elements (all by default).
        num_samples, t0 (*optional*): fast-time window (samples at fs from sample index ``t0``); by default every
            echo of the grid with the pulse.
        dtype: float32 (default) or float64.

    Shapes: reflectivity ``r`` [B, P] (row-major H x W); data ``y`` [B, N, E, E] (time, transmitter, receiver).
    """

    def __init__(self, probe: ArrayProbe = LUNG_PROBE, x=None, z=None, attenuation=0.0, transmitters=None,
                 receivers=None, num_samples: Optional[int] = None, t0: Optional[int] = None,
                 dtype: torch.dtype = torch.float32):
        if not isinstance(probe, ArrayProbe):
            raise TypeError(f"`probe` must be an ArrayProbe, got {type(probe).__name__}")
        if not probe.is_linear:
            raise ValueError("the multistatic model needs a linear array")
        if x is None or z is None:
            raise ValueError("`x` and `z` (pixel-centre coordinates, see map_grid) are required")
        self.probe, self.dtype = probe, dtype
        self.x, self.z = np.asarray(x, np.float64).reshape(-1), np.asarray(z, np.float64).reshape(-1)
        self.grid = (self.z.size, self.x.size)
        self.num_points = self.z.size * self.x.size
        E = probe.num_elements
        self.mask = channel_mask(E, transmitters, receivers)
        self.transmitters = np.flatnonzero(self.mask.any(axis=1))
        self.receivers = np.flatnonzero(self.mask.any(axis=0))
        tau, amp = one_way_paths(probe, self.x, self.z, attenuation)
        self._tau1, self._amp1 = tau, amp
        self.pulse = rf_pulse(probe)
        half = (self.pulse.size - 1) // 2
        fs = probe.sampling_frequency
        all_tau = tau[:, None, :] + tau[None, :, :]
        if t0 is None:
            t0 = max(0, int(math.floor(all_tau.min() * fs)) - half - 1)
        if num_samples is None:
            num_samples = int(math.ceil(all_tau.max() * fs)) + half + 2 - int(t0)
        if int(num_samples) < 2 or int(t0) < 0:
            raise ValueError(f"need num_samples >= 2 and t0 >= 0, got {num_samples!r}, {t0!r}")
        self.t0, self.num_samples = int(t0), int(num_samples)
        self.shape = (self.num_samples, E, E)
        self._build(amp)

    @property
    def sampling_frequency(self) -> float:
        return self.probe.sampling_frequency

    def _delay_matrix(self, tau_tx: np.ndarray, tau_rx: np.ndarray, weight_tx, weight_rx):
        """Triplets ``(rows, cols, values, shape)`` of the sparse [E * E * N, P] matrix placing ``w`` at the fractional
        sample of ``tau_tx + tau_rx`` (recorded pairs, linear interpolation)."""
        E, N = self.probe.num_elements, self.num_samples
        fs = self.sampling_frequency
        rows, cols, vals = [], [], []
        points = tau_tx.shape[1]
        for i in self.transmitters:
            rx = np.flatnonzero(self.mask[i])
            index = (tau_tx[i][None, :] + tau_rx[rx]) * fs - self.t0  # [R, P]
            weight = weight_tx[i][None, :] * weight_rx[rx]
            valid = (index >= 0) & (index <= N - 2)
            r_idx, p_idx = np.nonzero(valid)
            idx = index[valid]
            n0 = np.floor(idx).astype(np.int64)
            frac = idx - n0
            w = weight[valid]
            base = (i * E + rx[r_idx]) * N + n0
            rows += [base, base + 1]
            cols += [p_idx, p_idx]
            vals += [(1.0 - frac) * w, frac * w]
        rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        return rows, cols, vals, (E * E * N, points)

    def _build(self, amp: np.ndarray) -> None:
        rows, cols, vals, shape = self._delay_matrix(self._tau1, self._tau1, amp, amp)

        def csr(r, c, v, size):
            import warnings

            index = torch.from_numpy(np.stack([r, c]))
            coo = torch.sparse_coo_tensor(index, torch.from_numpy(v).to(self.dtype), size, check_invariants=False)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                return coo.coalesce().to_sparse_csr()

        self._s, self._st = csr(rows, cols, vals, shape), csr(cols, rows, vals, shape[::-1])
        self._triplets = (rows, cols, vals, shape)
        self.nnz = int(vals.size)
        self._pulse = torch.from_numpy(self.pulse).to(self.dtype)
        self._das_cache = {}

    def normal_matrix(self, channels_per_batch: int = 64) -> np.ndarray:
        """``A^T A`` (P x P, float64) of the recorded channels, exactly: ``sum_c (C S_c)^T (C S_c)`` with the sparse
        placement ``S_c`` of channel c and the pulse convolution ``C`` as scipy sparse matrices, in batches of
        channels."""
        import scipy.sparse as sp

        rows, cols, vals, shape = self._triplets
        N = self.num_samples
        half = (self.pulse.size - 1) // 2
        conv = sp.diags([np.full(N - abs(k), self.pulse[half - k]) for k in range(-half, half + 1)],
                        list(range(-half, half + 1)), shape=(N, N), format="csr")
        s = sp.csr_matrix((vals, (rows, cols)), shape=shape)
        recorded = np.flatnonzero(self.mask.reshape(-1))
        g = np.zeros((shape[1], shape[1]))
        for start in range(0, recorded.size, int(channels_per_batch)):
            chans = recorded[start : start + int(channels_per_batch)]
            index = (chans[:, None] * N + np.arange(N)[None, :]).reshape(-1)
            block = sp.kron(sp.identity(chans.size, format="csr"), conv, format="csr") @ s[index]
            g += (block.T @ block).toarray()
        return 0.5 * (g + g.T)

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _mm(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(matrix, dense.transpose(0, 1)).transpose(0, 1)

    def _convolve(self, y: torch.Tensor, adjoint: bool) -> torch.Tensor:
        """Every channel of ``y`` [B, E*E, N] convolved with the pulse (``adjoint``: correlated with it)."""
        shape = y.shape
        flat = y.reshape(-1, 1, shape[-1])
        g = self._pulse.to(flat.dtype)
        kernel = g if adjoint else torch.flip(g, [0])  # conv1d correlates
        half = (g.numel() - 1) // 2
        return F.conv1d(flat, kernel.reshape(1, 1, -1), padding=half).reshape(shape)

    def _check_r(self, r: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(r) or r.dim() != 2 or r.shape[1] != self.num_points:
            shape = tuple(r.shape) if torch.is_tensor(r) else type(r).__name__
            raise ValueError(f"the reflectivity must be a tensor [B, {self.num_points}], got {shape}")
        return r.to(self.dtype)

    def _check_y(self, y: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(y) or y.dim() != 4 or tuple(y.shape[1:]) != self.shape:
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"RF data must be a tensor [B, {', '.join(map(str, self.shape))}] (time, tx, rx), got {shape}")
        return y.to(self.dtype)

    # ------------------------------------------------------------------ public API
    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """RF data ``A r``: [B, P] -> [B, N, E, E] (zeros in the channels not recorded)."""
        r = self._check_r(r)
        E, N = self.probe.num_elements, self.num_samples
        y = self._mm(self._s, r).reshape(r.shape[0], E * E, N)
        y = self._convolve(y, adjoint=False)
        return y.reshape(r.shape[0], E, E, N).permute(0, 3, 1, 2)

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y``: correlation with the pulse, then the transposed placement: [B, N, E, E] -> [B, P]."""
        y = self._check_y(y)
        E, N = self.probe.num_elements, self.num_samples
        flat = y.permute(0, 2, 3, 1).reshape(y.shape[0], E * E, N)
        flat = self._convolve(flat, adjoint=True)
        return self._mm(self._st, flat.reshape(y.shape[0], -1))

    def das(self, y: torch.Tensor, x: Optional[np.ndarray] = None, z: Optional[np.ndarray] = None) -> torch.Tensor:
        """Delay-and-sum of the recorded channels at the grid ``x`` [W'] x ``z`` [H'] (default: the operator's):
        the analytic signal of each channel at the round-trip time of each point, summed over the (i, j) pairs
        and divided by their number. Complex [B, H' * W'] (its modulus is the envelope image)."""
        y = self._check_y(y)
        gx = self.x if x is None else np.asarray(x, np.float64).reshape(-1)
        gz = self.z if z is None else np.asarray(z, np.float64).reshape(-1)
        key = (gx.tobytes(), gz.tobytes())
        if key not in self._das_cache:
            tau, _ = one_way_paths(self.probe, gx, gz, 0.0)
            tx, rx = np.nonzero(self.mask)
            index = (tau[tx] + tau[rx]) * self.sampling_frequency - self.t0  # [pairs, P']
            index = np.clip(index, 0.0, self.num_samples - 1.000001)
            n0 = np.floor(index)
            self._das_cache = {key: (torch.from_numpy(tx * self.probe.num_elements + rx),
                                     torch.from_numpy(n0.astype(np.int64)),
                                     torch.from_numpy(index - n0).to(self.dtype))}
        pairs, n0, frac = self._das_cache[key]
        E, N = self.probe.num_elements, self.num_samples
        flat = y.permute(0, 2, 3, 1).reshape(y.shape[0], E * E, N)[:, pairs]  # [B, pairs, N]
        out = torch.zeros(y.shape[0], n0.shape[1], dtype=torch.complex128 if self.dtype == torch.float64 else torch.complex64)
        chunk = max(1, int(2**22 // max(1, n0.shape[1])))  # pairs per chunk: about 4M interpolated samples
        for b in range(y.shape[0]):
            a = analytic_signal(flat[b], dim=-1)  # [pairs, N]
            for start in range(0, n0.shape[0], chunk):
                sl = slice(start, start + chunk)
                lower = torch.gather(a[sl], 1, n0[sl])
                upper = torch.gather(a[sl], 1, n0[sl] + 1)
                out[b] += (lower * (1 - frac[sl]) + upper * frac[sl]).sum(0)
        return out / float(n0.shape[0])

    def __repr__(self) -> str:
        return (f"FullMatrixCapture(elements={self.probe.num_elements}, transmitters={len(self.transmitters)}, "
                f"receivers={len(self.receivers)}, samples={self.num_samples}, points={self.grid})")


# ------------------------------------------------------------------------------------------------ attenuation of a map
def map_attenuation(m: torch.Tensor) -> torch.Tensor:
    """Attenuation (dB/cm/MHz) implied by lung map values ``m`` in [0, 1] (any shape), differentiable: the torch
    twin of ``lung_media.map_to_properties(m)["attenuation"]`` (lung mixture below ``M_LUNG_TISSUE``, linear in
    m; soft tissue blending to cortical bone above)."""
    from ..data.lung_media import M_LUNG_TISSUE, MATERIALS, speed_to_map

    a_tissue, a_air, a_bone = MATERIALS["lung_tissue"][1], MATERIALS["aerated_foam"][1], MATERIALS["cortical_bone"][1]
    m_bone = float(speed_to_map(MATERIALS["cortical_bone"][0]))
    m = m.clamp(0.0, 1.0)
    lung = a_air + (a_tissue - a_air) * m / M_LUNG_TISSUE
    tissue = a_tissue + (a_bone - a_tissue) * ((m - M_LUNG_TISSUE) / (m_bone - M_LUNG_TISSUE)).clamp(0.0, 1.0)
    return torch.where(m <= M_LUNG_TISSUE, lung, tissue)


def two_way_transmission(attenuation: torch.Tensor, row_thickness_m: float, frequency_hz: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two-way amplitude transmission straight down to each row of an attenuation map [..., H, W] (dB/cm/MHz):
    ``(to the top edge of the row, to its centre)``, each [..., H, W] in (0, 1]:
    ``10^(-2 f_MHz L / 20)`` with L the attenuation integrated over the rows above (plus half the row's own)."""
    per_row = attenuation * (row_thickness_m * 100.0) * (frequency_hz / 1e6)  # one-way dB per row
    above = torch.cumsum(per_row, dim=-2) - per_row
    edge = torch.exp(-2.0 * _DB_TO_NEPER * above)
    centre = torch.exp(-2.0 * _DB_TO_NEPER * (above + 0.5 * per_row))
    return edge, centre


# ------------------------------------------------------------------------------------------------ model operator
class MultistaticOperator(LinearOperator):
    r"""Full-matrix RF data of lung maps: the measurement operator of the diffusion model.

    Model images ``x`` [B, 1, H, W] in [-1, 1] are maps ``m = (x + 1) / 2``. The effective reflectivity is

        rho = T_edge * (m - m_above) + scatter * T_centre * m      (rows; the top row has no interface term)

    with ``T`` the two-way transmission (:func:`two_way_transmission`) through the attenuation along the vertical
    path, averaged over ``lateral_pool`` columns to the reflectivity grid [H, W / lateral_pool], and the RF data
    are ``gain * FMC(rho)`` [B, N, E, E] (:class:`FullMatrixCapture`: geometry, spreading, pulse).

    ``attenuation``:

    * ``"map"`` (default): the attenuation the map itself implies (:func:`map_attenuation`; aerated lung about
      36 dB/cm/MHz, so almost nothing comes back from under an aerated pleura, while consolidated lung lets the
      sound through). The operator is then non-linear in x but differentiable (``is_linear`` False): the data
      simulation and DPS both use it.
    * a number or an [H, W] map (dB/cm/MHz): a fixed attenuation (a reference medium, or one case's own), so the
      operator is affine in x (``is_linear`` True) with :meth:`transpose` its exact adjoint.

    Args:
        size: (H, W) of the maps (default the seed's 8 x 256).
        width_m, depth_m: the map's extent (default 38.4 mm x 24 mm: the lung media's 1024 x 37.5 um columns and
            first 32 rows x 0.75 mm); ``depth_m`` may be ``(top, bottom)``.
        probe (*optional*): default ``lung_probe(width_m)`` (32 elements spanning the map, 3 MHz).
        transmitters, receivers: recorded elements (sequences of indices, or an int count of evenly spread ones).
        scatter (`float`, defaults to 0.2): diffuse backscatter per unit map value.
        lateral_pool (`int`, defaults to 2): map columns per reflectivity column (8 x 128 reflectivity grid:
            0.3 mm, below the array's lateral resolution of about a wavelength, 0.5 mm).
        gain (`float`, *optional*): data scale (default: 1 / the peak of the centre element's transmission for
            a unit reflector row at mid-depth without attenuation; the same for every subset).
        noise_std (`float`): channel noise standard deviation in data units (see :meth:`measure` for an SNR).
        das_oversampling (`int`, defaults to 8): DAS rows per map row.
        dtype: float32 (default) or float64.
    """

    name = "fmc"

    def __init__(self, size=(8, 256), width_m: float = 0.0384, depth_m=0.024, probe: Optional[ArrayProbe] = None,
                 attenuation: Union[str, float, np.ndarray] = "map", transmitters=None, receivers=None,
                 scatter: float = 0.2, lateral_pool: int = 2, gain: Optional[float] = None, noise_std: float = 0.0,
                 das_oversampling: int = 8, dtype: torch.dtype = torch.float32):
        super().__init__(noise_std)
        self.size = _size(size)
        h, w = self.size
        probe = lung_probe(width_m) if probe is None else probe
        if not (isinstance(scatter, (int, float)) and math.isfinite(scatter) and scatter >= 0):
            raise ValueError(f"`scatter` must be a number >= 0, got {scatter!r}")
        for name, value in (("das_oversampling", das_oversampling), ("lateral_pool", lateral_pool)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        if w % lateral_pool:
            raise ValueError(f"`lateral_pool` ({lateral_pool}) must divide the map width {w}")
        if isinstance(attenuation, str):
            if attenuation != "map":
                raise ValueError(f"`attenuation` must be 'map', a number or an [H, W] map in dB/cm/MHz, got {attenuation!r}")
            self._fixed_attenuation = None
        else:
            att = np.broadcast_to(np.asarray(attenuation, np.float64), (h, w))
            if not np.all(np.isfinite(att)) or np.any(att < 0):
                raise ValueError("`attenuation` must be finite and >= 0 (dB/cm/MHz)")
            self._fixed_attenuation = torch.from_numpy(att.copy())
        E = probe.num_elements
        tx = subset_indices(E, transmitters) if isinstance(transmitters, (int, np.integer)) else transmitters
        rx = subset_indices(E, receivers) if isinstance(receivers, (int, np.integer)) else receivers
        self.width_m, self.depth_m, self.scatter = float(width_m), depth_m, float(scatter)
        self.lateral_pool, self.das_oversampling = int(lateral_pool), int(das_oversampling)
        self.grid = (h, w // self.lateral_pool)
        x, z = map_grid(self.grid, width_m, depth_m)
        self.row_thickness_m = float(z[1] - z[0]) if h > 1 else float(2 * z[0])
        self.fmc = FullMatrixCapture(probe, x, z, 0.0, tx, rx, dtype=dtype)
        self.probe = probe
        if gain is None:
            centre = FullMatrixCapture(probe, x, z, 0.0, transmitters=[E // 2], dtype=dtype)
            step = torch.zeros(1, *self.grid, dtype=dtype)
            step[:, h // 2, :] = 1.0
            gain = 1.0 / max(float(centre.forward(step.reshape(1, -1)).abs().max()), 1e-30)
        if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
            raise ValueError(f"`gain` must be a positive number, got {gain!r}")
        self.gain = float(gain)

    # ------------------------------------------------------------------ shapes / structure
    @property
    def is_linear(self) -> bool:  # type: ignore[override]
        return self._fixed_attenuation is not None

    @property
    def has_transpose(self) -> bool:
        return self.is_linear

    @property
    def mask(self) -> torch.Tensor:
        """bool [E, E]: recorded (transmitter, receiver) pairs."""
        return torch.from_numpy(self.fmc.mask)

    def _check_size(self, x: torch.Tensor) -> None:
        _check_image(x)
        if x.shape[1] != 1 or tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"maps must be [B, 1, {self.size[0]}, {self.size[1]}] in [-1, 1], got {tuple(x.shape)}")

    def _pool(self, v: torch.Tensor) -> torch.Tensor:
        """[B, H, W] -> [B, H * W / lateral_pool] (mean over ``lateral_pool`` columns)."""
        b, h, w = v.shape
        return v.reshape(b, h, w // self.lateral_pool, self.lateral_pool).mean(-1).reshape(b, -1)

    def _pool_transpose(self, v: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        return (v.reshape(-1, h, w // self.lateral_pool, 1) / self.lateral_pool).expand(-1, -1, -1, self.lateral_pool).reshape(-1, h, w)

    def transmission(self, m: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(T_edge, T_centre)`` [B, H, W] of maps ``m`` [B, H, W] in [0, 1] (fixed ones for a fixed attenuation)."""
        att = map_attenuation(m) if self._fixed_attenuation is None else self._fixed_attenuation.to(m)
        return two_way_transmission(att, self.row_thickness_m, self.probe.center_frequency)

    def reflectivity(self, x: torch.Tensor) -> torch.Tensor:
        """Effective reflectivity ``rho`` [B, P] (P = H W / lateral_pool) of model maps ``x`` [B, 1, H, W]."""
        self._check_size(x)
        m = ((x[:, 0] + 1.0) / 2.0).to(self.fmc.dtype)
        edge, centre = self.transmission(m)
        step = torch.cat([torch.zeros_like(m[:, :1]), m[:, 1:] - m[:, :-1]], dim=1)
        return self._pool(edge * step + self.scatter * centre * m)

    # ------------------------------------------------------------------ operator
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RF data [B, N, E, E] of model maps ``x`` [B, 1, H, W] in [-1, 1] (differentiable)."""
        return (self.gain * self.fmc.forward(self.reflectivity(x))).to(x.dtype)

    def transpose(self, y: torch.Tensor, size=None) -> torch.Tensor:
        """``L^T y`` of the linear part (fixed attenuation only): [B, N, E, E] -> [B, 1, H, W]."""
        if not self.is_linear:
            raise NotImplementedError("with attenuation='map' the operator is non-linear; give a fixed attenuation for a transpose")
        return self.reflectivity_transpose(self.fmc.adjoint(y) * self.gain).to(y.dtype)

    def reflectivity_transpose(self, g: torch.Tensor) -> torch.Tensor:
        """Adjoint of ``x -> rho(x)`` (fixed attenuation; the linear part): [B, P] -> [B, 1, H, W]."""
        if not self.is_linear:
            raise NotImplementedError("with attenuation='map' the operator is non-linear; give a fixed attenuation for a transpose")
        r = self._pool_transpose(g)
        edge, centre = self.transmission(torch.zeros(1, *self.size, dtype=r.dtype))
        a = edge * r
        step_t = torch.cat([torch.zeros_like(a[:, :1]), a[:, 1:]], 1) - torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], 1)
        return (0.5 * (step_t + self.scatter * centre * r))[:, None]

    def measurement_shape(self, image_shape, device=None, dtype=torch.float32):
        return (int(image_shape[0]),) + self.fmc.shape

    def noise_std_map(self, image_shape, device=None, dtype=torch.float32) -> torch.Tensor:
        """``noise_std`` in the recorded channels, 0 in the others (they hold exact zeros)."""
        std = torch.as_tensor(float(self.noise_std), dtype=dtype, device=device)
        return std * self.mask.to(device=device, dtype=dtype)[None, None]

    def measure(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
                snr_db: Optional[float] = None) -> torch.Tensor:
        """Simulated RF data ``A(x) + n`` [B, N, E, E] (no gradient): white Gaussian noise in the recorded channels
        at ``snr_db`` (relative to the RMS of each example's own noise-free recorded data; for a batch of one this
        also sets ``noise_std``; default: the operator's ``snr_db`` attribute when set) or at ``noise_std``."""
        self._check_size(x)
        snr_db = getattr(self, "snr_db", None) if snr_db is None else snr_db
        with torch.no_grad():
            clean = self.forward(x)
            mask = self.mask
            if snr_db is not None:
                std = noise_std_for_snr(clean, snr_db, mask)
                if clean.shape[0] == 1:
                    self.noise_std = float(std[0])
            else:
                std = torch.full((clean.shape[0],), float(self.noise_std), dtype=torch.float64)
            noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
            y = clean.double() + std.reshape(-1, 1, 1, 1) * noise * mask.double()[None, None]
        return y.to(clean.dtype)

    # ------------------------------------------------------------------ DAS
    def das_grid(self) -> Tuple[np.ndarray, np.ndarray]:
        """The DAS grid: the map's columns and ``das_oversampling`` rows per map row: (x [W], z [H k])."""
        h, w = self.size
        return map_grid((h * self.das_oversampling, w), self.width_m, self.depth_m)

    def das_envelope(self, y: torch.Tensor) -> torch.Tensor:
        """DAS envelope of RF data [B, N, E, E], averaged over the ``das_oversampling`` rows of each map row and
        divided by ``gain``: float [B, H, W] (>= 0; the same units for full and sparse data)."""
        h, w = self.size
        gx, gz = self.das_grid()
        env = self.fmc.das(y, gx, gz).abs().reshape(y.shape[0], h, self.das_oversampling, w).mean(2)
        return env / self.gain

    def baseline(self, y: torch.Tensor, size=None) -> torch.Tensor:
        """Log-compressed DAS envelope on the map grid (40 dB below each image's maximum) in [-1, 1]: [B, 1, H, W].
        A picture of the data, not a map estimate (see ``lung_reconstruction.DasMapRule`` for that)."""
        env = self.das_envelope(y)
        peak = env.flatten(1).max(1).values.clamp(min=1e-30).reshape(-1, 1, 1)
        db = 20 * torch.log10(env / peak + 1e-12)
        return ((db / 40.0 + 1.0).clamp(0, 1) * 2 - 1)[:, None]

    def to_image(self, y: torch.Tensor, size=None) -> torch.Tensor:
        return self.baseline(y, size)

    def compressed(self, normal_matrix: Optional[np.ndarray] = None, rank_tolerance: float = 1e-9) -> "CompressedMultistaticOperator":
        """The equivalent operator on whitened coordinates (:class:`CompressedMultistaticOperator`); pass a
        cached ``FullMatrixCapture.normal_matrix()`` of this acquisition to skip computing it."""
        return CompressedMultistaticOperator(self, normal_matrix, rank_tolerance)

    def __repr__(self) -> str:
        att = "map" if self._fixed_attenuation is None else "fixed"
        return (f"MultistaticOperator(size={self.size}, elements={self.probe.num_elements}, "
                f"transmitters={len(self.fmc.transmitters)}, receivers={len(self.fmc.receivers)}, "
                f"samples={self.fmc.num_samples}, attenuation={att!r}, noise_std={float(self.noise_std):.3g})")


class CompressedMultistaticOperator(LinearOperator):
    r"""The RF operator in whitened coordinates: ``z(x) = Sigma V^T rho(x)`` [B, K] with ``FMC = U Sigma V^T``.

    ``FMC^T FMC = V Sigma^2 V^T`` over the K eigenvalues above ``rank_tolerance`` times the largest; the RF misfit
    ``||y - gain FMC rho||^2`` equals ``||z_y - gain Sigma V^T rho||^2`` plus a term that does not depend on rho,
    with ``z_y = Sigma^-1 V^T FMC^T y`` (:meth:`compress`), whose noise is white with the RF noise's standard
    deviation. So sampling with these K numbers per case is the same posterior as with the N x E x E RF samples,
    at a fraction of the cost. :meth:`gram` returns ``diag(J R J^T)`` for the Jacobian of the linearised model
    at ``linearisation_map`` (default a uniform tissue map; e.g. the mean of the training maps): exact for a fixed attenuation and a pixel-uniform prior variance (then the pipeline's
    ``method="projection"`` is the exact Gaussian conditional mean), the DPS gain's scale otherwise.
    """

    name = "fmc-compressed"

    def __init__(self, operator: MultistaticOperator, normal_matrix: Optional[np.ndarray] = None,
                 rank_tolerance: float = 1e-9, linearisation_map: Optional[np.ndarray] = None):
        if not isinstance(operator, MultistaticOperator):
            raise TypeError(f"`operator` must be a MultistaticOperator, got {type(operator).__name__}")
        self.operator = operator
        super().__init__(operator.noise_std)
        g = operator.fmc.normal_matrix() if normal_matrix is None else np.asarray(normal_matrix, np.float64)
        p = operator.fmc.num_points
        if g.shape != (p, p):
            raise ValueError(f"`normal_matrix` must be [{p}, {p}] for {operator!r}, got {g.shape}")
        lam, vec = np.linalg.eigh(g)
        keep = lam > float(rank_tolerance) * float(lam.max())
        self.eigenvalues = torch.from_numpy(lam[keep][::-1].copy())  # [K] descending
        self.basis = torch.from_numpy(vec[:, keep][:, ::-1].copy())  # V [P, K]
        self.singular_values = self.eigenvalues.sqrt()
        self.size = operator.size
        #: map [H, W] in [0, 1] where :meth:`gram` linearises the model (None: uniform tissue, m = 0.77)
        self.linearisation_map = linearisation_map
        self._jacobian = None

    @property
    def noise_std(self) -> float:
        """The RF operator's noise standard deviation (shared: setting it here sets it there)."""
        return self.operator.noise_std

    @noise_std.setter
    def noise_std(self, value) -> None:
        self.operator.noise_std = value

    @property
    def is_linear(self) -> bool:  # type: ignore[override]
        return self.operator.is_linear

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.numel())

    def compress(self, y: torch.Tensor) -> torch.Tensor:
        """Whitened measurements ``Sigma^-1 V^T FMC^T y`` [B, K] of RF data [B, N, E, E]."""
        lt = self.operator.fmc.adjoint(y).double()
        return (lt @ self.basis / self.singular_values).to(y.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rho = self.operator.reflectivity(x).to(torch.float64)
        z = self.operator.gain * (rho @ self.basis) * self.singular_values
        return z.to(x.dtype)

    def transpose(self, z: torch.Tensor, size=None) -> torch.Tensor:
        """Adjoint of the linear part (fixed attenuation only): [B, K] -> [B, 1, H, W]."""
        lt = (z.double() * self.singular_values) @ self.basis.T  # V Sigma z
        return self.operator.reflectivity_transpose(lt * self.operator.gain).to(z.dtype)

    def _linear_rows(self) -> torch.Tensor:
        """J [K, P_map] of the linearised model (at a tissue map for attenuation='map'), float64, cached."""
        if self._jacobian is None:
            op = self.operator
            h, w = op.size
            if self.linearisation_map is None:
                x0 = torch.full((1, 1, h, w), 2 * 0.77 - 1, dtype=torch.float64)
            else:
                x0 = torch.as_tensor(np.asarray(self.linearisation_map), dtype=torch.float64).reshape(1, 1, h, w) * 2 - 1
            jac = torch.autograd.functional.jacobian(lambda v: self.forward(v.reshape(1, 1, h, w)).reshape(-1), x0.reshape(-1),
                                                     vectorize=True)
            self._jacobian = jac.detach()
        return self._jacobian

    def gram(self, prior_var: torch.Tensor) -> torch.Tensor:
        """``diag(J diag(R) J^T)`` [B, K] for the prior variance R [B, 1, H, W] (see the class docstring)."""
        j = self._linear_rows()
        r = prior_var.reshape(prior_var.shape[0], -1).to(torch.float64)
        return (r @ (j.T ** 2)).to(prior_var.dtype)

    def project(self, x: torch.Tensor, y: torch.Tensor, prior_var: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.is_linear:
            raise NotImplementedError("the projection needs a fixed attenuation (a linear operator); use method='dps'")
        return super().project(x, y, prior_var)

    def measurement_shape(self, image_shape, device=None, dtype=torch.float32):
        return (int(image_shape[0]), self.rank)

    def noise_std_map(self, image_shape, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(float(self.operator.noise_std), dtype=dtype, device=device)

    def baseline(self, z: torch.Tensor, size=None) -> torch.Tensor:
        raise NotImplementedError("the compressed data have no picture; use MultistaticOperator.baseline on the RF data")

    def __repr__(self) -> str:
        return f"CompressedMultistaticOperator(rank={self.rank}, of {self.operator!r})"


# ------------------------------------------------------------------------------------------------ the lung acquisition
#: The lung media's pooled map: 1024 columns x 37.5 um wide, the first 32 rows x 0.75 mm deep.
LUNG_WIDTH_M = 1024 * 37.5e-6
LUNG_DEPTH_M = 32 * 0.75e-3
DEFAULT_SNR_DB = 20.0


def parse_fmc_spec(text: str) -> Dict[str, Optional[float]]:
    """``"tx=8,rx=32,snr=20"`` (any order, any subset; ``:`` or ``,`` separated) -> ``{"tx", "rx", "snr"}``
    (element counts, None = all 32; SNR in dB, default :data:`DEFAULT_SNR_DB`)."""
    out: Dict[str, Optional[float]] = {"tx": None, "rx": None, "snr": DEFAULT_SNR_DB}
    for token in [t.strip() for t in str(text or "").replace(":", ",").split(",") if t.strip()]:
        key, sep, value = token.partition("=")
        key = key.strip().lower()
        if not sep or key not in out:
            raise ValueError(f"unknown fmc option {token!r}; expected tx=COUNT, rx=COUNT, snr=DB")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"fmc option {key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"fmc option {key} must be finite, got {value!r}")
        if key in ("tx", "rx"):
            if number != int(number) or not 1 <= number <= 32:
                raise ValueError(f"fmc option {key} must be a whole number of elements in [1, 32], got {value!r}")
            out[key] = None if int(number) == 32 else int(number)
        else:
            out[key] = number
    return out


def fmc_operator_from_spec(arg: str, size=None, noise_std: Optional[float] = None):
    """The operator of the text after ``fmc:`` (:func:`parse_fmc_spec`), for 8 x 256 lung maps: a
    ``MultistaticOperator`` whose ``snr_db`` attribute sets the noise of ``measure`` (``noise_std``, absolute in
    data units, overrides the SNR)."""
    from ..data.lung_media import POOLED_SHAPE

    if size is not None and tuple(int(v) for v in np.broadcast_to(size, (2,))[-2:]) != tuple(POOLED_SHAPE):
        raise ValueError(f"the fmc operator images lung maps of {POOLED_SHAPE[0]}x{POOLED_SHAPE[1]}, got size {size}")
    options = parse_fmc_spec(arg)
    op = lung_rf_operator(options["tx"], options["rx"], noise_std=0.0 if noise_std is None else float(noise_std))
    op.snr_db = None if noise_std is not None else options["snr"]
    return op


def lung_rf_operator(transmitters=None, receivers=None, noise_std: float = 0.0, **kwargs):
    """The lung acquisition: ``MultistaticOperator`` on the 8 x 256 map (38.4 mm x 24 mm), 32 elements, with
    ``transmitters`` / ``receivers`` element counts (evenly spread) or index lists; ``kwargs`` go to the operator."""
    kwargs.setdefault("width_m", LUNG_WIDTH_M)
    kwargs.setdefault("depth_m", LUNG_DEPTH_M)
    kwargs.setdefault("das_oversampling", 4)
    return MultistaticOperator(transmitters=transmitters, receivers=receivers, noise_std=noise_std, **kwargs)
