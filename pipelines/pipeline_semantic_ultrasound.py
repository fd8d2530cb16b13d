"""Label map in, ultrasound image out: semantic image synthesis with classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from .pipeline_utils import (
    DiffusionPipeline,
    LabelMapProcessor,
    SegmapInput,
    as_count,
    check_callback_inputs,
    check_callback_outputs,
    check_eta,
    check_use_clipped_model_output,
    check_finite_result,
    check_generation_size,
    check_generator,
    check_guidance_scale,
    check_latents,
    check_output_type,
    denoise_step_output,
    guided_segmap,
    label_feature_cache,
    labels_to_output,
    postprocess_images,
    prepare_extra_step_kwargs,
    prepare_latents,
    prepare_timesteps,
    resolve_sample_size,
)

__all__ = ["SemanticUltrasoundPipeline", "SemanticUltrasoundPipelineOutput", "check_label_names"]


@dataclass
class SemanticUltrasoundPipelineOutput(BaseOutput):
    """Output of :class:`SemanticUltrasoundPipeline`.

    Args:
        images: the generated images, ``B * num_images_per_prompt`` of them: a list of PIL images (mode ``L``
            or ``RGB``), a float array [N, H, W, C] in [0, 1] (``"np"``) or a tensor [N, C, H, W] in [0, 1]
            (``"pt"``).
        segmaps: the label maps the images were drawn from, at the images' size and in the same order
            (image ``i * num_images_per_prompt + j`` comes from map ``i``): PIL ``L`` images, an int64 array
            [N, H, W] or a long tensor [N, H, W]; ``None`` for soft all-zero maps.
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    segmaps: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor, None] = None


def check_label_names(label_names: Any, num_classes: int) -> Optional[Dict[str, str]]:
    """``label_names`` (a list of names, label i named by entry i, or a ``{label: name}`` dict with integer labels
    or their digits as keys) as the ``{"0": name, ...}`` dict saved in model_index.json; None stays None. Labels
    must lie in [0, num_classes - 1] (so a list has at most ``num_classes`` names) and names are text. ValueError
    naming ``label_names`` otherwise."""
    if label_names is None:
        return None
    if isinstance(label_names, Mapping):
        pairs = list(label_names.items())
    elif isinstance(label_names, (list, tuple)):
        pairs = list(enumerate(label_names))
    else:
        raise ValueError(
            f"`label_names` must be a list of names or a {{label: name}} dict, got {type(label_names).__name__}"
        )
    names: Dict[str, str] = {}
    for key, name in pairs:
        label = key
        if isinstance(key, str) and key.strip().isdigit():
            label = int(key)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"`label_names` keys must be integer labels (or their digits), got {key!r}")
        if not 0 <= int(label) < num_classes:
            raise ValueError(
                f"`label_names` names label {int(label)}, but the model has {num_classes} classes (labels 0 to "
                f"{num_classes - 1}); got {len(pairs)} names"
            )
        if not isinstance(name, str):
            raise ValueError(f"`label_names` entries must be text, got {name!r} for label {int(label)}")
        names[str(int(label))] = name
    return names


