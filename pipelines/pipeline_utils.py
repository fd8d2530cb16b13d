"""Shared pieces of the ultrasound pipelines: label-map preprocessing, output postprocessing, and loading.

The loading half is :class:`DiffusionPipeline`, a subclass of diffusers' ``DiffusionPipeline`` that every
pipeline of this package derives from and that is exported as ``ultrasound_diffusers.DiffusionPipeline``:

* ``ultrasound_diffusers.DiffusionPipeline.from_pretrained(path_or_repo_id)`` reads ``model_index.json``
  and returns the pipeline class it names: one of ours, or any plain diffusers pipeline (for which it hands
  over to diffusers' own loader).
* Classes are resolved only from the top-level diffusers / transformers packages and from the modules of this
  package that define components (``pipeline_*``, ``unet_*``, ``scheduling_*``): a ``model_index.json`` that
  names an entry point (``ultrasound_diffusers.__main__``, ``.cli``, ``.commands.*``) is refused, not imported.
* Weights are loaded strictly (missing, unexpected or wrongly shaped tensors are refused, naming the keys);
  ``torch_dtype`` may be a per-component dict (``{"unet": torch.bfloat16, "default": torch.float16}``).
* Our pipelines are loaded without running any file of the folder or repository: the small "remote code"
  files that :meth:`DiffusionPipeline.save_pretrained` writes for ``trust_remote_code=True`` users of plain
  diffusers (see :mod:`ultrasound_diffusers.pipelines.hub`) are only *read*, to learn which class of the
  installed ``ultrasound_diffusers`` package they stand for.
* Repository ids are downloaded with :func:`huggingface_hub.snapshot_download` (so ``HF_HUB_OFFLINE=1``
  loads from the Hub cache), instead of diffusers' ``download`` that refuses components whose classes are
  not in diffusers.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline as _DiffusersPipeline
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from ultrasound_diffusers.image_processor import resize_label_map, to_label_array

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

#: Name of the package whose classes the loader may import (and the only one).
PACKAGE_NAME = "ultrasound_diffusers"
MODEL_INDEX_NAME = "model_index.json"

SegmapInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, Sequence[Union[PIL.Image.Image, np.ndarray, torch.Tensor]]]

__all__ = [
    "DiffusionPipeline",
    "as_count",
    "SegmapInput",
    "classifier_free_guidance",
    "fit_model_output",
    "labels_to_output",
    "postprocess_images",
    "prepare_extra_step_kwargs",
    "prepare_segmap",
    "read_model_index",
    "resolve_sample_size",
]


# ----------------------------------------------------------------------------------------------------------------
# Sizes, label maps and outputs
# ----------------------------------------------------------------------------------------------------------------


def as_count(name: str, value: Any) -> int:
    """A positive integer argument (step count, batch size) as an int: Python and numpy integers are accepted;
    bools, floats and anything else raise ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def check_guidance_scale(guidance_scale: Any) -> float:
    """``guidance_scale`` as a float; ValueError unless it is a finite number >= 0."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale!r}")
    value = float(guidance_scale)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale!r}")
    return value


def check_generation_size(unet, size: Tuple[int, int], batch: int) -> None:
    """Refuse, before the loop starts, a (height, width) that does not fit in memory for ``batch`` images
    (classifier-free guidance doubles the batch) or exceeds
    :data:`~ultrasound_diffusers.utils.memory.MAX_IMAGE_SIDE`; see
    :func:`~ultrasound_diffusers.utils.memory.check_image_size`."""
    from ultrasound_diffusers.utils.memory import check_image_size, unet_bytes_per_pixel

    check_image_size(
        int(size[0]), int(size[1]), bytes_per_pixel=unet_bytes_per_pixel(unet.config), batch=batch,
        argument="height`/`width", what="the network's activations",
    )


def resolve_sample_size(
    sample_size: Union[int, Sequence[int], None], height: Optional[int] = None, width: Optional[int] = None
) -> Tuple[int, int]:
    """(height, width) from a model's ``sample_size`` (an int for square images or ``(H, W)``), overridden by
    explicit ``height`` / ``width``. Raises ValueError for missing, non-integer, non-positive or too large
    (over :data:`~ultrasound_diffusers.utils.memory.MAX_IMAGE_SIDE`) sizes."""
    from ultrasound_diffusers.utils.memory import MAX_IMAGE_SIDE

    if isinstance(sample_size, (list, tuple)):
        if len(sample_size) != 2:
            raise ValueError(f"`sample_size` must be an int or (height, width), got {sample_size!r}")
        default_h, default_w = int(sample_size[0]), int(sample_size[1])
    elif sample_size is None:
        default_h = default_w = None
    else:
        default_h = default_w = int(sample_size)
    h = default_h if height is None else height
    w = default_w if width is None else width
    for name, value in (("height", h), ("width", w)):
        if value is None:
            raise ValueError(f"`{name}` must be given: the model's config has no `sample_size`")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(float(value))
            or int(value) != value
            or int(value) < 1
        ):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if int(value) > MAX_IMAGE_SIDE:
            raise ValueError(f"`{name}` must be at most {MAX_IMAGE_SIDE} px, got {value!r}")
    return int(h), int(w)


def _as_tensor_batch(item: Any, num_classes: int, index: str) -> Tuple[torch.Tensor, bool]:
    """One segmap item as a batch: (long labels [B, H, W], False) or (float one-hot / soft maps [B, K, H, W], True)."""
    if isinstance(item, PIL.Image.Image):
        item = to_label_array(item, f"`segmap`{index}")
    if isinstance(item, np.ndarray):
        if item.dtype == np.bool_:
            item = item.astype(np.int64)
        if not (np.issubdtype(item.dtype, np.integer) or np.issubdtype(item.dtype, np.floating)):
            raise ValueError(f"`segmap`{index} must hold integer labels, got a numpy array of dtype {item.dtype}")
        item = torch.from_numpy(np.ascontiguousarray(item))
    if not torch.is_tensor(item):
        raise ValueError(
            f"`segmap`{index} must be a PIL image, a numpy array, a torch tensor or a list of them, "
            f"got {type(item).__name__}"
        )
    x = item.detach()
    if x.dtype == torch.bool:
        x = x.long()
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"`segmap`{index} holds NaN or infinite values")
    if x.is_floating_point() and x.ndim == 4 and x.shape[1] == num_classes and num_classes > 1:
        return x.float(), True
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.ndim != 3:
        raise ValueError(
            f"`segmap`{index} must be a label map [H, W], a batch [B, H, W] or [B, 1, H, W], or a float one-hot "
            f"map [B, {num_classes}, H, W]; got shape {tuple(x.shape)}"
        )
    if x.is_floating_point():
        if not torch.equal(x, x.round()):
            raise ValueError(f"`segmap`{index} holds non-integer values; pass integer class labels")
    x = x.long()
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
        raise ValueError(
            f"`segmap`{index} labels must lie in [0, {num_classes - 1}] for a {num_classes}-class model, "
            f"got values in [{int(x.min())}, {int(x.max())}]"
        )
    return x, False


def prepare_segmap(
    segmap: SegmapInput,
    num_classes: int,
    size: Tuple[int, int],
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Turn the pipeline's ``segmap`` argument into the network's one-hot input.

    Args:
        segmap: integer label maps, each a PIL image (mode L / P / I), a numpy array or a tensor, of shape
            [H, W] (one map), [B, H, W] or [B, 1, H, W] (a batch); or a float one-hot / soft map
            [B, num_classes, H, W]; or a list of any of these (concatenated along the batch). Maps of any size
            are resized to ``size`` with nearest interpolation.
        num_classes (`int`): K, the number of classes of the model; labels must lie in [0, K-1].
        size (`(int, int)`): (height, width) of the generated images.

    Returns:
        ``(one_hot, labels)``: float one-hot maps [B, K, height, width] (``dtype``, on ``device``) and the long
        label maps [B, height, width] (the arg-max for soft maps; ``None`` if every input was a soft map of all
        zeros, which has no labels).
    """
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1 for a label-conditioned model, got {num_classes}")
    items = list(segmap) if isinstance(segmap, (list, tuple)) else [segmap]
    if not items:
        raise ValueError("`segmap` must not be an empty list")
    one_hots, labels = [], []
    all_zero_soft = True
    for i, item in enumerate(items):
        x, is_soft = _as_tensor_batch(item, num_classes, f"[{i}]" if len(items) > 1 else "")
        if x.shape[-2] < 1 or x.shape[-1] < 1 or x.shape[0] < 1:
            raise ValueError(f"`segmap` has an empty shape {tuple(x.shape)}")
        x = x.to(device)
        if is_soft:
            soft = resize_label_map(x, size)
            one_hots.append(soft.to(dtype))
            labels.append(soft.argmax(dim=1))
            all_zero_soft = all_zero_soft and not bool(soft.any())
        else:
            x = resize_label_map(x, size)
            one_hots.append(F.one_hot(x, num_classes).permute(0, 3, 1, 2).to(dtype))
            labels.append(x)
            all_zero_soft = False
    return torch.cat(one_hots), (None if all_zero_soft else torch.cat(labels))


