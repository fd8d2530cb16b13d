"""UltrasoundReconstructionPipeline: posterior sampling guided by measurements (DPS, projection).

Two priors keep this fast and meaningful on a 2-core CPU:

* a tiny random-weight ``SemanticUNet2DModel`` (16 px) for the plumbing: label maps, learned sigma, classifier-free
  guidance, the B-map / DDPM / DDIM schedulers;
* an exact Gaussian prior (``GaussianDenoiser``: the MMSE denoiser of a known Gaussian image distribution, written
  for per-pixel signal levels), for which a correct posterior sampler must fit the measurements down to the noise
  and beat interpolation; its exact posterior mean is the ceiling.
"""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from _pipeline_fixtures import echo_label_map, tiny_semantic_unet
from ultrasound_diffusers.operators import AreaDownsample, DepthAttenuation, FunctionOperator, Mask, MissingScanLines
from ultrasound_diffusers.pipelines.pipeline_ultrasound_reconstruction import (
    UltrasoundReconstructionPipeline,
    guidance_step_sizes,
    original_from_prediction,
    prediction_from_original,
    signal_level,
)
from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler

SIZE = 16



# ------------------------------------------------------------------------------------------------ Gaussian prior
@dataclass
class _Output(BaseOutput):
    sample: torch.Tensor


