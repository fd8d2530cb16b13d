"""Forward operators of the reconstruction pipeline: shapes, adjoints, projections, baselines, errors."""

import math

import numpy as np
import pytest
import torch

from ultrasound_diffusers.operators import (
    AreaDownsample,
    DepthAttenuation,
    FunctionOperator,
    Mask,
    MissingScanLines,
    harmonic_inpainting,
    shadow_mask,
)
from ultrasound_diffusers.operator_registry import OPERATOR_BUILDERS, OPERATOR_SPECS, make_operator, operator_kinds
from ultrasound_diffusers.geometry import fan_mask
from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler

SIZE = (32, 24)


def _operators():
    """(id, operator) pairs covering every class and geometry; all for SIZE images."""
    region = torch.zeros(SIZE, dtype=torch.bool)
    region[10:20, 5:12] = True
    return [
        ("lines_linear", MissingScanLines(4, offset=1)),
        ("lines_convex", MissingScanLines(3, probe_geometry="convex", num_beams=20)),
        ("lines_convex_fan_only", MissingScanLines(2, probe_geometry="convex", measure_outside_fan=False)),
        ("downsample", AreaDownsample((4, 2))),
        ("attenuation", DepthAttenuation(noise_std=0.01)),
        ("attenuation_tgc_convex", DepthAttenuation(compensated=True, probe_geometry="convex", noise_std=0.01)),
        ("mask", Mask.from_region(region)),
        ("shadow", Mask.from_region(shadow_mask(SIZE))),
        ("function_linear", FunctionOperator(lambda x: 3.0 * x[..., ::2, 1:].flip(-1), linear=True)),
    ]


OPERATORS = _operators()
IDS = [name for name, _ in OPERATORS]


def _x(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1) + SIZE, generator=g, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("op", [op for _, op in OPERATORS], ids=IDS)
def test_adjoint_identity(op):
    """<A x - A 0, y> = <x, A^T y> for random x and y (float64)."""
    x = _x()
    shape = op.measurement_shape(x.shape)
    y = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    linear_part = op(x) - op(torch.zeros_like(x))
    lhs = float((linear_part * y).sum())
    rhs = float((x * op.transpose(y, x.shape)).sum())
    assert math.isclose(lhs, rhs, rel_tol=1e-10, abs_tol=1e-9)
    assert op.has_transpose


@pytest.mark.parametrize("op", [op for _, op in OPERATORS if op.has_projection], ids=[n for n, op in OPERATORS if op.has_projection])
def test_projection_is_consistent_and_idempotent(op):
    x = _x()
    y = op(_x(seed=5))
    p = op.project(x, y)
    assert torch.allclose(op(p), y, atol=1e-9)
    assert torch.allclose(op.project(p, y), p, atol=1e-9)
    # an image that already fits is left alone
    assert torch.allclose(op.project(_x(seed=5), y), _x(seed=5), atol=1e-9)
    # the projection is orthogonal: the change lies in the range of A^T (zero where A^T of anything is zero)
    support = op.transpose(torch.ones_like(y), x.shape) != 0
    assert torch.all((p - x)[~support] == 0)


def test_noise_aware_projection_is_the_gaussian_conditional_mean():
    """Mask, prior variance r, noise s: measured pixels become x + r / (r + s^2) (y - x)."""
    op = Mask(torch.rand(SIZE, generator=torch.Generator().manual_seed(0)) > 0.5, noise_std=0.2)
    x, truth = _x(seed=1), _x(seed=2)
    y = op(truth)
    r = torch.linspace(0.01, 1.0, SIZE[0], dtype=torch.float64).view(1, 1, -1, 1)
    p = op.project(x, y, prior_var=r)
    m = op.mask(SIZE)
    weight = (r / (r + 0.04)).expand_as(x)
    expected = x + weight * (truth - x)
    assert torch.allclose(p[..., m], expected[..., m], atol=1e-12)
    assert torch.equal(p[..., ~m], x[..., ~m])
    # noise-free measurements are matched exactly whatever the prior variance
    exact = Mask(op.mask(SIZE)).project(x, y, prior_var=r)
    assert torch.allclose(exact[..., m], truth[..., m], atol=1e-12)


def test_area_projection_spreads_the_residual_with_the_prior_variance():
    op = AreaDownsample((2, 2))
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    y = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    r = torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=torch.float64).view(1, 1, 2, 2)
    p = op.project(x, y, prior_var=r)
    # the block mean becomes y, all of the change goes to the pixels with prior variance, in proportion to it
    assert torch.allclose(op(p), y)
    assert torch.allclose(p[0, 0], torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=torch.float64))