def postprocess_images(images: torch.Tensor, output_type: str = "pil"):
    """Model-space images [B, C, H, W] in [-1, 1] to the requested output.

    Returns a list of PIL images (mode ``L`` for C=1, ``RGB`` for C=3) for ``"pil"``, a float32 array
    [B, H, W, C] in [0, 1] for ``"np"``, or a float tensor [B, C, H, W] in [0, 1] for ``"pt"``.
    """
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    if not bool(torch.isfinite(images).all()):
        logger.warning("the generated images contain NaN or infinite values (a diverged sampler or bad weights)")
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    return numpy_to_pil(array)


def numpy_to_pil(array: np.ndarray) -> List[PIL.Image.Image]:
    """Images [B, H, W, C] in [0, 1] (C = 1 or 3) to PIL images (mode ``L`` or ``RGB``), rounding to 8 bits.
    Non-finite values are refused (``ValueError``): they have no grey level."""
    channels = array.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"`output_type='pil'` needs 1 or 3 image channels, the model makes {channels}; use 'np' or 'pt'")
    if not np.isfinite(array).all():
        raise ValueError("the images contain NaN or infinite values; they cannot be converted to PIL images")
    array = (array * 255).round().astype(np.uint8)
    if channels == 1:
        return [PIL.Image.fromarray(a[..., 0], mode="L") for a in array]
    return [PIL.Image.fromarray(a, mode="RGB") for a in array]


