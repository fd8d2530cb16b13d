"""The Semantic Diffusion Model (SDM) UNet as a diffusers model.

Reference: Wang et al., "Semantic Image Synthesis via Diffusion Models" (arXiv 2207.00050), built on the
guided-diffusion UNet (Dhariwal & Nichol 2021); used for ultrasound by Domínguez et al. (MICCAI 2024) and
Stojanovski et al. (ASMUS 2023).

One class covers two networks:

* ``num_classes > 0``: the SDM network. The encoder is made of plain residual blocks; the middle block and
  the decoder use residual blocks whose two group norms are SPADE norms driven by the label map (resized
  to every feature map with nearest interpolation).
* ``num_classes == 0``: the unconditional guided-/improved-diffusion UNet (affine group norms everywhere).

The layer layout follows the original one block for block, so that the original checkpoints
(``input_blocks.*``, ``middle_block.*``, ``output_blocks.*``) map onto it one tensor at a time (see
:mod:`ultrasound_diffusers.models.conversion`).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..image_processor import LabelMapProcessor, _compiling

__all__ = [
    "SEMANTIC_UNET_PRESETS",
    "SemanticUNet2DModel",
    "SemanticUNet2DOutput",
    "check_finite_weights",
    "check_unet_config",
    "check_unet_size",
    "count_parameters",
    "prepare_segmap",
    "timestep_embedding",
]


#: Named configurations for :meth:`SemanticUNet2DModel.from_preset`. ``attention_resolutions`` are
#: downsampling factors (4 = attention on feature maps 4x smaller than the input).
def _sdm_preset(drop: Sequence[str] = (), **changes: Any) -> Dict[str, Any]:
    """The published ultrasound SDM at 128 px (Domínguez et al. 2024, config.py of their fork): attention at 32, 16
    and 8 px, 64 channels per head, residual up/down-sampling, scale-shift norm, learned sigma, 5 classes; with
    ``changes`` applied and the keys in ``drop`` removed."""
    base = dict(
        sample_size=128, in_channels=1, out_channels=1, learn_sigma=True, model_channels=128,
        channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2, attention_resolutions=(4, 8, 16), num_heads=1,
        num_head_channels=64, dropout=0.0, resblock_updown=True, use_scale_shift_norm=True, num_classes=5,
        spade_hidden_channels=128,
    )
    base.update(changes)
    return {k: v for k, v in base.items() if k not in drop}


SEMANTIC_UNET_PRESETS: Dict[str, Dict[str, Any]] = {
    "sdm-128": _sdm_preset(),
    # The same network at 256 px (guided-diffusion's channel_mult for 256 px).
    "sdm-256": _sdm_preset(sample_size=256, channel_mult=(1, 1, 2, 2, 4, 4), attention_resolutions=(8, 16, 32)),
    # A small SDM that trains on a CPU (64 px; 2.25M parameters with 5 classes and learned sigma, 1.37M unconditional).
    "tiny-64": _sdm_preset(
        sample_size=64, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(4,),
        num_head_channels=32, spade_hidden_channels=32,
    ),
    # An unconditional improved-diffusion style UNet for 8 x 256 maps (the lung seed).
    "lung-8x256": _sdm_preset(
        sample_size=(8, 256), model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
        attention_resolutions=(4, 8), num_heads=4, num_head_channels=-1, resblock_updown=False, num_classes=0,
        drop=("spade_hidden_channels",),
    ),
}


#: Keys that diffusers' ``EMAModel.save_pretrained`` adds to a model's config.json (the EMA state), allowed there.
_EMA_CONFIG_KEYS = frozenset(
    ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power", "foreach")
)


@dataclass
class SemanticUNet2DOutput(BaseOutput):
    """
    Output of :class:`SemanticUNet2DModel`.

    Args:
        sample (`torch.Tensor` of shape `(batch_size, out_channels * (2 if learn_sigma else 1), height, width)`):
            The predicted noise (or sample / velocity, depending on how the model was trained); with
            ``learn_sigma`` the last ``out_channels`` channels are the learned-range variance values in [-1, 1]
            (unbounded network output, interpreted by the scheduler).
    """

    sample: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding of guided-diffusion: ``[cos(t f_0..f_{h-1}), sin(t f_0..f_{h-1})]``.

    Args:
        timesteps: [B] float or integer tensor (may be fractional).
        dim: embedding width; for odd ``dim`` a zero column is appended.
        max_period: lowest frequency is ``1 / max_period``.

    Returns:
        [B, dim] float32 tensor, values in [-1, 1]; ``f_i = max_period ** (-i / h)``, ``h = dim // 2``.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.float()[:, None] * torch.exp(exponent)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def prepare_segmap(
    segmap: torch.Tensor,
    num_classes: int,
    batch_size: Optional[int] = None,
    size: Optional[Tuple[int, int]] = None,
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """Turn a label map into the float [B, num_classes, H, W] map the SPADE norms read
    (:meth:`~ultrasound_diffusers.image_processor.LabelMapProcessor.network_input`).

    Args:
        segmap: integer labels [B, H, W] or [B, 1, H, W] with values in [0, num_classes) (one-hot encoded
            here; float maps of that layout with whole values count as labels, as everywhere in the package), or
            a floating one-hot / soft map [B, num_classes, H, W] (used as given; an all-zero map is the "no
            label" input of classifier-free guidance).
        num_classes: number of label channels (> 0).
        batch_size: expected batch size; a segmap with batch 1 is repeated to it.
        size: expected (H, W); a map of another size with the same aspect ratio is resized with the package's
            nearest rule (:func:`ultrasound_diffusers.image_processor.resize_label_map`), any other size raises.
        dtype, device: of the returned tensor.

    Returns:
        Float tensor [B, num_classes, H, W].

    Raises:
        ValueError: wrong dtype/shape/batch, labels outside [0, num_classes), or a size that cannot be resized.
    """
    if num_classes <= 0:
        raise ValueError(f"`num_classes` must be positive to build a segmap, got {num_classes}")
    return LabelMapProcessor(num_classes).network_input(segmap, batch_size=batch_size, size=size, dtype=dtype,
                                                         device=device)


def _normalize_timesteps(timestep: Any, batch_size: int, device: torch.device) -> torch.Tensor:
    """Return a [batch_size] tensor from an int/float, a 0-d tensor or a 1-d tensor of length 1 or B."""
    if not torch.is_tensor(timestep):
        if isinstance(timestep, (int, float)) and not isinstance(timestep, bool):
            timestep = torch.tensor([timestep], device=device)
        else:
            try:
                timestep = torch.as_tensor(timestep, device=device)
            except Exception as err:  # noqa: BLE001
                raise ValueError(f"`timestep` must be a number or a tensor, got {type(timestep).__name__}") from err
    timestep = timestep.to(device)
    if timestep.ndim == 0:
        timestep = timestep[None]
    if timestep.ndim != 1 or timestep.shape[0] not in (1, batch_size):
        raise ValueError(
            f"`timestep` must be a scalar or a 1-d tensor of length 1 or {batch_size} (the batch size), "
            f"got shape {tuple(timestep.shape)}"
        )
    return timestep.expand(batch_size)


def _channels(mult: float, model_channels: int) -> int:
    return int(mult * model_channels)


# ----------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------


class GroupNorm32(nn.GroupNorm):
    """Group norm computed in (at least) float32 and cast back, as guided-diffusion's ``GroupNorm32``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return F.group_norm(
            x.to(compute),
            self.num_groups,
            None if self.weight is None else self.weight.to(compute),
            None if self.bias is None else self.bias.to(compute),
            self.eps,
        ).to(x.dtype)