def test_shapes():
    x = torch.zeros(3, 1, 32, 256)
    assert AreaDownsample((4, 1))(x).shape == (3, 1, 8, 256)  # the lung seed's maps
    assert MissingScanLines(4)(x).shape == (3, 1, 32, 64)
    assert MissingScanLines(3, offset=2)(torch.zeros(1, 1, 8, 10)).shape == (1, 1, 8, 3)  # columns 2, 5, 8
    assert DepthAttenuation()(x).shape == x.shape
    op = MissingScanLines(4, probe_geometry="convex")
    assert op(torch.zeros(2, 3, 64, 64)).shape == (2, 3, int(op.mask(64).sum()))


def test_missing_lines_on_the_sector_keep_whole_beams():
    h = w = 64
    op = MissingScanLines(4, probe_geometry="convex", measure_outside_fan=False)
    inside = fan_mask(h, w)
    kept = op.mask((h, w))
    assert not bool(kept[~inside].any())
    assert 0.18 < op.fraction_measured((h, w)) < 0.32  # about 1 / 4 of the fan
    # every kept pixel lies on a kept beam and every beam is kept or dropped as a whole: along a ray from the
    # apex through a kept pixel near the bottom, the pixels are kept
    ys, xs = torch.nonzero(kept & (torch.arange(h).view(-1, 1) > 48), as_tuple=True)
    y0, x0 = int(ys[0]), int(xs[0])
    apex_x = 0.5 * w
    for frac in (0.5, 0.75):
        yy, xx = int(round(y0 * frac)), int(round(apex_x + (x0 - apex_x) * frac))
        neighbours = kept[max(yy - 1, 0) : yy + 2, max(xx - 1, 0) : xx + 2]
        assert bool(neighbours.any())
    # with the default, outside-fan pixels count as measured background
    assert bool(MissingScanLines(4, probe_geometry="convex").mask((h, w))[~inside].all())


def test_missing_lines_from_the_scheduler_uses_its_fan():
    scheduler = BMapAttenuationScheduler(num_train_timesteps=10, fan_half_angle_deg=20.0)
    op = MissingScanLines.from_scheduler(scheduler, 2)
    assert op.probe_geometry == "convex" and op.fan_half_angle_deg == 20.0
    assert make_operator("missing_lines:3", scheduler=scheduler).keep_every == 3


def test_baselines_interpolate():
    h, w = SIZE
    cols = torch.arange(w, dtype=torch.float64).view(1, 1, 1, -1).expand(1, 1, h, w)
    ramp = cols / w - 0.5
    # linear interpolation between kept columns reproduces a ramp exactly (nearest beyond the last column)
    op = MissingScanLines(4)
    base = op.baseline(op(ramp), ramp.shape)
    last = int(op._columns(w)[-1])
    assert torch.allclose(base[..., : last + 1], ramp[..., : last + 1], atol=1e-12)
    assert torch.allclose(base[..., last:], ramp[..., last : last + 1].expand_as(base[..., last:]))
    # on the sector, an image that only changes with the radius is recovered across beams
    r = torch.hypot(torch.arange(h, dtype=torch.float64).view(-1, 1), torch.arange(w, dtype=torch.float64).view(1, -1) - 0.5 * w)
    radial = (r / r.max() - 0.5).view(1, 1, h, w)
    sector = MissingScanLines(4, probe_geometry="convex")
    inside = fan_mask(h, w)
    base = sector.baseline(sector(radial), radial.shape)
    error = (base - radial)[0, 0].abs()
    # exact up to about one pixel of radius (1 / 31 here) away from the apex, where beams crowd into few pixels
    assert float(error[inside & (r > 6)].max()) < 0.05
    assert float(error[inside].mean()) < 0.01
    assert torch.equal(base[..., ~inside], radial[..., ~inside])
    # a plane is reproduced by the inpainting baseline inside the convex hull of the known pixels
    plane = ramp + 0.3 * (torch.arange(h, dtype=torch.float64).view(1, 1, -1, 1) / h - 0.5)
    region = torch.zeros(SIZE, dtype=torch.bool)
    region[8:20, 6:14] = True
    mask = Mask.from_region(region)
    assert torch.allclose(mask.baseline(mask(plane), plane.shape), plane.clamp(-1, 1), atol=1e-9)
    # area: a constant image stays constant; attenuation: the inverse gain undoes noise-free attenuation
    const = torch.full((1, 1, h, w), 0.25, dtype=torch.float64)
    down = AreaDownsample(4)
    assert torch.allclose(down.baseline(down(const), const.shape), const)
    att = DepthAttenuation(attenuation_db_cm_mhz=0.3)
    x = _x(1)
    assert torch.allclose(att.baseline(att(x), x.shape), x, atol=1e-9)


