"""Shared pieces of the ultrasound pipelines: the base class, label-map preprocessing, the denoising-loop helpers
and output postprocessing.

:class:`DiffusionPipeline` is a subclass of diffusers' ``DiffusionPipeline`` that every pipeline of this package
derives from and that is exported as ``ultrasound_diffusers.DiffusionPipeline``:

* ``ultrasound_diffusers.DiffusionPipeline.from_pretrained(path_or_repo_id)`` reads ``model_index.json``
  and returns the pipeline class it names: one of ours, or any plain diffusers pipeline (for which it hands
  over to diffusers' own loader).
* :meth:`DiffusionPipeline.save_pretrained` writes the folder atomically, with the remote-code files that
  ``trust_remote_code=True`` users of plain diffusers need; :meth:`DiffusionPipeline.push_to_hub` uploads it
  with a model card (:mod:`ultrasound_diffusers.hub_utils`).

The loader itself (model_index.json, class resolution, strict component loading, both halves of the
remote-code files, Hub snapshots) lives in :mod:`.loading`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline as _DiffusersPipeline
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from ultrasound_diffusers.image_processor import LabelMapProcessor
from ultrasound_diffusers.image_processor import describe_value as describe
from ultrasound_diffusers.utils.constants import MODEL_INDEX_NAME

from . import loading

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

SegmapInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, Sequence[Union[PIL.Image.Image, np.ndarray, torch.Tensor]]]

__all__ = [
    "DiffusionPipeline",
    "MAX_LATENT_ABS",
    "NonFiniteResultError",
    "OUTPUT_TYPES",
    "as_count",
    "check_callback_outputs",
    "check_eta",
    "check_finite_result",
    "check_generator",
    "check_latents",
    "check_output_type",
    "LabelMapProcessor",
    "SegmapInput",
    "classifier_free_guidance",
    "fit_model_output",
    "labels_to_output",
    "postprocess_images",
    "prepare_extra_step_kwargs",
    "check_use_clipped_model_output",
    "prepare_segmap",
    "resolve_sample_size",
]


# ----------------------------------------------------------------------------------------------------------------
# Sizes, label maps and outputs
# ----------------------------------------------------------------------------------------------------------------


def as_count(name: str, value: Any) -> int:
    """A positive integer argument (step count, batch size) as an int: Python and numpy integers are accepted;
    bools, floats and anything else raise ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {describe(value)}")
    return int(value)


def check_guidance_scale(guidance_scale: Any) -> float:
    """``guidance_scale`` as a float; ValueError unless it is a finite number >= 0."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale!r}")
    value = float(guidance_scale)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale!r}")
    return value


def check_generation_size(
    unet, size: Tuple[int, int], batch: int, num_classes: int = 0, device: Any = None, argument: str = "height`/`width"
) -> int:
    """Refuse, before anything of that size is allocated, ``batch`` images of (height, width) ``size`` whose
    estimated peak memory does not fit (classifier-free guidance doubles ``batch``; callers pass the doubled count):
    the network's activations (:func:`~ultrasound_diffusers.utils.memory.unet_bytes_per_pixel`) plus the one-hot
    label maps (``num_classes`` floats and one int64 label per pixel) and the sampler's tensors. The limit is what
    the process may still allocate on ``device``: system memory, ``ulimit -v`` (``RLIMIT_AS``), a container's cgroup
    limit, or a CUDA device's free memory (:func:`~ultrasound_diffusers.utils.memory.available_memory`). Sides over
    :data:`~ultrasound_diffusers.utils.memory.MAX_IMAGE_SIDE` are refused too. Returns the estimate in bytes."""
    from ultrasound_diffusers.utils.memory import check_image_size, unet_bytes_per_pixel

    per_pixel = unet_bytes_per_pixel(unet.config) + 4.0 * max(int(num_classes), 0) + (8.0 if num_classes else 0.0)
    return check_image_size(
        int(size[0]), int(size[1]), bytes_per_pixel=per_pixel, batch=batch, argument=argument,
        what="the network's activations and the label maps" if num_classes else "the network's activations",
        device=device,
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


def prepare_segmap(
    segmap: SegmapInput,
    num_classes: int,
    size: Tuple[int, int],
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Turn the pipeline's ``segmap`` argument into the network's one-hot input.

    Args:
        segmap: integer label maps, each a PIL image (mode L / P / I), a numpy array, a tensor or a nested Python
            list, of shape [H, W] (one map), [B, H, W] or [B, 1, H, W] (a batch); or a float one-hot / soft map
            [B, num_classes, H, W] with values in [0, 1]; or a list of any of these (concatenated along the batch).
            Maps of any size are resized to ``size`` with nearest interpolation.
        num_classes (`int`): K, the number of classes of the model; labels must lie in [0, K-1].
        size (`(int, int)`): (height, width) of the generated images.

    Returns:
        ``(one_hot, labels)``: float one-hot maps [B, K, height, width] (``dtype``, on ``device``) and the long
        label maps [B, height, width] (the arg-max for soft maps; ``None`` if every input was a soft map of all
        zeros, which has no labels).
    """
    return LabelMapProcessor(num_classes).preprocess(segmap, size, device=device, dtype=dtype)


