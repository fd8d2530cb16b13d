# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Lung maps from multistatic RF channel data (issue 29, second half): paired data, the DAS rule, diffusion
posterior sampling with the lung prior, uncertainty intervals and the metrics of the comparison table.

* :func:`lung_rf_operator` builds the acquisition (:class:`~ultrasound_diffusers.acoustics.multistatic.MultistaticOperator`:
  32-element array over the 38.4 mm x 24 mm map, full matrix capture, attenuation implied by the map) for the full
  array or a subset of transmitters / receivers; :func:`parse_fmc_spec` reads the text ``fmc:tx=8,rx=32,snr=20``.
* :func:`simulate_rf` / :func:`lung_rf_dataset`: RF data of lung maps at a given SNR; the dataset is a
  ``datasets.Dataset`` with ``values`` (the map, float32 [8, 256]) and ``channels`` (float32 Array3D [N, 32, 32]).
* :class:`DasMapRule`: the classical baseline, DAS envelope -> map by per-row least squares on envelope features.
* :func:`reconstruct_lung`: posterior sampling with the lung prior on the whitened RF data
  (:class:`~ultrasound_diffusers.acoustics.multistatic.CompressedMultistaticOperator`, the same posterior as the
  full RF data) with a proximal data-consistent estimate at every step (:func:`posterior_sample`; the
  ``UltrasoundReconstructionPipeline`` methods remain selectable), K samples -> mean and a per-pixel 90 % interval
  (:func:`prediction_interval`).
* :func:`map_metrics`: MAE, PSNR, aeration error in the lung rows, category by ``lung_media.classify_lung_maps``,
  interval coverage.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import numpy as np
import torch

if TYPE_CHECKING:
    from .reconstruction import ReconstructionSettings

__all__ = [
    "DEFAULT_SNR_DB",
    "DasMapRule",
    "LUNG_DEPTH_M",
    "LUNG_WIDTH_M",
    "das_features",
    "lung_rf_dataset",
    "lung_rf_operator",
    "map_metrics",
    "parse_fmc_spec",
    "posterior_sample",
    "prediction_interval",
    "reconstruct_lung",
    "run_lung_reconstruction",
    "simulate_rf",
]

# The lung acquisition and its text spelling live with the forward model (acoustics.multistatic), below the
# operator registry; they stay importable from here.
from .acoustics.multistatic import (  # noqa: E402,F401
    DEFAULT_SNR_DB,
    LUNG_DEPTH_M,
    LUNG_WIDTH_M,
    fmc_operator_from_spec,
    lung_rf_operator,
    parse_fmc_spec,
)


def cached_normal_matrix(operator, cache_dir) -> np.ndarray:
    """``operator.fmc.normal_matrix()``, read from / written to ``cache_dir`` (one ``.npy`` per acquisition): it
    takes seconds (full array: about 10 s) and depends only on the acquisition."""
    from .utils.io import atomic_write_bytes

    fmc = operator.fmc
    key = (f"normal_{fmc.grid[0]}x{fmc.grid[1]}_n{fmc.num_samples}_fs{fmc.sampling_frequency:.0f}"
           f"_tx{'-'.join(map(str, fmc.transmitters))}_rx{'-'.join(map(str, fmc.receivers))}")
    if len(key) > 200:
        import hashlib

        key = "normal_" + hashlib.sha1(key.encode()).hexdigest()
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    g = fmc.normal_matrix()
    import io

    buffer = io.BytesIO()
    np.save(buffer, g)
    atomic_write_bytes(path, buffer.getvalue())
    return g


def compressed_operator(operator, cache_dir=None):
    """``operator.compressed()``, with the normal matrix cached in ``cache_dir`` when given."""
    return operator.compressed(None if cache_dir is None else cached_normal_matrix(operator, cache_dir))