class SemanticUltrasoundPipeline(DiffusionPipeline):
    r"""Generate ultrasound images from segmentation label maps (SDM, Wang et al. 2022, with the B-map forward
    process of Domínguez et al. 2024).

    Args:
        unet: a label-conditioned network, ``SemanticUNet2DModel`` with ``num_classes > 0``: called as
            ``unet(sample, timestep, segmap=one_hot)`` with one-hot maps [B, K, H, W] (all zeros = no label) and
            returning C or 2C (learned sigma) channels.
        scheduler: ``BMapAttenuationScheduler`` (the physics-inspired process the published models use) or any
            diffusers scheduler (``DDPMScheduler``, ``DDIMScheduler``, ... swapped in with ``from_config``).
        label_names (*optional*): the meaning of each label, a list or ``{label: name}``; saved in
            model_index.json and shown in the model card.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "segmap"]

    def __init__(self, unet, scheduler, label_names: Optional[Union[Mapping[Any, str], Sequence[str]]] = None):
        super().__init__()
        num_classes = int(getattr(unet.config, "num_classes", 0) or 0)
        if num_classes < 1:
            raise ValueError(
                f"`unet` must be label-conditioned (config.num_classes > 0), got {type(unet).__name__} with "
                f"num_classes={num_classes}; use UltrasoundPipeline for unconditional models"
            )
        self.register_modules(unet=unet, scheduler=scheduler)
        # a dict, not a list: diffusers treats list entries of model_index.json as components
        self.register_to_config(label_names=check_label_names(label_names, num_classes))

    @property
    def num_classes(self) -> int:
        """K, the number of label classes of the network."""
        return int(self.unet.config.num_classes)

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale != 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @torch.no_grad()
    def __call__(
        self,
        segmap: SegmapInput,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        eta: Optional[float] = None,
        use_clipped_model_output: Optional[bool] = None,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        num_images_per_prompt: int = 1,
        latents: Optional[torch.Tensor] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        timesteps: Optional[List[int]] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[..., Dict[str, Any]]] = None,
        callback_on_step_end_tensor_inputs: Optional[List[str]] = None,
    ) -> Union[SemanticUltrasoundPipelineOutput, tuple]:
        r"""Draw images whose anatomy follows the label maps.

        Args:
            segmap: integer label maps with values in [0, num_classes - 1]: a PIL image (mode L / P / I), a
                numpy array or a tensor of shape [H, W], [B, H, W] or [B, 1, H, W], or a list of these; or float
                one-hot / soft maps [B, num_classes, H, W]. Maps are resized to the generated size with nearest
                interpolation.
            num_inference_steps (`int`, defaults to 50): number of denoising steps.
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance scale s (SDM's
                eps = eps_null + s (eps_label - eps_null), on the prediction channels only; the learned-variance
                channels come from the labelled pass). 1 disables guidance (one network pass per step); SDM uses
                1.5. The labelled and the null (all-zero) inputs go through the network in one batched pass.
            eta (`float`, *optional*): DDIM's eta. ``None`` (default) leaves it to the scheduler: DDIMScheduler
                uses 0.0, BMapAttenuationScheduler its configured ``sampler``; schedulers without eta (DDPM)
                ignore it.
            use_clipped_model_output (`bool`, *optional*): DDIM only, as in diffusers' DDIMPipeline: recompute the
                noise from the clipped x_0 estimate, so that every DDIM step moves towards an image inside
                [-1, 1]. ``None`` (default) keeps the scheduler's default (False, diffusers' behaviour). On the
                B-map models it removes the grey haze outside the fan of deterministic DDIM (docs/fewstep.md).
            generator: a ``torch.Generator`` or a list of them, one per generated image (image k is then what
                generator k draws alone); anything else (a seed integer, a numpy generator) is a TypeError.
            num_images_per_prompt (`int`, defaults to 1): images drawn per label map.
            latents (`torch.Tensor`, *optional*): initial noise [B * num_images_per_prompt, C, H, W], standard
                Gaussian: NaN, infinite or values beyond +-100 are refused before any work.
            height, width (`int`, *optional*): generated size; defaults to the network's ``sample_size``, the
                size it was trained at, and label maps of another size are resized to it (nearest). Pass a map's
                own size to generate at that size (the network is fully convolutional, but quality away from
                the training size is not guaranteed).
            timesteps (`List[int]`, *optional*): custom timesteps for schedulers that accept them.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` (see
                :class:`SemanticUltrasoundPipelineOutput`) or ``"latent"`` (the final model-space tensor
                [N, C, H, W], label maps as a long tensor). A result with NaN or infinite values raises
                ``NonFiniteResultError`` (a ValueError naming the cause) for every type.
            return_dict (`bool`): return the output dataclass rather than a tuple ``(images, segmaps)``.
            callback_on_step_end: ``f(pipeline, step_index, timestep, callback_kwargs) -> dict`` called after
                every step with the tensors named in ``callback_on_step_end_tensor_inputs`` (``"latents"``,
                ``"segmap"``); it must return a dict (TypeError naming the callback otherwise), whose
                ``"latents"`` entry, if any, replaces the current ones. diffusers' ``PipelineCallback`` objects work;
                setting ``pipe._interrupt = True`` skips the remaining steps.

        Every argument is checked before anything is allocated, including the memory the call needs (label maps,
        activations) against what the process may use (system memory, ``ulimit -v``, a container's limit).

        Returns:
            :class:`SemanticUltrasoundPipelineOutput` (or a tuple) with images [B * num_images_per_prompt] of
            size (height, width) and 1 or 3 channels as the network has them.
        """
        # 0. every argument checked before anything is allocated
        tensor_inputs = check_callback_inputs(
            self, callback_on_step_end, callback_on_step_end_tensor_inputs or ["latents"]
        )
        generator = check_generator(generator)
        if timesteps is None:
            num_inference_steps = as_count("num_inference_steps", num_inference_steps)
        num_images_per_prompt = as_count("num_images_per_prompt", num_images_per_prompt)
        guidance_scale = check_guidance_scale(guidance_scale)
        eta = check_eta(eta)
        use_clipped_model_output = check_use_clipped_model_output(use_clipped_model_output)
        check_output_type(output_type)
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False

        device = self._execution_device
        dtype = self.unet.dtype
        size = resolve_sample_size(self.unet.config.sample_size, height, width)
        channels = int(self.unet.config.in_channels)

        # 1. label maps read and checked at their own size; the memory guard before they are resized / encoded
        label_processor = LabelMapProcessor(self.num_classes)
        maps = label_processor.read(segmap)
        batch = sum(int(x.shape[0]) for x, _ in maps) * num_images_per_prompt
        check_generation_size(
            self.unet, size, batch * (2 if self.do_classifier_free_guidance else 1), num_classes=self.num_classes,
            device=device, argument="height`/`width`/`num_images_per_prompt",
        )
        shape = (batch, channels, size[0], size[1])
        check_latents(latents, shape)

        # 2. label maps -> one-hot [B, K, H, W], one row per generated image
        one_hot, labels = label_processor.encode(maps, size, device=device, dtype=dtype)
        one_hot = one_hot.repeat_interleave(num_images_per_prompt, dim=0)
        labels = labels.repeat_interleave(num_images_per_prompt, dim=0) if labels is not None else None
        model_segmap = guided_segmap(one_hot, self._guidance_scale)

        # 3. timesteps
        schedule = prepare_timesteps(self.scheduler, num_inference_steps, timesteps, device)
        self._num_timesteps = len(schedule)

        # 4. initial noise
        latents = prepare_latents(shape, generator, latents, device, dtype, self.scheduler.init_noise_sigma)
        extra_step_kwargs = prepare_extra_step_kwargs(self.scheduler, generator, eta, use_clipped_model_output)

        # 5. denoising loop
        segmap = one_hot  # exposed to callbacks
        with label_feature_cache(self.unet):  # the label maps stay fixed: their SPADE features are computed once
            for i, t in enumerate(self.progress_bar(schedule)):
                if self.interrupt:
                    continue
                output = denoise_step_output(
                    self.unet, self.scheduler, latents, t, channels, segmap=model_segmap,
                    guidance_scale=self._guidance_scale,
                )
                latents = self.scheduler.step(output, t, latents, **extra_step_kwargs).prev_sample

                if callback_on_step_end is not None:
                    local = {"latents": latents, "segmap": segmap}
                    callback_outputs = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                    latents = check_callback_outputs(callback_on_step_end, callback_outputs, i, latents)

        self.maybe_free_model_hooks()
        check_finite_result(latents, "the generated images", unet=self.unet)
        images = postprocess_images(latents, output_type)
        segmaps = labels_to_output(labels, output_type)
        if not return_dict:
            return (images, segmaps)
        return SemanticUltrasoundPipelineOutput(images=images, segmaps=segmaps)