class SPADEGroupNorm(nn.Module):
    """Spatially adaptive group norm: ``GN(x) * (1 + gamma(m)) + beta(m)``.

    ``GN`` has no affine parameters; ``gamma`` and ``beta`` come from the label map ``m`` resized to ``x``
    with nearest interpolation, through a shared 3x3 conv + ReLU (``mlp_shared``) and two 3x3 convs.

    Args:
        channels: channels of ``x``.
        label_channels: channels of the label map (number of classes).
        hidden_channels: width of the shared conv (128 in SDM).
    """

    def __init__(
        self, channels: int, label_channels: int, hidden_channels: int = 128, num_groups: int = 32, eps: float = 1e-5
    ):
        super().__init__()
        self.norm = GroupNorm32(num_groups, channels, eps=eps, affine=False)
        self.mlp_shared = nn.Conv2d(label_channels, hidden_channels, kernel_size=3, padding=1)
        self.mlp_gamma = nn.Conv2d(hidden_channels, channels, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden_channels, channels, kernel_size=3, padding=1)

    #: The :class:`LabelFeatureCache` of the enclosing :meth:`SemanticUNet2DModel.label_feature_cache` block, or
    #: None (the default: the modulation is computed on every call).
    label_cache: Optional["LabelFeatureCache"] = None

    def modulation(self, segmap: torch.Tensor, size: Sequence[int], dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(gamma, beta)``, each [B, C, *size], from the label map ``segmap`` [B, K, H, W] (resized to ``size``
        with nearest interpolation). They depend on the label map only, not on the noisy sample or the step."""
        if tuple(segmap.shape[-2:]) != tuple(size):
            segmap = F.interpolate(segmap, size=tuple(size), mode="nearest")
        actv = F.relu(self.mlp_shared(segmap.to(dtype)))
        return self.mlp_gamma(actv), self.mlp_beta(actv)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        """x: [B, C, h, w]; segmap: [B, K, H, W] float. Returns [B, C, h, w]."""
        normalized = self.norm(x)
        if self.label_cache is not None and not _compiling():  # a compiled graph computes them (no data-dependent branch)
            gamma, beta = self.label_cache.lookup(self, segmap, x.shape[-2:], x.dtype)
        else:
            gamma, beta = self.modulation(segmap, x.shape[-2:], x.dtype)
        return normalized * (1 + gamma) + beta


#: Default memory bound of :meth:`SemanticUNet2DModel.label_feature_cache`, in bytes.
LABEL_CACHE_MAX_BYTES = 512 * 2**20


class LabelFeatureCache:
    """The SPADE modulations (``gamma``, ``beta`` of every :class:`SPADEGroupNorm`) of one label-map batch, kept
    while the same label maps are denoised step after step.

    In SDM the modulations are convolutions of the label map alone: at every step of a sampling loop they come
    out the same, and they are about half of the network's arithmetic (two 3x3 convolutions from the SPADE hidden
    width to the feature width at every SPADE norm). Reusing them gives the same numbers as recomputing them.

    The network calls :meth:`begin` with each forward's prepared label map: another label map (content, shape,
    dtype or device) empties the cache. Modulations are kept in the order the norms run until ``max_bytes`` is
    used; later norms compute theirs on every call. They are computed without autograd: inside the cache the
    label features are constants (a gradient reaches the sample and the timestep, not the SPADE weights), so
    training never uses it. Made and removed by :meth:`SemanticUNet2DModel.label_feature_cache`.
    """

    def __init__(self, max_bytes: int = LABEL_CACHE_MAX_BYTES):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"`max_bytes` must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.segmap: Optional[torch.Tensor] = None
        self.features: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.segmap, self.features, self.nbytes = None, {}, 0

    def begin(self, segmap: torch.Tensor) -> None:
        """Called by the network with the prepared label map [B, K, H, W] of a forward pass."""
        held = self.segmap
        same = (
            held is not None and held.shape == segmap.shape and held.dtype == segmap.dtype
            and held.device == segmap.device and bool(torch.equal(held, segmap))
        )
        if not same:
            self.clear()
            self.segmap = segmap.detach()

    def lookup(self, norm: SPADEGroupNorm, segmap: torch.Tensor, size: Sequence[int], dtype: torch.dtype):
        """``norm``'s ``(gamma, beta)`` for ``segmap`` at ``size`` in ``dtype``: kept, or computed (and kept while
        the memory bound allows)."""
        key = id(norm)
        kept = self.features.get(key)
        if kept is not None and kept[0].dtype == dtype and tuple(kept[0].shape[-2:]) == tuple(size):
            self.hits += 1
            return kept
        self.misses += 1
        with torch.no_grad():
            gamma, beta = norm.modulation(segmap, size, dtype)
        cost = gamma.numel() * gamma.element_size() * 2
        if self.segmap is not None and self.nbytes + cost <= self.max_bytes:
            self.features[key] = (gamma, beta)
            self.nbytes += cost
        return gamma, beta


def _upsample_nearest(x: torch.Tensor, output_size: Optional[Sequence[int]]) -> torch.Tensor:
    size = tuple(output_size) if output_size is not None else (2 * x.shape[-2], 2 * x.shape[-1])
    return F.interpolate(x, size=size, mode="nearest")


class Downsample2D(nn.Module):
    """Halve H and W (odd sizes round up): 3x3 conv with stride 2 (``use_conv``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, kernel_size=3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the number of channels")
            self.conv = None

    def forward(self, x: torch.Tensor, *unused: Any) -> torch.Tensor:
        if self.conv is not None:
            return self.conv(x)
        return F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class Upsample2D(nn.Module):
    """Nearest upsampling to ``output_size`` (default 2x), then an optional 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1) if use_conv else None

    def forward(
        self, x: torch.Tensor, emb: Any = None, segmap: Any = None, output_size: Optional[Sequence[int]] = None
    ) -> torch.Tensor:
        x = _upsample_nearest(x, output_size)
        return self.conv(x) if self.conv is not None else x


class ResnetBlock2D(nn.Module):
    """guided-diffusion residual block, optionally with SPADE norms (SDM block) and up/down-sampling.

    ``norm1 -> SiLU -> [resample] -> conv1 -> (+emb or norm2 * (1 + scale) + shift) -> SiLU -> dropout -> conv2``,
    plus a skip connection (1x1 conv when the channels change).

    Args:
        in_channels, out_channels: feature channels.
        temb_channels: width of the timestep embedding.
        dropout: dropout rate before ``conv2``.
        use_scale_shift_norm: FiLM conditioning on the timestep (``2 * out_channels`` projection).
        label_channels: > 0 for SPADE norms driven by a label map with that many channels.
        spade_hidden_channels: width of the SPADE shared conv.
        up, down: nearest up-sampling (2x or to ``output_size``) / 2x2 average-pool down-sampling (odd sizes
            round up) inside the block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        label_channels: int = 0,
        spade_hidden_channels: int = 128,
        up: bool = False,
        down: bool = False,
        num_groups: int = 32,
        eps: float = 1e-5,
    ):
        super().__init__()
        if up and down:
            raise ValueError("a residual block cannot both upsample and downsample")
        self.use_spade = label_channels > 0
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        if self.use_spade:
            self.norm1 = SPADEGroupNorm(in_channels, label_channels, spade_hidden_channels, num_groups, eps)
            self.norm2 = SPADEGroupNorm(out_channels, label_channels, spade_hidden_channels, num_groups, eps)
        else:
            self.norm1 = GroupNorm32(num_groups, in_channels, eps=eps)
            self.norm2 = GroupNorm32(num_groups, out_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def _norm(self, norm: nn.Module, x: torch.Tensor, segmap: Optional[torch.Tensor]) -> torch.Tensor:
        return norm(x, segmap) if self.use_spade else norm(x)

    def _resample(self, x: torch.Tensor, output_size: Optional[Sequence[int]]) -> torch.Tensor:
        if self.up:
            return _upsample_nearest(x, output_size)
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
        return x

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        segmap: Optional[torch.Tensor] = None,
        output_size: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """x: [B, C_in, h, w]; emb: [B, temb]; segmap: [B, K, H, W] (SPADE blocks). Returns [B, C_out, h', w']."""
        h = F.silu(self._norm(self.norm1, x, segmap))
        if self.up or self.down:
            h = self._resample(h, output_size)
            x = self._resample(x, output_size)
        h = self.conv1(h)
        emb_out = self.time_emb_proj(F.silu(emb)).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self._norm(self.norm2, h, segmap) * (1 + scale) + shift
        else:
            h = self._norm(self.norm2, h + emb_out, segmap)
        h = self.conv2(self.dropout(F.silu(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return skip + h


class AttentionBlock2D(nn.Module):
    """Multi-head self-attention over all positions, with a residual connection.

    ``x + to_out(SDPA(to_qkv(GN(x))))``; ``to_qkv`` produces [q | k | v], each head-major ([heads, head_dim]).

    Args:
        channels: feature channels.
        num_heads: used when ``num_head_channels == -1``.
        num_head_channels: channels per head (``channels`` must be divisible by it), or -1.
    """

    def __init__(
        self, channels: int, num_heads: int = 1, num_head_channels: int = -1, num_groups: int = 32, eps: float = 1e-5
    ):
        super().__init__()
        if num_head_channels == -1:
            if num_heads < 1 or channels % num_heads:
                raise ValueError(f"`num_heads`={num_heads} must divide the {channels} attention channels")
            self.num_heads = num_heads
        else:
            if num_head_channels < 1 or channels % num_head_channels:
                raise ValueError(
                    f"`num_head_channels`={num_head_channels} must divide the {channels} attention channels"
                )
            self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(num_groups, channels, eps=eps)
        self.to_qkv = nn.Linear(channels, 3 * channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, *unused: Any) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        b, c, height, width = x.shape
        flat = x.reshape(b, c, height * width)
        qkv = self.to_qkv(self.norm(flat).transpose(1, 2))  # [B, L, 3C]
        qkv = qkv.reshape(b, height * width, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, L, d]
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, height * width, c)
        out = self.to_out(out).transpose(1, 2)
        return (flat + out).reshape(b, c, height, width)


class TimestepEmbedding(nn.Module):
    """``linear_2(SiLU(linear_1(sinusoid)))``: [B, model_channels] -> [B, 4 * model_channels]."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNetLevel(nn.Module):
    """One level of the UNet: resnets [+ attentions], then an optional resampler.

    An encoder level holds ``num_res_blocks`` x (resnet [+ attention]) and a ``downsampler``; a decoder level
    ``num_res_blocks + 1`` x (resnet on [h, skip] [+ attention]) and an ``upsampler`` (the attribute names are the
    weights' key names)."""

    def __init__(self, resnets, attentions, downsampler=None, upsampler=None):
        super().__init__()
        if downsampler is not None and upsampler is not None:
            raise ValueError("a UNet level resamples one way: give `downsampler` or `upsampler`, not both")
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.downsampler = downsampler
        self.upsampler = upsampler


class MidBlock(nn.Module):
    """Middle of the UNet: resnet, attention, resnet (SPADE resnets in the SDM network)."""

    def __init__(self, resnets, attention):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attention = attention


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) and (
        math.isfinite(float(value))
    )


#: Expected value of each config key: (test, what the error says is expected).
_CONFIG_RULES: Dict[str, Tuple[Any, str]] = {
    "in_channels": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "out_channels": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "model_channels": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "num_res_blocks": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "num_classes": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = unconditional)"),
    "spade_hidden_channels": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "norm_num_groups": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "num_heads": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "num_head_channels": (lambda v: _is_int(v) and (v >= 1 or v == -1), "a positive integer or -1"),
    "num_heads_upsample": (lambda v: v is None or (_is_int(v) and (v >= 1 or v == -1)), "None, -1 or a positive integer"),
    "learn_sigma": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "resblock_updown": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "conv_resample": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "use_scale_shift_norm": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "norm_eps": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "timestep_scale": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "channel_mult": (
        lambda v: isinstance(v, (list, tuple)) and len(v) >= 1 and all(_is_number(m) and m > 0 for m in v),
        "a non-empty list of positive numbers",
    ),
    "attention_resolutions": (
        lambda v: isinstance(v, (list, tuple)) and all(_is_int(a) and a >= 1 for a in v),
        "a list of positive integers (downsampling factors)",
    ),
    "sample_size": (
        lambda v: (_is_int(v) and v >= 1)
        or (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(a) and a >= 1 for a in v)),
        "a positive integer or [height, width]",
    ),
}


def check_unet_config(config: Mapping[str, Any]) -> None:
    """Check the values of a :class:`SemanticUNet2DModel` config (keys that are absent take their defaults):
    types and ranges (:data:`_CONFIG_RULES`) and that ``norm_num_groups`` divides the channels of every level.
    Raises ValueError naming the key, the value and what was expected."""
    for key, (test, expected) in _CONFIG_RULES.items():
        if key in config and not test(config[key]):
            raise ValueError(f"config key `{key}` must be {expected}, got {config[key]!r}")
    model_channels = int(config.get("model_channels", 128))
    groups = int(config.get("norm_num_groups", 32))
    widths = sorted({_channels(m, model_channels) for m in config.get("channel_mult", (1, 1, 2, 3, 4))})
    if any(w < 1 for w in widths):
        raise ValueError(f"config key `channel_mult` gives levels of width < 1 with model_channels={model_channels}")
    bad = [w for w in widths if w % groups]
    if bad:
        raise ValueError(
            f"config key `norm_num_groups` ({groups}) must divide the channels of every level (model_channels x "
            f"channel_mult = {widths}); {bad} are not divisible by it"
        )


def count_parameters(config: Mapping[str, Any]) -> int:
    """The number of parameters of ``SemanticUNet2DModel(**config)``, computed from the config alone (nothing is
    allocated), so that a config asking for an impossible network (``model_channels: 1000000``) is refused before
    any allocation. Missing keys take the class's defaults."""
    defaults = {
        "in_channels": 1, "out_channels": 1, "learn_sigma": True, "model_channels": 128, "channel_mult": (1, 1, 2, 3, 4),
        "num_res_blocks": 2, "attention_resolutions": (4, 8, 16), "resblock_updown": True, "conv_resample": True,
        "use_scale_shift_norm": True, "num_classes": 5, "spade_hidden_channels": 128,
    }
    c = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    mc, blocks, classes, hidden = int(c["model_channels"]), int(c["num_res_blocks"]), int(c["num_classes"]), int(c["spade_hidden_channels"])
    temb = 4 * mc
    attention = set(int(a) for a in c["attention_resolutions"])

    def conv(cin: int, cout: int, k: int = 3) -> int:
        return cin * cout * k * k + cout

    def norm(ch: int, spade: bool) -> int:
        return conv(classes, hidden) + 2 * conv(hidden, ch) if spade else 2 * ch

    def resnet(cin: int, cout: int, spade: bool = False) -> int:
        film = 2 * cout if c["use_scale_shift_norm"] else cout
        skip = conv(cin, cout, 1) if cin != cout else 0
        return norm(cin, spade) + norm(cout, spade) + conv(cin, cout) + temb * film + film + conv(cout, cout) + skip

    def attn(ch: int) -> int:
        return 2 * ch + (ch * 3 * ch + 3 * ch) + (ch * ch + ch)

    spade = classes > 0
    total = (mc * temb + temb) + (temb * temb + temb)
    ch = _channels(c["channel_mult"][0], mc)
    total += conv(int(c["in_channels"]), ch)
    skips, ds = [ch], 1
    levels = list(c["channel_mult"])
    for level, mult in enumerate(levels):
        out = _channels(mult, mc)
        for _ in range(blocks):
            total += resnet(ch, out)
            ch = out
            total += attn(ch) if ds in attention else 0
            skips.append(ch)
        if level != len(levels) - 1:
            total += resnet(ch, ch) if c["resblock_updown"] else (conv(ch, ch) if c["conv_resample"] else 0)
            skips.append(ch)
            ds *= 2
    total += 2 * resnet(ch, ch, spade) + attn(ch)
    for level, mult in reversed(list(enumerate(levels))):
        out = _channels(mult, mc)
        for _ in range(blocks + 1):
            total += resnet(ch + skips.pop(), out, spade)
            ch = out
            total += attn(ch) if ds in attention else 0
        if level:
            total += resnet(ch, ch, spade) if c["resblock_updown"] else (conv(ch, ch) if c["conv_resample"] else 0)
            ds //= 2
    total += 2 * ch + conv(ch, int(c["out_channels"]) * (2 if c["learn_sigma"] else 1))
    return int(total)


def check_unet_size(config: Mapping[str, Any], bytes_per_parameter: int = 4) -> int:
    """Refuse, before allocating, a config whose weights (:func:`count_parameters` x ``bytes_per_parameter``)
    do not fit in the memory the process may still use (:func:`ultrasound_diffusers.utils.memory.check_allocation`:
    system memory, ``ulimit -v`` and cgroup limits). Returns the parameter count."""
    from ..utils.memory import check_allocation

    count = count_parameters(config)
    sizes = ", ".join(f"{k}={config[k]!r}" for k in ("model_channels", "channel_mult", "num_classes",
                                                     "spade_hidden_channels") if k in config)
    check_allocation(
        count * bytes_per_parameter, argument="config", detail=f" ({sizes}; {count:.3g} parameters)",
        what="the network's weights", hint="check the config's sizes",
    )
    return count


def check_finite_weights(model: nn.Module, where: Any) -> None:
    """Refuse a model whose parameters or buffers hold NaN or infinite values (a damaged or diverged checkpoint
    would otherwise load and turn every image into NaN). ValueError naming ``where`` (the weights' file or
    folder), the first bad tensor and how many are bad."""
    bad = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
           if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ValueError(
            f"the weights in {os.fspath(where)} hold NaN or infinite values ({len(bad)} tensor(s), first "
            f"{bad[0]!r}); the checkpoint is damaged or its training diverged: use an earlier checkpoint"
        )


def _weights_file(folder: Any, variant: Optional[str] = None) -> str:
    """The weights file ``from_pretrained`` reads in ``folder`` (for messages): the safetensors or .bin file of
    ``variant``, or the folder itself when there are several (sharded) or none."""
    from pathlib import Path

    infix = f".{variant}" if variant else ""
    for name in (f"diffusion_pytorch_model{infix}.safetensors", f"diffusion_pytorch_model{infix}.bin"):
        if (Path(folder) / name).is_file():
            return os.fspath(Path(folder) / name)
    return os.fspath(folder)


class SemanticUNet2DModel(ModelMixin, ConfigMixin):
    r"""
    The Semantic Diffusion Model UNet (label-map conditioned through SPADE norms), or with ``num_classes=0``
    the unconditional guided-/improved-diffusion UNet.

    Parameters:
        sample_size (`int` or `(int, int)`, defaults to 128): default (H, W) of generated images; the network
            itself takes any size (odd sizes included: decoders upsample to the size of the matching skip).
        in_channels (`int`, defaults to 1): image channels of the input (1 grayscale ultrasound, 3 RGB).
        out_channels (`int`, defaults to 1): predicted image channels; with ``learn_sigma`` the network
            returns ``2 * out_channels`` channels (prediction, then learned-range variance values).
        learn_sigma (`bool`, defaults to True): add the variance channels.
        model_channels (`int`, defaults to 128): base width.
        channel_mult (`tuple`, defaults to (1, 1, 2, 3, 4)): width of each level, in units of ``model_channels``
            (fractions allowed, e.g. 0.5); every level but the last halves H and W.
        num_res_blocks (`int`, defaults to 2): residual blocks per encoder level (decoder: one more).
        attention_resolutions (`tuple`, defaults to (4, 8, 16)): **downsampling factors** (as in
            guided-diffusion's ``UNetModel``) at which self-attention is used, e.g. (4, 8, 16) for the pixel
            resolutions 32, 16, 8 of a 128 px model. Each must be a power of two reached by the network.
        num_heads (`int`, defaults to 1): attention heads when ``num_head_channels == -1``.
        num_head_channels (`int`, defaults to 64): channels per attention head, or -1 to use ``num_heads``.
        num_heads_upsample (`int`, *optional*): heads in the decoder when ``num_head_channels == -1``
            (defaults to ``num_heads``; guided-diffusion's deprecated option).
        dropout (`float`, defaults to 0.0): dropout in residual blocks.
        resblock_updown (`bool`, defaults to True): residual blocks with pooling / nearest resampling instead
            of (strided) convolutions between levels.
        conv_resample (`bool`, defaults to True): with ``resblock_updown=False``, use a strided / 3x3 conv for
            down/upsampling (False: average pooling / plain nearest).
        use_scale_shift_norm (`bool`, defaults to True): FiLM-like timestep conditioning.
        num_classes (`int`, defaults to 5): label classes of the segmap; 0 = unconditional (no SPADE).
        spade_hidden_channels (`int`, defaults to 128): width of the SPADE shared conv.
        norm_num_groups (`int`, defaults to 32): groups of all group norms (32 in the original).
        norm_eps (`float`, defaults to 1e-5): epsilon of all group norms.
        timestep_scale (`float`, defaults to 1.0): the network embeds ``timestep * timestep_scale``; use
            ``1000 / T`` for improved-diffusion checkpoints trained with ``rescale_timesteps=True``.

    As in guided-diffusion, the last conv of every residual block, the attention output projections and the
    output conv start at zero, so a freshly built model returns zeros. Original checkpoints convert with
    :func:`ultrasound_diffusers.models.conversion.convert_original_checkpoint`; named configurations come
    from :meth:`from_preset` (``"sdm-128"``, ``"sdm-256"``, ``"tiny-64"``, ``"lung-8x256"``).
    """

    _supports_gradient_checkpointing = True
    #: the :class:`LabelFeatureCache` of an enclosing :meth:`label_feature_cache` block, or None
    _label_cache: Optional[LabelFeatureCache] = None
    _skip_layerwise_casting_patterns = ["norm"]
    # Regional compilation (diffusers' ``model.compile_repeated_blocks()``): the blocks that repeat through the
    # network are compiled once per class instead of the whole forward.
    _repeated_blocks = ["ResnetBlock2D", "AttentionBlock2D"]

    @register_to_config
    def __init__(
        self,
        sample_size: Union[int, Tuple[int, int]] = 128,
        in_channels: int = 1,
        out_channels: int = 1,
        learn_sigma: bool = True,
        model_channels: int = 128,
        channel_mult: Tuple[float, ...] = (1, 1, 2, 3, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Tuple[int, ...] = (4, 8, 16),
        num_heads: int = 1,
        num_head_channels: int = 64,
        num_heads_upsample: Optional[int] = None,
        dropout: float = 0.0,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        use_scale_shift_norm: bool = True,
        num_classes: int = 5,
        spade_hidden_channels: int = 128,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        timestep_scale: float = 1.0,
    ):
        super().__init__()
        settings = {k: v for k, v in locals().items() if k in _CONFIG_RULES}
        check_unet_config(settings)
        check_unet_size(settings)
        channel_mult = tuple(channel_mult)
        attention_resolutions = tuple(int(a) for a in attention_resolutions)
        positive = dict(
            in_channels=in_channels, out_channels=out_channels, model_channels=model_channels, num_res_blocks=num_res_blocks
        )
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}")
        if num_classes < 0:
            raise ValueError(f"`num_classes` must be >= 0 (0 = unconditional), got {num_classes}")
        if len(channel_mult) < 1 or any(_channels(m, model_channels) < 1 for m in channel_mult):
            raise ValueError(f"`channel_mult` must be a non-empty sequence of positive numbers, got {channel_mult}")
        reachable = [2**level for level in range(len(channel_mult))]
        for ds in attention_resolutions:
            if ds not in reachable:
                raise ValueError(
                    f"`attention_resolutions` are downsampling factors; {ds} is not one of {reachable} reached by "
                    f"this network (channel_mult of length {len(channel_mult)}). For a {sample_size} px model, "
                    "pixel resolution r corresponds to the factor sample_size // r."
                )
        sizes = list(sample_size) if isinstance(sample_size, (list, tuple)) else [sample_size]
        if len(sizes) not in (1, 2) or (isinstance(sample_size, (list, tuple)) and len(sizes) != 2):
            raise ValueError(f"`sample_size` must be an int or (height, width), got {sample_size!r}")
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 1:
                raise ValueError(f"`sample_size` must be a positive integer or (height, width) of them, got {sample_size!r}")
        heads_up = num_heads if num_heads_upsample in (None, -1) else num_heads_upsample
        # JSON types in the config (lists, not tuples), so that save_pretrained / from_pretrained gives back the
        # same config.
        json_values = {"channel_mult": list(channel_mult), "attention_resolutions": list(attention_resolutions)}
        if isinstance(sample_size, (list, tuple)):
            json_values["sample_size"] = [int(s) for s in sample_size]
        self.register_to_config(**json_values)

        self.gradient_checkpointing = False
        groups, eps = norm_num_groups, norm_eps
        time_embed_dim = 4 * model_channels
        label_channels = num_classes
        self.time_embedding = TimestepEmbedding(model_channels, time_embed_dim)

        ch = _channels(channel_mult[0], model_channels)
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)

        def plain_resnet(cin: int, cout: int, **kw: Any) -> ResnetBlock2D:
            return ResnetBlock2D(
                cin, cout, time_embed_dim, dropout, use_scale_shift_norm, num_groups=groups, eps=eps, **kw
            )

        def attn(channels: int, heads: int) -> AttentionBlock2D:
            return AttentionBlock2D(channels, heads, num_head_channels, groups, eps)

        skip_channels = [ch]
        ds = 1
        down_blocks = []
        for level, mult in enumerate(channel_mult):
            out_ch = _channels(mult, model_channels)
            resnets, attentions = [], []
            for _ in range(num_res_blocks):
                resnets.append(plain_resnet(ch, out_ch))
                ch = out_ch
                if ds in attention_resolutions:
                    attentions.append(attn(ch, num_heads))
                skip_channels.append(ch)
            downsampler = None
            if level != len(channel_mult) - 1:
                if resblock_updown:
                    downsampler = plain_resnet(ch, ch, down=True)
                else:
                    downsampler = Downsample2D(ch, conv_resample)
                skip_channels.append(ch)
                ds *= 2
            down_blocks.append(UNetLevel(resnets, attentions, downsampler=downsampler))
        self.down_blocks = nn.ModuleList(down_blocks)

        def cond_resnet(cin: int, cout: int, **kw: Any) -> ResnetBlock2D:
            return ResnetBlock2D(
                cin, cout, time_embed_dim, dropout, use_scale_shift_norm, label_channels=label_channels,
                spade_hidden_channels=spade_hidden_channels, num_groups=groups, eps=eps, **kw,
            )

        self.mid_block = MidBlock([cond_resnet(ch, ch), cond_resnet(ch, ch)], attn(ch, num_heads))

        up_blocks = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            out_ch = _channels(mult, model_channels)
            resnets, attentions = [], []
            for _ in range(num_res_blocks + 1):
                resnets.append(cond_resnet(ch + skip_channels.pop(), out_ch))
                ch = out_ch
                if ds in attention_resolutions:
                    attentions.append(attn(ch, heads_up))
            upsampler = None
            if level:
                upsampler = cond_resnet(ch, ch, up=True) if resblock_updown else Upsample2D(ch, conv_resample)
                ds //= 2
            up_blocks.append(UNetLevel(resnets, attentions, upsampler=upsampler))
        self.up_blocks = nn.ModuleList(up_blocks)

        self.conv_norm_out = GroupNorm32(groups, ch, eps=eps)
        self.conv_out = nn.Conv2d(ch, out_channels * (2 if learn_sigma else 1), kernel_size=3, padding=1)
        self._zero_init_output_layers()

    def _zero_init_output_layers(self) -> None:
        # As guided-diffusion: every residual branch and the output start at zero (identity blocks, zero output).
        zeroed = [self.conv_out] + [m.conv2 for m in self.modules() if isinstance(m, ResnetBlock2D)]
        zeroed += [m.to_out for m in self.modules() if isinstance(m, AttentionBlock2D)]
        with torch.no_grad():
            for layer in zeroed:
                layer.weight.zero_()
                layer.bias.zero_()

    # ------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any) -> "SemanticUNet2DModel":
        r"""Load a model saved with ``save_pretrained`` (a folder or a Hub repo id), as diffusers' ``ModelMixin``.

        On top of diffusers' loader:

        * loading is strict: weights that leave parameters of the config's network unfilled (missing keys), hold
          tensors the network has no place for (unexpected keys) or have the wrong shape raise
          :class:`~ultrasound_diffusers.models.loading.IncompleteWeightsError` (a ValueError naming the keys),
          where diffusers only logs a warning and leaves the parameters uninitialised (or on the meta device);
        * a ``variant`` the folder does not have raises
          :class:`~ultrasound_diffusers.models.loading.MissingVariantError` (a ValueError with diffusers'
          message, also an OSError) instead of falling back to other file types.
        """
        from .loading import (
            IncompleteWeightsError,
            MissingVariantError,
            check_loading_info,
            has_weight_variant,
            local_model_folder,
            variant_message,
        )

        variant = kwargs.get("variant")
        folder = local_model_folder(pretrained_model_name_or_path, kwargs.get("subfolder"))
        if folder is not None:
            cls._check_config_keys(folder / cls.config_name)
        if variant is not None and folder is not None and not has_weight_variant(folder, variant):
            raise MissingVariantError(variant_message(variant, folder))
        want_info = bool(kwargs.pop("output_loading_info", False))
        where = folder if folder is not None else pretrained_model_name_or_path
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        except (RuntimeError, ValueError) as error:
            text = str(error)
            if "size mismatch" in text or "expected shape" in text:  # diffusers' two wordings of a wrong shape
                raise IncompleteWeightsError(
                    f"the weights in {os.fspath(where)} do not match {cls.__name__} and its config.json: "
                    f"{' '.join(text.split())}"
                ) from error
            raise
        check_loading_info(info, cls.__name__, where, allow_mismatched=bool(kwargs.get("ignore_mismatched_sizes")))
        check_finite_weights(model, _weights_file(folder, variant) if folder is not None else where)
        return (model, info) if want_info else model

    @classmethod
    def _check_config_keys(cls, path) -> None:
        """Refuse a config.json with keys this class does not know (a typo such as ``timestep_scal`` would
        otherwise be ignored with only a warning and give another network). ``_``-prefixed metadata is allowed."""
        import json

        if not path.is_file():
            return  # diffusers reports the missing file
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return  # diffusers reports the unreadable file
        if not isinstance(config, dict):
            raise ValueError(f"{path} must hold a JSON object")
        known = set(cls._init_parameter_names()) | _EMA_CONFIG_KEYS
        unknown = sorted(k for k in config if not str(k).startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"{path}: unknown {cls.__name__} config keys {unknown}; valid keys: {list(cls._init_parameter_names())}")
        # values: types, ranges, group sizes, and weights that fit in memory, before diffusers builds anything
        values = {k: v for k, v in config.items() if k in cls._init_parameter_names()}
        try:
            check_unet_config(values)
            check_unet_size(values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    @classmethod
    def preset_config(cls, name: str, **overrides: Any) -> Dict[str, Any]:
        """The config dict of a preset in :data:`SEMANTIC_UNET_PRESETS`, updated with ``overrides``."""
        if name not in SEMANTIC_UNET_PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(SEMANTIC_UNET_PRESETS)}")
        config = dict(SEMANTIC_UNET_PRESETS[name])
        unknown = set(overrides) - set(cls._init_parameter_names())
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)} for {cls.__name__}")
        config.update(overrides)
        return config

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SemanticUNet2DModel":
        """A randomly initialised model from a named preset, e.g. ``from_preset("sdm-128", num_classes=4)``.

        Presets: ``"sdm-128"`` (published ultrasound SDM), ``"sdm-256"``, ``"tiny-64"`` (CPU training),
        ``"lung-8x256"`` (unconditional, 8 x 256 maps).
        """
        return cls(**cls.preset_config(name, **overrides))

    @classmethod
    def _init_parameter_names(cls) -> Tuple[str, ...]:
        import inspect

        return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")

    @property
    def is_conditional(self) -> bool:
        """True when the network takes a label map (``num_classes > 0``)."""
        return self.config.num_classes > 0

    @contextlib.contextmanager
    def label_feature_cache(self, max_bytes: int = LABEL_CACHE_MAX_BYTES) -> Iterator[Optional[LabelFeatureCache]]:
        """Within the block, the label features (SPADE ``gamma``, ``beta``) of a label map are computed once and
        reused while the network is called again with the same label maps, as in a sampling loop: the same outputs,
        with about half the arithmetic per call after the first (see :class:`LabelFeatureCache`; at most
        ``max_bytes`` of them are kept, 512 MiB by default). The pipelines of this package sample inside it.

        Inside the block the label features carry no gradient: do not train inside it. A nested block reuses the
        outer cache; an unconditional network yields None and caches nothing. Not for two threads sharing one
        network at once (neither is a diffusers pipeline).

        Example::

            with unet.label_feature_cache():
                for t in scheduler.timesteps:
                    eps = unet(x, t, segmap=labels).sample
                    x = scheduler.step(eps, t, x).prev_sample
        """
        norms = [m for m in self.modules() if isinstance(m, SPADEGroupNorm)]
        if not norms or self._label_cache is not None:  # unconditional, or inside an outer block: nothing to add
            yield self._label_cache
            return
        cache = LabelFeatureCache(max_bytes)
        self._label_cache = cache
        for norm in norms:
            norm.label_cache = cache
        try:
            yield cache
        finally:
            for norm in norms:
                norm.label_cache = None
            self._label_cache = None
            cache.clear()

    def _run(self, module: nn.Module, *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        segmap: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[SemanticUNet2DOutput, Tuple[torch.Tensor]]:
        r"""
        Args:
            sample (`torch.Tensor` [B, in_channels, H, W]): noisy images (about [-1, 1] scaled data plus noise).
            timestep (`torch.Tensor`, `int` or `float`): diffusion step(s): a number, a 0-d tensor or a 1-d
                tensor of length 1 or B (may be fractional).
            segmap (`torch.Tensor`, *optional*): the label map, required when ``num_classes > 0`` and not
                allowed otherwise: integer labels [B, H, W] / [B, 1, H, W] in [0, num_classes), or a float
                one-hot / soft map [B, num_classes, H, W]; an all-zero float map is the "no label" input of
                classifier-free guidance. Batch 1 is broadcast; another size with the same aspect ratio is
                resized (nearest).
            return_dict (`bool`): return a :class:`SemanticUNet2DOutput` instead of a tuple.

        Returns:
            :class:`SemanticUNet2DOutput` (or a 1-tuple) with ``sample`` [B, out_channels * (2 if learn_sigma
            else 1), H, W].
        """
        try:
            return self._forward(sample, timestep, segmap, return_dict)
        except ValueError as error:
            if "Expected more than 1 value per channel" not in str(error):
                raise
            # torch's group-norm error speaks of "training" even in eval mode; say what is wrong instead
            levels = len(self.config.channel_mult)
            raise ValueError(
                f"`sample` of size {tuple(sample.shape[-2:])} is too small for this network: its {levels - 1} "
                "downsamplings shrink the feature maps to a single pixel, where a group norm has one value per group. "
                f"Use a height and width of at least {2 ** levels} (the network was made for "
                f"sample_size={self.config.sample_size})."
            ) from error

    def _forward(self, sample, timestep, segmap, return_dict):
        config = self.config
        if not torch.is_tensor(sample) or sample.ndim != 4 or sample.shape[1] != config.in_channels:
            shape = tuple(sample.shape) if torch.is_tensor(sample) else type(sample).__name__
            raise ValueError(f"`sample` must be a tensor of shape [B, {config.in_channels}, H, W], got {shape}")
        batch, _, height, width = sample.shape
        if height < 1 or width < 1:
            raise ValueError(f"`sample` must have a non-empty spatial size, got {(height, width)}")

        if config.num_classes > 0:
            if segmap is None:
                raise ValueError(
                    f"`segmap` is required: this model is conditioned on {config.num_classes}-class label maps "
                    "(for the unconditional / classifier-free-guidance input pass an all-zero float map "
                    f"[B, {config.num_classes}, H, W])"
                )
            segmap = prepare_segmap(
                segmap,
                config.num_classes,
                batch_size=batch,
                size=(height, width),
                dtype=sample.dtype,
                device=sample.device,
            )
            if self._label_cache is not None and not _compiling():
                self._label_cache.begin(segmap)
        elif segmap is not None:
            raise ValueError("`segmap` must be None for an unconditional model (num_classes=0)")

        timesteps = _normalize_timesteps(timestep, batch, sample.device)
        t_emb = timestep_embedding(timesteps.float() * float(config.timestep_scale), config.model_channels)
        # The compute dtype: ``self.dtype`` is the hooks' compute dtype under layerwise casting (where the
        # weights are stored in float8), else the parameters' dtype, as in diffusers' own UNets.
        compute_dtype = self.dtype
        emb = self.time_embedding(t_emb.to(dtype=compute_dtype))

        h = self.conv_in(sample.to(compute_dtype))
        skips = [h]
        for block in self.down_blocks:
            for i, resnet in enumerate(block.resnets):
                h = self._run(resnet, h, emb)
                if block.attentions is not None:
                    h = self._run(block.attentions[i], h)
                skips.append(h)
            if block.downsampler is not None:
                h = self._run(block.downsampler, h, emb)
                skips.append(h)

        h = self._run(self.mid_block.resnets[0], h, emb, segmap)
        h = self._run(self.mid_block.attention, h)
        h = self._run(self.mid_block.resnets[1], h, emb, segmap)

        for block in self.up_blocks:
            for i, resnet in enumerate(block.resnets):
                h = torch.cat([h, skips.pop()], dim=1)
                h = self._run(resnet, h, emb, segmap)
                if block.attentions is not None:
                    h = self._run(block.attentions[i], h)
            if block.upsampler is not None:
                h = self._run(block.upsampler, h, emb, segmap, tuple(skips[-1].shape[-2:]))

        out = self.conv_out(F.silu(self.conv_norm_out(h)))
        if not return_dict:
            return (out,)
        return SemanticUNet2DOutput(sample=out)
