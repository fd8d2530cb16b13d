"""BMapDPMSolverMultistepScheduler: diffusers equivalence at bmap_min=1, per-pixel DDIM at order 1, config round
trips, the pipeline swap and bad input."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from _pipeline_fixtures import echo_label_map, tiny_semantic_pipeline
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from ultrasound_diffusers import BMapAttenuationScheduler, BMapDPMSolverMultistepScheduler
from ultrasound_diffusers.schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler


_ABAR = DPMSolverMultistepScheduler().alphas_cumprod.double()  # a fixed table: the dummy model's own schedule


def dummy_model(x: torch.Tensor, t, prediction_type: str = "epsilon") -> torch.Tensor:
    """A fixed, deterministic, denoiser-like network: the exact denoiser of N(0, 0.25) data plus a nonlinear
    term, returned as epsilon, sample or v (float32, the shape of ``x``)."""
    a = _ABAR[int(t)]
    x64 = x.double()
    x0 = a.sqrt() * 0.25 * x64 / (0.25 * a + 1 - a) + 0.05 * torch.sin(2 * x64) * (1 - a)
    eps = (x64 - a.sqrt() * x0) / (1 - a).sqrt()
    out = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction_type]
    return out.float()


def sample_loop(scheduler, steps, x, prediction_type="epsilon", seed=0, **step_kwargs):
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_model(x, t, prediction_type), t, x, generator=generator, **step_kwargs).prev_sample
    return x


COMBOS = [
    (alg, order, final)
    for alg in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver")
    for order in (1, 2, 3)
    for final in ("zero", "sigma_min")
    if not (alg == "dpmsolver" and final == "zero")
]


@pytest.mark.parametrize("algorithm_type,solver_order,final_sigmas_type", COMBOS)
def test_bmap_min_one_reproduces_diffusers_dpmsolver(algorithm_type, solver_order, final_sigmas_type):
    """Full float32 loops (20 and 8 steps; SDE with the same generator) against diffusers' scheduler."""
    kwargs = dict(algorithm_type=algorithm_type, solver_order=solver_order, final_sigmas_type=final_sigmas_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates algorithm_type="dpmsolver"
        for steps, prediction_type in [(20, "epsilon"), (8, "v_prediction"), (8, "sample")]:
            x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
            ref = sample_loop(DPMSolverMultistepScheduler(prediction_type=prediction_type, **kwargs), steps, x, prediction_type)
            ours = sample_loop(
                BMapDPMSolverMultistepScheduler(bmap_min=1.0, prediction_type=prediction_type, **kwargs), steps, x, prediction_type
            )
            assert ours.dtype == torch.float32
            # diffusers' loop rounds to float32 at every step, ours runs in float64: what is left is diffusers'
            # own rounding, about 1e-6 at unit scale after 20 steps (measured at most 1.9e-6; bound: 16 float32 ulps)
            tol = 2e-6 * max(1.0, ref.abs().max().item())
            assert (ours - ref).abs().max().item() <= tol, (steps, prediction_type)


def test_order_and_algorithm_change_the_result():
    """The equivalence above is not vacuous: order 1, 2, 3 and the SDE variant give different samples."""
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    outs = [
        sample_loop(BMapDPMSolverMultistepScheduler(bmap_min=1.0, solver_order=o, algorithm_type=a), 10, x)
        for o, a in [(1, "dpmsolver++"), (2, "dpmsolver++"), (3, "dpmsolver++"), (2, "sde-dpmsolver++")]
    ]
    for a, b in itertools.combinations(outs, 2):
        assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_order_one_is_per_pixel_ddim(prediction_type):
    """At bmap_min < 1 the first-order solver is the B-map scheduler's DDIM (eta = 0) update, pixel by pixel."""
    common = dict(num_train_timesteps=200, bmap_min=0.9, prediction_type=prediction_type, clip_sample=False)
    dpm = BMapDPMSolverMultistepScheduler(solver_order=1, **common)
    ddim = BMapAttenuationScheduler(**common)
    steps = [199, 150, 90, 40, 10, 0]
    dpm.set_timesteps(timesteps=steps)
    ddim.set_timesteps(timesteps=steps)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    xa = xb = x
    for t in steps:
        out = dummy_model(xa, int(t) * 5, prediction_type)
        xa = dpm.step(out, t, xa).prev_sample
        xb = ddim.step(out, t, xb, eta=0.0).prev_sample
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)
    # and the B-maps matter: a plain DDIM loop (bmap_min = 1) ends elsewhere
    plain = BMapAttenuationScheduler(**{**common, "bmap_min": 1.0})
    plain.set_timesteps(timesteps=steps)
    xc = x
    for t in steps:
        xc = plain.step(dummy_model(xc, int(t) * 5, prediction_type), t, xc, eta=0.0).prev_sample
    assert (xc - xa).abs().max() > 1e-3


