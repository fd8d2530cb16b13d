"""Measurement-guided reconstruction runs: the held-out inputs, one reconstruction with its figure, and the
scan-line benchmark (PSNR / SSIM against the fraction of lines kept). ``ultrasound-diffusers reconstruct`` only
parses its flags and calls :func:`run_reconstruction` or :func:`run_benchmark`.

The pipeline itself is :class:`~ultrasound_diffusers.pipelines.pipeline_ultrasound_reconstruction.UltrasoundReconstructionPipeline`;
the measurement operators are in :mod:`ultrasound_diffusers.operators`; PSNR / SSIM in
:mod:`ultrasound_diffusers.evaluation.image_metrics`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

#: Seed of the held-out phantoms (training sets use small seeds such as 0).
HELD_OUT_SEED = 4242

# ------------------------------------------------------------------------------------------------ metrics
from .evaluation.image_metrics import psnr, ssim

# ------------------------------------------------------------------------------------------------ settings
#: Reconstruction methods of :class:`UltrasoundReconstructionPipeline`.
METHODS = ("dps", "projection", "none")


@dataclasses.dataclass(frozen=True)
class ReconstructionSettings:
    """How a reconstruction runs (the ``reconstruct`` command's flags of the same names), checked when made.

    Attributes:
        method: ``"dps"`` (diffusion posterior sampling), ``"projection"`` (data-consistency projection) or
            ``"none"`` (the prior alone).
        num_samples: posterior samples per image (their mean is the reconstruction, their spread the uncertainty).
        num_inference_steps: denoising steps.
        guidance_step_size: DPS step size.
        guidance_scale: classifier-free guidance of label-conditioned models.
        noise_std: measurement noise in model units (image range width 2); None: the operator's default.
        num_resample: RePaint-style resampling passes per step.
        seed: seed of the sampler (the measurement noise uses ``seed + 1``).
        device: torch device of the pipeline.
        scheduler: the sampler the prior runs with, built from its scheduler config (the names of ``generate
            --scheduler``: ``"ddpm"``, ``"ddim"``, ``"ddim-clipped"``, ``"dpm++"``, ``"sde-dpm++"``), or None for the
            pipeline's own. Default ``"ddpm"``, ancestral steps: diffusion posterior sampling is derived for them,
            and their fresh noise lets later steps correct a guidance step that overshoots (the bundled pipeline's
            own sampler is the deterministic ``ddim-clipped``).
    """

    method: str = "dps"
    num_samples: int = 4
    num_inference_steps: int = 50
    guidance_step_size: float = 1.0
    guidance_scale: float = 1.0
    noise_std: Optional[float] = None
    num_resample: int = 0
    seed: int = 0
    device: str = "cpu"
    scheduler: Optional[str] = "ddpm"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"`method` (--method) must be one of {METHODS}, got {self.method!r}")
        from .samplers import SAMPLERS

        if self.scheduler is not None and self.scheduler not in SAMPLERS:
            raise ValueError(f"`scheduler` (--scheduler) must be one of {SAMPLERS} or None, got {self.scheduler!r}")
        for name, low in (("num_samples", 1), ("num_inference_steps", 1), ("num_resample", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` (--{name}) must be an integer >= {low}, got {value!r}")
        for name in ("guidance_step_size", "guidance_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"`{name}` (--{name}) must be a finite number, got {value!r}")
        _check_noise_std(self.noise_std)

    @classmethod
    def from_args(cls, args) -> "ReconstructionSettings":
        """The settings from parsed ``reconstruct`` flags (attributes of the same names)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _settings(settings: Optional[ReconstructionSettings], overrides: dict) -> ReconstructionSettings:
    """``settings`` with ``overrides`` (keyword arguments of the same names) applied; unknown names refused."""
    names = {f.name for f in dataclasses.fields(ReconstructionSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown reconstruction option(s) {unknown}; expected fields of ReconstructionSettings: {sorted(names)}")
    base = settings if settings is not None else ReconstructionSettings()
    return dataclasses.replace(base, **overrides) if overrides else base


# ------------------------------------------------------------------------------------------------ inputs
def load_pipeline(source=None, device: str = "cpu"):
    """An UltrasoundReconstructionPipeline from a folder / repo id, or from the bundled demo pipeline."""
    from .pipelines.pipeline_ultrasound_reconstruction import UltrasoundReconstructionPipeline

    if source is None:
        from .demo import DEMO_PIPELINE_PATH

        if not (DEMO_PIPELINE_PATH / "model_index.json").is_file():
            raise FileNotFoundError(f"no --pipeline given and the bundled demo pipeline is missing from {DEMO_PIPELINE_PATH}")
        source = DEMO_PIPELINE_PATH
    if isinstance(source, UltrasoundReconstructionPipeline):
        return source
    if hasattr(source, "unet") and hasattr(source, "scheduler"):
        return UltrasoundReconstructionPipeline(unet=source.unet, scheduler=source.scheduler)
    return UltrasoundReconstructionPipeline.from_pretrained(str(source)).to(device)


def with_sampler(pipe, sampler: Optional[str]):
    """``pipe`` itself when ``sampler`` is None, else an ``UltrasoundReconstructionPipeline`` on the same network
    whose scheduler is ``sampler`` built from ``pipe``'s scheduler config (same B-maps; ``pipe`` is not changed; its
    progress-bar settings carry over). A scheduler that is not of the DDPM type (no ``alphas_cumprod``, or noise in
    sigma units) is left as it is, for the pipeline to refuse with its own message."""
    scheduler = getattr(pipe, "scheduler", None)
    if sampler is None or float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0 or not hasattr(scheduler, "alphas_cumprod"):
        return pipe
    from .pipelines.pipeline_ultrasound_reconstruction import UltrasoundReconstructionPipeline
    from .schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

    swapped = UltrasoundReconstructionPipeline(unet=pipe.unet, scheduler=scheduler_for_sampler(sampler, scheduler.config))
    swapped.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return swapped


def phantom_anatomy(pipe) -> str:
    """The phantom anatomy matching a pipeline: echo for a convex probe or a 5-class model, else thyroid."""
    num_classes = int(getattr(pipe.unet.config, "num_classes", 0) or 0)
    geometry = getattr(pipe.scheduler.config, "probe_geometry", None)
    if num_classes == 4 or (geometry == "linear" and num_classes != 5):
        return "thyroid"
    return "echo"


def resolve_phantom_image(spec: Optional[str], pipe=None, index: int = 0) -> Optional[Tuple[str, int, int]]:
    """``(anatomy, seed, index)`` of the phantom that ``spec`` names, or None when ``spec`` is a file.

    ``spec``: None (phantom ``index`` of the held-out set, seed :data:`HELD_OUT_SEED`, in the pipeline's anatomy),
    or the package's one phantoms spelling ``phantoms:ANATOMY[:N[:SEED]]``
    (:func:`~ultrasound_diffusers.data.sources.parse_phantoms_spec`; phantom ``index`` of that set, which must be
    below N when N is given). The spelling of earlier releases, ``phantom`` / ``phantom:INDEX`` (held-out set,
    the pipeline's anatomy), still works until 0.2.0, with the FutureWarning of
    :func:`~ultrasound_diffusers.utils.deprecation.deprecate` that gives the new spelling.
    """
    from .data.sources import PHANTOMS_PREFIX
    from .utils.deprecation import deprecate

    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"`image_index` must be a non-negative integer, got {index!r}")
    if spec is None or spec == "phantom" or spec.startswith("phantom:"):
        anatomy = phantom_anatomy(pipe) if pipe is not None else "echo"
    if spec is None:
        return anatomy, HELD_OUT_SEED, index
    if spec == "phantom" or spec.startswith("phantom:"):
        _, _, text = spec.partition(":")
        try:
            old_index = int(text or 0)
        except ValueError:
            raise ValueError(
                f"`--image` must be {PHANTOMS_PREFIX}:ANATOMY[:N[:SEED]] or an image file, got {spec!r}"
            ) from None
        deprecate(
            f"`--image {spec}`", "0.2.0",
            f"Write `--image {PHANTOMS_PREFIX}:{anatomy}:{old_index + index + 1}:{HELD_OUT_SEED} "
            f"--image_index {old_index + index}` (or leave --image out for held-out phantom --image_index).",
            stacklevel=2,
        )
        return anatomy, HELD_OUT_SEED, old_index + index
    if spec.startswith(PHANTOMS_PREFIX + ":"):
        from .data.sources import open_source

        parsed = open_source(spec, argument="--image").phantoms  # the one door decides what the text names
        if parsed.num is not None and index >= parsed.num:
            raise ValueError(f"`--image` {spec!r} holds {parsed.num} phantoms; phantom {index} is not one of them")
        return parsed.anatomy, parsed.seed_or(0), index
    return None


def load_image(spec: Optional[str], size, pipe=None, index: int = 0):
    """``(image float64 [H, W] in [0, 1], labels int64 [H, W] or None, description)``.

    ``spec``: a phantom (see :func:`resolve_phantom_image`: None for held-out phantom ``index``,
    ``phantoms:ANATOMY[:N[:SEED]]`` for phantom ``index`` of that set) or image ``index`` of any other source of
    the one input door (:func:`ultrasound_diffusers.data.sources.load_image_set`: a PNG / TIFF / .npy file, a
    folder, a saved or Hub dataset), resized to ``size`` if needed, by the package's image acceptance rule.
    """
    from pathlib import Path

    import numpy as np

    height, width = size
    phantom = resolve_phantom_image(spec, pipe, index)
    if phantom is not None:
        from .data.phantoms import make_phantom

        anatomy, seed, index = phantom
        image, labels, _ = make_phantom(anatomy, size=(height, width), seed=seed, index=index)
        return np.asarray(image, np.float64), np.asarray(labels, np.int64), f"{anatomy} phantom {index} (seed {seed})"
    from .data.sources import load_image_set

    image_set = load_image_set(spec, label_column="auto", size=(height, width), max_images=index + 1,
                               argument="--image")
    if index >= len(image_set):
        raise ValueError(f"`--image` {spec!r} holds {len(image_set)} images; image {index} is not one of them")
    labels = None if image_set.labels is None else image_set.labels[index]
    description = Path(spec).name if image_set.kind == "file" else f"{image_set.names[index]} of {image_set.source}"
    return image_set.images[index].astype(np.float64), labels, description


# ------------------------------------------------------------------------------------------------ figure
def make_reconstruction_figure(truth, measured, baseline, reconstruction, uncertainty, residuals=None,
                               noise_std: float = 0.0, title: str = "", metrics=None):
    """One row: ground truth, measurements (missing pixels hatched in blue), baseline, reconstruction,
    uncertainty (per-pixel std of the samples) and, if given, the data residual per step. Images in [0, 1]."""
    import numpy as np
    from matplotlib import colormaps

    from .visualization import new_figure

    cols = 5 + (residuals is not None)
    fig = new_figure(figsize=(2.5 * cols, 2.9))
    axes = fig.subplots(1, cols)
    gray = colormaps["gray"].with_extremes(bad="#1f3b73")
    panels = [("ground truth", truth), ("measurements", np.ma.masked_invalid(measured)), ("baseline", baseline),
              ("reconstruction", reconstruction)]
    metrics = metrics or {}
    for ax, (name, image) in zip(axes, panels):
        ax.imshow(image, cmap=gray, vmin=0, vmax=1, interpolation="nearest")
        label = name
        if name in metrics:
            label += f"\n{metrics[name]['psnr']:.1f} dB, SSIM {metrics[name]['ssim']:.2f}"
        ax.set_title(label, fontsize=9)
    im = axes[4].imshow(uncertainty, cmap="magma", vmin=0, interpolation="nearest")
    axes[4].set_title("uncertainty (std)", fontsize=9)
    fig.colorbar(im, ax=axes[4], fraction=0.046, pad=0.04)
    for ax in axes[:5]:
        ax.set_xticks([])
        ax.set_yticks([])
    if residuals is not None:
        ax = axes[5]
        res = np.asarray(residuals, np.float64)
        ax.semilogy(np.arange(1, res.shape[-1] + 1), res.reshape(-1, res.shape[-1]).mean(0), color="C0")
        if noise_std > 0:
            ax.axhline(noise_std, color="C3", ls="--", lw=1, label="noise std")
            ax.legend(fontsize=7)
        ax.set_xlabel("step", fontsize=8)
        ax.set_title("data residual (RMS)", fontsize=9)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ runs
def make_operator_for(spec: str, pipe, size, noise_std):
    """``make_operator(spec)`` with the probe of the pipeline's scheduler (a linear probe for diffusers' own)."""
    from .operator_registry import make_operator

    return make_operator(spec, size=size, scheduler=pipe.scheduler, noise_std=noise_std)


def reconstruct_image(pipe, image, labels, operator, settings: Optional[ReconstructionSettings] = None, **options):
    """Simulate measurements of ``image`` ([H, W] in [0, 1]) and reconstruct them with ``settings`` (or the
    :class:`ReconstructionSettings` fields given as keywords, ``method="dps"``, ...).

    Returns a dict of float64 arrays in [0, 1]: ``truth``, ``measured`` (NaN where not measured), ``baseline``,
    ``reconstruction``, ``uncertainty``, ``samples`` [S, H, W], plus ``residuals`` [S, N], ``final_residual``
    [S] and ``measurements`` (model units, as the operator returns them).
    """
    import numpy as np
    import torch

    settings = _settings(settings, options)
    pipe = with_sampler(pipe, settings.scheduler)
    seed = settings.seed
    height, width = image.shape
    x = torch.from_numpy(2.0 * np.asarray(image, np.float32) - 1.0)[None, None]
    noise_generator = torch.Generator().manual_seed(seed + 1)
    y = operator.measure(x, generator=noise_generator)
    segmap = None
    if int(getattr(pipe.unet.config, "num_classes", 0) or 0) > 0:
        if labels is None:
            raise ValueError("the pipeline is label-conditioned: give --labels (or use a phantom --image, which brings its label map)")
        segmap = torch.from_numpy(np.asarray(labels, np.int64))[None]
    generator = torch.Generator().manual_seed(seed)
    out = pipe(
        y, operator, segmap=segmap, method=settings.method, num_inference_steps=settings.num_inference_steps,
        guidance_step_size=settings.guidance_step_size, guidance_scale=settings.guidance_scale,
        num_samples=settings.num_samples, num_resample=settings.num_resample, generator=generator, height=height,
        width=width, output_type="np",
    )
    measured = operator.to_image(y, (height, width))[0, 0].double().numpy()
    baseline = operator.baseline(y, (1, 1, height, width))[0, 0].double().numpy()
    return {
        "truth": np.asarray(image, np.float64),
        "measured": (measured + 1.0) / 2.0,
        "baseline": (baseline + 1.0) / 2.0,
        "reconstruction": out.images[0, ..., 0].astype(np.float64),
        "uncertainty": out.uncertainty[0, ..., 0].astype(np.float64),
        "samples": out.samples[0, ..., 0].astype(np.float64),
        "residuals": out.residuals[0],
        "final_residual": out.final_residual[0],
        "measurements": y[0].numpy(),
    }


#: ``kind`` of the output-folder marker of ``ultrasound-diffusers reconstruct``.
KIND = "reconstruct"


def _check_noise_std(noise_std) -> None:
    import math

    if noise_std is None:
        return
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not math.isfinite(noise_std) \
            or noise_std < 0:
        raise ValueError(f"`noise_std` (--noise_std) must be a finite number >= 0, got {noise_std!r}")


def _metrics(result) -> dict:
    return {
        name: {"psnr": psnr(result["truth"], result[name]), "ssim": ssim(result["truth"], result[name])}
        for name in ("baseline", "reconstruction")
    }


def run_reconstruction(pipeline=None, image=None, labels=None, operator="missing_lines:4",
                       settings: Optional[ReconstructionSettings] = None, out="reconstruction_output", image_index=0,
                       overwrite=False, **options) -> dict:
    """Everything ``ultrasound-diffusers reconstruct`` does; returns the metrics dict (also in metrics.json).

    Steps: 1. check the output folder and the settings (before any work); 2. load the pipeline, the image and the
    operator; 3. measure and reconstruct; 4. write the figure, the arrays and the metrics as one folder.

    Args:
        pipeline: folder, Hub id or pipeline object (default: the bundled demo pipeline).
        image: see :func:`load_image` (default: held-out phantom ``image_index``).
        labels: a label map file for a label-conditioned pipeline (phantoms bring their own).
        operator: an operator text (see :mod:`ultrasound_diffusers.operator_registry`) or operator object.
        settings: :class:`ReconstructionSettings`; ``options`` (its fields as keywords) override it.
        out: the output folder. It follows the package's output rule
            (:func:`~ultrasound_diffusers.utils.io.check_output_dir`, checked before any work): a folder another
            command or the user wrote is replaced only with ``overwrite``, and the folder is written whole.
    """
    import time

    import numpy as np

    from .pipelines.pipeline_utils import resolve_sample_size
    from .utils.io import check_output_dir

    settings = _settings(settings, options)
    method, num_samples, num_inference_steps = settings.method, settings.num_samples, settings.num_inference_steps
    inputs = [pipeline, image, labels]
    check_output_dir(out, KIND, inputs=inputs, overwrite=overwrite)
    start = time.perf_counter()
    pipe = load_pipeline(pipeline, settings.device)
    size = resolve_sample_size(pipe.unet.config.sample_size)
    truth, phantom_labels, description = load_image(image, size, pipe, image_index)
    if labels is not None:
        from .demo import load_label_maps

        phantom_labels = load_label_maps([labels])[0]
    op = make_operator_for(operator, pipe, size, settings.noise_std) if isinstance(operator, str) else operator
    result = reconstruct_image(pipe, truth, phantom_labels, op, settings)
    metrics = _metrics(result)
    std = float(op.noise_std_map((1, 1) + tuple(size)).max())
    summary = {
        "image": description, "operator": repr(op), "method": method, "num_samples": num_samples,
        "num_inference_steps": num_inference_steps, "guidance_step_size": settings.guidance_step_size,
        "num_resample": settings.num_resample, "seed": settings.seed,
        "noise_std_max": std, "final_residual_rms": float(np.mean(result["final_residual"])),
        "mean_uncertainty": float(result["uncertainty"].mean()), "seconds": round(time.perf_counter() - start, 2),
        **{f"{k}_{m}": v[m] for k, v in metrics.items() for m in ("psnr", "ssim")},
    }
    label = operator if isinstance(operator, str) else op.name
    if hasattr(op, "fraction_measured"):
        label += f" ({100 * op.fraction_measured(size):.0f} % of the {'beams' if op.probe_geometry == 'convex' else 'lines'})"
    if std > 0:
        label += f", noise std up to {std:.3g}"
    title = f"{description}: {label}, {method}, {num_samples} samples, {num_inference_steps} steps"
    fig = make_reconstruction_figure(result["truth"], result["measured"], result["baseline"], result["reconstruction"],
                                     result["uncertainty"], result["residuals"], std, title, metrics)
    write_reconstruction_folder(out, fig, result, summary, inputs=inputs, overwrite=overwrite)
    return summary


def write_reconstruction_folder(out, fig, arrays: dict, summary: dict, inputs=(), overwrite: bool = False):
    """Write a reconstruction run's folder whole, under the output rule: ``reconstruction.png`` (``fig``),
    ``reconstruction.npz`` (``arrays``, name -> array) and ``metrics.json`` (``summary``). Returns the folder."""
    import io
    import json
    from pathlib import Path

    import numpy as np

    from .utils.io import write_output_folder
    from .visualization import save_figure

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})

    def build(folder: Path) -> None:
        save_figure(fig, folder / "reconstruction.png")
        (folder / "reconstruction.npz").write_bytes(buffer.getvalue())
        (folder / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    return write_output_folder(build, out, KIND, inputs=inputs, overwrite=overwrite)


def run_benchmark(pipeline=None, keep_every=(2, 4, 8), num_images=4, settings: Optional[ReconstructionSettings] = None,
                  out="reconstruction_output", image=None, overwrite=False, **options) -> list:
    """PSNR / SSIM (mean over phantoms 0 .. ``num_images`` - 1 of ``image``, default the held-out set) of
    interpolation and reconstruction for each fraction 1/K of scan lines kept; writes ``benchmark.md`` and
    ``benchmark.json`` into ``out`` (the output rule as in :func:`run_reconstruction`). ``image`` must name phantoms
    (see :func:`resolve_phantom_image`). ``settings`` / ``options`` as in :func:`run_reconstruction`; the
    benchmark's default is one sample per image."""
    import json
    import time
    from pathlib import Path

    import numpy as np

    from .operators import MissingScanLines
    from .pipelines.pipeline_utils import resolve_sample_size
    from .utils.io import check_output_dir, write_output_folder

    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"`num_images` (--num_images) must be an integer >= 1, got {num_images!r}")
    keep_every = list(keep_every)
    if not keep_every:
        raise ValueError("`keep_every` (--benchmark) must name at least one K")
    for k in keep_every:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`keep_every` (--benchmark) values must be integers >= 1, got {k!r}")
    settings = _settings(settings if settings is not None else ReconstructionSettings(num_samples=1), options)
    method, num_samples, seed = settings.method, settings.num_samples, settings.seed
    inputs = [pipeline, image]
    check_output_dir(out, KIND, inputs=inputs, overwrite=overwrite)
    pipe = load_pipeline(pipeline, settings.device)
    size = resolve_sample_size(pipe.unet.config.sample_size)
    for i in (0, num_images - 1):  # every image of the benchmark is a phantom of the set (checked before any work)
        if resolve_phantom_image(image, pipe, max(i, 0)) is None:
            raise ValueError(
                f"the benchmark runs on phantoms: `--image` must be phantoms:ANATOMY[:N[:SEED]] or left out, got {image!r}"
            )
    rows = []
    for k in keep_every:
        op = MissingScanLines.from_scheduler(pipe.scheduler, int(k), noise_std=float(settings.noise_std or 0.0))
        scores = {"baseline": [], "reconstruction": []}
        start = time.perf_counter()
        for i in range(num_images):
            truth, labels, _ = load_image(image, size, pipe, i)
            result = reconstruct_image(pipe, truth, labels, op, dataclasses.replace(settings, seed=seed + i))
            for name, value in _metrics(result).items():
                scores[name].append(value)
        row = {"keep_every": int(k), "fraction_kept": op.fraction_measured(size),
               "num_images": num_images, "seconds": round(time.perf_counter() - start, 1)}
        for name, values in scores.items():
            row[f"{name}_psnr"] = float(np.mean([v["psnr"] for v in values]))
            row[f"{name}_ssim"] = float(np.mean([v["ssim"] for v in values]))
        rows.append(row)
    name = method if num_samples == 1 else f"{method} (mean of {num_samples})"
    lines = [
        f"| lines kept | interpolation PSNR (dB) | {name} PSNR (dB) | interpolation SSIM | {name} SSIM |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| 1/{r['keep_every']} ({100 * r['fraction_kept']:.0f} %) | {r['baseline_psnr']:.2f} | "
            f"{r['reconstruction_psnr']:.2f} | {r['baseline_ssim']:.3f} | {r['reconstruction_ssim']:.3f} |"
        )
    def build(folder: Path) -> None:
        (folder / "benchmark.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")

    write_output_folder(build, out, KIND, inputs=inputs, overwrite=overwrite)
    return rows


