"""The package's main job on a built-in default: label maps in, labelled ultrasound images out.

``ultrasound-diffusers demo`` loads a demonstration pipeline bundled with the package through
``DiffusionPipeline.from_pretrained``: by default the 4-step student (``bmap-echo-phantom-64-fewstep``, distilled
with ``training/train_progressive_distillation.py``), with ``--no-fewstep`` the 50-step model it was distilled
from (a small ``SemanticUNet2DModel`` trained with ``training/train_semantic.py`` on the built-in echo phantoms,
with the published convex B-map schedule). It generates one image per label map with a fixed seed and writes a
picture: label map, generated image, and the image's signal as the B-map forward process attenuates it at a few
steps (deep tissue fades first).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .samplers import sampler_name  # noqa: F401  (the demo title names the sampler)

#: Folder of the bundled demonstration pipeline (model_index.json, unet/, scheduler/, README.md).
DEMO_PIPELINE_PATH = Path(__file__).resolve().parent / "assets" / "bmap-echo-phantom-64"
#: The few-step student of the demo pipeline (progressive distillation, guidance distilled in; docs/fewstep.md):
#: what ``ultrasound-diffusers demo`` runs by default, at :data:`FEWSTEP_DEFAULTS`.
FEWSTEP_PIPELINE_PATH = Path(__file__).resolve().parent / "assets" / "bmap-echo-phantom-64-fewstep"
#: (num_inference_steps, guidance_scale) of the bundled few-step pipeline (its guidance is distilled in) ...
FEWSTEP_DEFAULTS = (4, 1.0)
#: ... and of the bundled 50-step pipeline and every pipeline given with ``--pipeline``.
FULL_DEFAULTS = (50, 1.5)


def demo_source(pipeline=None, fewstep: Optional[bool] = None) -> Tuple[str, int, float]:
    """(pipeline folder or repo id, default steps, default guidance) of a demo run.

    ``pipeline`` given: that pipeline, 50 steps, guidance 1.5 (``fewstep=True`` beside it is refused). Else the
    bundled few-step student (4 steps, guidance 1: the guidance is distilled in) when ``fewstep`` is True or None
    (the default), or the bundled 50-step pipeline it was distilled from (50 steps, guidance 1.5) when
    ``fewstep`` is False.
    """
    if pipeline is not None:
        if fewstep:
            raise ValueError("give either `pipeline` (--pipeline) or `fewstep` (--fewstep), not both")
        return str(pipeline), *FULL_DEFAULTS
    use_student = fewstep is None or bool(fewstep)
    folder, defaults = (FEWSTEP_PIPELINE_PATH, FEWSTEP_DEFAULTS) if use_student else (DEMO_PIPELINE_PATH, FULL_DEFAULTS)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"the bundled demo pipeline is missing from {folder}")
    return str(folder), *defaults


def load_label_maps(paths: Sequence[Union[str, os.PathLike]]) -> List[np.ndarray]:
    """Read integer label maps from PNG/TIFF images (pixel value = class) or ``.npy`` arrays ([H, W]), with the
    package's one acceptance rule (:func:`ultrasound_diffusers.image_processor.read_label_file`): colour-coded
    maps, negative or fractional values are refused."""
    from .image_processor import read_label_file

    return [read_label_file(path) for path in paths]


def default_label_maps(num: int = 4, size: int = 64, seed: int = 2024) -> List[np.ndarray]:
    """Built-in example echo label maps (0 outside fan, 1 LV cavity, 2 tissue, 3 myocardium, 4 left atrium)."""
    from .data.phantoms import phantom_label_maps

    return list(phantom_label_maps(num, anatomy="echo", size=size, seed=seed).astype(np.int64))


def attenuated_signal(scheduler, image: np.ndarray, steps: Sequence[int]) -> np.ndarray:
    """sqrt(Bbar_t(p)) * x_0(p) for an image in [0, 1]: the image under the B-map attenuation alone at each step
    (the depth-dependent part of the signal level a_t = abar_t * Bbar_t). [S, H, W]."""
    x0 = torch.from_numpy(np.asarray(image, dtype=np.float64))[None, None]
    bbar = scheduler.cumulative_bmap(torch.tensor(list(steps)), (len(steps), 1) + tuple(x0.shape[-2:]))
    return (bbar.sqrt() * x0).numpy()[:, 0]


def attenuation_view(scheduler) -> Tuple[Any, List[int]]:
    """(scheduler, train steps) of the attenuation columns: ``scheduler`` itself when it computes cumulative
    B-maps, else a ``BMapAttenuationScheduler`` from its config (the same B-maps for a B-map scheduler without
    that method, the published ones for a diffusers scheduler), and the steps T/2, 3T/4 and T - 1."""
    T = int(scheduler.config.num_train_timesteps)
    if not hasattr(scheduler, "cumulative_bmap"):
        from .schedulers import BMapAttenuationScheduler

        scheduler = BMapAttenuationScheduler.from_config(scheduler.config)
    return scheduler, [T // 2, (3 * T) // 4, T - 1]


def make_demo_figure(label_maps, images, scheduler, num_classes: int, steps: Sequence[int], title: str = ""):
    """Rows: examples. Columns: label map, generated image, the image attenuated by the cumulative B-maps at
    ``steps`` (deep tissue fades first, as sound does). Returns an RGB ``PIL.Image.Image``
    (:func:`~ultrasound_diffusers.visualization.tile_figure`)."""
    from .data.labels import colorize_labels
    from .visualization import tile_figure

    rows = [
        [colorize_labels(labels, num_classes), image, *attenuated_signal(scheduler, image, steps)]
        for labels, image in zip(label_maps, images)
    ]
    heads = ["label map", "generated", *(f"B-map attenuation, t={t}" for t in steps)]
    return tile_figure(rows, heads, title)


#: ``kind`` of the output-folder marker of ``ultrasound-diffusers demo``.
KIND = "demo"


def demo_title(source: Union[str, os.PathLike], sampler: str, num_inference_steps: int, guidance_scale: float,
               seed: int) -> str:
    """The demo figure's one-line title: pipeline, sampler, steps, guidance, seed."""
    return (f"{Path(str(source)).name} | sampler {sampler}, {num_inference_steps} steps, guidance {guidance_scale:g}, "
            f"seed {seed}")