def low_rank_gaussian(size=SIZE, rank=6, seed=0):
    """Mean and covariance [P, P] (P = size^2) of images made of a few patterns with fine lateral detail that
    sparse columns alias (so interpolation fails while the prior can tell the patterns apart)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(size, dtype=torch.float64).view(-1, 1) / size
    cols = torch.arange(size, dtype=torch.float64).view(1, -1)
    patterns = []
    for k in range(rank):
        f = float(torch.randint(1, size // 2, (1,), generator=g))
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        profile = torch.cos(math.pi * (k % 3 + 1) * rows + 3 * float(torch.rand(1, generator=g)))
        patterns.append((profile * torch.cos(2 * math.pi * f * cols / size + phase)).reshape(-1))
    basis = torch.stack(patterns, 1) * 0.15
    cov = basis @ basis.T + 1e-3 * torch.eye(size * size, dtype=torch.float64)
    return torch.zeros(size * size, dtype=torch.float64), cov


class GaussianDenoiser(ModelMixin, ConfigMixin):
    """The exact epsilon-predictor for x0 ~ N(mean, cov) under q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I), with the
    per-pixel a_t of the scheduler it is given (B-map or DDPM)."""

    @register_to_config
    def __init__(self, sample_size: int = SIZE, in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.mean, self.cov, self.noise_scheduler = None, None, None

    def forward(self, sample, timestep, return_dict=True):
        b, c, h, w = sample.shape
        t = int(torch.as_tensor(timestep).reshape(-1)[0])
        a = signal_level(self.noise_scheduler, t, (1, c, h, w), dtype=torch.float64).expand(1, 1, h, w).reshape(-1)
        d = a.sqrt()
        x = sample.reshape(b, -1).double()
        marginal = d[:, None] * self.cov * d[None, :] + torch.diag(1 - a)
        x0 = self.mean + (self.cov * d[None, :] @ torch.linalg.solve(marginal, (x - d * self.mean).T)).T
        eps = (x - d * x0) / (1 - a).sqrt()
        return _Output(sample=eps.to(sample.dtype).reshape(b, c, h, w) + 0 * self.anchor)


def gaussian_pipeline(scheduler):
    mean, cov = low_rank_gaussian()
    model = GaussianDenoiser()
    model.mean, model.cov, model.noise_scheduler = mean, cov, scheduler
    pipe = UltrasoundReconstructionPipeline(unet=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe, mean, cov


def draw_gaussian(mean, cov, seed=5):
    z = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (mean + torch.linalg.cholesky(cov) @ z).reshape(1, 1, SIZE, SIZE).float()


def exact_posterior_mean(op, y, mean, cov, noise_std):
    """E[x | y] for the linear operator op (matrix built column by column)."""
    p = SIZE * SIZE
    basis = torch.eye(p, dtype=torch.float64).reshape(p, 1, SIZE, SIZE)
    offset = op(torch.zeros(1, 1, SIZE, SIZE, dtype=torch.float64)).reshape(-1)
    A = op(basis).reshape(p, -1).T - offset[:, None]
    K = A @ cov @ A.T + (noise_std**2 + 1e-10) * torch.eye(A.shape[0], dtype=torch.float64)
    return (mean + cov @ A.T @ torch.linalg.solve(K, y.double().reshape(-1) - offset - A @ mean)).reshape(SIZE, SIZE)


def psnr(truth, estimate):
    mse = float(((truth.double() - estimate.double()) / 2).pow(2).mean())  # model units -> [0, 1]
    return 10 * math.log10(1.0 / mse)


def cosine_schedulers():
    """B-map (linear probe), DDPM and DDIM with a schedule that ends in pure noise (T = 100)."""
    kw = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    return {
        "bmap": BMapAttenuationScheduler(**kw, probe_geometry="linear", variance_type="fixed_small"),
        "ddpm": DDPMScheduler(**kw),
        "ddim": DDIMScheduler(**kw),
    }


def _mean_psnr(truth, estimates):
    return float(np.mean([psnr(t[0], e[0]) for t, e in zip(truth, estimates)]))


@pytest.mark.parametrize("name", ["bmap", "ddim"])
def test_dps_with_the_exact_prior_beats_interpolation_and_fits_to_the_noise(name):
    pipe, mean, cov = gaussian_pipeline(cosine_schedulers()[name])
    x = torch.cat([draw_gaussian(mean, cov, seed) for seed in (5, 6, 7)])  # three held-out images
    noise = 0.02
    op = MissingScanLines(4, noise_std=noise)
    y = op.measure(x, generator=torch.Generator().manual_seed(2))
    baseline = op.baseline(y, x.shape)
    best = torch.stack([exact_posterior_mean(op, y[i : i + 1], mean, cov, noise)[None] for i in range(3)])
    out = pipe(y, op, method="dps", num_inference_steps=30, num_samples=2, output_type="pt",
               generator=torch.Generator().manual_seed(1))
    recon = out.images * 2 - 1
    interp_db, recon_db, best_db = _mean_psnr(x, baseline), _mean_psnr(x, recon), _mean_psnr(x, best)
    assert recon_db > interp_db + 6, (interp_db, recon_db, best_db)
    assert recon_db > best_db - 10, (interp_db, recon_db, best_db)
    # the data residual falls from the prior's misfit down to about the noise level
    unguided = pipe(y, op, method="none", num_inference_steps=30, num_samples=2, generator=torch.Generator().manual_seed(1))
    assert float(unguided.final_residual.mean()) > 5 * noise
    # (a posterior sample's own spread adds to the noise: between 1 and sqrt(2) noise std for this prior)
    assert 0.5 * noise < float(out.final_residual.mean()) < 2 * noise
    assert out.residuals.shape == (3, 2, 30)
    assert float(out.residuals[..., -1].mean()) < min(0.4 * float(out.residuals[..., 0].mean()), 3 * noise)


def test_projection_with_resampling_beats_interpolation_with_the_exact_prior():
    pipe, mean, cov = gaussian_pipeline(cosine_schedulers()["ddpm"])
    x = torch.cat([draw_gaussian(mean, cov, seed) for seed in (5, 6, 7)])
    op = MissingScanLines(4)
    y = op(x)
    interp_db = _mean_psnr(x, op.baseline(y, x.shape))
    scores = {}
    for resample in (0, 4):
        out = pipe(y, op, method="projection", num_inference_steps=15, num_resample=resample, num_samples=2,
                   output_type="pt", generator=torch.Generator().manual_seed(1))
        scores[resample] = _mean_psnr(x, out.images * 2 - 1)
        assert float(out.final_residual.max()) < 1e-6
    assert scores[0] > interp_db + 2, (interp_db, scores)
    assert scores[4] > scores[0] + 2, (interp_db, scores)  # resampling lets the unmeasured columns catch up


def test_noise_aware_projection_stops_at_the_noise_level():
    pipe, mean, cov = gaussian_pipeline(cosine_schedulers()["bmap"])
    x = draw_gaussian(mean, cov, seed=7)
    noise = 0.1
    op = MissingScanLines(2, noise_std=noise)
    y = op.measure(x, generator=torch.Generator().manual_seed(3))
    out = pipe(y, op, method="projection", num_inference_steps=20, num_resample=1, num_samples=2,
               generator=torch.Generator().manual_seed(0))
    # noisy measurements are not copied (that would give a residual of 0) but fitted to about the noise
    assert 0.3 * noise < float(out.final_residual.mean()) < 1.5 * noise


def test_bmap_at_bmap_min_one_matches_ddpm():
    """With bmap_min=1 the B-map scheduler is DDPM: both paths to a_t (signal_level, alphas_cumprod) agree."""
    results = []
    for scheduler in (
        BMapAttenuationScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", bmap_min=1.0,
                                 variance_type="fixed_small", probe_geometry="linear"),
        DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2"),
    ):
        pipe, mean, cov = gaussian_pipeline(scheduler)
        x = draw_gaussian(mean, cov)
        op = Mask(torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(0)) > 0.7, noise_std=0.05)
        y = op.measure(x, generator=torch.Generator().manual_seed(2))
        for method in ("dps", "projection"):
            out = pipe(y, op, method=method, num_inference_steps=8, num_samples=2, output_type="pt",
                       generator=torch.Generator().manual_seed(1))
            results.append(out.samples)
    for a, b in zip(results[:2], results[2:]):
        assert torch.allclose(a, b, atol=2e-4)


# ------------------------------------------------------------------------------------------------ tiny network
@pytest.fixture(scope="module")
def tiny_unet():
    return tiny_semantic_unet(num_classes=0, sample_size=SIZE, learn_sigma=True)


@pytest.fixture(scope="module")
def tiny_label_unet():
    return tiny_semantic_unet(num_classes=5, sample_size=SIZE, learn_sigma=True)


@pytest.fixture(scope="module")
def pipe(tiny_unet):
    """The reconstruction pipeline on the unconditional tiny network (linear-probe B-map scheduler)."""
    return tiny_pipeline(tiny_unet)


def tiny_pipeline(unet, scheduler=None):
    if scheduler is None:
        scheduler = BMapAttenuationScheduler(num_train_timesteps=100, variance_type="learned_range", probe_geometry="linear")
    pipe = UltrasoundReconstructionPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(seed=0):
    return torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_dps_reduces_the_residual_of_unguided_sampling(pipe):
    op = MissingScanLines(2)
    y = op(_image())
    kwargs = dict(num_inference_steps=8, num_samples=2)
    free = pipe(y, op, method="none", generator=torch.Generator().manual_seed(1), **kwargs)
    guided = pipe(y, op, method="dps", generator=torch.Generator().manual_seed(1), **kwargs)
    assert float(guided.final_residual.max()) < 0.1 * float(free.final_residual.min())
    # the same seed: step 0 sees the same x_T, so the first residuals agree; DPS then pulls away
    np.testing.assert_allclose(guided.residuals[..., 0], free.residuals[..., 0], rtol=1e-5)
    # a zero step size is unguided sampling
    zero = pipe(y, op, method="dps", guidance_step_size=0.0, generator=torch.Generator().manual_seed(1), **kwargs)
    np.testing.assert_allclose(zero.samples, free.samples, atol=1e-6)


def test_projection_is_exact_on_measured_pixels_and_certain_there(pipe):
    op = MissingScanLines(3, offset=1)
    x = _image(1).clamp(-0.9, 0.9)
    y = op(x)
    out = pipe(y, op, method="projection", num_inference_steps=6, num_samples=3, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    samples = out.samples[0] * 2 - 1  # [S, C, H, W] in model units
    measured = op.mask(SIZE)
    assert torch.allclose(samples[..., measured], x[..., measured].expand(3, -1, -1), atol=1e-5)
    assert float(out.final_residual.max()) < 1e-5
    uncertainty = out.uncertainty[0, 0]
    assert float(uncertainty[measured].abs().max()) < 1e-5
    # positive elsewhere, except where every sample of the random network saturates at the same end of [0, 1]
    saturated = ((out.samples[0, :, 0] == 0).all(0) | (out.samples[0, :, 0] == 1).all(0))
    assert int((~measured & ~saturated).sum()) > 0.5 * int((~measured).sum())
    assert bool((uncertainty[~measured & ~saturated] > 1e-4).all())
    single = pipe(y, op, method="projection", num_inference_steps=6, num_samples=1, generator=torch.Generator().manual_seed(0))
    assert np.all(single.uncertainty == 0)


@pytest.mark.parametrize("scheduler_name", ["ddim", "ddpm_learned"])
def test_diffusers_schedulers(tiny_unet, scheduler_name):
    if scheduler_name == "ddim":
        scheduler = DDIMScheduler(num_train_timesteps=100)
    else:
        scheduler = DDPMScheduler(num_train_timesteps=100, variance_type="learned_range")
    pipe = tiny_pipeline(tiny_unet, scheduler)
    op = AreaDownsample(2)
    y = op(_image(2))
    free = pipe(y, op, method="none", num_inference_steps=6, generator=torch.Generator().manual_seed(0))
    for method in ("dps", "projection"):
        out = pipe(y, op, method=method, num_inference_steps=6, generator=torch.Generator().manual_seed(0))
        assert float(out.final_residual.max()) < 0.2 * float(free.final_residual.min()), method
    assert out.images.shape == (1, SIZE, SIZE, 1)


def test_label_conditioned_prior_with_classifier_free_guidance(tiny_label_unet):
    pipe = tiny_pipeline(tiny_label_unet, BMapAttenuationScheduler(num_train_timesteps=100, variance_type="learned_range"))
    labels = torch.from_numpy(echo_label_map(SIZE)).long()
    op = DepthAttenuation.from_scheduler(pipe.scheduler, compensated=True, noise_std=0.02)
    x = torch.stack([_image(3), _image(4)])[:, 0]
    y = op.measure(x, generator=torch.Generator().manual_seed(0))
    free = pipe(y, op, segmap=labels, method="none", num_inference_steps=6, guidance_scale=1.5,
                generator=torch.Generator().manual_seed(0))
    out = pipe(y, op, segmap=labels, method="dps", num_inference_steps=6, guidance_scale=1.5, num_samples=2,
               output_type="pil", generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 2 and len(out.samples) == 2 and len(out.samples[0]) == 2
    assert out.images[0].size == (SIZE, SIZE)
    assert out.uncertainty.shape == (2, SIZE, SIZE, 1)
    assert float(out.final_residual.mean()) < 0.5 * float(free.final_residual.mean())
    with pytest.raises(ValueError, match="segmap"):
        pipe(y, op, method="dps", num_inference_steps=2)


def test_function_operator_and_callables(pipe):
    x = _image(5)

    def row_means(images):
        return images.mean(dim=-1)  # [B, C, H]: a smooth nonlinear-free "sensor"

    y = row_means(x)
    free = pipe(y, row_means, method="none", num_inference_steps=6, generator=torch.Generator().manual_seed(0))
    out = pipe(y, FunctionOperator(row_means), method="dps", num_inference_steps=6,
               generator=torch.Generator().manual_seed(0))
    assert float(out.final_residual.max()) < 0.2 * float(free.final_residual.min())
    with pytest.raises(ValueError, match="no data-consistency projection"):
        pipe(y, row_means, method="projection", num_inference_steps=2)


def test_output_formats_and_tuple(pipe):
    op = MissingScanLines(2)
    y = op(torch.cat([_image(6), _image(7)]))
    out = pipe(y, op, method="projection", num_inference_steps=3, num_samples=2, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, SIZE, SIZE, 1) and out.samples.shape == (2, 2, SIZE, SIZE, 1)
    assert out.residuals.shape == (2, 2, 3) and out.final_residual.shape == (2, 2)
    np.testing.assert_allclose(out.images, out.samples.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(out.uncertainty, out.samples.std(axis=1, ddof=1), atol=1e-6)
    images, samples, uncertainty, residuals, final = pipe(
        y, op, method="projection", num_inference_steps=3, num_samples=2, output_type="pt", return_dict=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert samples.shape == (2, 2, 1, SIZE, SIZE) and uncertainty.shape == (2, 1, SIZE, SIZE)
    np.testing.assert_allclose(images.permute(0, 2, 3, 1).numpy(), out.images, atol=1e-6)
    # a single measurement may omit the batch dimension
    single = pipe(y[0], op, method="none", num_inference_steps=2)
    assert single.images.shape == (1, SIZE, SIZE, 1)


def test_clear_errors(pipe):
    op = MissingScanLines(2)
    y = op(_image())
    with pytest.raises(ValueError, match=r"`measurements` must have shape \[B, 1, 16, 8\]"):
        pipe(y[..., :5], op, num_inference_steps=2)
    with pytest.raises(ValueError, match="Mask"):
        pipe(y, Mask(torch.ones(8, 8, dtype=torch.bool)), num_inference_steps=2)
    with pytest.raises(ValueError, match="must keep the batch dimension"):  # ignores the sample batch
        pipe(torch.zeros(1, 3), lambda x: x.sum().reshape(1, 1).expand(1, 3), num_samples=2, num_inference_steps=2)
    with pytest.raises(ValueError, match="method"):
        pipe(y, op, method="magic", num_inference_steps=2)
    with pytest.raises(ValueError, match="unconditional"):
        pipe(y, op, segmap=np.zeros((SIZE, SIZE), np.int64), num_inference_steps=2)
    with pytest.raises(ValueError, match="operator"):
        pipe(y, "missing_lines:2", num_inference_steps=2)
    with pytest.raises(ValueError, match="num_samples"):
        pipe(y, op, num_samples=0, num_inference_steps=2)
    with pytest.raises(ValueError, match="NaN"):
        pipe(y * float("nan"), op, num_inference_steps=2)
    with pytest.raises(ValueError, match="generator"):
        pipe(y, op, num_samples=2, generator=[torch.Generator()], num_inference_steps=2)


def test_pure_functions():
    sample = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a_t = torch.linspace(0.1, 0.9, 16, dtype=torch.float64).view(1, 1, 4, 4)
    for kind in ("epsilon", "sample", "v_prediction"):
        prediction = prediction_from_original(x0, sample, a_t, kind)
        assert torch.allclose(original_from_prediction(prediction, sample, a_t, kind), x0, atol=1e-12)
    ddim = DDIMScheduler(num_train_timesteps=50)
    assert float(signal_level(ddim, 10, (1, 1, 4, 4))) == pytest.approx(float(ddim.alphas_cumprod[10]))
    assert float(signal_level(ddim, -1, (1, 1, 4, 4))) == 1.0
    bmap = BMapAttenuationScheduler(num_train_timesteps=50)
    level = signal_level(bmap, 40, (1, 1, 8, 8))
    assert level.shape == (1, 1, 8, 8) and torch.allclose(level, bmap.signal_level(40, (1, 1, 8, 8)).float())
    assert guidance_step_sizes(2.0, "constant", [9, 5, 1]) == [2.0, 2.0, 2.0]
    assert guidance_step_sizes(1.0, "linear_decay", [9, 5, 1]) == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert guidance_step_sizes(1.0, lambda i, t: t, [9, 5]) == [9.0, 5.0]
    with pytest.raises(ValueError, match="guidance_schedule"):
        guidance_step_sizes(1.0, [1.0], [9, 5])
    with pytest.raises(ValueError, match="guidance_schedule"):
        guidance_step_sizes(1.0, "cosine", [9, 5])


def test_save_and_load_as_reconstruction_pipeline(tiny_unet, tmp_path):
    from ultrasound_diffusers.pipelines.pipeline_ultrasound import UltrasoundPipeline

    scheduler = BMapAttenuationScheduler(num_train_timesteps=100, variance_type="learned_range", probe_geometry="linear")
    UltrasoundPipeline(unet=tiny_unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    pipe = UltrasoundReconstructionPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(pipe, UltrasoundReconstructionPipeline)
    assert isinstance(pipe.scheduler, BMapAttenuationScheduler)


def test_save_and_load_round_trip(tiny_unet, tmp_path):
    from ultrasound_diffusers.pipelines import DiffusionPipeline

    pipe = tiny_pipeline(tiny_unet)
    pipe.save_pretrained(tmp_path / "recon")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "recon")
    assert type(loaded).__name__ == "UltrasoundReconstructionPipeline"
    op = MissingScanLines(2)
    y = op(_image())
    a = pipe(y, op, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
    loaded.set_progress_bar_config(disable=True)
    b = loaded(y, op, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_writes_figure_arrays_and_metrics(tiny_label_unet, tmp_path):
    from ultrasound_diffusers.cli import main
    from ultrasound_diffusers.pipelines.pipeline_semantic_ultrasound import SemanticUltrasoundPipeline

    scheduler = BMapAttenuationScheduler(num_train_timesteps=100, variance_type="learned_range")
    SemanticUltrasoundPipeline(unet=tiny_label_unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    out = tmp_path / "out"
    code = main([
        "reconstruct", "--pipeline", str(tmp_path / "pipe"), "--image", "phantoms:echo:2:4242", "--image_index", "1",
        "--operator", "missing_lines:4",
        "--method", "projection", "--num_samples", "2", "--num_inference_steps", "3", "--out", str(out),
    ])
    assert code == 0
    from PIL import Image

    with Image.open(out / "reconstruction.png") as im:
        assert im.size[0] > 4 * im.size[1] > 0  # one row of panels
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["image"] == "echo phantom 1 (seed 4242)"
    for key in ("baseline_psnr", "reconstruction_psnr", "baseline_ssim", "reconstruction_ssim", "final_residual_rms"):
        assert math.isfinite(metrics[key])
    assert metrics["final_residual_rms"] < 1e-5  # noise-free projection
    arrays = np.load(out / "reconstruction.npz")
    assert arrays["samples"].shape == (2, SIZE, SIZE) and arrays["uncertainty"].shape == (SIZE, SIZE)
    truth, measured = arrays["truth"], arrays["measured"]
    known = ~np.isnan(measured)
    np.testing.assert_allclose(measured[known], truth[known], atol=1e-6)
    np.testing.assert_allclose(arrays["reconstruction"][known], truth[known], atol=1e-5)
    # a mismatched image file is refused clearly
    assert main(["reconstruct", "--pipeline", str(tmp_path / "pipe"), "--image", str(tmp_path / "none.png"),
                 "--out", str(out)]) == 2


def test_default_image_and_the_spelling_of_earlier_releases(tiny_label_unet):
    """No --image: held-out phantom --image_index of the pipeline's anatomy; `phantom:INDEX` (0.1.0) reads the same
    phantom with a FutureWarning that gives the new spelling."""
    from ultrasound_diffusers.reconstruction import HELD_OUT_SEED, load_image

    pipe = tiny_pipeline(tiny_label_unet)  # 5 classes: echo
    default = load_image(None, (SIZE, SIZE), pipe, 2)
    new = load_image(f"phantoms:echo:3:{HELD_OUT_SEED}", (SIZE, SIZE), pipe, 2)
    with pytest.warns(FutureWarning, match=f"phantoms:echo:3:{HELD_OUT_SEED} --image_index 2"):
        old = load_image("phantom:2", (SIZE, SIZE), pipe)
    for other in (new, old):
        np.testing.assert_array_equal(other[0], default[0])
        np.testing.assert_array_equal(other[1], default[1])
        assert other[2] == default[2] == f"echo phantom 2 (seed {HELD_OUT_SEED})"
    with pytest.raises(ValueError, match="image_index"):
        load_image(None, (SIZE, SIZE), pipe, -1)
    with pytest.raises(ValueError, match="phantoms:ANATOMY"):
        load_image("phantom:x", (SIZE, SIZE), pipe)


def test_cli_benchmark(tiny_unet, tmp_path):
    from ultrasound_diffusers.reconstruction import run_benchmark

    pipe = tiny_pipeline(tiny_unet)
    rows = run_benchmark(pipe, keep_every=(2, 4), num_images=1, method="dps", num_inference_steps=2, out=tmp_path)
    assert [r["keep_every"] for r in rows] == [2, 4]
    assert rows[0]["fraction_kept"] == pytest.approx(0.5) and rows[1]["fraction_kept"] == pytest.approx(0.25)
    table = (tmp_path / "benchmark.md").read_text()
    assert "1/2 (50 %)" in table and "1/4 (25 %)" in table
    with pytest.raises(ValueError, match="the benchmark runs on phantoms"):
        run_benchmark(pipe, keep_every=(2,), num_images=1, out=tmp_path / "other", image=str(tmp_path / "benchmark.md"))
    with pytest.raises(ValueError, match="contains the input"):  # the output rule: never the folder of an input
        run_benchmark(pipe, keep_every=(2,), num_images=1, out=tmp_path, image=str(tmp_path / "benchmark.md"))
    with pytest.raises(ValueError, match="--num_images"):
        run_benchmark(pipe, keep_every=(2,), num_images=0, out=tmp_path / "other")
    with pytest.raises(ValueError, match="--noise_std"):
        run_benchmark(pipe, keep_every=(2,), num_images=1, out=tmp_path / "other", noise_std=float("nan"))
    with pytest.raises(ValueError, match="holds 1 phantoms"):
        run_benchmark(pipe, keep_every=(2,), num_images=2, out=tmp_path, image="phantoms:thyroid:1:3")


def test_metrics():
    from ultrasound_diffusers.evaluation.image_metrics import psnr as psnr01, ssim

    a = np.random.default_rng(0).random((32, 32))
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr01(a, a) == float("inf")
    assert psnr01(a, a + 0.1) == pytest.approx(20.0)
    # constant images: only the luminance term, (2 m1 m2 + c1) / (m1^2 + m2^2 + c1), c1 = 0.01^2
    assert ssim(np.full((16, 16), 0.5), np.full((16, 16), 0.6)) == pytest.approx((0.6 + 1e-4) / (0.61 + 1e-4))
    # white noise plus independent noise: about 2 var / (2 var + noise var) = 0.65
    assert 0.55 < ssim(a, a + 0.3 * np.random.default_rng(1).standard_normal(a.shape)) < 0.75


@pytest.mark.slow
def test_bundled_phantom_prior_beats_interpolation_and_fits_to_the_noise():
    """The prior trained on phantoms (the bundled demo pipeline) on a held-out phantom, every 4th beam kept,
    noisy measurements: the mean of 4 DPS samples beats interpolation across beams, and the data residual
    comes down to the measurement noise without fitting the noise."""
    from ultrasound_diffusers.reconstruction import load_image, load_pipeline, psnr, reconstruct_image
    from ultrasound_diffusers.reconstruction import make_operator_for as _operator

    pipe = load_pipeline(None)
    pipe.set_progress_bar_config(disable=True)
    noise = 0.05
    image, labels, _ = load_image(None, (64, 64), pipe)
    operator = _operator("missing_lines:4", pipe, (64, 64), noise)
    result = reconstruct_image(pipe, image, labels, operator, method="dps", num_samples=4, num_inference_steps=30,
                               seed=0)
    gain = psnr(result["truth"], result["reconstruction"]) - psnr(result["truth"], result["baseline"])
    assert gain > 0.5, gain
    assert np.all(result["final_residual"] > 0.8 * noise) and np.all(result["final_residual"] < 1.5 * noise)
    first, last = result["residuals"][:, 0], result["residuals"][:, -1]
    assert np.all(last - noise < 0.25 * (first - noise))  # most of the way from the prior's guess to the noise


def test_reconstruction_samples_ancestrally_by_default_whatever_the_prior_own_sampler(tiny_label_unet, tmp_path):
    """The bundled prior's own sampler is the deterministic ddim-clipped; posterior sampling runs ancestral steps
    unless --scheduler says otherwise (`pipeline`: the prior's own). The caller's pipeline is not changed."""
    from ultrasound_diffusers.cli import main
    from ultrasound_diffusers.pipelines.pipeline_semantic_ultrasound import SemanticUltrasoundPipeline
    from ultrasound_diffusers.reconstruction import ReconstructionSettings, with_sampler

    scheduler = BMapAttenuationScheduler(num_train_timesteps=100, variance_type="learned_range", sampler="ddim",
                                         use_clipped_model_output=True)
    pipe = tiny_pipeline(tiny_label_unet, scheduler)
    assert ReconstructionSettings().scheduler == "ddpm"
    ancestral = with_sampler(pipe, "ddpm")
    assert ancestral.scheduler.config.sampler == "ddpm" and ancestral.unet is pipe.unet
    assert ancestral.scheduler.config.bmap_min == scheduler.config.bmap_min
    assert pipe.scheduler.config.sampler == "ddim" and with_sampler(pipe, None) is pipe
    assert ancestral._progress_bar_config == {"disable": True}  # the caller's progress-bar settings carry over
    from diffusers import ScoreSdeVeScheduler

    ve = tiny_pipeline(tiny_label_unet, ScoreSdeVeScheduler())
    assert with_sampler(ve, "ddpm") is ve  # not DDPM-type: left for the pipeline to refuse, never rebuilt as one
    with pytest.raises(ValueError, match="--scheduler"):
        ReconstructionSettings(scheduler="euler")

    SemanticUltrasoundPipeline(unet=tiny_label_unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    outputs = {}
    for name in ("ddpm", "pipeline", None):
        out = tmp_path / f"out-{name}"
        flags = [] if name is None else ["--scheduler", name]
        assert main(["reconstruct", "--pipeline", str(tmp_path / "pipe"), "--image", "phantoms:echo:1:4242",
                     "--method", "dps", "--num_samples", "1", "--num_inference_steps", "3", "--out", str(out),
                     *flags]) == 0
        outputs[name] = np.load(out / "reconstruction.npz")["samples"]
    np.testing.assert_array_equal(outputs[None], outputs["ddpm"])  # the default is ancestral
    assert np.abs(outputs["pipeline"] - outputs["ddpm"]).max() > 1e-4  # and the prior's own sampler differs