def simulate_rf(maps: np.ndarray, operator, snr_db: float, seed: int = 0, batch: int = 16) -> tuple:
    """RF data of lung maps at ``snr_db``: ``(channels float32 [N, T, E, E], noise_std float64 [N])``.

    ``maps``: float [N, 8, 256] in [0, 1]. The noise of example i comes from ``Generator(seed).manual_seed`` of
    ``[seed, i]`` hashed, so the data of one map do not depend on the batch."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or tuple(maps.shape[1:]) != tuple(operator.size):
        raise ValueError(f"`maps` must be [N, {operator.size[0]}, {operator.size[1]}] in [0, 1], got {maps.shape}")
    from .acoustics.multistatic import noise_std_for_snr

    out, stds = [], []
    with torch.no_grad():
        for start in range(0, maps.shape[0], batch):
            x = torch.from_numpy(maps[start : start + batch] * 2 - 1)[:, None]
            clean = operator.forward(x).double()
            std = noise_std_for_snr(clean, snr_db, operator.mask)
            noise = torch.stack([
                torch.randn(clean.shape[1:], dtype=torch.float64,
                            generator=torch.Generator().manual_seed(int(np.random.SeedSequence([seed, start + i]).generate_state(1)[0])))
                for i in range(clean.shape[0])
            ])
            y = clean + std.reshape(-1, 1, 1, 1) * noise * operator.mask.double()[None, None]
            out.append(y.float().numpy())
            stds.append(std.numpy())
    return np.concatenate(out), np.concatenate(stds)


def lung_rf_dataset(num_pairs: int, *, seed: int = 0, start: int = 0, snr_db: float = DEFAULT_SNR_DB,
                    transmitters=None, receivers=None, maps: Optional[np.ndarray] = None,
                    categories: Optional[np.ndarray] = None, operator=None):
    """Paired lung maps and RF channel data as a ``datasets.Dataset``.

    Columns: ``values`` (float32 Array2D [8, 256], the map in [0, 1]), ``channels`` (float32 Array3D [T, 32, 32]:
    fast time, transmitter, receiver; zeros in channels not recorded), ``category`` (ClassLabel of
    ``LUNG_CATEGORIES``), ``index``, ``seed``, ``snr_db``, ``noise_std``. Maps are ``lung_maps(num_pairs,
    seed=seed, start=start)`` unless ``maps`` (and ``categories``) are given. Save with ``save_to_disk``.
    """
    import datasets

    from .data.lung_media import LUNG_CATEGORIES, lung_maps

    if not isinstance(num_pairs, int) or num_pairs < 1:
        raise ValueError(f"`num_pairs` must be a positive integer, got {num_pairs!r}")
    if maps is None:
        maps, categories = lung_maps(num_pairs, seed=seed, start=start)
    maps = np.asarray(maps, np.float32)[:num_pairs]
    categories = np.zeros(len(maps), np.int64) if categories is None else np.asarray(categories, np.int64)[:num_pairs]
    operator = operator or lung_rf_operator(transmitters, receivers)
    channels, stds = simulate_rf(maps, operator, snr_db, seed=seed)
    features = datasets.Features({
        "values": datasets.Array2D(shape=tuple(maps.shape[1:]), dtype="float32"),
        "channels": datasets.Array3D(shape=tuple(channels.shape[1:]), dtype="float32"),
        "category": datasets.ClassLabel(names=list(LUNG_CATEGORIES)),
        "index": datasets.Value("int64"), "seed": datasets.Value("int64"),
        "snr_db": datasets.Value("float64"), "noise_std": datasets.Value("float64"),
    })
    return datasets.Dataset.from_dict({
        "values": list(maps), "channels": list(channels), "category": categories.tolist(),
        "index": list(range(start, start + len(maps))), "seed": [int(seed)] * len(maps),
        "snr_db": [float(snr_db)] * len(maps), "noise_std": stds.tolist(),
    }, features=features)


# ------------------------------------------------------------------------------------------------ DAS rule
def das_features(envelope: torch.Tensor) -> torch.Tensor:
    """Features of DAS envelopes [N, H, W] (>= 0, the operator's units) per pixel: [N, H, W, 6]:
    ``1``, ``log10 env``, the same one row above and below (edges repeated), the running maximum of ``log10 env``
    over the rows above (the pleural line casts the shadow below it), and the row's lateral mean."""
    e = torch.log10(envelope.double().clamp(min=1e-8))
    up = torch.cat([e[:, :1], e[:, :-1]], 1)
    down = torch.cat([e[:, 1:], e[:, -1:]], 1)
    above = torch.cummax(up, dim=1).values
    row = e.mean(2, keepdim=True).expand_as(e)
    return torch.stack([torch.ones_like(e), e, up, down, above, row], dim=-1)


class DasMapRule:
    """DAS envelope -> map: a least-squares (ridge 1e-6) linear map from :func:`das_features` to map values, fitted
    separately for every map row on training pairs, the output clipped to [0, 1]."""

    def __init__(self, ridge: float = 1e-6):
        self.ridge = float(ridge)
        self.coefficients: Optional[torch.Tensor] = None

    def fit(self, envelope: torch.Tensor, maps: torch.Tensor) -> "DasMapRule":
        f = das_features(envelope)  # [N, H, W, F]
        m = torch.as_tensor(np.asarray(maps), dtype=torch.float64)
        if m.shape != f.shape[:3]:
            raise ValueError(f"`maps` must be {tuple(f.shape[:3])} like the envelopes, got {tuple(m.shape)}")
        coefs = []
        for row in range(f.shape[1]):
            a = f[:, row].reshape(-1, f.shape[-1])
            b = m[:, row].reshape(-1)
            gram = a.T @ a + self.ridge * a.shape[0] * torch.eye(a.shape[1], dtype=a.dtype)
            coefs.append(torch.linalg.solve(gram, a.T @ b))
        self.coefficients = torch.stack(coefs)  # [H, F]
        return self

    def predict(self, envelope: torch.Tensor) -> np.ndarray:
        if self.coefficients is None:
            raise RuntimeError("call DasMapRule.fit first")
        f = das_features(envelope)
        return torch.einsum("nhwf,hf->nhw", f, self.coefficients).clamp(0, 1).float().numpy()


# ------------------------------------------------------------------------------------------------ diffusion
def prediction_interval(samples: np.ndarray, level: float = 0.9):
    """Per-pixel ``level`` interval from K posterior samples [..., K, H, W]: ``(lower, upper)`` [..., H, W].

    With K samples of the posterior, ``mean +- t_{(1+level)/2, K-1} s sqrt(1 + 1/K)`` (s the sample standard
    deviation) is the interval that holds a further posterior draw -- the truth, if the posterior is right -- with
    probability ``level`` for Gaussian marginals; at K = 8 the empirical 5 % / 95 % quantiles would be nearly the
    extreme samples and hold a further draw only about 7 / 9 of the time. Clipped to [0, 1]."""
    from scipy.stats import t as student_t

    s = np.asarray(samples, np.float64)
    k = s.shape[-3]
    if k < 2:
        raise ValueError(f"an interval needs at least 2 samples, got {k}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}")
    mean = s.mean(-3)
    half = student_t.ppf(0.5 + level / 2, k - 1) * s.std(-3, ddof=1) * math.sqrt(1 + 1 / k)
    return np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1)