class NonFiniteResultError(ValueError):
    """A pipeline's result holds NaN or infinite values: an error, never a result (a ValueError, so that the
    command line reports it in one line)."""


def check_finite_result(latents: torch.Tensor, what: str = "the generated images", unet=None) -> None:
    """Raise :class:`NonFiniteResultError` when ``latents`` [B, C, H, W] hold NaN or infinite values, saying how
    many images are hit and why: the network's weights when they hold NaN / inf (``unet``), else a diverged
    sampler. Every output type goes through this check (``"latent"`` included)."""
    finite = torch.isfinite(latents.detach()).flatten(1).all(dim=1) if latents.ndim > 1 else torch.isfinite(latents)
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    cause = "the sampler diverged (check the scheduler's settings, the latents and what a callback returns)"
    if unet is not None:
        broken = [n for n, t in unet.named_parameters() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if broken:
            cause = f"the network's weights hold NaN or infinite values (first {broken[0]!r}): the model is damaged"
    raise NonFiniteResultError(f"{what} hold NaN or infinite values ({bad} of {finite.numel()}): {cause}")


def postprocess_images(images: torch.Tensor, output_type: str = "pil"):
    """Model-space images [B, C, H, W] in [-1, 1] to the requested output.

    Returns a list of PIL images (mode ``L`` for C=1, ``RGB`` for C=3) for ``"pil"``, a float32 array
    [B, H, W, C] in [0, 1] for ``"np"``, a float tensor [B, C, H, W] in [0, 1] for ``"pt"``, or the model-space
    tensor itself for ``"latent"``. NaN or infinite values raise :class:`NonFiniteResultError` for every type.
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
    check_finite_result(images)
    if output_type == "latent":
        return images
    images = (images.float() / 2 + 0.5).clamp(0, 1)
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
    for ``"pil"``, an int64 array [B, H, W] for ``"np"``, the long tensor for ``"pt"`` and ``"latent"``; ``None``
    stays ``None``."""
    if labels is None:
        return None
    if output_type in ("pt", "latent"):
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


def check_eta(eta: Any) -> Optional[float]:
    """``eta`` (DDIM's noise weight) as a float or None; ValueError unless None or a finite number >= 0."""
    if eta is None:
        return None
    if isinstance(eta, (bool, np.bool_)) or not isinstance(eta, (int, float, np.integer, np.floating)) or not (
        math.isfinite(float(eta)) and eta >= 0
    ):
        raise ValueError(f"`eta` must be a finite number >= 0 (or None), got {describe(eta)}")
    return float(eta)


def check_use_clipped_model_output(value: Any) -> Optional[bool]:
    """``use_clipped_model_output`` as a bool or None; ValueError for anything else (a string "False" is not False)."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise ValueError(f"`use_clipped_model_output` must be True, False or None, got {describe(value)}")


def prepare_extra_step_kwargs(
    scheduler, generator=None, eta: Optional[float] = None, use_clipped_model_output: Optional[bool] = None
) -> Dict[str, Any]:
    """Keyword arguments for ``scheduler.step`` that the scheduler accepts.

    ``eta=None`` leaves eta to the scheduler (DDIMScheduler uses 0.0, BMapAttenuationScheduler its configured
    ``sampler``); a float is passed to schedulers whose ``step`` takes ``eta`` and ignored, with a warning, by
    others (DDPMScheduler). ``use_clipped_model_output`` (DDIM: the noise recomputed from the clipped x_0, as in
    diffusers' DDIMPipeline) likewise: None leaves the scheduler's default. The generator is passed when ``step``
    takes one.
    """
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: Dict[str, Any] = {}
    if eta is not None:
        check_eta(eta)
        if "eta" in params:
            kwargs["eta"] = float(eta)
        else:
            logger.warning(f"`eta`={eta} is ignored: {type(scheduler).__name__}.step takes no eta")
    use_clipped_model_output = check_use_clipped_model_output(use_clipped_model_output)
    if use_clipped_model_output is not None:
        if "use_clipped_model_output" in params:
            kwargs["use_clipped_model_output"] = use_clipped_model_output
        else:
            logger.warning(
                f"`use_clipped_model_output`={use_clipped_model_output} is ignored: {type(scheduler).__name__}.step "
                "takes no use_clipped_model_output"
            )
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

#: The output types of the generation pipelines (diffusers' ``"latent"`` returns the final model-space tensor).
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_output_type(output_type: Any, latent: bool = True) -> str:
    """``output_type`` if it is one of :data:`OUTPUT_TYPES` (without ``"latent"`` where ``latent`` is False)."""
    allowed = OUTPUT_TYPES if latent else tuple(t for t in OUTPUT_TYPES if t != "latent")
    if not isinstance(output_type, str) or output_type not in allowed:
        raise ValueError(f"`output_type` must be one of {allowed}, got {describe(output_type)}")
    return output_type


#: The largest magnitude accepted in user ``latents`` (in units of the initial noise's standard deviation; a
#: Gaussian draw never comes near it, and larger values overflow the network to inf / NaN).
MAX_LATENT_ABS = 100.0


def check_generator(generator: Any) -> Union[torch.Generator, List[torch.Generator], None]:
    """``generator`` must be None, a ``torch.Generator`` or a list of them (one per generated image, as in
    diffusers); anything else (a seed integer, a numpy ``RandomState`` / ``Generator``) raises a TypeError naming
    it. The list's length is checked against the batch by :func:`prepare_latents`. Returns the generator (a
    tuple as a list)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):
        return list(generator)
    hint = " (for a seed s, pass torch.Generator().manual_seed(s))" if isinstance(generator, (int, np.integer)) else ""
    raise TypeError(
        f"`generator` must be a torch.Generator or a non-empty list of them (one per image), got "
        f"{type(generator).__module__}.{type(generator).__name__}{hint}"
    )


