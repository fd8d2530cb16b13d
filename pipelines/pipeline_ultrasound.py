"""Unconditional ultrasound generation (any image size, e.g. the 8 x 256 maps of the lung seed)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from .pipeline_utils import (
    DiffusionPipeline,
    as_count,
    check_callback_inputs,
    check_callback_outputs,
    check_eta,
    check_use_clipped_model_output,
    check_finite_result,
    check_generation_size,
    check_generator,
    check_latents,
    check_output_type,
    denoise_step_output,
    describe,
    postprocess_images,
    prepare_extra_step_kwargs,
    prepare_latents,
    prepare_timesteps,
    resolve_sample_size,
)

__all__ = ["UltrasoundPipeline"]


class UltrasoundPipeline(DiffusionPipeline):
    r"""Draw ultrasound images from noise with an unconditional diffusion model.

    Args:
        unet: an unconditional network called as ``unet(sample, timestep)``: ``SemanticUNet2DModel`` with
            ``num_classes=0`` (the improved-diffusion UNet) or diffusers' ``UNet2DModel``; its output has C or
            2C (learned sigma) channels.
        scheduler: ``BMapAttenuationScheduler`` or any diffusers scheduler (``DDPMScheduler``,
            ``DDIMScheduler``, ...).
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, scheduler):
        super().__init__()
        if int(getattr(unet.config, "num_classes", 0) or 0) > 0:
            raise ValueError(
                f"`unet` is label-conditioned (num_classes={unet.config.num_classes}); "
                "use SemanticUltrasoundPipeline for label-map-to-image models"
            )
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` in a callback to skip the remaining steps (diffusers' convention)."""
        return getattr(self, "_interrupt", False)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        eta: Optional[float] = None,
        use_clipped_model_output: Optional[bool] = None,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        timesteps: Optional[List[int]] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[..., Dict[str, Any]]] = None,
        callback_on_step_end_tensor_inputs: Optional[List[str]] = None,
    ) -> Union[ImagePipelineOutput, tuple]:
        r"""Generate ``batch_size`` images.

        Args:
            batch_size (`int`, defaults to 1): number of images.
            num_inference_steps (`int`, defaults to 50): number of denoising steps.
            eta (`float`, *optional*): DDIM's eta; ``None`` (default) leaves it to the scheduler (DDIMScheduler:
                0.0, BMapAttenuationScheduler: its configured ``sampler``; DDPMScheduler has none).
            use_clipped_model_output (`bool`, *optional*): DDIM only (diffusers' DDIMPipeline argument): recompute
                the noise from the clipped x_0 estimate; ``None`` keeps the scheduler's default (False).
            generator: torch generator(s) for reproducible results (one, or one per image).
            latents (`torch.Tensor`, *optional*): initial noise [batch_size, C, H, W].
            height, width (`int`, *optional*): image size; defaults to the network's ``sample_size`` (an int or
                a rectangular ``(H, W)`` such as ``(8, 256)``).
            timesteps (`List[int]`, *optional*): custom timesteps for schedulers that accept them.
            output_type (`str`, defaults to ``"pil"``): list of PIL images (``"pil"``), float array
                [B, H, W, C] in [0, 1] (``"np"``), tensor [B, C, H, W] in [0, 1] (``"pt"``) or the final
                model-space tensor [B, C, H, W] (``"latent"``). NaN or infinite results raise
                ``NonFiniteResultError`` (a ValueError) for every type.
            return_dict (`bool`): return an ``ImagePipelineOutput`` rather than a tuple ``(images,)``.
            callback_on_step_end: ``f(pipeline, step_index, timestep, {"latents": ...}) -> dict``; a returned
                ``"latents"`` replaces the current ones.

        Returns:
            ``ImagePipelineOutput`` with ``images``.
        """
        # every argument checked before anything is allocated
        if isinstance(batch_size, (np.ndarray, torch.Tensor, PIL.Image.Image)) or (
            isinstance(batch_size, (list, tuple)) and batch_size
        ):
            raise ValueError(
                f"UltrasoundPipeline draws images from noise and takes no label map, got {describe(batch_size)} as "
                "its first argument `batch_size` (the number of images); for label-map-to-image models use "
                "SemanticUltrasoundPipeline"
            )
        tensor_inputs = check_callback_inputs(
            self, callback_on_step_end, callback_on_step_end_tensor_inputs or ["latents"]
        )
        generator = check_generator(generator)
        batch_size = as_count("batch_size", batch_size)
        if timesteps is None:
            num_inference_steps = as_count("num_inference_steps", num_inference_steps)
        eta = check_eta(eta)
        use_clipped_model_output = check_use_clipped_model_output(use_clipped_model_output)
        check_output_type(output_type)
        self._interrupt = False

        device = self._execution_device
        dtype = self.unet.dtype
        height, width = resolve_sample_size(self.unet.config.sample_size, height, width)
        check_generation_size(self.unet, (height, width), batch_size, device=device,
                              argument="height`/`width`/`batch_size")
        channels = int(self.unet.config.in_channels)
        shape = (batch_size, channels, height, width)
        check_latents(latents, shape)
        latents = prepare_latents(shape, generator, latents, device, dtype, self.scheduler.init_noise_sigma)
        schedule = prepare_timesteps(self.scheduler, num_inference_steps, timesteps, device)
        self._num_timesteps = len(schedule)
        extra_step_kwargs = prepare_extra_step_kwargs(self.scheduler, generator, eta, use_clipped_model_output)

        for i, t in enumerate(self.progress_bar(schedule)):
            if self.interrupt:
                continue
            output = denoise_step_output(self.unet, self.scheduler, latents, t, channels)
            latents = self.scheduler.step(output, t, latents, **extra_step_kwargs).prev_sample
            if callback_on_step_end is not None:
                local = {"latents": latents}
                callback_outputs = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                latents = check_callback_outputs(callback_on_step_end, callback_outputs, i, latents)

        self.maybe_free_model_hooks()
        check_finite_result(latents, "the generated images", unet=self.unet)
        images = postprocess_images(latents, output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