def posterior_sample(pipe, z: torch.Tensor, compressed, num_samples: int = 8, num_inference_steps: int = 20,
                     inner_steps: int = 30, inner_lr: float = 0.02, generator: Optional[torch.Generator] = None) -> np.ndarray:
    """Posterior samples of lung maps given whitened RF data ``z`` [1, K] (``compressed.compress(y)``).

    Ancestral sampling with the lung prior in which, at every step, the network's estimate ``x0_hat(x_t)`` is
    replaced by the proximal data-consistent estimate

        x0 = argmin_x  ||z - A(x)||^2 / (2 sigma^2) + ||x - x0_hat||^2 / (2 (1 - a_t)),    x in [-1, 1]

    (``inner_steps`` Adam steps from ``x0_hat``; ``sigma`` the RF noise, ``1 - a_t`` the prior variance of the
    estimate at step t), and the step is taken with the noise that this x0 implies -- the pipeline's
    ``method="projection"`` (a Gaussian conditional mean) generalised to the non-linear RF model, as in decomposed
    diffusion sampling / DiffPIR. What the data determine (chest wall, pleural line, lung that lets sound
    through) follows the data; what they do not (lung under an aerated pleura) is drawn from the prior, which
    is where the samples differ and the interval widens.

    Returns the samples float64 [S, H, W] in [0, 1].
    """
    from .pipelines.pipeline_utils import prepare_extra_step_kwargs, prepare_timesteps
    from .schedulers.diffusion_math import signal_levels

    h, w = compressed.size
    channels = int(pipe.unet.config.in_channels)
    shape = (int(num_samples), channels, h, w)
    schedule = prepare_timesteps(pipe.scheduler, int(num_inference_steps), None, "cpu")
    levels = signal_levels(pipe.scheduler)
    extra = prepare_extra_step_kwargs(pipe.scheduler, generator, None)
    sigma2 = max(float(compressed.noise_std), 1e-6) ** 2
    x = torch.randn(shape, generator=generator)
    target = z.reshape(1, -1).float()
    for t in schedule:
        a_t = levels.signal_level(t, (1, channels, h, w))
        with torch.no_grad():
            out = pipe._model(x, t, None, 1.0, channels)
            x0_hat = levels.original_from_model_output(out[:, :channels], x, a_t).clamp(-1, 1)
        prior_var = float((1.0 - a_t).clamp(min=1e-4).mean())
        x0 = x0_hat.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x0], lr=float(inner_lr))
        for _ in range(int(inner_steps)):
            with torch.enable_grad():
                misfit = (target - compressed(x0.clamp(-1, 1))).pow(2).sum() / (2 * sigma2)
                loss = misfit + (x0 - x0_hat).pow(2).sum() / (2 * prior_var)
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
        with torch.no_grad():
            x0 = x0.clamp(-1, 1)
            eps = levels.model_output_from_original(x0, x, a_t)
            output = torch.cat([eps, out[:, channels:]], dim=1)
            x = pipe.scheduler.step(output, t, x, **extra).prev_sample
    return ((x.detach().clamp(-1, 1) + 1) / 2)[:, 0].double().numpy()


