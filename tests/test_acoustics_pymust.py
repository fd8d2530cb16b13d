# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Validation against pymust (MUST, D. Garcia), an implementation nobody here wrote.

* Our delay-and-sum (the adjoint of the channel operator without the pulse) equals pymust's ``dasmtx`` applied to
  the same I/Q data (correlation > 0.9999; the small difference is the cubic vs linear interpolation of the
  transmit delays between elements).
* Our Born-model channel data of a scatterer map agree with ``simus`` + ``rf2iq`` for the same map and probe:
  magnitude of the complex correlation 0.95 (P4-2v, diverging wave) and 0.89 (L11-5v, plane wave); why not 1:
  pymust's pulse is a one-cycle windowed sine through the element response, not a Gaussian; its element width is
  integrated and its directivity and obliquity are frequency dependent; rf2iq low-pass filters).
"""

import numpy as np
import pytest
import torch

pymust = pytest.importorskip("pymust", reason="pymust is the optional [simulation] extra: pip install pymust")

from ultrasound_diffusers.acoustics import (  # noqa: E402
    ChannelOperator,
    diverging_wave_delays,
    get_probe,
    plane_wave_delays,
    to_pymust_param,
)
from ultrasound_diffusers.acoustics.simulation import ChannelAcquisition, simulate_channels  # noqa: E402


def _options():
    options = pymust.utils.Options()
    options.WaitBar = False
    return options


def _scatterers(probe, n, seed, depth):
    rng = np.random.default_rng(seed)
    th = rng.uniform(-0.4, 0.4, n)
    r = rng.uniform(0.25 * depth, depth, n)
    return r * np.sin(th), r * np.cos(th), rng.standard_normal(n)


def _corr(a, b):
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    return abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))


CASES = [("P4-2v", "diverging", 0.05, 0.1), ("L11-5v", "plane", 0.02, 0.12), ("C5-2v", "diverging", 0.05, 0.0)]


@pytest.mark.parametrize("name,kind,depth,angle", CASES)
def test_das_matches_pymust_dasmtx(name, kind, depth, angle):
    probe = get_probe(name)
    param = to_pymust_param(probe)
    delays = plane_wave_delays(probe, [angle]) if kind == "plane" else diverging_wave_delays(probe, [angle])
    x, z, rc = _scatterers(probe, 25, 0, depth)
    rf, _ = pymust.simus(x.reshape(1, -1), z.reshape(1, -1), rc.reshape(1, -1), delays, param, _options())
    iq = pymust.rf2iq(rf, param.fs, param.fc)
    gx, gz = np.meshgrid(np.linspace(-0.3 * depth, 0.3 * depth, 24), np.linspace(0.3 * depth, depth, 30))
    matrix = pymust.dasmtx(1j * np.array(iq.shape), gx, gz, delays, param)
    reference = (matrix @ iq.flatten(order="F")).reshape(gx.shape, order="F")
    ours = ChannelOperator(probe, delays, gx.ravel(), gz.ravel(), iq.shape[0], pulse=None, dtype=torch.float64)
    bf = ours.das(torch.from_numpy(np.ascontiguousarray(iq.T))[None, None])[0].numpy().reshape(gx.shape)
    assert _corr(bf, reference) > 0.9999
    assert np.linalg.norm(bf - reference) < 0.02 * np.linalg.norm(reference)


@pytest.mark.parametrize("name,kind,depth,angle,threshold", [CASES[0][:4] + (0.93,), CASES[1][:4] + (0.85,)])
def test_born_channel_data_match_simus(name, kind, depth, angle, threshold):
    probe = get_probe(name)
    param = to_pymust_param(probe)
    delays = plane_wave_delays(probe, [angle]) if kind == "plane" else diverging_wave_delays(probe, [angle])
    x, z, rc = _scatterers(probe, 30, 1, depth)
    rf, _ = pymust.simus(x.reshape(1, -1), z.reshape(1, -1), rc.reshape(1, -1), delays, param, _options())
    iq = pymust.rf2iq(rf, param.fs, param.fc)  # [N, E]
    plain = ChannelOperator(probe, delays, x, z, iq.shape[0], dtype=torch.float64)
    physical = ChannelOperator(probe, delays, x, z, iq.shape[0], weights="physical", dtype=torch.float64)
    r = torch.from_numpy(rc)[None]
    c_plain = _corr(plain.forward(r)[0, 0].numpy().T, iq)
    c_physical = _corr(physical.forward(r)[0, 0].numpy().T, iq)
    # measured: P4-2v 0.952 (0.892 without the weights), L11-5v 0.890 (0.546 without)
    assert c_physical > threshold
    assert c_physical > c_plain
    # a wrong geometry (scatterers shifted by a wavelength) destroys the agreement
    shifted = ChannelOperator(probe, delays, x, z + probe.wavelength / 2, iq.shape[0], weights="physical", dtype=torch.float64)
    assert _corr(shifted.forward(r)[0, 0].numpy().T, iq) < 0.5


def test_pymust_simulator_path():
    acq = ChannelAcquisition(probe="P4-2v", depth=0.03, angles_deg=(0.0,))
    x, z, rc = _scatterers(acq.array, 10, 2, 0.03)
    iq = simulate_channels(x, z, rc, acq, 500, simulator="pymust")
    born = simulate_channels(x, z, rc, acq, 500, simulator="born")
    assert iq.shape == born.shape == (1, 64, 500) and iq.dtype == np.complex64
    assert _corr(iq, born) > 0.9
