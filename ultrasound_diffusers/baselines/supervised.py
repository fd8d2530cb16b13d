# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
r"""A supervised Fourier neural operator (FNO) from lung RF channel data to the lung map.

LUNA (Wang, Pinton, Anandkumar et al., arXiv 2501.01157) maps RF channel data to lung aeration maps with a
neural operator trained on simulations. This baseline does the same on the package's simulated pairs:

* **input**: the matched-filter back-projection of the RF data, ``b = FMC^T y / (gain * pairs)`` on the 8 x 128
  reflectivity grid (``MultistaticOperator.fmc.adjoint``: correlation with the pulse, then the transposed
  delay placement -- a linear function of every channel sample, normalised by the number of recorded
  (transmitter, receiver) pairs so full and sparse data are in the same units), repeated to 8 x 256, divided by
  the training set's standard deviation, plus a depth coordinate channel;
* **network** (:class:`LungFNO`): a 1 x 1 lift to ``width`` channels, ``num_layers`` Fourier layers (spectral
  convolution keeping ``modes`` = (rows, columns) frequencies, plus a 1 x 1 convolution, GELU) and a 1 x 1
  projection with a sigmoid, so the output is a map in [0, 1];
* **training** (:func:`train_lung_fno`): MSE to the true map, Adam, fresh channel noise in every batch at an SNR
  drawn uniformly from ``snr_range_db`` (full-array data only), for a fixed wall-clock budget on one thread.
  The noise of the back-projection is drawn exactly and cheaply as ``sigma V Sigma xi`` from the eigenvectors of
  ``FMC^T FMC`` (the noise ``FMC^T n`` of white channel noise ``n`` has covariance ``sigma^2 FMC^T FMC``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["LungFNO", "backprojection_inputs", "train_lung_fno"]


class _SpectralConv2d(nn.Module):
    """``irfft2(W . rfft2(x))`` keeping the lowest ``modes[0]`` positive and negative row frequencies and the
    lowest ``modes[1]`` column frequencies; W complex [C_in, C_out, 2 modes[0], modes[1]]."""

    def __init__(self, channels: int, modes: Tuple[int, int]):
        super().__init__()
        self.modes = (int(modes[0]), int(modes[1]))
        scale = 1.0 / (channels * channels)
        self.weight = nn.Parameter(scale * torch.randn(2, channels, channels, 2 * self.modes[0], self.modes[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mh, mw = min(self.modes[0], h // 2), min(self.modes[1], w // 2 + 1)
        spec = torch.fft.rfft2(x, norm="ortho")
        weight = torch.complex(self.weight[0], self.weight[1])
        out = torch.zeros(x.shape[0], weight.shape[1], h, w // 2 + 1, dtype=spec.dtype, device=x.device)
        rows = list(range(mh)) + list(range(h - mh, h))
        wrows = list(range(mh)) + list(range(2 * self.modes[0] - mh, 2 * self.modes[0]))
        block = spec[:, :, rows, :mw]
        out[:, :, rows, :mw] = torch.einsum("bihw,iohw->bohw", block, weight[:, :, wrows, :mw])
        return torch.fft.irfft2(out, s=(h, w), norm="ortho")


class LungFNO(ModelMixin, ConfigMixin):
    """Fourier neural operator: inputs [B, in_channels, H, W] -> maps [B, 1, H, W] in [0, 1].

    Args:
        in_channels (`int`, defaults to 2): the back-projection and the depth coordinate.
        width (`int`, defaults to 32): hidden channels.
        modes (`(int, int)`, defaults to (4, 32)): Fourier modes kept along rows (each sign) and columns.
        num_layers (`int`, defaults to 4): Fourier layers.
    """

    @register_to_config
    def __init__(self, in_channels: int = 2, width: int = 32, modes: Sequence[int] = (4, 32), num_layers: int = 4):
        super().__init__()
        self.lift = nn.Conv2d(in_channels, width, 1)
        self.spectral = nn.ModuleList([_SpectralConv2d(width, tuple(modes)) for _ in range(num_layers)])
        self.pointwise = nn.ModuleList([nn.Conv2d(width, width, 1) for _ in range(num_layers)])
        self.project = nn.Sequential(nn.Conv2d(width, 64, 1), nn.GELU(), nn.Conv2d(64, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lift(x)
        for i, (spectral, pointwise) in enumerate(zip(self.spectral, self.pointwise)):
            h = spectral(h) + pointwise(h)
            if i + 1 < len(self.spectral):
                h = nn.functional.gelu(h)
        return torch.sigmoid(self.project(h))


def backprojection_inputs(backprojection: torch.Tensor, size: Tuple[int, int], scale: float) -> torch.Tensor:
    """Network inputs [B, 2, H, W] from back-projections [B, H * W'] on the reflectivity grid (W' = W / pool):
    the back-projection divided by ``scale`` and repeated along columns, and the depth coordinate in [0, 1]."""
    h, w = size
    b = backprojection.reshape(backprojection.shape[0], h, -1).float() / float(scale)
    b = b.repeat_interleave(w // b.shape[-1], dim=-1)
    depth = torch.linspace(0, 1, h).reshape(1, h, 1).expand(b.shape[0], h, w)
    return torch.stack([b, depth], dim=1)


def rf_backprojection(operator, channels: torch.Tensor) -> torch.Tensor:
    """``FMC^T y / (gain * recorded pairs)`` [B, P] of RF data [B, T, E, E] (see the module docstring)."""
    pairs = float(operator.fmc.mask.sum())
    return operator.fmc.adjoint(torch.as_tensor(channels).float()) / (operator.gain * pairs)


def train_lung_fno(train_maps: np.ndarray, output_dir, minutes: float = 20.0, snr_range_db=(10.0, 30.0),
                   batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0, log_every: int = 50,
                   operator=None, normal_matrix: Optional[np.ndarray] = None, config: Optional[dict] = None) -> dict:
    """Train :class:`LungFNO` on full-array RF data of ``train_maps`` [N, 8, 256] for ``minutes`` of CPU time of
    this process (``time.process_time``: with one thread, minutes of one core whatever else the machine runs).

    The noise-free back-projections are computed once; every batch adds exact back-projected noise at an SNR
    drawn uniformly (in dB) from ``snr_range_db``. Writes ``output_dir`` (``save_pretrained`` of the network plus
    ``training.json``: input scale, SNR range, steps, loss curve, seconds). Returns the training summary.
    """
    from ..lung_reconstruction import lung_rf_operator
    from ..utils.io import atomic_write_text

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    maps = np.asarray(train_maps, np.float32)
    operator = operator or lung_rf_operator()
    g = operator.fmc.normal_matrix() if normal_matrix is None else normal_matrix
    lam, vec = np.linalg.eigh(g)
    lam = np.clip(lam, 0, None)
    noise_factor = torch.from_numpy(vec * np.sqrt(lam)[None, :]).float()  # V Sigma [P, P]
    pairs = float(operator.fmc.mask.sum())
    started = time.process_time()
    clean_b, clean_rms = [], []
    with torch.no_grad():
        for s in range(0, len(maps), 32):
            x = torch.from_numpy(maps[s : s + 32] * 2 - 1)[:, None]
            y = operator.forward(x)
            clean_rms.append(y.double().pow(2).flatten(1).mean(1).sqrt())
            clean_b.append(rf_backprojection(operator, y))
    clean_b = torch.cat(clean_b)
    clean_rms = torch.cat(clean_rms).float()
    prep_seconds = time.process_time() - started
    scale = float(clean_b.std())
    model = LungFNO()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    targets = torch.from_numpy(maps)[:, None]
    h, w = maps.shape[1:]
    losses, step = [], 0
    budget = float(minutes) * 60.0
    train_start, wall_start = time.process_time(), time.perf_counter()
    while time.process_time() - train_start < budget:
        idx = torch.from_numpy(rng.integers(0, len(maps), batch_size))
        snr = torch.from_numpy(rng.uniform(*snr_range_db, batch_size)).float()
        sigma = clean_rms[idx] * 10 ** (-snr / 20)  # channel noise std, data units
        xi = torch.randn(batch_size, noise_factor.shape[1])
        noise_b = (xi @ noise_factor.T) * (sigma / pairs)[:, None]
        inputs = backprojection_inputs(clean_b[idx] + noise_b, (h, w), scale)
        loss = torch.nn.functional.mse_loss(model(inputs), targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if log_every and step % log_every == 0:
            print(f"step {step} loss {np.mean(losses[-log_every:]):.5f} {time.process_time() - train_start:.0f} CPU s", flush=True)
    out = Path(output_dir)
    model.save_pretrained(str(out))
    summary = {
        "input_scale": scale, "snr_range_db": list(map(float, snr_range_db)), "steps": step, "batch_size": batch_size,
        "learning_rate": learning_rate, "num_train_maps": int(len(maps)), "train_cpu_seconds": round(time.process_time() - train_start, 1),
        "train_wall_seconds": round(time.perf_counter() - wall_start, 1), "prep_cpu_seconds": round(prep_seconds, 1), "minutes": float(minutes), "threads": torch.get_num_threads(),
        "loss_curve": [float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)],
        "parameters": int(sum(p.numel() for p in model.parameters())), **(config or {}),
    }
    atomic_write_text(out / "training.json", json.dumps(summary, indent=1) + "\n")
    return summary


def load_lung_fno(folder):
    """``(model, training summary)`` of a folder written by :func:`train_lung_fno`."""
    folder = Path(folder)
    model = LungFNO.from_pretrained(str(folder)).eval()
    summary = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    return model, summary


def predict_lung_fno(model, summary: dict, operator, channels: torch.Tensor) -> np.ndarray:
    """Maps [B, H, W] in [0, 1] from RF data [B, T, E, E] of ``operator``'s acquisition."""
    with torch.no_grad():
        b = rf_backprojection(operator, channels)
        return model(backprojection_inputs(b, operator.size, summary["input_scale"]))[:, 0].double().numpy()


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="train the supervised lung FNO baseline (one thread)")
    parser.add_argument("--train_data", default="/work/runs/lung/train", help="save_to_disk folder with a `values` column")
    parser.add_argument("--num_maps", type=int, default=4500)
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget in CPU minutes (one thread)")
    parser.add_argument("--snr_range", default="10,30", help="training SNR range in dB, LOW,HIGH")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--normal_cache", default=None, help="folder of cached normal matrices")
    args = parser.parse_args(argv)
    import datasets

    from ..lung_reconstruction import cached_normal_matrix, lung_rf_operator

    torch.set_num_threads(1)
    data = datasets.load_from_disk(args.train_data).with_format("numpy")
    maps = np.asarray(data["values"][: args.num_maps], np.float32)
    low, high = (float(v) for v in args.snr_range.split(","))
    operator = lung_rf_operator()
    g = cached_normal_matrix(operator, args.normal_cache) if args.normal_cache else None
    summary = train_lung_fno(maps, args.output_dir, args.minutes, (low, high), operator=operator, normal_matrix=g,
                             config={"train_data": args.train_data})
    print(json.dumps({k: v for k, v in summary.items() if k != "loss_curve"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
