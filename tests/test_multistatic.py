"""Multistatic (full matrix capture) RF operator of lung maps: adjoint, shapes, subsets, noise, DAS, physics."""

import math

import numpy as np
import pytest
import torch

from ultrasound_diffusers.acoustics.multistatic import (
    FullMatrixCapture,
    MultistaticOperator,
    channel_mask,
    lung_probe,
    map_attenuation,
    map_grid,
    noise_std_for_snr,
    rf_pulse,
    subset_indices,
    two_way_transmission,
)


def _small(attenuation=0.7, **kwargs):
    """An 8-element array over a 1 cm x 1 cm map of 4 x 16 pixels (reflectivity 4 x 8), float64."""
    return MultistaticOperator(size=(4, 16), width_m=0.01, depth_m=0.01, probe=lung_probe(0.01, num_elements=8),
                               attenuation=attenuation, dtype=torch.float64, **kwargs)


@pytest.fixture(scope="module")
def lung_op():
    return MultistaticOperator()  # the default lung acquisition: 8 x 256 map, 32 elements, attenuation from the map


def test_fmc_adjoint_float64():
    probe = lung_probe(0.01, num_elements=8)
    x, z = map_grid((4, 16), 0.01, 0.01)
    fmc = FullMatrixCapture(probe, x, z, attenuation=np.linspace(0.5, 3, 64).reshape(4, 16), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, fmc.num_points, dtype=torch.float64, generator=g)
    y = torch.randn((3,) + fmc.shape, dtype=torch.float64, generator=g)
    lhs, rhs = float((fmc.forward(r) * y).sum()), float((r * fmc.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-6 * abs(lhs)
    # the normal matrix is A^T A exactly
    assert np.allclose(fmc.adjoint(fmc.forward(r)).numpy(), r.numpy() @ fmc.normal_matrix(channels_per_batch=5), rtol=1e-9, atol=1e-9)


def test_operator_adjoint_fixed_attenuation_and_compressed_misfit():
    op = _small()
    assert op.is_linear
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 4, 16, dtype=torch.float64, generator=g)
    y = torch.randn((2,) + op.fmc.shape, dtype=torch.float64, generator=g)
    lin = op(x) - op(torch.zeros_like(x))
    lhs, rhs = float((lin * y).sum()), float((x * op.transpose(y)).sum())
    assert abs(lhs - rhs) <= 1e-6 * abs(lhs)
    comp = op.compressed()
    z = torch.randn(2, comp.rank, dtype=torch.float64, generator=g)
    lin = comp(x) - comp(torch.zeros_like(x))
    assert abs(float((lin * z).sum()) - float((x * comp.transpose(z)).sum())) <= 1e-6 * abs(float((lin * z).sum()))
    # the whitened data give the same misfit as the RF data, up to a constant that does not depend on x
    data = op.measure(x[:1], snr_db=10.0, generator=torch.Generator().manual_seed(2))
    zy = comp.compress(data)
    gaps = [float(((data - op(v)) ** 2).sum() - ((zy - comp(v)) ** 2).sum()) for v in (x[:1], x[1:], 0 * x[:1])]
    assert np.ptp(gaps) < 1e-6 * abs(gaps[0])


def test_map_attenuation_operator_is_nonlinear_and_refuses_transpose():
    op = _small(attenuation="map")
    assert not op.is_linear and not op.has_transpose
    with pytest.raises(NotImplementedError, match="non-linear"):
        op.transpose(torch.zeros((1,) + op.fmc.shape, dtype=torch.float64))


def test_shapes_and_subset_masks(lung_op):
    maps = torch.full((2, 1, 8, 256), 0.5)
    y = lung_op(maps)
    assert y.shape == (2, lung_op.fmc.num_samples, 32, 32) and lung_op.fmc.num_samples > 100
    sparse = MultistaticOperator(transmitters=8, receivers=8)
    ys = sparse(maps)
    assert ys.shape == y.shape
    mask = sparse.mask
    assert int(mask.sum()) == 64 and mask[2, 2] and not mask[0, 0]
    assert float(ys[:, :, ~mask].abs().max()) == 0.0
    # the recorded channels hold the same data as in the full acquisition (one gain for every subset)
    assert torch.allclose(ys[:, :, mask], y[:, :, mask], rtol=1e-5, atol=1e-7)
    assert list(subset_indices(32, 8)) == [2, 6, 10, 14, 18, 22, 26, 30]
    assert channel_mask(4, [1], None).sum() == 4
    with pytest.raises(ValueError, match="transmitters"):
        channel_mask(4, [5], None)


def test_noise_at_requested_snr(lung_op):
    x = torch.full((1, 1, 8, 256), 0.5)
    x[:, :, 3:] = -0.8  # aerated lung below a pleural line
    clean = lung_op(x)
    y = lung_op.measure(x, generator=torch.Generator().manual_seed(0), snr_db=10.0)
    noise = (y - clean).double()
    snr = 20 * math.log10(float(clean.double().pow(2).mean().sqrt()) / float(noise.std()))
    assert abs(snr - 10.0) < 0.1
    assert lung_op.noise_std == pytest.approx(float(noise_std_for_snr(clean, 10.0)[0]))


def test_das_focuses_a_point_scatterer():
    probe = lung_probe(0.02, num_elements=32)
    x0, z0 = 2.5e-3, 12e-3
    fmc = FullMatrixCapture(probe, np.array([x0]), np.array([z0]), dtype=torch.float64, num_samples=600, t0=0)
    y = fmc.forward(torch.ones(1, 1, dtype=torch.float64))
    gx = np.linspace(-3.5e-3, 8.5e-3, 61)  # 0.2 mm
    gz = np.linspace(10e-3, 14e-3, 41)  # 0.1 mm
    image = fmc.das(y, gx, gz).abs().reshape(41, 61).numpy()
    iz, ix = np.unravel_index(image.argmax(), image.shape)
    assert abs(gz[iz] - z0) <= 0.1e-3 and abs(gx[ix] - x0) <= 0.2e-3
    # focused: the peak stands well above the image 2 mm away laterally
    assert image[iz, ix] > 3 * image[iz, ix + 10]


def test_rf_pulse_is_a_modulated_gaussian():
    probe = lung_probe()
    pulse = rf_pulse(probe)
    assert pulse.size % 2 == 1 and pulse[pulse.size // 2] == pytest.approx(1.0)
    spectrum = np.abs(np.fft.rfft(pulse, 4096))
    peak_hz = np.fft.rfftfreq(4096, 1 / probe.sampling_frequency)[spectrum.argmax()]
    assert abs(peak_hz - probe.center_frequency) < 0.1e6


def test_attenuation_physics_matches_media_and_shadows_aerated_lung():
    from ultrasound_diffusers.data.lung_media import lung_maps, map_to_properties

    maps, _ = lung_maps(6, seed=3)
    expected = map_to_properties(maps)["attenuation"]
    assert np.allclose(map_attenuation(torch.from_numpy(maps)).numpy(), expected, atol=1e-4)
    m = torch.full((2, 8, 4), 0.77)
    m[0, 3:] = 0.08  # aerated lung (aeration 0.9) under the pleura
    edge, centre = two_way_transmission(map_attenuation(m), 3e-3, 3e6)
    assert float(centre[0, 6].max()) < 1e-3 < 0.1 < float(centre[1, 6].min())
    assert torch.all(edge >= centre) and torch.all(edge[:, 0] == 1)
