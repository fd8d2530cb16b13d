# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""The per-pixel maths of the few-step distillations (``training/train_consistency_distillation.py`` and
``training/train_progressive_distillation.py``; ``docs/fewstep.md`` explains both).

Every function is pure and works at every pixel's own signal level ``a(p)`` (the B-map schedule: deep pixels have
a lower level than shallow ones at the same step), so nothing here assumes one scalar level per image. Shapes:
samples and model outputs [B, C, H, W]; levels [B, 1, H, W] (or anything that broadcasts), values in (0, 1]
(a = 1 is the clean image, the end of a sampling chain).

* :func:`guided_output`: the classifier-free-guided network output, the labelled and null maps in one pass.
* :func:`ddim_step`: one deterministic (eta 0) DDIM step from level a_t to a_s.
* :func:`heun_step`: the second-order (Heun) step in the DDIM form, two network calls.
* :func:`progressive_target`: the clean image that makes one DDIM step of the student land where two steps of
  the teacher landed (Salimans & Ho 2022, "Progressive distillation", Algorithm 2), per pixel.
* :func:`distillation_loss`, :func:`ema_update`: the consistency loss and the target network's EMA.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .schedulers.diffusion_math import noise_from_model_output, original_from_model_output

__all__ = ["ddim_step", "distillation_loss", "ema_update", "guided_output", "heun_step", "pin_background", "progressive_target"]


def guided_output(unet, sample: torch.Tensor, timesteps: torch.Tensor, segmap: torch.Tensor, guidance_scale: float,
                  channels: int) -> torch.Tensor:
    """``uncond + w (cond - uncond)`` of a label-map UNet (the first ``channels`` output channels; a learned variance
    is dropped). ``segmap`` [B, K, H, W] one-hot, the null map is all zeros; w = 1 runs the labelled pass only."""
    if guidance_scale == 1.0:
        return unet(sample, timesteps, segmap=segmap).sample[:, :channels]
    out = unet(torch.cat([sample, sample]), torch.cat([timesteps, timesteps]),
               segmap=torch.cat([segmap, torch.zeros_like(segmap)])).sample[:, :channels]
    cond, uncond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def ddim_step(prediction: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor,
              prediction_type: str, clip: Optional[float] = 1.0, clipped_noise: bool = False) -> torch.Tensor:
    """One per-pixel DDIM (eta 0) step from level a_t to a_s: ``sqrt(a_s) x0 + sqrt(1 - a_s) eps``.

    x0 is clipped to [-clip, clip] (as the schedulers sample with ``clip_sample``; None: no clipping). eps is the
    model's own (diffusers' DDIM default), or with ``clipped_noise`` the one the clipped x0 implies at x_t,
    ``(x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`` (``use_clipped_model_output``): then the step is an exact DDIM step of
    one consistent (x0, eps) pair, and two such steps compose to one whose implied clean image
    (:func:`progressive_target`) is a convex combination of the two clipped predictions. a_s = 1 returns x0.
    """
    x0 = original_from_model_output(prediction, x_t, a_t, prediction_type)
    eps = noise_from_model_output(prediction, x_t, a_t, prediction_type)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        if clipped_noise:
            eps = (x_t - a_t.sqrt() * x0) / (1.0 - a_t).clamp(min=1e-12).sqrt()
    return a_s.sqrt() * x0 + (1.0 - a_s).sqrt() * eps


def heun_step(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_t: torch.Tensor, t: torch.Tensor,
              s: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor, prediction_type: str,
              clip: Optional[float] = 1.0) -> torch.Tensor:
    """One second-order (Heun / trapezoidal) step of the probability-flow ODE from level a_t to a_s in the DDIM
    form: a DDIM step gives a provisional x_s; the clean-image predictions at (x_t, t) and at (x_s, s) are averaged,
    and the DDIM step from x_t is taken again with that average. ``predict(x, t)`` returns the (guided) model
    output. The arithmetic runs in float64; the result has x_t's dtype."""

    def clean(out, x, a):
        x0 = original_from_model_output(out, x, a, prediction_type)
        return x0.clamp(-clip, clip) if clip is not None else x0

    dtype = x_t.dtype
    x = x_t.double()
    x0_t = clean(predict(x_t, t).double(), x, a_t)
    x_s = ddim_step(x0_t, x, a_t, a_s, "sample", clip=None)  # the provisional first-order step
    x0_s = clean(predict(x_s.to(dtype), s).double(), x_s, a_s)
    return ddim_step(0.5 * (x0_t + x0_s), x, a_t, a_s, "sample", clip=None).to(dtype)


