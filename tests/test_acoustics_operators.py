# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Channel-data operators, delay-and-sum, the simulation path (Born model) and ultrasound metrics (no pymust)."""

import math
import sys

import numpy as np
import pytest
import torch

from ultrasound_diffusers.acoustics import (
    PROBES,
    ChannelDataOperator,
    ChannelOperator,
    complex_to_real,
    diverging_wave_delays,
    envelope_to_image,
    get_probe,
    image_to_envelope,
    plane_wave_delays,
)
from ultrasound_diffusers.acoustics.simulation import (
    ChannelAcquisition,
    channel_data_operator,
    image_points,
    num_fast_time_samples,
    require_pymust,
    simulate_channel_phantom,
    sparse_receive_elements,
)
from ultrasound_diffusers.evaluation.ultrasound_metrics import cnr, fwhm, gcnr, point_target_resolution


def _points(n, depth, half_width, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-half_width, half_width, n), rng.uniform(0.2 * depth, depth, n)


def _crandn(shape, generator, dtype=torch.float64):
    return torch.complex(torch.randn(shape, generator=generator, dtype=dtype), torch.randn(shape, generator=generator, dtype=dtype))


CONFIGS = [
    # probe, transmit kind, kwargs
    ("L11-5v", "plane", dict()),
    ("L11-5v", "plane", dict(transmits=[1], receive_elements=list(range(0, 128, 4)))),
    ("P4-2v", "diverging", dict(weights="physical")),
    ("P4-2v", "diverging", dict(pulse=None, fnumber=1.0)),
    ("C5-2v", "diverging", dict(receive_elements=list(range(10, 120, 3)))),
]


@pytest.mark.parametrize("probe_name,kind,kwargs", CONFIGS)
def test_channel_operator_adjoint(probe_name, kind, kwargs):
    """<A r, y> = <r, A^H y> (complex inner products) for every acquisition variant."""
    probe = get_probe(probe_name)
    angles = np.radians([-8.0, 0.0, 8.0])
    delays = plane_wave_delays(probe, angles) if kind == "plane" else diverging_wave_delays(probe, angles)
    depth = 60 * probe.wavelength
    x, z = _points(40, depth, 0.4 * probe.aperture, seed=1)
    n = int(2.5 * depth / probe.speed_of_sound * probe.sampling_frequency) + 40
    op = ChannelOperator(probe, delays, x, z, n, dtype=torch.float64, **kwargs)
    g = torch.Generator().manual_seed(0)
    r = _crandn((2, op.num_points), g)
    y = _crandn((2,) + op.shape, g)
    lhs = torch.vdot(op.forward(r).reshape(-1), y.reshape(-1))
    rhs = torch.vdot(r.reshape(-1), op.adjoint(y).reshape(-1))
    assert abs(lhs) > 0
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    # the operator is not trivially self-consistent: A^H A r correlates with r (point reflectors are resolved)
    back = op.adjoint(op.forward(r))
    corr = abs(torch.vdot(back.reshape(-1), r.reshape(-1))) / (back.norm() * r.norm())
    assert corr > 0.3