def reconstruct_lung(pipe, channels: torch.Tensor, operator, compressed=None, num_samples: int = 8,
                     num_inference_steps: int = 50, guidance_step_size: float = 1.0, method: str = "dps",
                     seed: int = 0, level: float = 0.9) -> Dict[str, np.ndarray]:
    """Posterior samples of the lung map given RF data of one acquisition.

    Args:
        pipe: an ``UltrasoundReconstructionPipeline`` with the unconditional 8 x 256 lung prior.
        channels: RF data [T, E, E] or [1, T, E, E] (``operator``'s shape).
        operator: the ``MultistaticOperator`` of the acquisition; its ``noise_std`` must be the data's noise.
        compressed: its ``CompressedMultistaticOperator`` (built if None; pass it to reuse the normal matrix).
        method: ``"dps"`` (default): :func:`posterior_sample` (proximal data consistency at every step; the
            inner Adam rate is ``0.02 * guidance_step_size``); ``"pipeline-dps"`` / ``"projection"`` / ``"none"``:
            ``UltrasoundReconstructionPipeline`` with that method on the whitened data (its diagonal DPS gain
            fits these data poorly: residual about 100 x the noise in our tests).

    Returns: ``mean``, ``lower``, ``upper`` (float64 [H, W] in [0, 1]), ``samples`` [K, H, W], ``seconds``.
    """
    y = torch.as_tensor(channels)
    if y.dim() == 3:
        y = y[None]
    if y.shape[0] != 1:
        raise ValueError(f"`channels` must hold one acquisition, got a batch of {y.shape[0]}")
    compressed = compressed or operator.compressed()
    start = time.perf_counter()
    z = compressed.compress(y.to(torch.float32))
    h, w = operator.size
    generator = torch.Generator().manual_seed(int(seed))
    if method == "dps":
        samples = posterior_sample(pipe, z, compressed, int(num_samples), int(num_inference_steps),
                                   inner_lr=0.02 * float(guidance_step_size), generator=generator)
        final = float((z - compressed(torch.from_numpy(samples * 2 - 1).float()[:, None])).pow(2).mean().sqrt())
    else:  # the package pipeline's own guidance on the whitened data ("pipeline-dps", "projection", "none")
        out = pipe(z, compressed, method="dps" if method == "pipeline-dps" else method, num_samples=int(num_samples),
                   num_inference_steps=int(num_inference_steps), guidance_step_size=float(guidance_step_size),
                   generator=generator, height=h, width=w, output_type="np")
        samples = np.asarray(out.samples[0, ..., 0], np.float64)
        final = float(np.mean(out.final_residual))
    mean = samples.mean(0)
    if samples.shape[0] >= 2:
        lower, upper = prediction_interval(samples, level)
    else:
        lower = upper = mean
    return {"mean": mean, "lower": lower, "upper": upper, "samples": samples,
            "seconds": time.perf_counter() - start, "final_residual": final}


