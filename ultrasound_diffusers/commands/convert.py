"""``ultrasound-diffusers convert``: turn a guided-diffusion / SDM ``.pt`` checkpoint into a diffusers folder.

Examples::

    # the authors' CAMUS checkpoint (64 channels per attention head) -> pipeline folder with a model card
    ultrasound-diffusers convert --checkpoint ema_0.9999_050000.pt --output_dir camus-sdm-bmap --num_head_channels 64

    # an improved-diffusion checkpoint (T = 4000, rescale_timesteps, 4 heads) as a bare model folder
    ultrasound-diffusers convert --checkpoint model.pt --output_dir lung-unet --source improved-diffusion \\
        --num_heads 4 --model_only --config '{"timestep_scale": 0.25, "sample_size": [8, 256]}'

The network structure is read from the weights. The number of attention heads is not in the weights (any count
that divides the attention widths fits, each giving another network), so give it with --num_head_channels or
--num_heads as the checkpoint was trained (the error lists the layouts that fit), or accept the defaults of
--source's training scripts with --source_head_defaults. The choice is recorded in the saved config (and, for
pipeline folders, in the model card). The attention order, sample size and learn_sigma (when ambiguous) come
from --source and the flags below.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Optional

from ._common import add_command, shard_size, size_type

#: Scheduler settings of the published ultrasound SDM (Domínguez et al. 2024), from their one home:
#: ``BMapAttenuationScheduler.from_preset("camus-sdm")`` (see ``schedulers.scheduling_bmap_attenuation.SCHEDULER_PRESETS``).
DEFAULT_SCHEDULER_PRESET = "camus-sdm"


def _json_arg(text: Optional[str], name: str) -> Dict[str, Any]:
    """Parse a JSON object given inline or as a path to a .json file."""
    if not text:
        return {}
    if os.path.isfile(text):
        with open(text, "r", encoding="utf-8") as handle:
            text = handle.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"`{name}` must be a JSON object or the path of a JSON file: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"`{name}` must be a JSON object, got {type(value).__name__}")
    return value


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y", "t"):
        return True
    if text.lower() in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def register(subparsers) -> None:
    p = add_command(subparsers, "convert", "convert a guided-diffusion / improved-diffusion / SDM checkpoint (.pt) into a diffusers folder", __doc__)
    p.add_argument("--checkpoint", required=True, help="original .pt state dict (read with weights_only=True)")
    p.add_argument("--output_dir", required=True, help="folder to write (replaced atomically)")
    p.add_argument(
        "--source",
        default="ultrasound-sdm",
        choices=["ultrasound-sdm", "sdm", "guided-diffusion", "improved-diffusion"],
        help="code base that wrote the checkpoint (sets the attention-head defaults; default: ultrasound-sdm)",
    )
    p.add_argument("--sample_size", type=size_type("--sample_size"), default=None, help="default image size N or H,W (default 128)")
    p.add_argument(
        "--num_head_channels", type=int, default=None,
        help="channels per attention head, as the checkpoint was trained (-1: use --num_heads); not in the weights",
    )
    p.add_argument("--num_heads", type=int, default=None, help="attention heads (sets num_head_channels to -1)")
    p.add_argument(
        "--source_head_defaults", action="store_true",
        help="use the head layout that --source's training scripts default to (ultrasound-sdm, sdm, guided-diffusion: "
        "64 channels per head; improved-diffusion: 4 heads) instead of giving it",
    )
    p.add_argument(
        "--attention_order", choices=["new", "legacy"], default=None,
        help="qkv layout of the checkpoint (default from --source; the ultrasound fork used 'new')",
    )
    p.add_argument("--learn_sigma", type=_bool, default=None, help="true/false; inferred when unambiguous")
    p.add_argument(
        "--config", default=None,
        help="JSON object (inline or file) of further SemanticUNet2DModel options, e.g. '{\"timestep_scale\": 0.25}'",
    )
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="saved weight dtype")
    p.add_argument("--model_only", action="store_true", help="write only the model folder (config.json + safetensors)")
    p.add_argument("--no_scheduler", action="store_true", help="do not write scheduler/scheduler_config.json")
    p.add_argument(
        "--scheduler_args", "--scheduler-args", dest="scheduler_args", default=None,
        help="JSON object (inline or file) overriding the BMapAttenuationScheduler defaults of the published model",
    )
    p.add_argument("--max_shard_size", default="10GB", type=shard_size(), help="shard the safetensors file above this size")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir that another command or you wrote (never the working directory, a "
                   "parent of it or the folder holding --checkpoint)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.conversion import consistent_head_layouts, convert_original_checkpoint, load_original_state_dict
    from ..utils.io import check_output_dir, write_output_folder

    # The one output rule, before any work: never the working directory, a parent of it or the checkpoint's folder.
    rule = dict(inputs=[args.checkpoint], overwrite=args.overwrite, replace_own=False)
    check_output_dir(args.output_dir, "convert", **rule)
    overrides = _json_arg(args.config, "--config")
    for name in ("num_head_channels", "num_heads"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.attention_order is not None:
        overrides["use_new_attention_order"] = args.attention_order == "new"
    if args.sample_size is not None:
        overrides["sample_size"] = args.sample_size
    learn_sigma = overrides.pop("learn_sigma", None) if args.learn_sigma is None else args.learn_sigma

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    print(f"converting {args.checkpoint} (source: {args.source}) ...", file=sys.stderr)
    heads_given = "num_head_channels" in overrides or "num_heads" in overrides
    state = load_original_state_dict(args.checkpoint)  # read once (weights_only=True)
    model = convert_original_checkpoint(
        state, source=args.source, learn_sigma=learn_sigma, use_source_head_defaults=args.source_head_defaults,
        **overrides,
    )
    layouts = consistent_head_layouts(state)
    del state
    head_text = _head_text(model.config, layouts, args.source, heads_given)
    if dtype != torch.float32:
        model = torch.nn.Module.to(model, dtype)
    n_params = sum(p.numel() for p in model.parameters())

    scheduler = None
    if not args.model_only and not args.no_scheduler:
        from ..schedulers.scheduling_bmap_attenuation import preset_config

        scheduler_config = preset_config(DEFAULT_SCHEDULER_PRESET)
        scheduler_config["variance_type"] = "learned_range" if model.config.learn_sigma else "fixed_small"
        scheduler_config.update(_json_arg(args.scheduler_args, "--scheduler_args"))
        try:
            from ..schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler
        except ImportError as err:  # pragma: no cover - the scheduler ships with the package
            print(f"warning: scheduler not available ({err}); writing the unet only", file=sys.stderr)
        else:
            scheduler = BMapAttenuationScheduler(**scheduler_config)

    pipeline = None
    if scheduler is not None:
        try:  # a full pipeline folder when the pipeline package is importable
            from ..pipelines.pipeline_semantic_ultrasound import SemanticUltrasoundPipeline
            from ..pipelines.pipeline_ultrasound import UltrasoundPipeline

            cls = SemanticUltrasoundPipeline if model.config.num_classes > 0 else UltrasoundPipeline
            pipeline = cls(unet=model, scheduler=scheduler)
        except Exception:  # noqa: BLE001 - fall back to the component folders
            pipeline = None

    def build(tmp) -> None:
        if args.model_only:
            model.save_pretrained(tmp, safe_serialization=True, max_shard_size=args.max_shard_size)
            return
        if pipeline is not None:
            pipeline.save_pretrained(tmp, safe_serialization=True, max_shard_size=args.max_shard_size)
            _write_card(pipeline, tmp, args, head_text)
            return
        model.save_pretrained(os.path.join(tmp, "unet"), safe_serialization=True, max_shard_size=args.max_shard_size)
        if scheduler is not None:
            scheduler.save_pretrained(os.path.join(tmp, "scheduler"))

    write_output_folder(build, args.output_dir, "convert", **rule)
    layout = "model folder" if args.model_only else ("pipeline folder" if pipeline is not None else "unet/ + scheduler/")
    cfg = model.config
    print(
        f"wrote {args.output_dir} ({layout}): SemanticUNet2DModel, {n_params / 1e6:.1f}M parameters, "
        f"in={cfg.in_channels} out={cfg.out_channels}{'x2 (learn_sigma)' if cfg.learn_sigma else ''}, "
        f"num_classes={cfg.num_classes}, channel_mult={tuple(cfg.channel_mult)}, "
        f"attention at downsampling {tuple(cfg.attention_resolutions)}; {head_text}"
    )
    return 0


def _head_text(config, layouts, source: str, given: bool) -> str:
    """How the attention-head layout of a conversion was chosen (for the summary line and the model card)."""
    if config.num_head_channels == -1:
        chosen = f"num_heads={config.num_heads}"
    else:
        chosen = f"num_head_channels={config.num_head_channels}"
    how = "as given" if given else f"the default of source {source!r} (--source_head_defaults)"
    widths = ", ".join(str(w) for w in layouts["attention_channels"])
    return (
        f"attention heads: {chosen}, {how}; the weights do not store the head count (attention widths {widths}: "
        f"num_head_channels in {layouts['num_head_channels']} or num_heads in {layouts['num_heads']} fit)"
    )


def _write_card(pipeline, folder, args: argparse.Namespace, head_text: str) -> None:
    """A model card for the converted pipeline that records where it came from and the head layout chosen."""
    try:
        from ..hub_utils import save_model_card
    except ImportError:  # pragma: no cover - the pipelines ship with the package
        return
    details = (
        f"Converted with `ultrasound-diffusers convert` from the original checkpoint `{os.path.basename(args.checkpoint)}` "
        f"(source: {args.source}). The {head_text}."
    )
    save_model_card(pipeline, folder, repo_id=os.path.basename(os.path.normpath(args.output_dir)), training_details=details)
