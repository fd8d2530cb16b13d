"""A web demo of a label-conditioned pipeline, in the Hugging Face Space convention (``gradio``, the ``app`` extra).

The repository's ``app.py`` (what a Space runs) and ``ultrasound-diffusers app`` both call :func:`build_demo` /
:func:`launch`. The page loads a pipeline (the bundled demonstration pipeline by default, through
``DiffusionPipeline.from_pretrained`` as ``ultrasound-diffusers demo`` does), lets the user pick a built-in echo
phantom label map or upload one (PNG / TIFF / BMP with class values, or ``.npy``, read with
:func:`~ultrasound_diffusers.image_processor.read_label_file`, the package's one acceptance rule), touch it up with
a brush in the label colours, and generates one image with the chosen number of steps, guidance scale, seed and
sampler. It shows the generated image, the image under the cumulative B-map attenuation at a few steps (deep
tissue fades first) and the label map in colour.

Everything but :func:`build_demo` and :func:`launch` is plain numpy / torch and does not need gradio; the callbacks
turn the ``ValueError`` of bad input into a ``gr.Error`` shown on the page.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

# Samplers offered on the page: ``"ddpm"`` (ancestral, the default) and the other ``generate --scheduler`` choices.
from .samplers import SAMPLER_LABELS, SAMPLERS, check_sampler

#: Install hint when gradio is missing.
GRADIO_HINT = "the web demo needs gradio: pip install './ultrasound-diffusers[app]'"
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 1.5
#: Built-in examples: echo phantom label maps ``phantom_label_maps(NUM_EXAMPLES, seed=EXAMPLE_SEED)``.
NUM_EXAMPLES = 4
EXAMPLE_SEED = 2024
#: Largest steps count the page accepts (a CPU Space should stay responsive).
MAX_STEPS = 1000
#: Largest label-map side the page accepts (uploads are resized to the model size anyway).
MAX_LABEL_SIDE = 2048
#: Side of the drawing canvas the label map is enlarged to (nearest) for the brush.
EDITOR_SIDE = 256

PipelineLike = Union[None, str, os.PathLike, Any]


def require_gradio():
    """``import gradio``, or an ImportError naming the ``app`` extra."""
    try:
        import gradio
    except ImportError as err:
        raise ImportError(f"{GRADIO_HINT} ({err})") from None
    return gradio


# ----------------------------------------------------------------------------------------------- pipeline
def load_pipeline(pipeline: PipelineLike = None, device: str = "cpu"):
    """A label-conditioned pipeline: ``None`` -> the bundled demo pipeline, a folder / Hub id ->
    ``DiffusionPipeline.from_pretrained``, a loaded pipeline -> itself (moved to ``device``)."""
    from .demo import DEMO_PIPELINE_PATH

    if pipeline is None or isinstance(pipeline, (str, os.PathLike)):
        from .pipelines import DiffusionPipeline

        if pipeline is None and not (DEMO_PIPELINE_PATH / "model_index.json").is_file():
            raise FileNotFoundError(f"the bundled demo pipeline is missing from {DEMO_PIPELINE_PATH}")
        pipeline = DiffusionPipeline.from_pretrained(str(pipeline if pipeline is not None else DEMO_PIPELINE_PATH))
    if not hasattr(pipeline, "num_classes") or not hasattr(pipeline, "unet"):
        raise ValueError(
            f"`pipeline` must be a label-conditioned pipeline (SemanticUltrasoundPipeline), got {type(pipeline).__name__}"
        )
    return pipeline.to(device)


def model_size(pipeline) -> Tuple[int, int]:
    """The network's ``sample_size`` as ``(H, W)``."""
    size = pipeline.unet.config.sample_size
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ------------------------------------------------------------------------------------------- label maps
def example_label_maps(num: int = NUM_EXAMPLES, size: Union[int, Tuple[int, int]] = 64, seed: int = EXAMPLE_SEED) -> Dict[str, np.ndarray]:
    """Built-in examples ``{"phantom 0": int64 [H, W], ...}``: echo phantom label maps (0 outside the fan,
    1 LV cavity, 2 tissue, 3 myocardium, 4 left atrium) of :func:`ultrasound_diffusers.data.phantoms.phantom_label_maps`."""
    from .data.phantoms import phantom_label_maps

    maps = phantom_label_maps(num, anatomy="echo", size=size, seed=seed).astype(np.int64)
    return {f"phantom {i}": m for i, m in enumerate(maps)}