def test_higher_orders_use_per_pixel_steps():
    """A second-order step equals the formula with per-pixel h and r computed from the B-map signal levels."""
    s = BMapDPMSolverMultistepScheduler(num_train_timesteps=100, bmap_min=0.5, solver_order=2, lower_order_final=False)
    s.set_timesteps(timesteps=[99, 60, 30])
    x = torch.randn(1, 1, 12, 12, generator=torch.Generator().manual_seed(0)).double()
    m = [dummy_model(x, t * 10).double() for t in (99, 60)]
    x1 = s.step(m[0], 99, x).prev_sample
    x2 = s.step(m[1], 60, x1).prev_sample
    a = {t: s.signal_level(t, x.shape) for t in (99, 60, 30)}
    lam = {t: 0.5 * (a[t].log() - (1 - a[t]).log()) for t in a}
    x0 = {t: (xx - (1 - a[t]).sqrt() * mm) / a[t].sqrt() for t, xx, mm in [(99, x, m[0]), (60, x1, m[1])]}
    h, h0 = lam[30] - lam[60], lam[60] - lam[99]
    d1 = (x0[60] - x0[99]) * h / h0
    expected = ((1 - a[30]) / (1 - a[60])).sqrt() * x1 - a[30].sqrt() * torch.expm1(-h) * (x0[60] + 0.5 * d1)
    torch.testing.assert_close(x2, expected, rtol=1e-10, atol=1e-10)
    assert h.std() > 1e-3  # deep pixels really have another step size


def test_sde_noise_is_per_pixel_and_reproducible():
    s = BMapDPMSolverMultistepScheduler(num_train_timesteps=100, algorithm_type="sde-dpmsolver++")
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = sample_loop(s, 5, x, seed=3)
    b = sample_loop(s, 5, x, seed=3)
    c = sample_loop(s, 5, x, seed=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_learned_range_drops_variance_channels():
    s = BMapDPMSolverMultistepScheduler(num_train_timesteps=100, variance_type="learned_range")
    s.set_timesteps(4)
    x = torch.randn(2, 1, 8, 8)
    eps = torch.randn(2, 1, 8, 8)
    with_var = s.step(torch.cat([eps, torch.rand_like(eps)], 1), s.timesteps[0], x).prev_sample
    s.set_timesteps(4)
    without = s.step(eps, s.timesteps[0], x).prev_sample
    torch.testing.assert_close(with_var, without, rtol=0, atol=0)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="channels"):
        s.step(torch.randn(2, 3, 8, 8), s.timesteps[0], x)


def test_save_load_round_trip_and_from_config_both_ways(tmp_path):
    s = BMapDPMSolverMultistepScheduler(
        num_train_timesteps=100, solver_order=3, bmap_min=0.9, probe_geometry="linear", preserve_length=True,
        beta_schedule="squaredcos_cap_v2", variance_type="learned_range", clip_sample=True,
    )
    s.save_pretrained(tmp_path)
    loaded = BMapDPMSolverMultistepScheduler.from_pretrained(tmp_path)
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample_loop(s, 6, x), sample_loop(loaded, 6, x), rtol=0, atol=0)
    assert loaded.config.probe_geometry == "linear" and loaded.config.solver_order == 3

    # B-map scheduler -> DPM-Solver -> B-map scheduler keeps every B-map and geometry option
    bmap = BMapAttenuationScheduler(num_train_timesteps=100, bmap_min=0.9, bmap_schedule="linear", fan_half_angle_deg=40.0)
    dpm = BMapDPMSolverMultistepScheduler.from_config(bmap.config)
    back = BMapAttenuationScheduler.from_config(dpm.config)
    for key in ("bmap_min", "bmap_schedule", "fan_half_angle_deg", "probe_geometry", "fan_radii", "beta_schedule"):
        assert back.config[key] == bmap.config[key] == dpm.config[key]
    torch.testing.assert_close(dpm.signal_level(50, (1, 1, 16, 16)), bmap.signal_level(50, (1, 1, 16, 16)))
    # diffusers' DPM-Solver <-> ours (a diffusers config has no B-map keys: the defaults apply)
    ours = BMapDPMSolverMultistepScheduler.from_config(DPMSolverMultistepScheduler(solver_order=3).config, bmap_min=1.0)
    assert ours.config.solver_order == 3
    theirs = DPMSolverMultistepScheduler.from_config(ours.config)
    assert theirs.config.solver_order == 3 and theirs.config.algorithm_type == ours.config.algorithm_type
    assert DPMSolverMultistepScheduler in ours.compatibles and DDIMScheduler in ours.compatibles
    assert "BMapDPMSolverMultistepScheduler" in BMapAttenuationScheduler._compatibles
    assert "BMapAttenuationScheduler" in BMapDPMSolverMultistepScheduler._compatibles


