"""Conversion of guided-diffusion / improved-diffusion / SDM checkpoints to :class:`SemanticUNet2DModel`.

The original networks are saved as plain ``torch.save(model.state_dict())`` files with the keys
``time_embed.*``, ``input_blocks.*``, ``middle_block.*``, ``output_blocks.*`` and ``out.*``. Their layout
(numbering of the ``TimestepEmbedSequential`` blocks):

* ``input_blocks.0.0``: input conv; then for each level ``num_res_blocks`` blocks ``[ResBlock, (Attention)]``
  and, except at the last level, one down-sampling block (``ResBlock(down=True)`` with ``resblock_updown``,
  ``Downsample.op`` conv, or a parameter-free average pool).
* ``middle_block.0/1/2``: resblock, attention, resblock (SDM resblocks in the SDM network).
* ``output_blocks``: per level (deepest first) ``num_res_blocks + 1`` blocks
  ``[ResBlock, (Attention), (Upsample / ResBlock(up=True))]``.
* Plain ResBlock: ``in_layers.0`` (norm), ``in_layers.2`` (conv), ``emb_layers.1``, ``out_layers.0`` (norm),
  ``out_layers.3`` (conv), ``skip_connection``. SDM ResBlock: ``in_norm.{mlp_shared.0,mlp_gamma,mlp_beta}``,
  ``in_layers.1``, ``emb_layers.1``, ``out_norm.*``, ``out_layers.2``, ``skip_connection``.
* Attention: ``norm``, ``qkv`` (1x1 Conv1d, [3C, C, 1]), ``proj_out`` ([C, C, 1]). With the *legacy* order
  (guided-diffusion default, improved-diffusion, SDM) the qkv rows are ``[head, q/k/v, d]``; with
  ``use_new_attention_order`` (the ultrasound SDM fork's config) they are ``[q/k/v, head, d]``, which is
  also the layout of our ``to_qkv``. The number of heads cannot be read from the weights (any count that
  divides the attention widths fits, see :func:`consistent_head_layouts`), and it changes the network in
  either order, so it must be given (or the source's default accepted explicitly).

Everything structural (widths, levels, res blocks, attention positions, up/down-sampling type, scale-shift
norm, number of classes, SPADE width, in/out channels) is inferred from the state dict.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from .unet_semantic_2d import SemanticUNet2DModel

__all__ = [
    "CHECKPOINT_SOURCES",
    "consistent_head_layouts",
    "convert_original_checkpoint",
    "convert_original_state_dict",
    "infer_config_from_original_state_dict",
    "load_original_state_dict",
    "original_key_mapping",
    "to_original_state_dict",
]

#: Attention defaults of the code bases whose checkpoints can be converted (what their training scripts use).
CHECKPOINT_SOURCES: Dict[str, Dict[str, Any]] = {
    # marinadominguez/diffusion-for-us-images config.py (CAMUS / thyroid checkpoints)
    "ultrasound-sdm": dict(
        num_heads=1, num_head_channels=64, num_heads_upsample=None, use_new_attention_order=True
    ),
    # WeilunWang/semantic-diffusion-model scripts (--num_head_channels 64)
    "sdm": dict(num_heads=1, num_head_channels=64, num_heads_upsample=None, use_new_attention_order=False),
    # openai/guided-diffusion released models (--num_head_channels 64)
    "guided-diffusion": dict(num_heads=4, num_head_channels=64, num_heads_upsample=None, use_new_attention_order=False),
    # openai/improved-diffusion defaults (4 heads, legacy order)
    "improved-diffusion": dict(num_heads=4, num_head_channels=-1, num_heads_upsample=None, use_new_attention_order=False),
}

StateDict = Mapping[str, torch.Tensor]
_WRAPPER_KEYS = ("state_dict", "model", "ema", "ema_model", "model_state_dict", "module")


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def load_original_state_dict(checkpoint: Union[str, os.PathLike, StateDict]) -> "OrderedDict[str, torch.Tensor]":
    """Read an original checkpoint safely and return its flat state dict.

    ``.pt``/``.pth``/``.ckpt`` files are read with ``torch.load(map_location="cpu", weights_only=True)`` (no
    arbitrary unpickling), ``.safetensors`` with safetensors. A dict wrapping the weights under
    ``"state_dict"``, ``"model"`` or ``"ema"`` is unwrapped, and a DistributedDataParallel ``module.`` prefix
    is removed.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path, device="cpu")
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - report any unpickling refusal clearly
                raise ValueError(
                    f"could not read {path} as a weights-only torch checkpoint ({err.__class__.__name__}: {err}); "
                    "only plain state dicts of tensors are accepted"
                ) from err
    else:
        obj = checkpoint
    if not isinstance(obj, Mapping):
        raise ValueError(f"`checkpoint` must be a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    for _ in range(3):  # unwrap nested {"state_dict": {...}} containers
        if obj and all(torch.is_tensor(v) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    state = OrderedDict()
    for key, value in obj.items():
        if not torch.is_tensor(value):
            raise ValueError(f"checkpoint entry {key!r} is not a tensor ({type(value).__name__})")
        state[key[len("module."):] if key.startswith("module.") else key] = value
    if not any(k.startswith("input_blocks.") for k in state):
        raise ValueError(
            "the checkpoint has no `input_blocks.*` keys: it is not a guided-diffusion / SDM UNet state dict "
            f"(first keys: {list(state)[:5]})"
        )
    return state


# ----------------------------------------------------------------------------------------------------------
# Config inference
# ----------------------------------------------------------------------------------------------------------


def _block_indices(state: StateDict, prefix: str) -> List[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in state for m in [pattern.match(k)] if m})


def _has(state: StateDict, prefix: str) -> bool:
    return any(k.startswith(prefix + ".") for k in state)


def _is_resblock(state: StateDict, prefix: str) -> bool:
    return _has(state, prefix + ".in_layers") or _has(state, prefix + ".in_norm")


def _is_attention(state: StateDict, prefix: str) -> bool:
    return f"{prefix}.qkv.weight" in state


def _resblock_out_channels(state: StateDict, prefix: str) -> int:
    for key in (f"{prefix}.in_layers.2.weight", f"{prefix}.in_layers.1.weight"):
        if key in state:
            return int(state[key].shape[0])
    raise ValueError(f"cannot find the first conv of the residual block {prefix}")


def _require(state: StateDict, key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the checkpoint has no {key!r}: not a guided-diffusion / SDM UNet state dict")
    return state[key]


def infer_config_from_original_state_dict(state: StateDict) -> Dict[str, Any]:
    """Read the network structure from an original state dict.

    Returns a dict with ``in_channels``, ``model_channels``, ``channel_mult``, ``num_res_blocks``,
    ``attention_resolutions`` (downsampling factors), ``resblock_updown``, ``conv_resample``,
    ``use_scale_shift_norm``, ``num_classes``, ``spade_hidden_channels`` and ``total_out_channels`` (the
    output conv's channels, ``out_channels * (2 if learn_sigma)``).
    """
    model_channels = int(_require(state, "time_embed.0.weight").shape[1])
    conv_in = _require(state, "input_blocks.0.0.weight")
    in_channels = int(conv_in.shape[1])
    total_out = int(_require(state, "out.2.weight").shape[0])

    n_in = max(_block_indices(state, "input_blocks")) + 1
    out_idx = _block_indices(state, "output_blocks")
    if not out_idx:
        raise ValueError("the checkpoint has no `output_blocks.*` keys")
    n_out = max(out_idx) + 1
    if n_in != n_out:
        raise ValueError(f"inconsistent checkpoint: {n_in} input blocks but {n_out} output blocks")

    # Down-sampling blocks: visible as `op` convs / down ResBlocks, or as parameter-free gaps (avg pool).
    present = set(_block_indices(state, "input_blocks"))
    missing = [i for i in range(1, n_in) if i not in present]
    upsamplers = []
    for j in range(n_out):
        p = f"output_blocks.{j}"
        last = max(_block_indices(state, p))
        if last >= 1 and not _is_attention(state, f"{p}.{last}"):
            upsamplers.append(j)
    num_levels = (len(missing) if missing else len(upsamplers)) + 1
    if n_out % num_levels:
        raise ValueError(f"cannot split {n_out} output blocks into {num_levels} levels")
    num_res_blocks = n_out // num_levels - 1
    if num_res_blocks < 1:
        raise ValueError("could not infer num_res_blocks from the checkpoint")

    down_positions = [1 + level * (num_res_blocks + 1) + num_res_blocks for level in range(num_levels - 1)]
    if missing and missing != down_positions:
        raise ValueError(f"unexpected parameter-free input blocks {missing}; expected {down_positions}")

    channel_mult: List[float] = []
    attention_ds: List[int] = []
    for level in range(num_levels):
        first = 1 + level * (num_res_blocks + 1)
        prefix = f"input_blocks.{first}.0"
        if not _is_resblock(state, prefix):
            raise ValueError(f"expected a residual block at {prefix}")
        ratio = _resblock_out_channels(state, prefix) / model_channels
        channel_mult.append(int(ratio) if float(ratio).is_integer() else ratio)
        if _is_attention(state, f"input_blocks.{first}.1"):
            attention_ds.append(2**level)

    resblock_updown, conv_resample = False, True
    if down_positions:
        prefix = f"input_blocks.{down_positions[0]}.0"
        if _is_resblock(state, prefix):
            resblock_updown = True
        elif f"{prefix}.op.weight" in state:
            conv_resample = True
        elif not _has(state, f"input_blocks.{down_positions[0]}"):
            conv_resample = False
        else:
            raise ValueError(f"unrecognised down-sampling block {prefix}")

    emb_out = int(_require(state, "input_blocks.1.0.emb_layers.1.weight").shape[0])
    use_scale_shift_norm = emb_out == 2 * _resblock_out_channels(state, "input_blocks.1.0")

    shared = state.get("middle_block.0.in_norm.mlp_shared.0.weight")
    num_classes = int(shared.shape[1]) if shared is not None else 0
    spade_hidden = int(shared.shape[0]) if shared is not None else 128

    return dict(
        in_channels=in_channels,
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=num_res_blocks,
        attention_resolutions=tuple(attention_ds),
        resblock_updown=resblock_updown,
        conv_resample=conv_resample,
        use_scale_shift_norm=use_scale_shift_norm,
        num_classes=num_classes,
        spade_hidden_channels=spade_hidden,
        total_out_channels=total_out,
    )


def consistent_head_layouts(state: StateDict) -> Dict[str, List[int]]:
    """The attention-head layouts an original state dict is consistent with.

    The number of heads is not stored in the weights: a ``qkv`` weight of ``3C`` rows fits any head count that
    divides ``C`` (and every such count gives a different network). Returns ``{"attention_channels": [C, ...],
    "num_head_channels": [...], "num_heads": [...]}``: the widths of the attention layers, and the values of
    ``num_head_channels`` (channels per head) and of ``num_heads`` (with ``num_head_channels=-1``) that divide
    every one of them.
    """
    widths = sorted({int(v.shape[0]) // 3 for k, v in state.items() if k.endswith(".qkv.weight")})
    if not widths:
        return {"attention_channels": [], "num_head_channels": [], "num_heads": []}
    common = 0
    for width in widths:
        common = math.gcd(common, width)
    divisors = [d for d in range(1, common + 1) if common % d == 0]
    return {"attention_channels": widths, "num_head_channels": divisors, "num_heads": divisors}


def describe_head_layouts(layouts: Mapping[str, List[int]]) -> str:
    """One sentence on the head layouts of :func:`consistent_head_layouts`."""
    widths = layouts["attention_channels"]
    return (
        f"its attention layers have {', '.join(str(w) for w in widths)} channels, so num_head_channels in "
        f"{layouts['num_head_channels']} or num_heads in {layouts['num_heads']} (with num_head_channels=-1) are all "
        "consistent with the weights, and each gives a different network"
    )


def _resolve_heads(
    state: StateDict, source: str, overrides: Dict[str, Any], use_source_head_defaults: bool
) -> Dict[str, Any]:
    """The head options (num_heads, num_head_channels, num_heads_upsample) of a conversion.

    Given options are checked against the weights; without them the choice is required unless only one layout
    fits (``use_source_head_defaults=True`` takes the defaults of ``source``'s training scripts).
    """
    layouts = consistent_head_layouts(state)
    defaults = {k: v for k, v in CHECKPOINT_SOURCES[source].items() if k != "use_new_attention_order"}
    given = {
        k: overrides[k] for k in ("num_heads", "num_head_channels", "num_heads_upsample") if overrides.get(k) is not None
    }
    for key, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"`{key}` must be an integer, got {value!r}")
    if "num_heads" in given and "num_head_channels" not in given:
        given["num_head_channels"] = -1  # a head count only counts when the width per head is not fixed
    widths = layouts["attention_channels"]
    if "num_head_channels" in given or "num_heads" in given:
        heads = dict(defaults, **given)
    elif not widths or max(widths) == 1:
        heads = defaults  # a single layout fits
    elif use_source_head_defaults:
        heads = dict(defaults)
    else:
        raise ValueError(
            "the checkpoint does not store the number of attention heads: " + describe_head_layouts(layouts) + ". "
            "Pass num_head_channels=N (CLI: --num_head_channels N) or num_heads=N (CLI: --num_heads N) as the "
            f"checkpoint was trained; the training scripts of source {source!r} default to "
            f"num_head_channels={defaults['num_head_channels']}"
            + (f", num_heads={defaults['num_heads']}" if defaults["num_head_channels"] == -1 else "")
            + " (use_source_head_defaults=True, CLI: --source_head_defaults, takes that default)"
        )
    head_channels = int(heads["num_head_channels"])
    if head_channels != -1 and (head_channels < 1 or any(w % head_channels for w in widths)):
        raise ValueError(
            f"`num_head_channels`={head_channels} does not fit the weights: " + describe_head_layouts(layouts)
        )
    for key in ("num_heads", "num_heads_upsample"):
        value = heads.get(key)
        if head_channels == -1 and value not in (None, -1) and (int(value) < 1 or any(w % int(value) for w in widths)):
            raise ValueError(f"`{key}`={value} does not fit the weights: " + describe_head_layouts(layouts))
    return heads


# ----------------------------------------------------------------------------------------------------------
# Key mapping
# ----------------------------------------------------------------------------------------------------------

# (original sub-module, our sub-module) for the parameterised layers of each block type
_PLAIN_RESBLOCK = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
]
_SPADE_RESBLOCK = [
    ("in_norm.mlp_shared.0", "norm1.mlp_shared"),
    ("in_norm.mlp_gamma", "norm1.mlp_gamma"),
    ("in_norm.mlp_beta", "norm1.mlp_beta"),
    ("in_layers.1", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_norm.mlp_shared.0", "norm2.mlp_shared"),
    ("out_norm.mlp_gamma", "norm2.mlp_gamma"),
    ("out_norm.mlp_beta", "norm2.mlp_beta"),
    ("out_layers.2", "conv2"),
    ("skip_connection", "conv_shortcut"),
]
_ATTENTION = [("norm", "norm"), ("qkv", "to_qkv"), ("proj_out", "to_out")]

#: A layer pair: (original module path, our module path, kind) with kind "plain", "qkv" or "proj".
LayerPair = Tuple[str, str, str]


def _resblock_pairs(orig: str, ours: str, spade: bool) -> List[LayerPair]:
    table = _SPADE_RESBLOCK if spade else _PLAIN_RESBLOCK
    return [(f"{orig}.{a}", f"{ours}.{b}", "plain") for a, b in table]


def _attention_pairs(orig: str, ours: str) -> List[LayerPair]:
    kinds = {"norm": "plain", "qkv": "qkv", "proj_out": "proj"}
    return [(f"{orig}.{a}", f"{ours}.{b}", kinds[a]) for a, b in _ATTENTION]


def original_key_mapping(config: Mapping[str, Any]) -> List[LayerPair]:
    """The layer-by-layer correspondence between the original network and ours, for a model ``config``.

    Each entry is ``(original_module, our_module, kind)``; parameters are ``<module>.weight`` /
    ``<module>.bias``. Optional layers (a 1x1 skip conv when the channels do not change) are listed too and
    simply absent from both sides when unused.
    """
    mult = tuple(config["channel_mult"])
    nrb = int(config["num_res_blocks"])
    attn_ds = set(int(a) for a in config["attention_resolutions"])
    spade = int(config["num_classes"]) > 0
    updown = bool(config["resblock_updown"])
    pairs: List[LayerPair] = [
        ("time_embed.0", "time_embedding.linear_1", "plain"),
        ("time_embed.2", "time_embedding.linear_2", "plain"),
        ("input_blocks.0.0", "conv_in", "plain"),
        ("out.0", "conv_norm_out", "plain"),
        ("out.2", "conv_out", "plain"),
    ]
    index, ds = 1, 1
    for level in range(len(mult)):
        for i in range(nrb):
            pairs += _resblock_pairs(f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{i}", False)
            if ds in attn_ds:
                pairs += _attention_pairs(f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{i}")
            index += 1
        if level != len(mult) - 1:
            orig, ours = f"input_blocks.{index}.0", f"down_blocks.{level}.downsampler"
            if updown:
                pairs += _resblock_pairs(orig, ours, False)
            else:
                pairs.append((f"{orig}.op", f"{ours}.conv", "plain"))
            index += 1
            ds *= 2
    pairs += _resblock_pairs("middle_block.0", "mid_block.resnets.0", spade)
    pairs += _attention_pairs("middle_block.1", "mid_block.attention")
    pairs += _resblock_pairs("middle_block.2", "mid_block.resnets.1", spade)
    index = 0
    for up_level, level in enumerate(reversed(range(len(mult)))):
        for i in range(nrb + 1):
            pairs += _resblock_pairs(f"output_blocks.{index}.0", f"up_blocks.{up_level}.resnets.{i}", spade)
            sub = 1
            if ds in attn_ds:
                pairs += _attention_pairs(f"output_blocks.{index}.1", f"up_blocks.{up_level}.attentions.{i}")
                sub = 2
            if level and i == nrb:
                orig, ours = f"output_blocks.{index}.{sub}", f"up_blocks.{up_level}.upsampler"
                if updown:
                    pairs += _resblock_pairs(orig, ours, spade)
                else:
                    pairs.append((f"{orig}.conv", f"{ours}.conv", "plain"))
                ds //= 2
            index += 1
    return pairs


def _attention_heads(config: Mapping[str, Any], our_module: str, channels: int) -> int:
    head_ch = int(config.get("num_head_channels", -1))
    if head_ch != -1:
        return channels // head_ch
    heads = int(config.get("num_heads", 1))
    up = config.get("num_heads_upsample")
    if our_module.startswith("up_blocks.") and up not in (None, -1):
        heads = int(up)
    return heads


def _legacy_to_new_qkv(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder qkv rows from [head, q/k/v, d] to [q/k/v, head, d] (any trailing dims kept)."""
    rest = tensor.shape[1:]
    d = tensor.shape[0] // (3 * heads)
    return tensor.reshape(heads, 3, d, *rest).transpose(0, 1).reshape(tensor.shape)


def _new_to_legacy_qkv(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    rest = tensor.shape[1:]
    d = tensor.shape[0] // (3 * heads)
    return tensor.reshape(3, heads, d, *rest).transpose(0, 1).reshape(tensor.shape)


def _convert_tensor(value: torch.Tensor, kind: str, param: str, heads: int, legacy: bool) -> torch.Tensor:
    if kind in ("qkv", "proj") and param == "weight":
        if value.ndim != 3 or value.shape[-1] != 1:
            raise ValueError(f"expected a 1x1 Conv1d weight [out, in, 1], got shape {tuple(value.shape)}")
        value = value[..., 0]
    if kind == "qkv" and legacy:
        value = _legacy_to_new_qkv(value, heads)
    return value


def _split_key(key: str) -> Tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def convert_original_state_dict(
    state: StateDict,
    config: Mapping[str, Any],
    use_new_attention_order: bool = True,
    expected_keys: Optional[Iterable[str]] = None,
) -> "OrderedDict[str, torch.Tensor]":
    """Rename (and where needed reshape / reorder) an original state dict into our layout.

    Args:
        state: original state dict.
        config: config of the target :class:`SemanticUNet2DModel`.
        use_new_attention_order: False when the checkpoint's qkv rows use the legacy [head, q/k/v, d] order.
        expected_keys: our model's state-dict keys; when given, the result must fill exactly these keys.

    Raises:
        ValueError: listing every original key that was not consumed and every model key left unfilled.
    """
    pairs = original_key_mapping(config)
    by_module = {orig: (ours, kind) for orig, ours, kind in pairs}
    result: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    leftover = []
    for key, value in state.items():
        module, param = _split_key(key)
        if module not in by_module or param not in ("weight", "bias"):
            leftover.append(key)
            continue
        ours, kind = by_module[module]
        heads = 1
        if kind == "qkv":
            heads = _attention_heads(config, ours, value.shape[0] // 3)
            if value.shape[0] % (3 * heads):
                raise ValueError(f"{key}: {value.shape[0]} qkv channels cannot be split into {heads} heads")
        result[f"{ours}.{param}"] = _convert_tensor(value, kind, param, heads, not use_new_attention_order)
    missing = sorted(set(expected_keys) - set(result)) if expected_keys is not None else []
    extra = sorted(set(result) - set(expected_keys)) if expected_keys is not None else []
    if leftover or missing or extra:
        lines = []
        if leftover:
            lines.append(f"{len(leftover)} original key(s) not consumed: {leftover}")
        if extra:
            origin = {f"{o}.{p}": f"{orig}.{p}" for orig, o, _ in pairs for p in ("weight", "bias")}
            lines.append(f"{len(extra)} key(s) with no place in the model: {[origin.get(k, k) for k in extra]}")
        if missing:
            lines.append(f"{len(missing)} model parameter(s) not filled: {missing}")
        raise ValueError("checkpoint does not match the model layout:\n  " + "\n  ".join(lines))
    return result


def to_original_state_dict(
    model_or_state: Union[SemanticUNet2DModel, StateDict],
    config: Optional[Mapping[str, Any]] = None,
    use_new_attention_order: bool = True,
) -> "OrderedDict[str, torch.Tensor]":
    """The inverse of :func:`convert_original_state_dict`: our weights with guided-diffusion / SDM key names.

    The result loads into the original ``UNetModel`` (1x1 ``Conv1d`` shapes for attention projections).
    """
    if isinstance(model_or_state, SemanticUNet2DModel):
        config = dict(model_or_state.config)
        state = model_or_state.state_dict()
    else:
        if config is None:
            raise ValueError("`config` is required when converting a bare state dict")
        state = model_or_state
    by_module = {ours: (orig, kind) for orig, ours, kind in original_key_mapping(config)}
    result: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        module, param = _split_key(key)
        if module not in by_module:
            raise ValueError(f"model key {key!r} has no counterpart in the original layout")
        orig, kind = by_module[module]
        value = value.detach().clone()
        if kind == "qkv" and not use_new_attention_order:
            value = _new_to_legacy_qkv(value, _attention_heads(config, module, value.shape[0] // 3))
        if kind in ("qkv", "proj") and param == "weight":
            value = value[..., None]
        result[f"{orig}.{param}"] = value
    return result


# ----------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------


def convert_original_checkpoint(
    checkpoint: Union[str, os.PathLike, StateDict],
    source: str = "ultrasound-sdm",
    learn_sigma: Optional[bool] = None,
    sample_size: Union[int, Tuple[int, int]] = 128,
    torch_dtype: Optional[torch.dtype] = None,
    use_source_head_defaults: bool = False,
    **config_overrides: Any,
) -> SemanticUNet2DModel:
    """Build a :class:`SemanticUNet2DModel` holding the weights of an original checkpoint.

    Args:
        checkpoint: path of a ``.pt`` state dict (read with ``torch.load(weights_only=True)``) or ``.safetensors``
            file, or a state dict.
        source: which code base wrote it, for the attention options that the weights do not reveal
            (see :data:`CHECKPOINT_SOURCES`): ``"ultrasound-sdm"`` (Domínguez et al. CAMUS / thyroid; new
            attention order, 64 channels per head), ``"sdm"``, ``"guided-diffusion"``, ``"improved-diffusion"``.
        learn_sigma: whether the output carries variance channels; inferred when the output conv has twice
            (True) or exactly (False) the input channels.
        sample_size: default image size stored in the config (128 for the published ultrasound models).
        torch_dtype: cast the converted model (default float32).
        use_source_head_defaults: the weights do not store the number of attention heads (any count dividing
            the attention widths fits, and each gives another network), so ``num_head_channels`` or
            ``num_heads`` must be given; True takes the defaults of ``source``'s training scripts instead (right
            only for checkpoints trained with them). See :func:`consistent_head_layouts`.
        **config_overrides: any :class:`SemanticUNet2DModel` option (e.g. ``num_head_channels``,
            ``num_heads``, ``dropout``, ``timestep_scale`` = 1000 / T for improved-diffusion checkpoints trained
            with ``rescale_timesteps``) and ``use_new_attention_order``. Structural options that contradict
            the weights raise.

    Returns:
        The converted model (eval mode).

    Raises:
        ValueError: unknown source, contradictory options, or a checkpoint whose keys do not all map (the
            message lists the keys left over and the parameters left unfilled).
    """
    if source not in CHECKPOINT_SOURCES:
        raise ValueError(f"unknown `source` {source!r}; expected one of {sorted(CHECKPOINT_SOURCES)}")
    state = load_original_state_dict(checkpoint)
    inferred = infer_config_from_original_state_dict(state)
    options = dict(CHECKPOINT_SOURCES[source])
    new_order = bool(config_overrides.pop("use_new_attention_order", options.pop("use_new_attention_order")))
    options.update(_resolve_heads(state, source, config_overrides, use_source_head_defaults))
    for key in ("num_heads", "num_head_channels", "num_heads_upsample"):
        config_overrides.pop(key, None)

    total_out = inferred.pop("total_out_channels")
    if learn_sigma is None:
        if "out_channels" in config_overrides:
            learn_sigma = total_out == 2 * int(config_overrides["out_channels"])
        elif total_out == 2 * inferred["in_channels"]:
            learn_sigma = True
        elif total_out == inferred["in_channels"]:
            learn_sigma = False
        else:
            raise ValueError(
                f"cannot tell whether the {total_out} output channels include learned variances "
                f"(in_channels={inferred['in_channels']}); pass learn_sigma=True or False"
            )
    if learn_sigma and total_out % 2:
        raise ValueError(f"learn_sigma=True needs an even number of output channels, the checkpoint has {total_out}")
    out_channels = total_out // 2 if learn_sigma else total_out

    config: Dict[str, Any] = dict(inferred, **options)
    config.update(sample_size=sample_size, learn_sigma=bool(learn_sigma), out_channels=out_channels)
    valid = set(SemanticUNet2DModel._init_parameter_names())
    unknown = set(config_overrides) - valid
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(valid)}")
    for key, value in config_overrides.items():
        if key in inferred and _normalise(value) != _normalise(inferred[key]):
            raise ValueError(f"`{key}`={value!r} contradicts the checkpoint, which has {key}={inferred[key]!r}")
        if key == "out_channels" and int(value) != out_channels:
            raise ValueError(f"`out_channels`={value} contradicts the checkpoint's {total_out} output channels")
    config.update(config_overrides)

    model = SemanticUNet2DModel(**config)
    converted = convert_original_state_dict(state, model.config, new_order, expected_keys=model.state_dict().keys())
    expected = model.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise ValueError("checkpoint tensors do not fit the model:\n  " + "\n  ".join(wrong))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in converted.items()}, strict=True)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model.eval()


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