def test_harmonic_inpainting_checks_its_input():
    with pytest.raises(ValueError, match="known"):
        harmonic_inpainting(torch.zeros(1, 1, 4, 4), torch.zeros(4, 4, dtype=torch.bool))


def test_depth_attenuation_physics():
    h, w = 50, 8
    op = DepthAttenuation(attenuation_db_cm_mhz=0.5, frequency_mhz=3.0, depth_cm=10.0, noise_std=0.01)
    gain = op.gain((h, w))
    # the round trip loses 2 alpha f z dB: 30 dB at the bottom of a 10 cm image at 3 MHz
    assert math.isclose(float(gain[-1, 0]), 10 ** (-30 / 20), rel_tol=1e-6)
    assert math.isclose(float(gain[0, 0]), 1.0)
    assert bool((gain[1:, 0] < gain[:-1, 0]).all())
    x = torch.ones(1, 1, h, w)
    # white fades towards black (-1) with depth, black stays black
    assert torch.allclose(op(x)[0, 0, :, 0], (2 * gain[:, 0] - 1).float())
    assert torch.allclose(op(-x), -x)
    # after time-gain compensation the measurement is the image, with noise growing with depth
    tgc = DepthAttenuation(attenuation_db_cm_mhz=0.5, frequency_mhz=3.0, depth_cm=10.0, noise_std=0.01, compensated=True)
    std = tgc.noise_std_map(x.shape)[0, 0, :, 0]
    assert torch.allclose(std, 0.01 / gain[:, 0].float())
    y = tgc.measure(torch.zeros(64, 1, h, w), generator=torch.Generator().manual_seed(0))
    empirical = y.std(dim=(0, 1, 3))
    assert float(empirical[0]) < 0.02 and float(empirical[-1]) > 0.2
    assert 0.8 < float(empirical[-1] / std[-1]) < 1.2