def check_latents(latents: Any, shape: Tuple[int, ...]) -> None:
    """User ``latents`` must be a real tensor of ``shape`` [B, C, H, W] with finite values of magnitude at most
    :data:`MAX_LATENT_ABS`; ValueError (TypeError for another type) naming ``latents``. None passes."""
    if latents is None:
        return
    if not torch.is_tensor(latents):
        raise TypeError(f"`latents` must be a torch.Tensor of shape {tuple(shape)}, got {describe(latents)}")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"`latents` must have shape {tuple(shape)}, got {tuple(latents.shape)}")
    if not latents.is_floating_point():
        raise ValueError(f"`latents` must be a floating-point tensor, got dtype {latents.dtype}")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError("`latents` hold NaN or infinite values; pass Gaussian noise (torch.randn) of that shape")
    peak = float(latents.detach().abs().max()) if latents.numel() else 0.0
    if peak > MAX_LATENT_ABS:
        raise ValueError(
            f"`latents` reach {peak:g}; initial noise is standard Gaussian (|value| far below {MAX_LATENT_ABS:g})"
        )


def check_callback_outputs(callback: Any, outputs: Any, step: int, latents: torch.Tensor) -> torch.Tensor:
    """What ``callback_on_step_end`` returned at ``step``: it must be a dict (diffusers' convention); a
    ``"latents"`` entry must be a finite tensor of the current latents' shape. Returns the latents to go on with.
    TypeError / ValueError naming the callback otherwise."""
    name = getattr(callback, "__qualname__", None) or type(callback).__name__
    if not isinstance(outputs, dict):
        raise TypeError(
            f"`callback_on_step_end` ({name}) must return a dict of tensors (at least {{}}), got "
            f"{describe(outputs)} at step {step}"
        )
    new = outputs.pop("latents", latents)
    if new is not latents:
        if not torch.is_tensor(new) or tuple(new.shape) != tuple(latents.shape):
            raise ValueError(
                f"`callback_on_step_end` ({name}) returned `latents` of {describe(new)} at step {step}; expected a "
                f"tensor of shape {tuple(latents.shape)}"
            )
        if not bool(torch.isfinite(new).all()):
            raise ValueError(f"`callback_on_step_end` ({name}) returned `latents` with NaN or infinite values at step {step}")
    return new


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
    generator = check_generator(generator)
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"`generator` is a list of {len(generator)} generators; expected {batch} ({what})")
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    else:
        check_latents(latents, shape)
    return latents.to(device=device, dtype=dtype) * init_noise_sigma