def run_demo(
    pipeline: Optional[Union[str, os.PathLike]] = None,
    labels: Optional[Sequence[Union[str, os.PathLike]]] = None,
    num_images: int = 4,
    num_inference_steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    seed: int = 0,
    output_dir: Union[str, os.PathLike] = "demo_output",
    device: str = "cpu",
    scheduler: Optional[str] = None,
    overwrite: bool = False,
    fewstep: Optional[bool] = None,
) -> Path:
    """Generate images for label maps with a pipeline and write ``demo.png`` plus the images; returns the figure path.

    ``output_dir`` follows the package's output rule (checked before any work): it is written whole, replacing a
    folder an earlier demo wrote; a folder another command or the user wrote needs ``overwrite``.

    ``pipeline`` None runs the bundled few-step student (4 network calls, guidance 1: distilled in), or with
    ``fewstep=False`` the 50-step pipeline it was distilled from (guidance 1.5): :func:`demo_source`.
    ``num_inference_steps`` and ``guidance_scale`` None take those defaults (50 and 1.5 for a given ``pipeline``).

    ``scheduler``: None keeps the pipeline's own; ``"ddpm"``, ``"ddim"``, ``"ddim-clipped"``, ``"dpm++"`` or
    ``"sde-dpm++"`` builds that sampler from the pipeline's scheduler config (see
    :func:`~ultrasound_diffusers.schedulers.scheduling_bmap_dpmsolver_multistep.scheduler_for_sampler`); a distilled
    student is trained for its own sampler only."""
    from .pipelines import DiffusionPipeline
    from .utils.io import check_output_dir, write_output_folder
    from .visualization import save_figure

    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"`num_images` (--num_images) must be an integer >= 1, got {num_images!r}")
    inputs = [pipeline, *(labels or [])]
    check_output_dir(output_dir, KIND, inputs=inputs, overwrite=overwrite)
    source, default_steps, default_guidance = demo_source(pipeline, fewstep)
    num_inference_steps = default_steps if num_inference_steps is None else num_inference_steps
    guidance_scale = default_guidance if guidance_scale is None else guidance_scale
    start = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(source).to(device)
    if scheduler is not None:
        from .schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

        pipe.scheduler = scheduler_for_sampler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(desc="denoising")
    num_classes = int(pipe.unet.config.num_classes)
    sample_size = pipe.unet.config.sample_size
    size = sample_size if isinstance(sample_size, int) else int(sample_size[0])
    maps = load_label_maps(labels) if labels else default_label_maps(num_images, size=size)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    output = pipe(
        maps, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator, output_type="np"
    )
    images = output.images
    # the label maps as the network saw them (resized to its sample size): the figure's first column
    shown_maps = [np.asarray(m) for m in output.segmaps] if output.segmaps is not None else list(maps)
    images = [np.asarray(im, dtype=np.float64).squeeze() for im in images]
    if images[0].ndim == 3:  # RGB models: show the mean channel
        images = [im.mean(-1) for im in images]
    attenuation, steps = attenuation_view(pipe.scheduler)
    title = demo_title(source, sampler_name(pipe.scheduler, scheduler), num_inference_steps, guidance_scale, seed)
    fig = make_demo_figure(shown_maps, images, attenuation, num_classes, steps, title)

    from PIL import Image

    def build(folder: Path) -> None:
        for i, image in enumerate(images):
            Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(folder / f"generated_{i:02d}.png")
        save_figure(fig, folder / "demo.png")

    out = write_output_folder(build, output_dir, KIND, inputs=inputs, overwrite=overwrite)
    path = out / "demo.png"
    print(f"generated {len(images)} images in {time.perf_counter() - start:.1f} s")
    return path