def test_scheduler_for_sampler_names():
    bmap = BMapAttenuationScheduler(num_train_timesteps=100, bmap_min=0.9, variance_type="learned_range")
    ddim = scheduler_for_sampler("ddim", bmap.config)
    assert isinstance(ddim, BMapAttenuationScheduler) and ddim.config.sampler == "ddim" and ddim.config.bmap_min == 0.9
    assert scheduler_for_sampler("ddpm", bmap.config).config.sampler == "ddpm"
    sde = scheduler_for_sampler("sde-dpm++", bmap.config)
    assert sde.config.algorithm_type == "sde-dpmsolver++" and sde.config.bmap_min == 0.9
    # a plain diffusers config gets no attenuation
    plain = scheduler_for_sampler("dpm++", DDIMScheduler(num_train_timesteps=100).config)
    assert plain.config.bmap_min == 1.0
    with pytest.raises(ValueError, match="scheduler"):
        scheduler_for_sampler("euler", bmap.config)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"solver_order": 4}, "solver_order"),
        ({"algorithm_type": "unipc"}, "algorithm_type"),
        ({"final_sigmas_type": "one"}, "final_sigmas_type"),
        ({"algorithm_type": "dpmsolver", "final_sigmas_type": "zero"}, "final_sigmas_type"),
        ({"bmap_min": 1.5}, "bmap_min"),
        ({"probe_geometry": "phased"}, "probe_geometry"),
        ({"prediction_type": "flow"}, "prediction_type"),
    ],
)
def test_bad_configuration_names_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BMapDPMSolverMultistepScheduler(**kwargs)


def test_step_misuse_is_reported():
    s = BMapDPMSolverMultistepScheduler(num_train_timesteps=100)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 10, x)
    s.set_timesteps(2)
    for t in s.timesteps:
        x = s.step(x * 0, t, x).prev_sample
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, s.timesteps[-1], x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    s.set_timesteps(3)
    x = s.step(x * 0, s.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="twice"):  # resampling at the same step cannot work for a multistep solver
        s.step(x * 0, s.timesteps[0], x)


def test_semantic_pipeline_runs_with_it():
    pipe = tiny_semantic_pipeline()
    labels = echo_label_map(16)
    original = pipe.scheduler
    try:
        pipe.scheduler = BMapDPMSolverMultistepScheduler.from_config(original.config)
        assert pipe.scheduler.config.bmap_min == original.config.bmap_min
        out = pipe(labels, num_inference_steps=4, guidance_scale=1.5, generator=torch.Generator().manual_seed(0), output_type="np")
        again = pipe(labels, num_inference_steps=4, guidance_scale=1.5, generator=torch.Generator().manual_seed(0), output_type="np")
        assert out.images.shape == (1, 16, 16, 1) and np.isfinite(out.images).all()
        np.testing.assert_array_equal(out.images, again.images)
        pipe.scheduler = scheduler_for_sampler("sde-dpm++", original.config)
        sde = pipe(labels, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
        assert np.abs(sde - out.images).max() > 1e-3
    finally:
        pipe.scheduler = original


def test_demo_command_takes_scheduler(tmp_path, capsys):
    from ultrasound_diffusers.cli import main

    args = ["demo", "--num_images", "1", "--num_inference_steps", "3", "--scheduler", "dpm++", "--output_dir", str(tmp_path)]
    assert main(args) == 0
    assert (tmp_path / "demo.png").is_file() and "demo picture written to" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--scheduler", "euler", "--output_dir", str(tmp_path)])


def test_generate_command_swaps_scheduler(monkeypatch, tmp_path):
    import ultrasound_diffusers.generation as generation
    from ultrasound_diffusers.cli import main
    from ultrasound_diffusers.pipelines import DiffusionPipeline

    pipe = tiny_semantic_pipeline()
    seen = {}

    def fake_generate_dataset(pipeline, *args, **kwargs):
        seen["scheduler"] = pipeline.scheduler
        return type("Rows", (), {"num_rows": 0})()

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))
    monkeypatch.setattr(generation, "generate_dataset", fake_generate_dataset)
    common = ["generate", "--pipeline", "tiny", "--labels", "phantoms:echo:1", "--output_dir", str(tmp_path)]
    assert main(common + ["--scheduler", "sde-dpm++"]) == 0
    assert isinstance(seen["scheduler"], BMapDPMSolverMultistepScheduler)
    assert seen["scheduler"].config.algorithm_type == "sde-dpmsolver++"
    assert seen["scheduler"].config.bmap_min == pipe.scheduler.config.bmap_min
