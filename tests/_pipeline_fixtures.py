"""Tiny random-weight pipelines and a Hub cache on disk, for the pipeline and Hub tests.

Imported by tests/test_pipeline_*.py and tests/test_hub.py (``from _pipeline_fixtures import ...``; pytest puts
tests/ on sys.path). Everything here is small enough for a 2-core CPU: 16 px images, 8 base channels.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

NUM_CLASSES = 5
LABEL_NAMES = ["outside the fan", "LV cavity", "tissue in the fan", "myocardium", "left atrium"]


def tiny_unet_config(**overrides):
    """The config of the tiny test SemanticUNet2DModel (16 px, 8 base channels, one attention level); keyword
    arguments override single keys."""
    config = dict(
        sample_size=16, in_channels=1, out_channels=1, learn_sigma=True, model_channels=8, channel_mult=(1, 2),
        num_res_blocks=1, attention_resolutions=(2,), num_heads=1, num_head_channels=8, num_classes=NUM_CLASSES,
        spade_hidden_channels=8, norm_num_groups=4,
    )
    config.update(overrides)
    return config


def tiny_semantic_unet(
    num_classes: int = NUM_CLASSES,
    sample_size: Union[int, Tuple[int, int]] = 16,
    learn_sigma: bool = True,
    channels: int = 1,
    seed: int = 0,
):
    """A SemanticUNet2DModel of about 0.1M parameters (random weights, fixed by ``seed``, none zero)."""
    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel

    torch.manual_seed(seed)
    unet = SemanticUNet2DModel(**tiny_unet_config(
        sample_size=sample_size, in_channels=channels, out_channels=channels, learn_sigma=learn_sigma,
        num_classes=num_classes,
    ))
    # The network zero-initialises its output and SPADE layers (the label map then has no effect yet);
    # random values everywhere make the tests see the conditioning.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in unet.parameters():
            if not param.any():
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return unet.eval()


def tiny_bmap_scheduler(variance_type: str = "learned_range", **kwargs):
    """A BMapAttenuationScheduler with T=100 steps (cosine B-maps, CAMUS fan)."""
    from ultrasound_diffusers.schedulers.scheduling_bmap_attenuation import BMapAttenuationScheduler

    return BMapAttenuationScheduler(num_train_timesteps=100, variance_type=variance_type, **kwargs)


def tiny_semantic_pipeline(scheduler=None, learn_sigma: bool = True, label_names=LABEL_NAMES, **unet_kwargs):
    """SemanticUltrasoundPipeline(tiny unet, B-map scheduler) with the progress bar off."""
    from ultrasound_diffusers.pipelines import SemanticUltrasoundPipeline

    unet = tiny_semantic_unet(learn_sigma=learn_sigma, **unet_kwargs)
    if scheduler is None:
        scheduler = tiny_bmap_scheduler("learned_range" if learn_sigma else "fixed_small")
    pipe = SemanticUltrasoundPipeline(unet=unet, scheduler=scheduler, label_names=label_names)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_unconditional_pipeline(sample_size=(8, 32), scheduler=None, learn_sigma: bool = True):
    """UltrasoundPipeline(unconditional SemanticUNet2DModel with num_classes=0) for rectangular images."""
    from ultrasound_diffusers.pipelines import UltrasoundPipeline

    unet = tiny_semantic_unet(num_classes=0, sample_size=sample_size, learn_sigma=learn_sigma)
    if scheduler is None:
        scheduler = tiny_bmap_scheduler("learned_range" if learn_sigma else "fixed_small", probe_geometry="linear")
    pipe = UltrasoundPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def echo_label_map(size: int = 16, seed: int = 0) -> np.ndarray:
    """A uint8 label map [size, size] in [0, 4]: fan (2) with a cavity (1), a ring (3) and an atrium (4)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    labels = np.zeros((size, size), np.uint8)
    labels[(np.abs(x - 0.5) < y * 0.6 + 0.05)] = 2
    centre = 0.45 + 0.05 * rng.random()
    r = np.hypot(x - 0.5, y - centre)
    labels[(r < 0.25) & (labels == 2)] = 3
    labels[(r < 0.15) & (labels == 3)] = 1
    labels[(np.hypot(x - 0.5, y - 0.85) < 0.1) & (labels == 2)] = 4
    return labels


def make_hub_cache(folder: Union[str, os.PathLike], cache_dir: Union[str, os.PathLike], repo_id: str,
                   commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay out ``folder`` as the Hub cache of model repo ``repo_id``: ``models--org--name/refs/main`` holding
    ``commit`` and ``snapshots/<commit>/`` holding the files (plain copies instead of blob links).
    Returns the snapshot folder."""
    storage = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    snapshot = storage / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    return snapshot


def isolate_remote_code_cache(monkeypatch, tmp_path) -> Path:
    """Point diffusers' cache of remote-code modules (normally ~/.cache/huggingface/modules) to ``tmp_path``."""
    import sys

    import diffusers.utils.dynamic_modules_utils as dynamic

    modules = tmp_path / "hf_modules"
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(modules))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m == "diffusers_modules" or m.startswith("diffusers_modules.")]:
        monkeypatch.delitem(sys.modules, name)
    return modules