def test_das_is_the_adjoint_without_pulse_and_focuses_a_point():
    probe = get_probe("P4-2v")
    delays = diverging_wave_delays(probe, [0.0])
    target = (0.004, 0.03)
    xs, zs = np.meshgrid(np.linspace(-0.008, 0.016, 49), np.linspace(0.026, 0.034, 41))
    n = int(2.2 * 0.04 / probe.speed_of_sound * probe.sampling_frequency)
    source = ChannelOperator(probe, delays, [target[0]], [target[1]], n, dtype=torch.float64)
    data = source.forward(torch.ones(1, 1, dtype=torch.complex128))
    grid = ChannelOperator(probe, delays, xs.ravel(), zs.ravel(), n, pulse=None, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    y = _crandn((1,) + grid.shape, g)
    assert torch.allclose(grid.das(y), grid.adjoint(y))
    env = grid.das(data)[0].abs().reshape(xs.shape).numpy()
    row, col = np.unravel_index(np.argmax(env), env.shape)
    assert abs(xs[row, col] - target[0]) < probe.wavelength and abs(zs[row, col] - target[1]) < probe.wavelength / 2
    res = point_target_resolution(env, spacing=(zs[1, 0] - zs[0, 0], xs[0, 1] - xs[0, 0]), center=(row, col), half_window=20)
    # diffraction: lateral ~ lambda z / aperture, axial ~ the pulse length; both finite and ordered so
    assert probe.wavelength / 4 < res["axial_fwhm"] < 3 * probe.wavelength
    assert res["axial_fwhm"] < res["lateral_fwhm"] < 4 * probe.wavelength * target[1] / probe.aperture


def test_channel_operator_bad_inputs():
    probe = get_probe("L11-5v")
    delays = plane_wave_delays(probe, [0.0])
    with pytest.raises(ValueError, match="delays"):
        ChannelOperator(probe, np.zeros((1, 5)), [0.0], [0.01], 100)
    with pytest.raises(ValueError, match="receive_elements"):
        ChannelOperator(probe, delays, [0.0], [0.01], 100, receive_elements=[0, 0, 3])
    with pytest.raises(ValueError, match="transmits"):
        ChannelOperator(probe, delays, [0.0], [0.01], 100, transmits=[2])
    with pytest.raises(ValueError, match="weights"):
        ChannelOperator(probe, delays, [0.0], [0.01], 100, weights="magic")
    op = ChannelOperator(probe, delays, [0.0, 0.001], [0.01, 0.01], 100)
    with pytest.raises(ValueError, match="reflectivity"):
        op.forward(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="channel data"):
        op.das(torch.zeros(1, 1, 128, 99, dtype=torch.complex64))
    with pytest.raises(ValueError, match="unknown probe"):
        get_probe("X1-1")
    with pytest.raises(ValueError, match="linear array"):
        plane_wave_delays(get_probe("C5-2v"), [0.0])
    assert set(PROBES) == {"L11-5v", "P4-2v", "C5-2v"}


def test_log_compression_round_trip():
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)
    env = image_to_envelope(x, 50.0)
    assert torch.allclose(env[0], torch.tensor(10 ** (-2.5), dtype=torch.float64)) and torch.allclose(env[-1], torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(envelope_to_image(env, 50.0), x)


# ------------------------------------------------------------------------------------------------ B-mode link
SMALL = ChannelAcquisition(probe="P4-2v", depth=0.04, angles_deg=(-10.0, 0.0, 10.0), scatterers_per_mm2=0.6)


def _small_phantom(size=32):
    from ultrasound_diffusers.data.phantoms import make_phantom

    _, labels, _ = make_phantom("echo", size=size, seed=4242, index=0)
    return labels


@pytest.fixture(scope="module")
def born_phantom():
    labels = _small_phantom()
    return simulate_channel_phantom(labels, SMALL, seed=0, simulator="born")


def test_born_phantom_bmode(born_phantom):
    image, labels = born_phantom["image"], born_phantom["labels"]
    assert image.shape == labels.shape and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    assert np.all(image[labels == 0] == 0)
    # blood (-50 dB) is darker than myocardium (-3 dB) even with the clutter of three diverging waves
    assert image[labels == 1].mean() < image[labels == 3].mean() - 0.1
    assert born_phantom["iq"].shape[:2] == (3, 64) and born_phantom["iq"].dtype == np.complex64


def test_channel_data_operator_full_baseline_is_the_bmode(born_phantom):
    """The operator's DAS baseline of the full data reproduces beamform_bmode (same gain, TGC and reference)."""
    size = born_phantom["labels"].shape
    iq = torch.from_numpy(born_phantom["iq"])
    op = channel_data_operator(size, SMALL, iq.shape[-1], born_phantom["reference"], pulse=None)
    base = (op.baseline(complex_to_real(iq[None]))[0, 0].numpy() + 1) / 2
    assert np.allclose(base, born_phantom["image"], atol=1e-4)
    assert op.measurement_shape((1, 1) + size) == (1, 3, 64, iq.shape[-1], 2)


def test_channel_data_operator_jacobian_adjoint_and_fit(born_phantom):
    """Autograd's J^T equals the analytic adjoint (A^H of the complex operator, chain rule of the log
    compression), and the true B-mode image explains the data better than a flat grey image."""
    labels = born_phantom["labels"]
    size = labels.shape
    iq = torch.from_numpy(born_phantom["iq"])
    op = channel_data_operator(size, SMALL, iq.shape[-1], born_phantom["reference"], transmits=[1],
                               receive_elements=sparse_receive_elements(64, 4))
    y = complex_to_real(iq[op.channel_operator.transmits][:, op.channel_operator.receive_elements][None])
    op.set_phase_from(y)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((1, 1) + size, generator=g, dtype=torch.float64) * 2 - 1)
    w = torch.randn(op.measurement_shape(x.shape), generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad((op(xg) * w).sum(), xg)
    # analytic: d/dx of Re<w_c, A(s(x) u)> = s'(x) Re(conj(u) A^H w_c)
    cop = op.channel_operator
    values = x.reshape(1, -1)[:, op.pixel_index]
    ds = image_to_envelope(values, op.dynamic_range_db) * math.log(10) * op.dynamic_range_db / 40.0
    ds = ds * op.reference / (op.full_gain * op.tgc)
    back = cop.adjoint(torch.view_as_complex(w.contiguous()).to(torch.complex64)).to(torch.complex128)
    analytic = torch.zeros(1, size[0] * size[1], dtype=torch.float64)
    analytic[:, op.pixel_index] = ds * (op.phase.conj() * back).real
    assert torch.allclose(vjp.reshape(1, -1), analytic, rtol=2e-3, atol=1e-6 * analytic.abs().max())
    # <J v, w> = <v, J^T w>
    eps = 1e-3  # the operator computes in float32: a larger step keeps the round-off small
    jv = (op(x + eps * v) - op(x - eps * v)) / (2 * eps)
    assert torch.allclose((jv * w).sum(), (v * vjp).sum(), rtol=2e-3)
    truth = torch.from_numpy(2.0 * born_phantom["image"] - 1.0)[None, None].double()
    grey = torch.where(torch.from_numpy(labels > 0), torch.zeros_like(truth), -torch.ones_like(truth))
    assert (op(truth) - y).norm() < (op(grey) - y).norm()
    assert op.lipschitz(x.shape, iterations=5, dtype=torch.float64) > 0


def test_channel_data_operator_errors(born_phantom):
    size = born_phantom["labels"].shape
    op = channel_data_operator(size, SMALL, born_phantom["iq"].shape[-1], born_phantom["reference"], transmits=[0])
    with pytest.raises(ValueError, match="images must be"):
        op(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="phase"):
        op.set_phase(np.ones(3))
    with pytest.raises(TypeError, match="ChannelOperator"):
        ChannelDataOperator("not an operator", [0], (4, 4))
    with pytest.raises(ValueError, match="simulator"):
        simulate_channel_phantom(born_phantom["labels"], SMALL, simulator="field2")


def test_geometry_helpers():
    x, z, index, inside = image_points((32, 32), SMALL)
    assert x.shape == z.shape == index.shape and inside.sum() == index.size
    assert z.min() >= 0 and np.hypot(x, z).max() <= SMALL.depth * 1.001
    assert sparse_receive_elements(64, 4).tolist() == list(range(1, 64, 4))
    assert num_fast_time_samples(SMALL, x, z) > 2 * SMALL.depth / 1540 * get_probe("P4-2v").sampling_frequency
    linear = ChannelAcquisition(probe="L11-5v", depth=0.02, geometry="linear", angles_deg=(0.0,))
    xl, zl, il, _ = image_points((16, 16), linear)
    assert il.size == 256 and abs(xl.max() + xl.min()) < 1e-12


def test_pymust_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymust", None)
    with pytest.raises(ImportError, match="pip install"):
        require_pymust()


# ------------------------------------------------------------------------------------------------ metrics
def test_gcnr_cnr_fwhm():
    rng = np.random.default_rng(0)
    image = np.concatenate([rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)]).reshape(40, 100)
    a = np.zeros_like(image, bool)
    a[:20] = True
    assert gcnr(image, a, ~a, bins=20) < 0.1
    separated = image + 10 * a
    assert gcnr(separated, a, ~a) == pytest.approx(1.0)
    # invariant to a monotonic transform of the grey scale (computed on B-mode or envelope alike)
    partial = image + 1.5 * a
    assert gcnr(np.exp(partial), a, ~a, bins=100) == pytest.approx(gcnr(partial, a, ~a, bins=100), abs=0.05)
    assert cnr(partial, a, ~a) == pytest.approx(1.5 / math.sqrt(2), rel=0.1)
    t = np.arange(-30, 31, dtype=np.float64)
    assert fwhm(np.exp(-0.5 * (t / 4.0) ** 2), spacing=0.5) == pytest.approx(0.5 * 4.0 * 2 * math.sqrt(2 * math.log(2)), rel=1e-2)
    assert fwhm(np.ones(5)) == float("inf")
    with pytest.raises(ValueError, match="masks"):
        gcnr(image, a[:10], ~a)