def labels_to_output(labels: Optional[torch.Tensor], output_type: str = "pil"):
    """Label maps [B, H, W] (long) in the format of ``output_type``: a list of PIL ``L`` images (labels < 256)
    for ``"pil"``, an int64 array [B, H, W] for ``"np"``, the long tensor for ``"pt"``; ``None`` stays ``None``."""
    if labels is None:
        return None
    if output_type == "pt":
        return labels
    array = labels.cpu().numpy().astype(np.int64)
    if output_type == "np":
        return array
    if array.size and array.max() > 255:
        raise ValueError("label maps with labels > 255 cannot be returned as PIL images; use output_type 'np' or 'pt'")
    return [PIL.Image.fromarray(a.astype(np.uint8), mode="L") for a in array]


# ----------------------------------------------------------------------------------------------------------------
# Denoising-loop helpers
# ----------------------------------------------------------------------------------------------------------------


def prepare_extra_step_kwargs(scheduler, generator=None, eta: Optional[float] = None) -> Dict[str, Any]:
    """Keyword arguments for ``scheduler.step`` that the scheduler accepts.

    ``eta=None`` leaves eta to the scheduler (DDIMScheduler uses 0.0, BMapAttenuationScheduler its configured
    ``sampler``); a float is passed to schedulers whose ``step`` takes ``eta`` and ignored, with a warning, by
    others (DDPMScheduler). The generator is passed when ``step`` takes one.
    """
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: Dict[str, Any] = {}
    if eta is not None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)) or not (
            math.isfinite(float(eta)) and eta >= 0
        ):
            raise ValueError(f"`eta` must be a finite number >= 0 (or None), got {eta!r}")
        if "eta" in params:
            kwargs["eta"] = float(eta)
        else:
            logger.warning(f"`eta`={eta} is ignored: {type(scheduler).__name__}.step takes no eta")
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def fit_model_output(model_output: torch.Tensor, scheduler, channels: int) -> torch.Tensor:
    """Give the scheduler the channels it understands.

    A learned-sigma network returns 2C channels (C predictions, then C variance values). Schedulers that have a
    ``variance_type`` setting and have it at ``"learned"`` / ``"learned_range"`` take all 2C channels and split
    them; any other scheduler (fixed variance, DDIM, ...) gets only the first C.
    """
    if model_output.shape[1] == channels:
        return model_output
    if model_output.shape[1] != 2 * channels:
        raise ValueError(
            f"the model returned {model_output.shape[1]} channels for {channels}-channel samples; "
            f"expected {channels} or {2 * channels} (learned sigma)"
        )
    # A scheduler swapped in with from_config keeps the other scheduler's keys in its config, so also ask
    # whether variance_type is one of its own settings (DDPMScheduler, BMapAttenuationScheduler; not DDIM).
    takes_variance = "variance_type" in inspect.signature(type(scheduler).__init__).parameters
    if takes_variance and getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range"):
        return model_output
    return model_output[:, :channels]


def classifier_free_guidance(
    conditional: torch.Tensor, unconditional: torch.Tensor, guidance_scale: float, channels: int
) -> torch.Tensor:
    """SDM's classifier-free guidance on the prediction channels only.

    ``out[:, :C] = uncond[:, :C] + s * (cond[:, :C] - uncond[:, :C])``; the variance channels ``[:, C:]``
    (learned sigma) are taken from the labelled branch unchanged. Inputs [B, C or 2C, H, W].
    """
    guided = unconditional[:, :channels] + guidance_scale * (conditional[:, :channels] - unconditional[:, :channels])
    return torch.cat([guided, conditional[:, channels:]], dim=1)


def expand_timestep(t: torch.Tensor, batch: int, device) -> torch.Tensor:
    """A scheduler timestep (0-d tensor or number) as a 1-d tensor [batch] on ``device``."""
    t = torch.as_tensor(t, device=device)
    return t.reshape(-1)[:1].expand(batch) if t.ndim <= 1 else t


# ----------------------------------------------------------------------------------------------------------------
# The prologue and the network call shared by the pipelines
# ----------------------------------------------------------------------------------------------------------------

OUTPUT_TYPES = ("pil", "np", "pt")


def check_output_type(output_type: Any) -> str:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")
    return output_type


def prepare_timesteps(scheduler, num_inference_steps: Optional[int], timesteps: Optional[List[int]], device) -> torch.Tensor:
    """Set the scheduler's inference steps (custom ``timesteps`` win over ``num_inference_steps``) and return them."""
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps, device=device)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps


def prepare_latents(
    shape: Tuple[int, ...], generator, latents: Optional[torch.Tensor], device, dtype, init_noise_sigma: float = 1.0,
    what: str = "one per image",
) -> torch.Tensor:
    """The initial noise [B, C, H, W]: drawn from ``generator`` (one, or a list of B) or the given ``latents``
    (checked against ``shape``), times the scheduler's ``init_noise_sigma``."""
    batch = shape[0]
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"`generator` is a list of {len(generator)} generators; expected {batch} ({what})")
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(latents.shape) != tuple(shape):
        raise ValueError(f"`latents` must have shape {tuple(shape)}, got {tuple(latents.shape)}")
    return latents.to(device=device, dtype=dtype) * init_noise_sigma


