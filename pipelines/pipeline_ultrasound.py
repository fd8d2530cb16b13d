"""Unconditional ultrasound generation (any image size, e.g. the 8 x 256 maps of the lung seed)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .pipeline_utils import (
    DiffusionPipeline,
    as_count,
    check_callback_inputs,
    expand_timestep,
    fit_model_output,
    postprocess_images,
    prepare_extra_step_kwargs,
    check_generation_size,
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
    _requires_segmap = False

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

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        eta: Optional[float] = None,
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
            generator: torch generator(s) for reproducible results (one, or one per image).
            latents (`torch.Tensor`, *optional*): initial noise [batch_size, C, H, W].
            height, width (`int`, *optional*): image size; defaults to the network's ``sample_size`` (an int or
                a rectangular ``(H, W)`` such as ``(8, 256)``).
            timesteps (`List[int]`, *optional*): custom timesteps for schedulers that accept them.
            output_type (`str`, defaults to ``"pil"``): list of PIL images (``"pil"``), float array
                [B, H, W, C] in [0, 1] (``"np"``) or tensor [B, C, H, W] in [0, 1] (``"pt"``).
            return_dict (`bool`): return an ``ImagePipelineOutput`` rather than a tuple ``(images,)``.
            callback_on_step_end: ``f(pipeline, step_index, timestep, {"latents": ...}) -> dict``; a returned
                ``"latents"`` replaces the current ones.

        Returns:
            ``ImagePipelineOutput`` with ``images``.
        """
        tensor_inputs = check_callback_inputs(
            self, callback_on_step_end, callback_on_step_end_tensor_inputs or ["latents"]
        )
        batch_size = as_count("batch_size", batch_size)
        if timesteps is None:
            num_inference_steps = as_count("num_inference_steps", num_inference_steps)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")

        device = self._execution_device
        dtype = self.unet.dtype
        height, width = resolve_sample_size(self.unet.config.sample_size, height, width)
        check_generation_size(self.unet, (height, width), batch_size)
        channels = int(self.unet.config.in_channels)
        shape = (batch_size, channels, height, width)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"`generator` is a list of {len(generator)} generators; expected {batch_size}")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        schedule = self.scheduler.timesteps
        self._num_timesteps = len(schedule)
        extra_step_kwargs = prepare_extra_step_kwargs(self.scheduler, generator, eta)

        for i, t in enumerate(self.progress_bar(schedule)):
            model_input = self.scheduler.scale_model_input(latents, t)
            output = self.unet(model_input, expand_timestep(t, batch_size, device)).sample
            output = fit_model_output(output, self.scheduler, channels)
            latents = self.scheduler.step(output, t, latents, **extra_step_kwargs).prev_sample
            if callback_on_step_end is not None:
                local = {"latents": latents}
                callback_outputs = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                latents = callback_outputs.pop("latents", latents)

        self.maybe_free_model_hooks()
        images = postprocess_images(latents, output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