# ------------------------------------------------------------------------------------------------ make_operator / CLI
def test_make_operator_channels_and_measure():
    from ultrasound_diffusers.operator_registry import make_operator
    from ultrasound_diffusers.schedulers import BMapAttenuationScheduler

    scheduler = BMapAttenuationScheduler(probe_geometry="convex")
    op = make_operator("channels:elements=4:snr=20", size=(32, 32), scheduler=scheduler)
    assert isinstance(op, ChannelDataOperator)
    assert len(op.channel_operator.receive_elements) == 16 and len(op.channel_operator.transmits) == 3
    single = make_operator("channels:single", size=(32, 32), scheduler=scheduler)
    assert single.channel_operator.transmits.tolist() == [1]
    with pytest.raises(ValueError, match="channels option"):
        make_operator("channels:bogus=1", size=(32, 32), scheduler=scheduler)
    from ultrasound_diffusers.data.phantoms import make_phantom

    image, _, _ = make_phantom("echo", size=32, seed=4242, index=1)
    x = torch.from_numpy(2.0 * image - 1.0)[None, None].float()
    y = op.measure(x, generator=torch.Generator().manual_seed(0))
    assert tuple(y.shape) == op.measurement_shape(x.shape)
    clean = op(x)
    # 20 dB SNR: the noise is a tenth of the data RMS; the phase came from the data, so A(x) explains part of y
    assert op.noise_std == pytest.approx(float(clean.pow(2).mean().sqrt()) * 0.1, rel=0.5)
    assert (y - clean).norm() < y.norm()
    base = op.baseline(y)
    assert base.shape == x.shape and base.min() >= -1 and base.max() <= 1
    linear = make_operator("channels:elements=2", size=(16, 16), scheduler=BMapAttenuationScheduler(probe_geometry="linear"))
    assert linear.channel_operator.probe.name == "L11-5v"


@pytest.mark.slow
def test_reconstruct_cli_with_channels(tmp_path):
    import json
    import subprocess

    out = tmp_path / "rec"
    cmd = [sys.executable, "-m", "ultrasound_diffusers", "reconstruct", "--image", "phantoms:echo:1:4242", "--operator",
           "channels:elements=4", "--num_samples", "2", "--num_inference_steps", "4", "--out", str(out)]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "ChannelDataOperator" in metrics["operator"]
    assert (out / "reconstruction.png").is_file()