# ------------------------------------------------------------------------------------------------ metrics
def map_metrics(pred: np.ndarray, truth: np.ndarray, categories: Optional[np.ndarray] = None,
                lower: Optional[np.ndarray] = None, upper: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Mean metrics over N maps [N, 8, 256] in [0, 1]:

    * ``mae`` (map units), ``psnr`` (dB, peak 1, mean of per-map values);
    * ``aeration_error``: mean absolute error of the mean aeration (``map_to_aeration``) of the lung rows that the
      category rule reads (rows 5-6, 15-21 mm), in aeration fraction;
    * ``category_accuracy``: fraction of maps whose ``classify_lung_maps`` category equals ``categories`` (the
      true label; default the rule on the true maps);
    * ``coverage`` (when ``lower`` / ``upper`` are given): fraction of pixels with the truth inside the interval.
    """
    from .data.lung_media import classify_lung_maps, pooled_category_statistics

    p = np.asarray(pred, np.float64)
    t = np.asarray(truth, np.float64)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"`pred` and `truth` must both be [N, H, W], got {p.shape} and {t.shape}")
    mse = ((p - t) ** 2).reshape(len(p), -1).mean(1)
    out = {"mae": float(np.abs(p - t).mean()), "psnr": float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))}
    aer_p = pooled_category_statistics(p.astype(np.float32))["lung_aeration"]
    aer_t = pooled_category_statistics(t.astype(np.float32))["lung_aeration"]
    out["aeration_error"] = float(np.abs(aer_p - aer_t).mean())
    labels = classify_lung_maps(t.astype(np.float32)) if categories is None else np.asarray(categories)
    out["category_accuracy"] = float((classify_lung_maps(p.astype(np.float32)) == labels).mean())
    if lower is not None and upper is not None:
        inside = (t >= np.asarray(lower) - 1e-9) & (t <= np.asarray(upper) + 1e-9)
        out["coverage"] = float(inside.mean())
        out["interval_width"] = float((np.asarray(upper) - np.asarray(lower)).mean())
    return out


# ------------------------------------------------------------------------------------------------ figure / CLI
def make_lung_rf_figure(cases, title: str = ""):
    """Rows of (true map, RF data of the centre transmitter, DAS envelope in dB, reconstruction mean, 90 %
    interval width, |error|) for ``cases``: dicts with ``truth``, ``channels`` [T, E, E], ``das`` [H, W] (envelope),
    ``mean``, ``lower``, ``upper`` ([H, W] maps in [0, 1]) and a ``label``."""
    from .visualization import new_figure

    rows = len(cases)
    height = 1.55 * rows + 1.9
    fig = new_figure(figsize=(17, height))
    fig.subplots_adjust(top=1 - 1.05 / height, bottom=0.55 / height)  # room for the two-line title above the headers
    axes = np.atleast_2d(fig.subplots(rows, 6))
    names = ("true map", "RF data, centre recorded transmitter", "DAS envelope (dB)", "posterior mean", "90 % interval width",
             "|mean - truth|")
    for r, case in enumerate(cases):
        y = np.asarray(case["channels"])
        das_db = 20 * np.log10(np.maximum(case["das"] / max(case["das"].max(), 1e-30), 1e-3))
        panels = [
            (case["truth"], dict(cmap="viridis", vmin=0, vmax=1)),
            (y[:, _recorded_centre(y), :], dict(cmap="gray", vmin=-np.abs(y).max(), vmax=np.abs(y).max())),
            (das_db, dict(cmap="gray", vmin=-60, vmax=0)),
            (case["mean"], dict(cmap="viridis", vmin=0, vmax=1)),
            (case["upper"] - case["lower"], dict(cmap="magma", vmin=0, vmax=0.6)),
            (np.abs(case["mean"] - case["truth"]), dict(cmap="magma", vmin=0, vmax=0.6)),
        ]
        for c, (image, style) in enumerate(panels):
            ax = axes[r, c]
            im = ax.imshow(image, aspect="auto", interpolation="nearest", **style)
            if r == 0:
                ax.set_title(names[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(case.get("label", ""), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == rows - 1:
                fig.colorbar(im, ax=axes[:, c], orientation="horizontal", fraction=0.04, pad=0.02)
    fig.suptitle((title + "\n" if title else "") + "maps 38.4 mm wide x 24 mm deep (8 x 256); RF: receivers across, "
                 "fast time down", fontsize=10, y=1 - 0.12 / height)
    return fig


#: Methods of :func:`run_lung_reconstruction`: those of ``ReconstructionSettings`` plus ``"pipeline-dps"`` (see
#: :func:`reconstruct_lung`).
LUNG_METHODS = ("dps", "pipeline-dps", "projection", "none")


def _lung_settings(settings: Optional[ReconstructionSettings], options: dict) -> Tuple[ReconstructionSettings, str]:
    """``(ReconstructionSettings, method)`` of :func:`run_lung_reconstruction`: ``settings`` (default: 8 samples)
    with ``options`` applied; ``method`` is the settings' method, or ``"pipeline-dps"``, which only the lung path
    knows (the settings then hold ``"dps"``)."""
    from .reconstruction import ReconstructionSettings, _settings

    if settings is not None and not isinstance(settings, ReconstructionSettings):
        raise TypeError(f"`settings` must be a ReconstructionSettings or None, got {type(settings).__name__}")
    method = options.get("method", settings.method if settings is not None else "dps")
    if method not in LUNG_METHODS:
        raise ValueError(f"`method` (--method) must be one of {LUNG_METHODS} for the lung map, got {method!r}")
    lung_only = method == "pipeline-dps"
    if lung_only:
        options = {**options, "method": "dps"}
    settings = _settings(settings if settings is not None else ReconstructionSettings(num_samples=8), options)
    return settings, "pipeline-dps" if lung_only else settings.method


def run_lung_reconstruction(pipeline=None, image: Optional[str] = None, operator: str = "fmc",
                            settings: Optional[ReconstructionSettings] = None,
                            out="reconstruction_output", image_index: int = 0, overwrite: bool = False,
                            **options) -> dict:
    """``ultrasound-diffusers reconstruct --operator fmc:...``: simulate the RF data of one lung map, reconstruct it
    with the lung prior and write ``reconstruction.png``, ``reconstruction.npz`` and ``metrics.json`` (the lung
    counterpart of :func:`~ultrasound_diffusers.reconstruction.run_reconstruction`, with the same settings).

    Args:
        pipeline: the lung prior: folder, Hub id or pipeline object, unconditional (``num_classes=0``), 8 x 256
            (default: the bundled ``assets/lung-phantom-8x256``).
        image: ``phantoms:lung[:N[:SEED]]`` (map ``image_index`` of that set; default None: the held-out set, seed
            4242) or a ``.npy`` map [8, 256] in [0, 1].
        operator: ``fmc[:tx=K,rx=K,snr=DB]`` (:func:`parse_fmc_spec`; ``multistatic`` is read as ``fmc``).
        settings: :class:`~ultrasound_diffusers.reconstruction.ReconstructionSettings` (default: its defaults with
            ``num_samples=8``); ``options`` (its fields as keywords) override it. Used here: ``method``
            (:func:`reconstruct_lung`; ``"pipeline-dps"`` too, given as ``method=`` in ``options``),
            ``num_samples`` (K samples -> mean and 90 % interval), ``num_inference_steps``,
            ``guidance_step_size``, ``noise_std`` (RF noise std in data units, overriding the operator's
            ``snr``; None: the SNR), ``seed`` (sampler; the RF noise uses ``seed + 1``) and ``device``;
            ``guidance_scale`` and ``num_resample`` do not apply to the unconditional lung sampler.
        out: the output folder, under the package's output rule (``overwrite``; checked before any work).
        image_index: which map of ``image``'s phantom set (>= 0, below N when N is given).

    Returns:
        The summary written to ``metrics.json``: ``image``, ``operator``, ``snr_db``, ``noise_std``, ``method``,
        ``num_samples``, ``num_inference_steps``, ``guidance_step_size``, ``seed``, ``reconstruction_*``
        (:func:`map_metrics`: ``mae``, ``psnr``, ``coverage``, ...), ``final_residual_rms``, ``seconds``.
    """
    from .data.lung_media import LUNG_CATEGORIES, lung_maps
    from .data.sources import PHANTOMS_PREFIX, parse_phantoms_spec
    from .reconstruction import HELD_OUT_SEED, KIND, load_pipeline, with_sampler, write_reconstruction_folder
    from .utils.io import check_output_dir

    settings, method = _lung_settings(settings, options)
    num_samples, num_inference_steps = settings.num_samples, settings.num_inference_steps
    guidance_step_size, seed = settings.guidance_step_size, settings.seed
    if isinstance(image_index, bool) or not isinstance(image_index, (int, np.integer)) or image_index < 0:
        raise ValueError(f"`image_index` (--image_index) must be a non-negative integer, got {image_index!r}")
    image_index = int(image_index)
    inputs = [pipeline, image]
    check_output_dir(out, KIND, inputs=inputs, overwrite=overwrite)
    start = time.perf_counter()
    if pipeline is None:  # the bundled lung model
        bundled = Path(__file__).resolve().parent / "assets" / "lung-phantom-8x256"
        if not (bundled / "model_index.json").is_file():
            raise FileNotFoundError(f"no --pipeline given and the bundled lung model is missing from {bundled}")
        pipeline = bundled
    pipe = with_sampler(load_pipeline(pipeline, settings.device), settings.scheduler)
    if int(getattr(pipe.unet.config, "num_classes", 0) or 0) != 0:
        raise ValueError("the lung reconstruction needs an unconditional lung prior (num_classes=0) as --pipeline")
    kind, _, arg = str(operator).partition(":")
    if kind not in ("fmc", "multistatic"):
        raise ValueError(f"`operator` must be fmc[:tx=K,rx=K,snr=DB], got {operator!r}")
    op = fmc_operator_from_spec(arg, noise_std=settings.noise_std)
    category = None
    if image is None or str(image).startswith(PHANTOMS_PREFIX + ":"):
        anatomy, set_seed = "lung", HELD_OUT_SEED
        if image is not None:
            parsed = parse_phantoms_spec(image, argument="--image")
            anatomy, set_seed = parsed.anatomy, parsed.seed
            if parsed.num is not None and image_index >= parsed.num:
                raise ValueError(f"`--image` {image!r} holds {parsed.num} maps; map {image_index} is not one of them")
        if anatomy != "lung":
            raise ValueError(f"the fmc operator reconstructs lung maps: use --image phantoms:lung[:N[:SEED]], got {image!r}")
        maps, cats = lung_maps(1, seed=set_seed, start=int(image_index))
        truth, category = maps[0].astype(np.float64), int(cats[0])
        description = f"lung map {image_index} (seed {set_seed}, {LUNG_CATEGORIES[category]})"
    else:
        path = Path(image)
        if path.suffix.lower() != ".npy" or not path.is_file():
            raise ValueError(f"`--image` must be phantoms:lung[:N[:SEED]] or a .npy lung map, got {image!r}")
        truth = np.squeeze(np.load(path, allow_pickle=False)).astype(np.float64)
        if truth.shape != tuple(op.size) or truth.min() < 0 or truth.max() > 1:
            raise ValueError(f"the map {path} must be {op.size} with values in [0, 1], got {truth.shape}")
        description = path.name
    x = torch.from_numpy(truth * 2 - 1).float()[None, None]
    y = op.measure(x, generator=torch.Generator().manual_seed(seed + 1))
    compressed = op.compressed()
    result = reconstruct_lung(pipe, y, op, compressed, num_samples, num_inference_steps, guidance_step_size,
                              method=method, seed=seed)
    das = op.das_envelope(y)[0].double().numpy()
    metrics = map_metrics(result["mean"][None], truth[None], None if category is None else np.array([category]),
                          result["lower"][None], result["upper"][None])
    summary = {"image": description, "operator": repr(op), "snr_db": getattr(op, "snr_db", None),
               "noise_std": float(op.noise_std), "method": method, "num_samples": num_samples,
               "num_inference_steps": num_inference_steps, "guidance_step_size": guidance_step_size, "seed": seed,
               **{f"reconstruction_{k}": v for k, v in metrics.items()},
               "final_residual_rms": result["final_residual"], "seconds": round(time.perf_counter() - start, 2)}
    fig = make_lung_rf_figure([{**result, "truth": truth, "channels": y[0].numpy(), "das": das, "label": description}],
                              f"{description}: {operator}, {num_samples} samples, {num_inference_steps} steps")
    arrays = dict(truth=truth, mean=result["mean"], lower=result["lower"], upper=result["upper"],
                  samples=result["samples"], das=das)
    write_reconstruction_folder(out, fig, arrays, summary, inputs=inputs, overwrite=overwrite)
    return summary


def make_lung_rf_data_figure(maps, channels, das_full, das_sparse, labels, title: str = ""):
    """One row per case: the map (normalised slowness), its aeration, the RF data of the centre transmitter
    (time x receiver), the DAS envelope of the full 32 x 32 data and of an 8 x 8 subset (dB). ``maps`` [N, H, W] in
    [0, 1], ``channels`` [N, T, E, E], ``das_*`` [N, H', W'] envelopes, ``labels`` N texts."""
    from .data.lung_media import map_to_aeration
    from .visualization import new_figure

    n = len(maps)
    fig = new_figure(figsize=(17, 1.7 * n + 0.9))
    axes = np.atleast_2d(fig.subplots(n, 5))
    names = ("map (normalised slowness)", "aeration", "RF data, transmitter 16 (time x receiver)",
             "DAS, full 32 x 32 (dB)", "DAS, 8 tx x 8 rx (dB)")
    for r in range(n):
        y = np.asarray(channels[r])[:, y_centre(channels[r]), :]
        lim = np.abs(y).max()
        panels = [(maps[r], dict(cmap="viridis", vmin=0, vmax=1)), (map_to_aeration(maps[r]), dict(cmap="Blues", vmin=0, vmax=1)),
                  (y, dict(cmap="gray", vmin=-lim, vmax=lim))]
        for das in (das_full[r], das_sparse[r]):
            panels.append((20 * np.log10(np.maximum(das / max(das.max(), 1e-30), 1e-3)), dict(cmap="gray", vmin=-50, vmax=0)))
        for c, (image, style) in enumerate(panels):
            ax = axes[r, c]
            im = ax.imshow(image, aspect="auto", interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(names[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=8)
            if r == n - 1:
                fig.colorbar(im, ax=axes[:, c], orientation="horizontal", fraction=0.04, pad=0.03)
    fig.suptitle((title + "\n" if title else "") + "maps 38.4 mm wide x 24 mm deep (8 x 256); RF: receivers 1-32 "
                 "across, fast time down", fontsize=10)
    return fig


def _recorded_centre(channels) -> int:
    """Index of the recorded transmitter of RF data [T, E, E] nearest the array's centre."""
    y = np.asarray(channels)
    recorded = np.flatnonzero(np.abs(y).reshape(y.shape[0], y.shape[1], -1).max(axis=(0, 2)) > 0)
    centre = y.shape[1] // 2
    return int(recorded[np.abs(recorded - centre).argmin()]) if recorded.size else centre


def y_centre(channels) -> int:
    """Index of the centre transmitter of RF data [T, E, E]."""
    return int(np.asarray(channels).shape[1] // 2)