def check_label_map(labels: np.ndarray, num_classes: int, where: str = "label map") -> np.ndarray:
    """``labels`` (already through the acceptance rule) with classes in ``[0, num_classes - 1]``; else ValueError."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or 0 in labels.shape:
        raise ValueError(f"{where} must be a non-empty 2-D label map [H, W], got shape {labels.shape}")
    if max(labels.shape) > MAX_LABEL_SIDE:
        raise ValueError(f"{where} is {labels.shape[0]} x {labels.shape[1]}; the demo takes maps up to {MAX_LABEL_SIDE} pixels a side")
    top = int(labels.max())
    if top >= num_classes:
        raise ValueError(
            f"{where} holds class {top} but the model knows {num_classes} classes (0 to {num_classes - 1})"
        )
    return labels.astype(np.int64)


def read_uploaded_label_map(path: Union[str, os.PathLike], num_classes: int) -> np.ndarray:
    """Read an uploaded label map file with :func:`~ultrasound_diffusers.image_processor.read_label_file` (PNG /
    TIFF / BMP of class values, or ``.npy`` [H, W]) and check its classes. Returns int64 [H, W]; ValueError /
    FileNotFoundError naming the file otherwise."""
    from .image_processor import read_label_file

    name = Path(path).name
    return check_label_map(read_label_file(path), num_classes, where=f"label map {name}")


def label_palette_for(num_classes: int) -> np.ndarray:
    """The colours the page draws classes with: ``uint8 [num_classes, 3]``
    (:func:`ultrasound_diffusers.data.labels.label_palette`)."""
    from .data.labels import label_palette

    return label_palette(num_classes)


def colorize(labels: np.ndarray, num_classes: int, scale: int = 1) -> np.ndarray:
    """RGB ``uint8 [H * scale, W * scale, 3]`` of a label map in the palette, enlarged by pixel repetition."""
    from .data.labels import colorize_labels

    rgb = colorize_labels(labels, num_classes, palette=label_palette_for(num_classes))
    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    return rgb


def editor_scale(shape: Sequence[int], side: int = EDITOR_SIDE) -> int:
    """Integer enlargement of a map of ``shape`` for the drawing canvas (its longer side about ``side``)."""
    return max(1, int(side) // max(int(shape[0]), int(shape[1])))


def labels_from_colours(rgb: np.ndarray, num_classes: int, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Invert :func:`colorize`: each pixel of an RGB(A) picture drawn in the palette becomes the class of the
    nearest palette colour (brush edges blend colours); with ``shape``, the result is resized to it (nearest,
    :func:`~ultrasound_diffusers.image_processor.resize_label_map`). int64 [H, W]."""
    from .image_processor import resize_label_map

    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"the drawn label map must be an RGB(A) picture [H, W, 3|4], got shape {rgb.shape}")
    colours = rgb[..., :3].astype(np.int32)
    palette = label_palette_for(num_classes).astype(np.int32)
    distance = ((colours[..., None, :] - palette[None, None]) ** 2).sum(-1)  # [H, W, K]
    labels = distance.argmin(-1).astype(np.int64)
    if shape is not None and tuple(labels.shape) != tuple(shape):
        labels = np.asarray(resize_label_map(labels, tuple(int(s) for s in shape)))
    return labels