def guided_segmap(one_hot: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The label input of the network: ``one_hot`` [B, K, H, W], followed by B all-zero (null) maps when
    classifier-free guidance is on (``guidance_scale != 1``), so that both branches run in one batched pass."""
    return torch.cat([one_hot, torch.zeros_like(one_hot)]) if float(guidance_scale) != 1.0 else one_hot


def label_feature_cache(unet):
    """``unet.label_feature_cache()`` (the SPADE label features computed once per label map and reused at every
    step, see :meth:`~ultrasound_diffusers.SemanticUNet2DModel.label_feature_cache`) when the network has it, else
    a block that does nothing. Sampling loops run inside it."""
    enter = getattr(unet, "label_feature_cache", None)
    return enter() if callable(enter) else contextlib.nullcontext()


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
# The base class (the loader itself is pipelines/loading.py)
# ----------------------------------------------------------------------------------------------------------------


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

        Uses :func:`huggingface_hub.snapshot_download` (:func:`.loading.snapshot_folder`), so
        ``HF_HUB_OFFLINE=1`` / ``local_files_only=True`` load from the cache. Accepts ``cache_dir``,
        ``force_download``, ``proxies``, ``local_files_only``, ``token``, ``revision``, ``allow_patterns`` and
        ``ignore_patterns``; other keyword arguments are ignored.
        """
        return loading.snapshot_folder(pretrained_model_name, **kwargs)

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
        (:func:`.loading.is_component_module`), never from an entry point such as ``ultrasound_diffusers.__main__``.
        Weights are loaded strictly (missing or unexpected keys are an error). Errors (missing model_index.json, a
        class that does not exist or comes from another module, a missing component folder or variant, incomplete
        weights, unknown or refused scheduler config values) are ValueErrors naming the file.
        """
        source = os.fspath(pretrained_model_name_or_path)
        folder = source if os.path.isdir(source) else cls.download(loading.check_repo_id(source), **kwargs)
        trust_remote_code = bool(kwargs.pop("trust_remote_code", False))
        loading.pop_download_kwargs(kwargs)

        index = loading.read_model_index(folder)
        if cls is DiffusionPipeline or not issubclass(cls, DiffusionPipeline):
            try:
                pipeline_class = loading.resolve_class(index["_class_name"], folder)
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
            # A plain diffusers pipeline: diffusers' loader, once the modules of ours that its components name are
            # imported (diffusers resolves them from sys.modules) and any other library is refused.
            loading.import_component_libraries(index, folder, trust_remote_code)
            pipe = pipeline_class.from_pretrained(folder, **kwargs)
            pipe.register_to_config(_name_or_path=source)
            return pipe

        components, settings = loading.load_components(pipeline_class, folder, index, kwargs)
        if kwargs:
            logger.warning(f"Keyword arguments {sorted(kwargs)} are not expected by {pipeline_class.__name__} and are ignored.")
        try:
            pipe = pipeline_class(**components, **settings)
        except ValueError as error:  # a refused setting of model_index.json (label_names, ...): name the file
            if not settings:
                raise
            raise ValueError(f"{Path(folder) / MODEL_INDEX_NAME}: {error}") from None
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
                loading.write_remote_code_files(staging)
            loading.move_into(staging, target)
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

        ``model_card_kwargs`` go to :func:`ultrasound_diffusers.hub_utils.create_model_card` (license,
        datasets, training_data, evaluation_results, label_names, ...). Returns the commit URL.
        """
        from ultrasound_diffusers.hub_utils import push_to_hub

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