def guided_segmap(one_hot: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The label input of the network: ``one_hot`` [B, K, H, W], followed by B all-zero (null) maps when
    classifier-free guidance is on (``guidance_scale != 1``), so that both branches run in one batched pass."""
    return torch.cat([one_hot, torch.zeros_like(one_hot)]) if float(guidance_scale) != 1.0 else one_hot


def denoise_step_output(
    unet, scheduler, sample: torch.Tensor, t, channels: int, segmap: Optional[torch.Tensor] = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """The network's output for the scheduler at step ``t``: one pass (labelled and null maps batched when
    guidance is on, see :func:`guided_segmap`), SDM's classifier-free guidance on the prediction channels, and
    the channels the scheduler understands (:func:`fit_model_output`). ``sample`` [B, C, H, W]."""
    cfg = segmap is not None and float(guidance_scale) != 1.0
    model_input = torch.cat([sample, sample]) if cfg else sample
    model_input = scheduler.scale_model_input(model_input, t)
    timestep = expand_timestep(t, model_input.shape[0], sample.device)
    if segmap is not None:
        output = unet(model_input, timestep, segmap=segmap).sample
    else:
        output = unet(model_input, timestep).sample
    if cfg:
        conditional, unconditional = output.chunk(2)
        output = classifier_free_guidance(conditional, unconditional, float(guidance_scale), channels)
    return fit_model_output(output, scheduler, channels)


def check_callback_inputs(pipeline, callback_on_step_end, tensor_inputs: Optional[List[str]]) -> List[str]:
    """Validate ``callback_on_step_end`` and return the tensor names it receives."""
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if callback_on_step_end is None:
        return []
    if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
        tensor_inputs = callback_on_step_end.tensor_inputs
    elif not callable(callback_on_step_end):
        raise ValueError("`callback_on_step_end` must be callable as f(pipeline, step, timestep, callback_kwargs)")
    tensor_inputs = list(tensor_inputs or [])
    unknown = [k for k in tensor_inputs if k not in pipeline._callback_tensor_inputs]
    if unknown:
        raise ValueError(
            f"`callback_on_step_end_tensor_inputs` must be among {pipeline._callback_tensor_inputs}, got {unknown}"
        )
    return tensor_inputs


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------

# Libraries whose classes may be named in model_index.json and are imported by name (never a module that the
# folder itself provides). Their classes are taken from the top-level package only (diffusers and transformers
# export every component class there), so that no submodule (a CLI, an entry point) is ever imported by name.
_TRUSTED_LIBRARIES = ("diffusers", "transformers")
# The modules of this package that define components, the only ones of it the loader imports: the package and
# its component sub-packages, and the one-file-per-component modules in them. Never an entry point
# (``__main__``, ``cli``, ``commands.*``) or any other module, so that a doctored model_index.json cannot run
# anything by naming it.
_COMPONENT_MODULE = re.compile(
    r"^" + PACKAGE_NAME + r"(?:\.(?:pipelines|models|schedulers))?$"
    r"|^" + PACKAGE_NAME + r"\.pipelines\.pipeline_[a-z0-9_]+$"
    r"|^" + PACKAGE_NAME + r"\.models\.unet_[a-z0-9_]+$"
    r"|^" + PACKAGE_NAME + r"\.schedulers\.scheduling_[a-z0-9_]+$"
)


def is_component_module(module_name: Any) -> bool:
    """True for the modules of ultrasound_diffusers that define pipeline components (and may be imported by the
    loader): ``ultrasound_diffusers``, ``.pipelines``, ``.models``, ``.schedulers`` and their
    ``pipeline_*``, ``unet_*`` and ``scheduling_*`` modules."""
    return isinstance(module_name, str) and bool(_COMPONENT_MODULE.match(module_name)) and "__" not in module_name


def _refuse_module(module_name: str, where: str) -> ValueError:
    return ValueError(
        f"{where}: `{module_name}` is not a module that defines pipeline components; the loader imports classes "
        f"only from diffusers, transformers and the component modules of {PACKAGE_NAME} "
        f"({PACKAGE_NAME}.pipelines.pipeline_*, .models.unet_*, .schedulers.scheduling_*), never an entry point"
    )
_SHIM_IMPORT = re.compile(r"^\s*from\s+(" + PACKAGE_NAME + r"(?:\.\w+)*)\s+import\s+(\w+)\s*$", re.MULTILINE)


def read_model_index(folder: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The parsed ``model_index.json`` of a pipeline folder; ValueError naming the file when absent or invalid."""
    path = Path(folder) / MODEL_INDEX_NAME
    if not path.is_file():
        raise ValueError(f"{path} does not exist: {folder} is not a saved pipeline folder (no {MODEL_INDEX_NAME})")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ValueError(f"{path} has no `_class_name` entry naming the pipeline class")
    return index


def _shim_target(shim_file: Path, class_name: str) -> Optional[str]:
    """Module of the ultrasound_diffusers class a remote-code shim stands for (read, never executed)."""
    if not shim_file.is_file():
        return None
    try:
        text = shim_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for module, name in _SHIM_IMPORT.findall(text):
        if name == class_name:
            return module
    return None