def editor_composite(value: Any) -> Optional[np.ndarray]:
    """The flattened picture of a ``gr.ImageEditor`` value (dict with ``composite``), or None when empty."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("composite")
    if value is None:
        return None
    array = np.asarray(value)
    return array if array.size else None


# ---------------------------------------------------------------------------------------------- generation
def set_sampler(pipeline, sampler: str, base_config) -> None:
    """Give ``pipeline`` the ``sampler`` scheduler built from ``base_config`` (the pipeline's own scheduler
    config, so the B-maps stay those the model was trained with)."""
    from .schedulers.scheduling_bmap_dpmsolver_multistep import scheduler_for_sampler

    pipeline.scheduler = scheduler_for_sampler(check_sampler(sampler, "sampler"), base_config)


def generate_image(
    pipeline,
    labels: np.ndarray,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    sampler: str = "ddpm",
    base_config=None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, Any]:
    """One image for one label map.

    Args:
        pipeline: a label-conditioned pipeline (:func:`load_pipeline`).
        labels: int [H, W] class indices in ``[0, pipeline.num_classes - 1]``; resized to the model size (nearest).
        num_inference_steps: denoising steps, 1 to :data:`MAX_STEPS`.
        guidance_scale: classifier-free guidance scale (1 = off), >= 0.
        seed: torch seed of the initial noise and the sampler's noise.
        sampler: one of :data:`SAMPLERS`; the scheduler is rebuilt from ``base_config`` (default: the pipeline's
            current scheduler config).
        progress: ``f(done, total)`` called after every step.

    Returns:
        ``{"image": float [h, w] in [0, 1] at the model size, "attenuation": float [3, h, w] (the image under the
        cumulative B-map alone, sqrt(Bbar_t) x_0), "steps": the three train steps, "labels": int [H, W]}``.
    """
    from .demo import attenuated_signal, attenuation_view

    steps = _check_int("num_inference_steps", num_inference_steps, 1, MAX_STEPS)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    try:
        guidance_scale = float(guidance_scale)
    except (TypeError, ValueError):
        raise ValueError(f"`guidance_scale` must be a number, got {guidance_scale!r}") from None
    if not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale}")
    labels = check_label_map(labels, int(pipeline.num_classes))
    set_sampler(pipeline, sampler, base_config if base_config is not None else pipeline.scheduler.config)

    callback = None
    if progress is not None:
        def callback(pipe, i, t, kwargs):
            progress(i + 1, steps)
            return {}

    generator = torch.Generator(device="cpu").manual_seed(seed)
    output = pipeline(
        labels, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator, output_type="np",
        callback_on_step_end=callback,
    )
    image = np.asarray(output.images[0], dtype=np.float64)
    image = image.mean(-1) if image.ndim == 3 else image  # [h, w, C] -> [h, w] (RGB models: mean channel)
    image = np.clip(image, 0.0, 1.0)
    scheduler, shown = attenuation_view(pipeline.scheduler)  # the published B-maps for a plain diffusers scheduler
    return {"image": image, "attenuation": attenuated_signal(scheduler, image, shown), "steps": shown, "labels": labels}


def _check_int(name: str, value, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be an integer, got {value!r}") from None
    if not np.isfinite(number) or number != int(number) or not low <= int(number) <= high:
        raise ValueError(f"`{name}` must be an integer from {low} to {high}, got {value!r}")
    return int(number)


def to_uint8(image: np.ndarray, scale: int = 1) -> np.ndarray:
    """A [0, 1] float image as ``uint8`` [H * scale, W * scale] (pixel repetition, so browsers show pixels)."""
    out = (np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255).round().astype(np.uint8)
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def attenuation_figure(image: np.ndarray, attenuation: np.ndarray, steps: Sequence[int]):
    """A matplotlib ``Figure``: the generated image, then the image under the B-map attenuation at ``steps``."""
    from .visualization import new_figure

    panels = [image] + list(attenuation)
    titles = ["generated"] + [f"B-map attenuation, t={t}" for t in steps]
    fig = new_figure(figsize=(2.4 * len(panels), 2.7))
    for ax, panel, title in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, titles):
        ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- the page
class DemoState:
    """What the callbacks share: the pipeline, its own scheduler config, the model size and the examples."""

    def __init__(self, pipeline: PipelineLike = None, device: str = "cpu", num_examples: int = NUM_EXAMPLES):
        self.pipeline = load_pipeline(pipeline, device=device)
        self.base_config = dict(self.pipeline.scheduler.config)
        self.num_classes = int(self.pipeline.num_classes)
        self.size = model_size(self.pipeline)
        self.examples = example_label_maps(num_examples, size=self.size)

    def example(self, name: str) -> np.ndarray:
        if name not in self.examples:
            raise ValueError(f"unknown example {name!r}; choose one of {', '.join(self.examples)}")
        return self.examples[name]

    def editor_value(self, labels: np.ndarray) -> Dict[str, Any]:
        """An ImageEditor value showing ``labels`` in colour, enlarged for the brush."""
        return {"background": colorize(labels, self.num_classes, editor_scale(labels.shape)), "layers": [], "composite": None}

    def current_labels(self, labels: Optional[np.ndarray], drawn: Any) -> np.ndarray:
        """The label map to generate from: the drawing (colours -> classes) when there is one, else ``labels``."""
        if labels is None:
            raise ValueError("no label map: pick an example or upload one")
        composite = editor_composite(drawn)
        if composite is None:
            return check_label_map(labels, self.num_classes)
        return labels_from_colours(composite, self.num_classes, shape=tuple(np.asarray(labels).shape))

    def generate(self, labels, drawn, num_inference_steps, guidance_scale, seed, sampler, progress=None):
        """The generate button: (generated image uint8, attenuation figure, colour label map, a line of text)."""
        labels = self.current_labels(labels, drawn)
        result = generate_image(
            self.pipeline, labels, num_inference_steps, guidance_scale, seed, sampler, self.base_config, progress
        )
        scale = editor_scale(result["image"].shape)
        info = (
            f"{int(num_inference_steps)} steps, {SAMPLER_LABELS.get(sampler, sampler)}, guidance {float(guidance_scale):g}, "
            f"seed {int(seed)}; {result['image'].shape[0]} x {result['image'].shape[1]} pixels"
        )
        return (
            to_uint8(result["image"], scale),
            attenuation_figure(result["image"], result["attenuation"], result["steps"]),
            colorize(result["labels"], self.num_classes, editor_scale(result["labels"].shape)),
            info,
        )


_INTRO = """# ultrasound-diffusers: label maps in, ultrasound images out
Pick a label map (or upload one: PNG whose pixel values are class indices, or a `.npy` array `[H, W]`), paint on it
with the brush if you like (the brush colours are the classes), and generate. The right column shows the image under
the B-map attenuation of the forward process: deep tissue fades first, as sound does.
Demonstration model trained on synthetic phantoms; **not for clinical use**."""


def build_demo(pipeline: PipelineLike = None, device: str = "cpu", num_examples: int = NUM_EXAMPLES, title: str = "ultrasound-diffusers"):
    """The gradio ``Blocks`` of the web demo.

    Args:
        pipeline: ``None`` (the bundled demo pipeline), a pipeline folder or Hub repo id, or a loaded
            label-conditioned pipeline.
        device: torch device of the pipeline.
        num_examples: number of built-in phantom label maps offered.
        title: the browser tab's title.
    """
    gr = require_gradio()
    state = DemoState(pipeline, device=device, num_examples=num_examples)
    names = list(state.examples)
    first = state.examples[names[0]]
    palette = ["#%02x%02x%02x" % tuple(int(c) for c in colour) for colour in label_palette_for(state.num_classes)]

    def pick_example(name):
        try:
            labels = state.example(name)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        return labels, state.editor_value(labels), None

    def upload(file):
        if file is None:
            return gr.skip(), gr.skip()
        path = getattr(file, "name", file)
        try:
            labels = read_uploaded_label_map(path, state.num_classes)
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err)) from None
        return labels, state.editor_value(labels)

    def generate(labels, drawn, steps, guidance, seed, sampler, progress=gr.Progress()):
        def report(done, total):
            progress((done, total), desc="denoising")

        try:
            return state.generate(labels, drawn, steps, guidance, seed, sampler, report)
        except ValueError as err:
            raise gr.Error(str(err)) from None

    with gr.Blocks(title=title) as demo:
        gr.Markdown(_INTRO)
        labels_state = gr.State(first)
        with gr.Row():
            with gr.Column(scale=1):
                example = gr.Dropdown(names, value=names[0], label="built-in label map (echo phantom)")
                upload_box = gr.File(
                    label="or upload a label map (.png / .tif / .bmp with class values, or .npy)",
                    file_types=[".png", ".tif", ".tiff", ".bmp", ".npy"], height=110, elem_id="label-upload",
                )
                editor = gr.ImageEditor(
                    value=state.editor_value(first), label="label map (paint with the class colours)",
                    image_mode="RGB", format="png", sources=[], layers=False, transforms=[],
                    brush=gr.Brush(colors=palette, default_color=palette[min(2, len(palette) - 1)], color_mode="fixed"),
                    canvas_size=(EDITOR_SIDE, EDITOR_SIDE), elem_id="label-editor",
                )
                with gr.Row():
                    steps = gr.Slider(1, 200, value=DEFAULT_STEPS, step=1, label="num_inference_steps", elem_id="steps")
                    guidance = gr.Slider(0.0, 5.0, value=DEFAULT_GUIDANCE, step=0.1, label="guidance_scale")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                    sampler = gr.Dropdown(
                        [(SAMPLER_LABELS[name], name) for name in SAMPLERS], value="ddpm", label="sampler",
                    )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                image = gr.Image(label="generated image", format="png", elem_id="generated", interactive=False)
                info = gr.Markdown(elem_id="info")
                colour = gr.Image(label="label map", format="png", interactive=False, elem_id="labels-colour")
        attenuation = gr.Plot(
            label="B-map attenuation of the generated image", show_label=False, format="png", elem_id="attenuation"
        )

        example.change(pick_example, example, [labels_state, editor, upload_box])
        upload_box.upload(upload, upload_box, [labels_state, editor])
        button.click(generate, [labels_state, editor, steps, guidance, seed, sampler], [image, attenuation, colour, info])
    demo.queue(default_concurrency_limit=1)
    return demo


def launch(
    pipeline: PipelineLike = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
    share: bool = False,
    device: str = "cpu",
    **launch_kwargs,
):
    """Build the demo and serve it (blocks). ``host`` / ``port`` None leave gradio's defaults (and the
    ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` variables a Space sets)."""
    demo = build_demo(pipeline, device=device)
    launch_kwargs.setdefault("max_file_size", "20mb")  # label maps are small; refuse large uploads early
    return demo.launch(server_name=host, server_port=port, share=share, **launch_kwargs)


# ------------------------------------------------------------------------------------------------ Space export
#: The gradio release a Space folder asks for when gradio is not installed here (the app extra's lower bound).
SPACE_GRADIO_VERSION = "6.31.0"
#: torch for a CPU Space: the CPU wheels (the default index would pull a CUDA build of several GB).
SPACE_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"

SPACE_APP = '''"""Hugging Face Space: the ultrasound-diffusers web demo with the pipeline in ./pipeline (written by
`ultrasound-diffusers app --export_space`)."""

from pathlib import Path

from ultrasound_diffusers.app import build_demo

demo = build_demo(str(Path(__file__).resolve().parent / "pipeline"))

if __name__ == "__main__":
    demo.launch(max_file_size="20mb")
'''


def _space_card(title: str, license_fields: Dict[str, str], gradio_version: str, wheel: str, source: str) -> str:
    import yaml

    from .hub_utils import NOT_FOR_DIAGNOSIS

    meta = {
        "title": title, "colorFrom": "gray", "colorTo": "blue", "sdk": "gradio", "sdk_version": gradio_version,
        "app_file": "app.py", "pinned": False, **license_fields,
        "short_description": "Label-conditioned ultrasound images from a B-map diffusion model",
        "tags": ["ultrasound", "diffusers", "medical-imaging", "synthetic-data"],
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    return f"""---
{front}
---

# {title}

Pick or upload a label map, generate an ultrasound image from it with a Semantic Diffusion Model and B-map
(depth attenuation) noise schedule, and see the image fade with depth under the cumulative attenuation.

- Pipeline: `pipeline/` ({source}); its own model card is `pipeline/README.md` when the source had one.
- Package: `{wheel}`, built from the ultrasound-diffusers source and installed by `requirements.txt`.

**{NOT_FOR_DIAGNOSIS}.** Images generated here are synthetic; they are for research and teaching, never for a
clinical decision.

Written by `ultrasound-diffusers app --export_space`. Upload with
`huggingface_hub.HfApi().upload_folder(repo_id="ORG/NAME", repo_type="space", folder_path=".")`.
"""


def export_space(
    output_dir: Union[str, os.PathLike],
    pipeline: PipelineLike = None,
    title: str = "ultrasound-diffusers demo",
    overwrite: bool = False,
) -> Path:
    """Write a folder that runs as a Hugging Face gradio Space: ``app.py``, ``README.md`` (the Space's YAML front
    matter: sdk gradio, the gradio version, the pipeline card's license), ``requirements.txt`` (CPU torch and the
    package wheel in the folder), the wheel (:func:`~ultrasound_diffusers.utils.packaging.build_wheel`) and
    ``pipeline/`` (``save_pretrained`` of ``pipeline``: a folder, a Hub id or a loaded pipeline; default the
    bundled demo pipeline, with its card).

    The folder is written atomically under the output-folder rule of every command
    (:func:`~ultrasound_diffusers.utils.io.check_output_dir`: a non-empty folder another command wrote needs
    ``overwrite``). Needs the package's source folder for the wheel; gradio itself is not needed here.

    Returns:
        the folder.
    """
    import shutil

    from .hub_utils import license_metadata, read_card_metadata
    from .utils.constants import CARD_NAME
    from .utils.io import atomic_write_text, check_output_dir, replace_directory
    from .utils.packaging import build_wheel, require_source_root, wheel_filename

    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"`title` must be a non-empty string, got {title!r}")
    root = require_source_root()  # before any work: the wheel is built from it
    target = check_output_dir(output_dir, "space", inputs=[pipeline if isinstance(pipeline, (str, os.PathLike)) else None],
                              overwrite=overwrite, argument="--export_space")
    pipe = load_pipeline(pipeline)
    source_card = None
    if pipeline is None:
        from .demo import DEMO_PIPELINE_PATH

        source_card, source = DEMO_PIPELINE_PATH / CARD_NAME, "the bundled demonstration pipeline"
    elif isinstance(pipeline, (str, os.PathLike)) and Path(pipeline).is_dir():
        source_card, source = Path(pipeline) / CARD_NAME, f"from `{Path(pipeline).name}`"
    else:
        source = f"from `{pipeline}`" if isinstance(pipeline, str) else "a pipeline object"
    if source_card is not None and not source_card.is_file():
        source_card = None
    card_meta = read_card_metadata(source_card) if source_card is not None else {}
    license_fields = license_metadata(card_meta.get("license"), card_meta.get("license_name"),
                                      card_meta.get("license_link"), default_link="pipeline/README.md")
    try:
        import gradio

        gradio_version = gradio.__version__
    except ImportError:
        gradio_version = SPACE_GRADIO_VERSION
    wheel = wheel_filename()

    def build(folder: Path) -> None:
        built = build_wheel(folder, root)
        if built.name != wheel:
            raise RuntimeError(f"the wheel built is {built.name}, expected {wheel}")
        pipe.save_pretrained(folder / "pipeline")
        if source_card is not None:
            shutil.copyfile(source_card, folder / "pipeline" / CARD_NAME)
        atomic_write_text(folder / "app.py", SPACE_APP)
        atomic_write_text(folder / "requirements.txt", f"--extra-index-url {SPACE_TORCH_INDEX}\n./{wheel}\n")
        atomic_write_text(folder / CARD_NAME, _space_card(title, license_fields, gradio_version, wheel, source))

    return replace_directory(build, target, overwrite=True, kind="space")