def test_measure_adds_the_noise_reproducibly():
    op = MissingScanLines(2, noise_std=0.1)
    x = _x(4).float()
    y1 = op.measure(x, generator=torch.Generator().manual_seed(3))
    y2 = op.measure(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    assert 0.09 < float((y1 - op(x)).std()) < 0.11
    assert torch.equal(MissingScanLines(2).measure(x), op(x))


def test_lipschitz_constant():
    # exact for operators with a gram matrix, power iteration with autograd otherwise: they agree
    down = AreaDownsample((2, 2))
    assert math.isclose(down.lipschitz((1, 1, 8, 8)), 0.25)
    wrapped = FunctionOperator(lambda x: down(x))
    assert math.isclose(wrapped.lipschitz((1, 1, 8, 8)), 0.25, rel_tol=1e-4)
    assert math.isclose(MissingScanLines(3).lipschitz((1, 1, 8, 9)), 1.0)


def test_function_operator():
    op = FunctionOperator(lambda x: x.mean(dim=(-2, -1)), noise_std=0.0)
    assert op.measurement_shape((2, 1, 8, 8)) == (2, 1)
    assert not op.has_projection and not op.has_transpose
    with pytest.raises(NotImplementedError):
        op.transpose(torch.zeros(2, 1), (8, 8))
    # least-squares baseline fits the measurement
    x = _x(1).float()[..., :8, :8]
    base = op.baseline(op(x), x.shape)
    assert torch.allclose(op(base), op(x), atol=1e-3)
    with pytest.raises(ValueError, match="batch"):
        FunctionOperator(lambda x: x.sum())(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="must return a torch.Tensor"):
        FunctionOperator(lambda x: 3)(torch.zeros(2, 1, 4, 4))


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="keep_every"):
        MissingScanLines(0)
    with pytest.raises(ValueError, match="offset"):
        MissingScanLines(2, offset=2)
    with pytest.raises(ValueError, match="divisible"):
        AreaDownsample(3)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="Mask"):
        Mask(torch.ones(4, 4, dtype=torch.bool))(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="measures no pixel"):
        Mask(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise_std"):
        Mask(torch.ones(4, 4, dtype=torch.bool), noise_std=-1.0)
    with pytest.raises(ValueError, match=r"\[B, C, 8, 2\]"):
        MissingScanLines(4).transpose(torch.zeros(1, 1, 8, 3), (8, 8))
    with pytest.raises(ValueError, match=r"\[B, C, 4, 4\]"):
        AreaDownsample(2).transpose(torch.zeros(1, 1, 3, 4), (8, 8))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        MissingScanLines(2)(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="unknown operator"):
        make_operator("blur:3")
    with pytest.raises(ValueError, match="bad operator spec"):
        make_operator("missing_lines:x")


def test_make_operator(tmp_path):
    assert isinstance(make_operator("missing_lines:4"), MissingScanLines)
    assert make_operator("downsample:4x1").factor == (4, 1)
    assert make_operator("downsample:2").factor == (2, 2)
    att = make_operator("attenuation:0.7:3")
    assert att.attenuation_db_cm_mhz == 0.7 and att.frequency_mhz == 3.0 and att.noise_std == 0.02
    assert make_operator("attenuation_tgc", noise_std=0.0).compensated
    shadow = make_operator("mask:shadow", size=(32, 32))
    assert 0 < int((~shadow.mask((32, 32))).sum()) < 32 * 32 // 4
    region = np.zeros((16, 16), np.uint8)
    region[4:8, 4:8] = 1
    np.save(tmp_path / "region.npy", region)
    op = make_operator(f"mask:{tmp_path / 'region.npy'}", size=(16, 16))
    assert int((~op.mask((16, 16))).sum()) == 16
    with pytest.raises(ValueError, match="is \\(16, 16\\)"):
        make_operator(f"mask:{tmp_path / 'region.npy'}", size=(8, 8))


def test_operators_take_the_probe_as_one_fan_geometry():
    """geometry=FanGeometry(...) (or the probe_geometry shorthand) is the spelling; the loose fan keywords of
    earlier releases still build the same probe, with a FutureWarning; a misspelt keyword is a TypeError."""
    from ultrasound_diffusers.geometry import FanGeometry
    from ultrasound_diffusers.operators import shadow_mask

    fan = FanGeometry("convex", half_angle_deg=30.0, radii=(0.1, 0.9))
    new = [MissingScanLines(4, geometry=fan), DepthAttenuation(geometry=fan, compensated=True)]
    with pytest.warns(FutureWarning, match="geometry=FanGeometry"):
        old = [MissingScanLines(4, probe_geometry="convex", fan_half_angle_deg=30.0, fan_radii=(0.1, 0.9)),
               DepthAttenuation(compensated=True, probe_geometry="convex", fan_half_angle_deg=30.0,
                                fan_radii=(0.1, 0.9))]
    for a, b in zip(new, old):
        assert a.geometry == b.geometry == fan
    assert torch.equal(new[0].mask((32, 32)), old[0].mask((32, 32)))
    with pytest.warns(FutureWarning):
        assert torch.equal(shadow_mask(32, geometry=fan),
                           shadow_mask(32, probe_geometry="convex", fan_half_angle_deg=30.0, fan_radii=(0.1, 0.9)))
    assert MissingScanLines(4, probe_geometry="convex").geometry == FanGeometry("convex")
    with pytest.raises(TypeError, match="unexpected keyword argument 'fan_apx'"):
        MissingScanLines(4, fan_apx=(0.5, 0.0))
    with pytest.raises(ValueError, match="not both"):
        DepthAttenuation(geometry=fan, fan_radii=(0.0, 1.0))


def test_operator_registry_rows_and_aliases():
    """Every row of the text table builds its operator, its aliases name the same kind, unknown kinds list the table."""
    kinds = operator_kinds()
    assert kinds["lines"] == kinds["sparse"] == "missing_lines" and kinds["area"] == "downsample"
    assert set(OPERATOR_SPECS) == {row.usage for row in OPERATOR_BUILDERS.values()}
    assert isinstance(make_operator("sparse:3"), MissingScanLines) and make_operator("area:2x1").factor == (2, 1)
    with pytest.raises(ValueError, match="missing_lines:K"):
        make_operator("nope")
    with pytest.raises(ValueError, match="bad operator spec"):
        make_operator("downsample:2x2x2")
