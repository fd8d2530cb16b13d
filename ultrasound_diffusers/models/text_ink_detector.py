# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""A small fully convolutional network that marks burned-in text ink inside an ultrasound scan area.

The DICOM de-identification (:func:`ultrasound_diffusers.data.dicom.find_text_marks`) finds most burned-in text with
hand-made cues (one exact grey, brighter than the speckle, still across cine frames, colour, upright stems). What
those cues miss is thin anti-aliased text in a grey *inside* the speckle's range, which keeps only a few dozen
pixels of full ink: visible to the eye as letter shapes, but no single statistic of its pixels separates it from
speckle. This network looks at the shapes: it maps a frame to a per-pixel probability of text ink, from three
input channels (:func:`detector_inputs`): the grey level, its deviation from the 5 x 5 local mean, and the share
of the 8 neighbours with exactly the same 8-bit value (text ink is drawn in one value; speckle rarely repeats).

Architecture: two 3 x 3 convolutions, three dilated 3 x 3 convolutions (dilations 2, 4, 8: a receptive field of
33 px, a few glyphs), two 1 x 1 convolutions; about 26 k parameters, ~2 GMAC for a 240 x 320 frame. It is trained
by ``training/train_text_detector.py`` on synthetic B-mode frames (its own speckle generator and the package's
phantoms) with random strings drawn in random fonts, sizes and inks, never on the benchmark's words or frames; the
bundled weights are ``ultrasound_diffusers/assets/text-ink-detector``.

Measured (``benchmarks/benchmark_dicom_deidentification.py --learned_text_detector``): on synthetic files it brings
the files that keep their text from 11 to 3 of 100, but it drops every clean frame of the real files there (colour
Doppler, graphics and real speckle look like ink to it) and 11 of 20 thyroid phantoms. It is therefore an opt-in
cue (``DeidentificationPolicy.learned_text_detector``); it needs real annotated frames to be a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

#: Where the bundled weights live.
BUNDLED_TEXT_DETECTOR = Path(__file__).resolve().parents[1] / "assets" / "text-ink-detector"


def detector_inputs(frames: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """The network's input channels from grey frames (float or uint8, 0-255, [H, W] or [B, H, W]) ->
    float32 [B, 3, H, W]: grey / 255; (grey - 5 x 5 mean) / 64; the share of the 8 neighbours with the same
    rounded value (0-1; the image border counts as different)."""
    x = torch.as_tensor(np.asarray(frames), dtype=torch.float32)
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"`frames` must have shape [H, W] or [B, H, W], got {tuple(x.shape)}")
    x = x[:, None]
    q = torch.round(x)
    padded = F.pad(q, (1, 1, 1, 1), value=-1.0)
    H, W = x.shape[-2:]
    same = torch.zeros_like(x)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            same += (padded[..., dy : dy + H, dx : dx + W] == q).float()
    local = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return torch.cat([x / 255.0, (x - local) / 64.0, same / 8.0], dim=1)


class TextInkDetector(ModelMixin, ConfigMixin):
    """Per-pixel text-ink logits of a grey ultrasound frame (see the module docstring).

    Args:
        channels (`Tuple[int, int]`, defaults to (16, 32)): widths of the near (3 x 3) and far (dilated) layers.
        dilations (`Tuple[int, ...]`, defaults to (2, 4, 8)): dilations of the far layers.

    Forward: ``x`` float [B, 3, H, W] from :func:`detector_inputs` -> logits float [B, 1, H, W].
    """

    @register_to_config
    def __init__(self, channels: Tuple[int, int] = (16, 32), dilations: Tuple[int, ...] = (2, 4, 8)):
        super().__init__()
        near, far = int(channels[0]), int(channels[1])
        layers = [nn.Conv2d(3, near, 3, padding=1), nn.ReLU(), nn.Conv2d(near, near, 3, padding=1), nn.ReLU()]
        width = near
        for d in dilations:
            layers += [nn.Conv2d(width, far, 3, padding=int(d), dilation=int(d)), nn.ReLU()]
            width = far
        layers += [nn.Conv2d(width, near, 1), nn.ReLU(), nn.Conv2d(near, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def ink_probability(detector: TextInkDetector, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
    """Text-ink probability per pixel (float32, 0-1) of grey frames ([H, W] -> [H, W]; [B, H, W] -> [B, H, W]),
    on the detector's device, one torch thread pool as the caller set it."""
    array = np.asarray(frames, dtype=np.float32)
    single = array.ndim == 2
    x = detector_inputs(array).to(detector.device, detector.dtype)
    prob = torch.sigmoid(detector(x))[:, 0].float().cpu().numpy()
    return prob[0] if single else prob


def load_text_detector(path: Union[str, Path, None] = None) -> TextInkDetector:
    """The detector saved at ``path`` (default: the bundled weights), in eval mode on the CPU."""
    folder = Path(path) if path is not None else BUNDLED_TEXT_DETECTOR
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no text-ink detector at {folder} (expected config.json and its safetensors weights)")
    return TextInkDetector.from_pretrained(str(folder)).eval()