def _import_attr(module_name: str, class_name: str, where: str):
    if module_name not in _TRUSTED_LIBRARIES and not is_component_module(module_name):
        raise _refuse_module(module_name, where)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{where}: cannot import module `{module_name}` for class `{class_name}`: {error}") from error
    obj = getattr(module, class_name, None)
    if obj is None:
        raise ValueError(f"{where}: module `{module_name}` has no class `{class_name}`")
    return obj


def resolve_class(entry: Any, folder: Union[str, os.PathLike], component: Optional[str] = None) -> type:
    """The class a ``model_index.json`` entry names, importing only diffusers, transformers or this package.

    ``entry`` is ``[library_or_module, ClassName]`` (a component, or a list ``_class_name``) or a plain class
    name (``_class_name``). ``library_or_module`` may be ``"diffusers"``, a module of this package
    (``"ultrasound_diffusers.models.unet_semantic_2d"``) or the name of a remote-code shim file
    (``<component>/<name>.py``, or ``<name>.py`` beside model_index.json for the pipeline), which is read to
    find the class it imports. Raises ValueError naming model_index.json when the class cannot be found.
    """
    folder = Path(folder)
    where = f"{folder / MODEL_INDEX_NAME} ({'component ' + repr(component) if component else '_class_name'})"
    if isinstance(entry, str):
        library, class_name = None, entry
    elif isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str):
        library, class_name = entry
    else:
        raise ValueError(f"{where}: expected [library, ClassName] or a class name, got {entry!r}")

    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise ValueError(f"{where}: `{class_name}` is not a class name")
    if library is not None and not isinstance(library, str):
        raise ValueError(f"{where}: expected [library, ClassName] or a class name, got {entry!r}")
    if library is not None and library.split(".")[0] in _TRUSTED_LIBRARIES:
        # diffusers / transformers: the top-level package only (it exports every component class)
        obj = _import_attr(library.split(".")[0], class_name, where)
        return _check_is_class(obj, class_name, where)
    if library is not None and (library == PACKAGE_NAME or library.startswith(PACKAGE_NAME + ".")):
        if not is_component_module(library):
            raise _refuse_module(library, where)
        return _check_is_class(_import_attr(library, class_name, where), class_name, where)
    if library is not None:
        if not library.isidentifier():
            raise ValueError(f"{where}: `{library}` is neither a library nor a remote-code file name")
        shim = (folder / component / f"{library}.py") if component else (folder / f"{library}.py")
        module = _shim_target(shim, class_name)
        if module is not None:
            if not is_component_module(module):
                raise _refuse_module(module, f"{where}, remote-code file {shim}")
            return _check_is_class(_import_attr(module, class_name, where), class_name, where)

    # A bare class name (or an unreadable shim): this package's exports, then diffusers'.
    for module_name in (f"{PACKAGE_NAME}.pipelines", PACKAGE_NAME, "diffusers"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # pragma: no cover - the package itself is importable here
            continue
        obj = getattr(module, class_name, None)
        if isinstance(obj, type):
            return obj
    hint = f" (declared as coming from `{library}`)" if library else ""
    raise ValueError(
        f"{where}: class `{class_name}`{hint} does not exist in ultrasound_diffusers or diffusers. "
        "Check the class name, or update ultrasound-diffusers (`pip install -U ultrasound-diffusers`)."
    )


def _check_is_class(obj: Any, class_name: str, where: str) -> type:
    if not isinstance(obj, type):
        raise ValueError(f"{where}: `{class_name}` is not a class")
    return obj


def _known_scheduler_keys(scheduler_cls: type) -> set:
    """Config keys that scheduler_cls or a scheduler it is compatible with (or one of ours) understands."""
    classes = {scheduler_cls}
    if getattr(scheduler_cls, "has_compatibles", False):
        classes.update(scheduler_cls._get_compatibles())
    try:
        from ultrasound_diffusers.schedulers import scheduling_bmap_attenuation

        ours = [scheduling_bmap_attenuation.BMapAttenuationScheduler]
    except ImportError:  # pragma: no cover
        ours = []
    for cls in ours:
        classes.add(cls)
        classes.update(cls._get_compatibles())
    keys = set()
    for cls in classes:
        if isinstance(cls, type):
            keys.update(inspect.signature(cls.__init__).parameters)
    keys.discard("self")
    keys.discard("kwargs")
    return keys


def check_scheduler_config(scheduler_cls: type, config_path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a scheduler config and refuse keys no compatible scheduler knows (typos such as ``bmap_mn``).

    Keys starting with ``_`` (metadata) and keys of compatible schedulers (kept by diffusers when a scheduler
    is swapped with ``from_config``) are allowed. Raises ValueError naming the file.
    """
    path = Path(config_path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable JSON scheduler config: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in _known_scheduler_keys(scheduler_cls))
    if unknown:
        raise ValueError(f"{path}: unknown {scheduler_cls.__name__} config keys {unknown}")
    return config


_MODEL_LOAD_KWARGS = (
    "torch_dtype",
    "variant",
    "use_safetensors",
    "low_cpu_mem_usage",
    "device_map",
    "max_memory",
    "offload_folder",
    "offload_state_dict",
    "disable_mmap",
)
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def load_component(component_cls: type, folder: Union[str, os.PathLike], name: str, **model_kwargs) -> Any:
    """Load component ``name`` (a sub-folder of ``folder``) with its class's loading method.

    Schedulers are built from their config after :func:`check_scheduler_config`; models are loaded with
    ``from_pretrained`` and ``model_kwargs`` (``torch_dtype``, ``variant``, ...), strictly: weights with
    missing or unexpected keys raise ValueError naming them. Missing folders and configs raise ValueError naming
    the expected file.
    """
    folder = Path(folder)
    subfolder = folder / name
    if not subfolder.is_dir():
        raise ValueError(
            f"{folder / MODEL_INDEX_NAME} lists component {name!r} ({component_cls.__name__}) but the folder "
            f"{subfolder} does not exist"
        )
    config_name = getattr(component_cls, "config_name", None)
    if config_name and not (subfolder / config_name).is_file():
        raise ValueError(f"component {name!r}: {subfolder / config_name} does not exist")
    if issubclass(component_cls, SchedulerMixin):
        config = check_scheduler_config(component_cls, subfolder / config_name)
        try:
            return component_cls.from_config(config)
        except (ValueError, TypeError) as error:  # a refused value: name the file it came from
            raise ValueError(f"{subfolder / config_name}: {error}") from error
    if issubclass(component_cls, ModelMixin):
        from ultrasound_diffusers.models.loading import check_loading_info

        # strict: a checkpoint with missing, unexpected or wrongly shaped tensors is refused, naming the keys
        try:
            model, info = component_cls.from_pretrained(
                str(subfolder), output_loading_info=True, **{k: v for k, v in model_kwargs.items() if v is not None}
            )
        except ValueError:
            raise
        except OSError as error:  # diffusers' wording for damaged / truncated / non-JSON files
            raise ValueError(
                f"component {name!r} ({component_cls.__name__}) in {subfolder} cannot be loaded: "
                f"{' '.join(str(error).split())} The file is damaged, truncated or not written by save_pretrained; "
                "re-download or re-save the pipeline."
            ) from error
        check_loading_info(info, component_cls.__name__, subfolder)
        return model
    if hasattr(component_cls, "from_pretrained"):
        return component_cls.from_pretrained(str(subfolder))
    if issubclass(component_cls, ConfigMixin):  # pragma: no cover - rare
        return component_cls.from_config(component_cls.load_config(str(subfolder)))
    raise ValueError(f"component {name!r}: {component_cls.__name__} has no loading method")


def _as_dtype(value: Any, where: str) -> torch.dtype:
    """A torch.dtype from a dtype or its name (``"float16"``, ``"torch.bfloat16"``); TypeError otherwise."""
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        candidate = getattr(torch, value[len("torch."):] if value.startswith("torch.") else value, None)
        if isinstance(candidate, torch.dtype):
            return candidate
    raise TypeError(f"{where} must be a torch.dtype (e.g. torch.float16) or its name, got {value!r}")


def _component_dtypes(torch_dtype: Any, names: Sequence[str], folder: Union[str, os.PathLike]) -> Dict[str, Optional[torch.dtype]]:
    """The dtype each component is loaded in, from ``torch_dtype``.

    ``torch_dtype`` is None (every model keeps its saved dtype), one dtype for every model, or a dict, as in
    diffusers: ``{"unet": torch.bfloat16, "default": torch.float16}`` gives each named component its dtype and
    every other model the ``"default"`` one (float32 when there is no ``"default"``). Keys that name no
    component of the pipeline are reported with a warning.
    """
    if torch_dtype is None:
        return {}
    if not isinstance(torch_dtype, dict):
        dtype = _as_dtype(torch_dtype, "`torch_dtype`")
        return {name: dtype for name in names}
    parsed = {str(k): _as_dtype(v, f"`torch_dtype[{k!r}]`") for k, v in torch_dtype.items()}
    unknown = sorted(k for k in parsed if k != "default" and k not in names)
    if unknown:
        logger.warning(
            f"`torch_dtype` names {unknown}, which are not components of the pipeline in {folder} "
            f"(components: {list(names)}); they are ignored"
        )
    default = parsed.get("default", torch.float32)
    return {name: parsed.get(name, default) for name in names}


def _component_variants(
    variant: Optional[str], index: Dict[str, Any], names: Sequence[str], passed: Dict[str, Any], folder
) -> Dict[str, str]:
    """The components that load weight ``variant``, as diffusers decides it.

    Components whose folder has files of the variant load them; the others load their plain weights (with a
    warning). If no component folder has the variant, a ValueError (with diffusers' message) is raised.
    """
    if variant is None:
        return {}
    from ultrasound_diffusers.models.loading import MissingVariantError, has_weight_variant, variant_message

    if not isinstance(variant, str) or not variant:
        raise ValueError(f"`variant` must be a non-empty string such as 'fp16', got {variant!r}")
    candidates = [n for n in names if n not in passed and isinstance(index.get(n), (list, tuple))]
    with_variant = [n for n in candidates if has_weight_variant(Path(folder) / n, variant)]
    if not with_variant:
        raise MissingVariantError(variant_message(variant, folder))
    weights = [
        n for n in candidates
        if n not in with_variant and any(p.name.endswith((".safetensors", ".bin")) for p in (Path(folder) / n).glob("*"))
    ]
    if weights:
        logger.warning(f"{folder}: components {weights} have no `variant={variant}` files; their plain weights are loaded")
    return {n: variant for n in with_variant}


def _move_into(source: Path, target: Path) -> None:
    """Move every entry of ``source`` into ``target`` one at a time with :func:`os.replace` (model_index.json
    last), replacing entries of the same name and leaving other files of ``target`` alone."""
    target.mkdir(parents=True, exist_ok=True)
    entries = sorted(source.iterdir(), key=lambda p: (p.name == MODEL_INDEX_NAME, p.name))
    for entry in entries:
        dest = target / entry.name
        if dest.is_dir() and not dest.is_symlink():
            aside = target / f".{entry.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, aside)
            os.replace(entry, dest)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(entry, dest)


class DiffusionPipeline(_DiffusersPipeline):
    r"""Base class of the ultrasound pipelines, and an auto class for loading.

    ``DiffusionPipeline.from_pretrained(path_or_repo_id)`` (called on this class) returns the pipeline that
    ``model_index.json`` names: ``SemanticUltrasoundPipeline``, ``UltrasoundPipeline``, or any diffusers
    pipeline (``DDPMPipeline``, ...). Called on a concrete pipeline class it builds that class.

    :meth:`save_pretrained` also writes the small remote-code files that let plain
    ``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` load the folder, and
    :meth:`push_to_hub` uploads the folder with a model card.
    """

    _callback_tensor_inputs = ["latents"]

    # ------------------------------------------------------------------ progress
    @contextlib.contextmanager
    def progress_bar_disabled(self):
        """Within the block the pipeline shows no progress bar (a caller with a bar of its own, such as
        ``generate_dataset``); the earlier progress-bar configuration is restored afterwards."""
        had_config = hasattr(self, "_progress_bar_config")
        previous = dict(getattr(self, "_progress_bar_config", {}))
        self.set_progress_bar_config(**{**previous, "disable": True})
        try:
            yield self
        finally:
            if had_config:
                self.set_progress_bar_config(**previous)
            else:
                del self._progress_bar_config

    # ------------------------------------------------------------------ download
    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str:
        """Download (or find in the Hub cache) every file of a Hub repository; returns the local folder.

        Uses :func:`huggingface_hub.snapshot_download`, so ``HF_HUB_OFFLINE=1`` / ``local_files_only=True``
        load from the cache. Accepts ``cache_dir``, ``force_download``, ``proxies``, ``local_files_only``,
        ``token``, ``revision``, ``allow_patterns`` and ``ignore_patterns``; other keyword arguments are
        ignored.
        """
        from huggingface_hub import snapshot_download

        hub = {k: kwargs[k] for k in _HUB_KWARGS + ("allow_patterns", "ignore_patterns") if kwargs.get(k) is not None}
        hub.pop("proxies", None)  # not an argument of huggingface_hub >= 1.0
        return snapshot_download(str(pretrained_model_name), **hub)

    # ------------------------------------------------------------------ from_pretrained
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        r"""Load a pipeline from a local folder or a Hub repository id.

        Args:
            pretrained_model_name_or_path: a folder written by :meth:`save_pretrained`, or a repo id
                ``"org/name"`` (downloaded with :meth:`download`; with ``HF_HUB_OFFLINE=1`` read from the cache).
            torch_dtype / dtype (`torch.dtype` or `dict`, *optional*): dtype of the loaded models, or a dict giving
                each component its own (``{"unet": torch.bfloat16, "default": torch.float16}``; components not
                named get ``"default"``, float32 without it), as in diffusers.
            variant, use_safetensors, low_cpu_mem_usage: passed to the models' ``from_pretrained``.
            cache_dir, revision, token, force_download, local_files_only: Hub download options.
            <component name>: an already built component (e.g. ``scheduler=DDIMScheduler(...)``) to use instead
                of loading it from the folder.

            trust_remote_code (`bool`, defaults to False): only used for pipelines that are neither ours nor
                diffusers' (custom code shipped with the repository), which are then handed to diffusers' loader.

        No file of the folder is executed for our pipelines: classes are imported from the top-level diffusers and
        transformers packages or from the component modules of the installed ultrasound_diffusers
        (:func:`is_component_module`), never from an entry point such as ``ultrasound_diffusers.__main__``. Weights
        are loaded strictly (missing or unexpected keys are an error). Errors (missing model_index.json, a class
        that does not exist or comes from another module, a missing component folder or variant, incomplete
        weights, unknown or refused scheduler config values) are ValueErrors naming the file.
        """
        source = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(source):
            folder = source
        else:
            if source.count("/") > 1 or not source:
                raise ValueError(
                    f"`pretrained_model_name_or_path` {source!r} is neither an existing folder nor a Hub repo id 'org/name'"
                )
            folder = cls.download(source, **kwargs)
        trust_remote_code = bool(kwargs.pop("trust_remote_code", False))
        for key in _HUB_KWARGS + ("allow_patterns", "ignore_patterns"):
            kwargs.pop(key, None)

        index = read_model_index(folder)
        if cls is DiffusionPipeline or not issubclass(cls, DiffusionPipeline):
            try:
                pipeline_class = resolve_class(index["_class_name"], folder)
            except ValueError:
                if not trust_remote_code:
                    raise
                # a community / custom pipeline of another project: diffusers runs its code, as asked
                pipe = _DiffusersPipeline.from_pretrained(folder, trust_remote_code=True, **kwargs)
                pipe.register_to_config(_name_or_path=source)
                return pipe
        else:
            pipeline_class = cls
        if not issubclass(pipeline_class, _DiffusersPipeline):
            raise ValueError(f"{Path(folder) / MODEL_INDEX_NAME}: `{pipeline_class.__name__}` is not a pipeline class")

        if not issubclass(pipeline_class, DiffusionPipeline):
            # A plain diffusers pipeline: diffusers' loader, once the modules of our components it names are
            # imported (diffusers resolves them from sys.modules).
            # diffusers imports every library a component names, so check them first: diffusers, transformers or a
            # component module of ours (anything else only with trust_remote_code=True).
            for key, value in index.items():
                if key.startswith("_") or not (isinstance(value, (list, tuple)) and value and isinstance(value[0], str)):
                    continue
                library = value[0]
                where = f"{Path(folder) / MODEL_INDEX_NAME} (component {key!r})"
                if library == PACKAGE_NAME or library.startswith(PACKAGE_NAME + "."):
                    if not is_component_module(library):
                        raise _refuse_module(library, where)
                    importlib.import_module(library)
                elif library.split(".")[0] not in _TRUSTED_LIBRARIES and not trust_remote_code:
                    raise ValueError(
                        f"{where}: library `{library}` is not diffusers, transformers or {PACKAGE_NAME}; loading it "
                        "would import (run) it. Pass trust_remote_code=True if you trust this folder."
                    )
            pipe = pipeline_class.from_pretrained(folder, **kwargs)
            pipe.register_to_config(_name_or_path=source)
            return pipe

        if "dtype" in kwargs:
            kwargs.setdefault("torch_dtype", kwargs.pop("dtype"))
        model_kwargs = {k: kwargs.pop(k) for k in _MODEL_LOAD_KWARGS if k in kwargs}
        expected, optional = pipeline_class._get_signature_keys(pipeline_class)
        dtypes = _component_dtypes(model_kwargs.pop("torch_dtype", None), sorted(expected), folder)
        variants = _component_variants(model_kwargs.pop("variant", None), index, sorted(expected), kwargs, folder)
        components: Dict[str, Any] = {}
        for name in sorted(expected):
            if name in kwargs:
                components[name] = kwargs.pop(name)
                continue
            entry = index.get(name)
            if entry is None or (isinstance(entry, (list, tuple)) and entry and entry[0] is None):
                if name in pipeline_class._optional_components:
                    components[name] = None
                    continue
                raise ValueError(
                    f"{Path(folder) / MODEL_INDEX_NAME} has no component {name!r}, which "
                    f"{pipeline_class.__name__} needs (pass it as `{name}=...` or re-save the pipeline)"
                )
            component_cls = resolve_class(entry, folder, component=name)
            components[name] = load_component(
                component_cls, folder, name, torch_dtype=dtypes.get(name), variant=variants.get(name), **model_kwargs
            )
        # optional (non-component) settings: passed ones win over the ones saved in model_index.json
        init_kwargs = {k: kwargs.pop(k) if k in kwargs else index[k] for k in optional if k in kwargs or k in index}
        if kwargs:
            logger.warning(f"Keyword arguments {sorted(kwargs)} are not expected by {pipeline_class.__name__} and are ignored.")
        pipe = pipeline_class(**components, **init_kwargs)
        pipe.register_to_config(_name_or_path=source)
        return pipe

    # ------------------------------------------------------------------ saving and sharing
    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        max_shard_size: Union[int, str, None] = None,
        push_to_hub: bool = False,
        write_remote_code: bool = True,
        **kwargs,
    ):
        r"""Save the pipeline into ``save_directory`` (model_index.json plus one folder per component).

        The folder is first written next to ``save_directory`` and then moved in entry by entry, so an
        interrupted save never leaves a half-written component; files of ``save_directory`` that are not part
        of the pipeline (checkpoints, logs) are kept.

        Args:
            write_remote_code (`bool`, defaults to True): also write the remote-code files (a few lines each that
                import the classes from the installed ultrasound_diffusers) and point model_index.json to them,
                so that ``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works.
            push_to_hub (`bool`): afterwards call :meth:`push_to_hub` with ``repo_id`` (default: the folder's
                name) and the remaining keyword arguments.
            safe_serialization, variant, max_shard_size: as in diffusers.
        """
        target = Path(save_directory)
        if target.exists() and not target.is_dir():
            raise ValueError(f"`save_directory` {target} exists and is not a folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.saving-{uuid.uuid4().hex[:8]}"
        try:
            super().save_pretrained(
                str(staging), safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size
            )
            if write_remote_code:
                from .hub import write_remote_code_files

                write_remote_code_files(staging)
            _move_into(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", target.resolve().name)
            self.push_to_hub(repo_id, safe_serialization=safe_serialization, variant=variant, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: Optional[str] = None,
        private: Optional[bool] = None,
        token: Optional[str] = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        **model_card_kwargs,
    ) -> str:
        """Upload the pipeline (saved with its remote-code files) and a model card to the Hub repo ``repo_id``.

        ``model_card_kwargs`` go to :func:`ultrasound_diffusers.pipelines.hub.create_model_card` (license,
        datasets, training_data, evaluation_results, label_names, ...). Returns the commit URL.
        """
        from .hub import push_to_hub

        return push_to_hub(
            self,
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            create_pr=create_pr,
            safe_serialization=safe_serialization,
            variant=variant,
            **model_card_kwargs,
        )