def progressive_target(x_t: torch.Tensor, x_s: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """The clean image x~ whose DDIM step from (x_t, a_t) lands exactly on x_s at level a_s (a_s > a_t per pixel).

    With ``alpha = sqrt(a)``, ``sigma = sqrt(1 - a)``, the DDIM step is ``x_s = alpha_s x~ + sigma_s eps~`` with
    ``eps~ = (x_t - alpha_t x~) / sigma_t``; solving for x~:
    ``x~ = (sigma_t x_s - sigma_s x_t) / (alpha_s sigma_t - sigma_s alpha_t)``. The denominator is positive
    wherever the signal-to-noise ratio grows from t to s; a_s = 1 (the end of the chain) gives ``x~ = x_s``. When
    x_s comes from DDIM steps whose noise was recomputed from clipped clean images (``ddim_step(...,
    clipped_noise=True)``), x~ is a convex combination of those clean images (no outliers); with the model's own
    noise beside a clipped clean image it is not, and can lie far outside [-1, 1].
    """
    alpha_t, sigma_t = a_t.sqrt(), (1.0 - a_t).clamp(min=0).sqrt()
    alpha_s, sigma_s = a_s.sqrt(), (1.0 - a_s).clamp(min=0).sqrt()
    return (sigma_t * x_s - sigma_s * x_t) / (alpha_s * sigma_t - sigma_s * alpha_t)


def pin_background(target_x0: torch.Tensor, labels: torch.Tensor, clean: torch.Tensor, background_label: int,
                   value: float = -1.0, atol: float = 1e-4) -> torch.Tensor:
    """``target_x0`` [B, C, H, W] with the pixels of ``background_label`` (``labels`` [B, H, W]) set to ``value``.

    Where every training image holds the same constant (outside the scan area: black, -1 in model units), the
    clean image given the label map is that constant, whatever x_t. The teacher's estimate there is not: its
    clean-image predictions are clipped to [-1, 1], so their scatter around -1 keeps only the part above it and
    the distillation targets (convex combinations of them) sit above black on average, an offset each round
    inherits and that a student reproduces as a grey veil outside the fan. Pinning the target removes that bias
    without touching any pixel the data does not fix. ValueError if ``clean`` ([B, C, H, W], model units) is not
    ``value`` on those pixels (then the label is not a constant background and pinning would be wrong).
    """
    mask = (labels == background_label)[:, None].expand_as(target_x0)
    if mask.any():
        off = (clean.to(target_x0.dtype)[mask] - value).abs().max()
        if float(off) > atol:
            raise ValueError(f"--background_label {background_label}: the training images are not {value} (black) "
                             f"on every pixel of that label (off by up to {float(off):.3g}); pin only a label whose "
                             "pixels are black in every image")
    return torch.where(mask, torch.full_like(target_x0, value), target_x0)


def distillation_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "huber", huber_c: float = 0.001) -> torch.Tensor:
    """Mean pseudo-Huber ``sqrt(d^2 + c^2) - c`` (or squared, ``loss_type="l2"``) difference of two tensors."""
    diff = pred.float() - target.float()
    if loss_type == "l2":
        return diff.pow(2).mean()
    return (torch.sqrt(diff.pow(2) + huber_c**2) - huber_c).mean()


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    """theta_target <- decay theta_target + (1 - decay) theta_online (parameters, in place)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.detach().to(t.dtype), 1.0 - decay)
