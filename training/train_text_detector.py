#!/usr/bin/env python
# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""Train the text-ink detector of the DICOM de-identification (``TextInkDetector``) on synthetic frames.

Every training example is a 64 x 64 window (``--crop``) of a 96 x 96 piece of a B-mode-like frame, made here: speckle from this script's own
generator (a complex Gaussian field through a random anisotropic point spread, log-compressed over a random dynamic
range, random gain, texture and noise floor; sometimes a sector edge, a bright specular line or a needle with its
reverberations; sometimes upsampled from a smaller piece, as interpolated frames look), a piece of the package's
echo and thyroid phantoms, or uncorrelated noise. On 40 % of them a random string (letters,
digits, punctuation: never the benchmark's words) is drawn with Pillow's default font (8-26 px) or, when OpenCV is
installed, a Hershey font (scale 0.3-1.0, thickness 1-2, anti-aliased or not), in white, in a grey inside the
speckle's range around the frame's median (most often: the case the hand-made cues miss), or in any grey; the label is the text's ink (coverage >= 0.5), and
the anti-aliased fringe (0 < coverage < 0.5) is left out of the loss. A quarter of the pieces then go through JPEG
(quality 40-95), text included, as lossy-compressed files do.

The loss is the per-pixel binary cross-entropy (ink weighted ``--pos_weight``); AdamW with a cosine decay. At the
end it prints, on held-out synthetic frames (other seeds), the ink pixels found and the share of clean pieces with
any pixel above 0.5, and saves the network (``save_pretrained``: config.json + safetensors) to ``--output_dir``.
``benchmarks/benchmark_dicom_deidentification.py`` measures the whole de-identification with it.

Run: ``python training/train_text_detector.py --output_dir ultrasound_diffusers/assets/text-ink-detector``
(about 20 min on one CPU thread).
"""

from __future__ import annotations

import argparse
import math
import string
import sys
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from ultrasound_diffusers.models.text_ink_detector import TextInkDetector, detector_inputs

CHARSET = string.ascii_uppercase + string.ascii_lowercase + string.digits + " ./:-^#"


def random_speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    """float [size, size], 0-255: log-compressed speckle with random point spread, dynamic range and gain."""
    field = rng.normal(size=(2, size, size))
    sy, sx = rng.uniform(0.5, 1.6), rng.uniform(1.0, 3.0)
    if rng.random() < 0.3:
        sy, sx = sx, sy
    field = np.stack([ndi.gaussian_filter(f, (sy, sx)) for f in field])
    texture = ndi.gaussian_filter(rng.normal(size=(size, size)), rng.uniform(4, 20))
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-9)
    envelope = np.hypot(field[0], field[1]) * (rng.uniform(0.2, 0.7) + texture)
    dyn = rng.uniform(30.0, 60.0)
    db = 20 * np.log10(envelope / np.percentile(envelope, rng.uniform(98.0, 99.9)) + 1e-6)
    image = (db + dyn) / dyn * 255.0 * rng.uniform(0.7, 1.15) - rng.uniform(0.0, 120.0)
    return np.maximum(image, rng.uniform(0.0, 16.0, (size, size)))


def add_structures(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A bright specular line, a needle with reverberations or a sector edge (clean content, not text)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    choice = rng.integers(3)
    if choice == 0:  # a curved specular reflector, bright or faint, smooth or broken by speckle
        centre = rng.uniform(0.2, 0.8) * size + rng.uniform(2, 10) * np.sin(xx / size * rng.uniform(1, 5) + rng.uniform(0, 6))
        peak = rng.uniform(120.0, 255.0)
        line = peak * np.exp(-((yy - centre) ** 2) / (2 * rng.uniform(1.0, 3.0) ** 2)) * (rng.uniform(0.5, 0.9) + 0.4 * rng.random((size, size)))
        return np.maximum(image, line)
    if choice == 1:  # a needle and its reverberations
        angle, offset = rng.uniform(-1.2, 1.2), rng.uniform(0.2, 0.8) * size
        dist = (yy - offset) * np.cos(angle) - (xx - size / 2) * np.sin(angle)
        out = image.copy()
        for k in range(int(rng.integers(1, 5))):
            level = 255.0 - rng.uniform(30, 60) * k
            out = np.maximum(out, level * np.exp(-((dist - 8 * k) ** 2) / (2 * rng.uniform(0.6, 1.5) ** 2)))
        return out
    # a sector edge: zero on one side of a straight line
    angle, offset = rng.uniform(0, 2 * math.pi), rng.uniform(-0.3, 0.3) * size
    side = (yy - size / 2) * np.cos(angle) + (xx - size / 2) * np.sin(angle) > offset
    return np.where(side, image, 0.0)


def phantom_piece(rng: np.random.Generator, size: int, cache: dict) -> np.ndarray:
    from ultrasound_diffusers.data.phantoms import make_phantom

    key = (str(rng.choice(["echo", "thyroid"])), int(rng.integers(8)))
    if key not in cache:
        cache[key] = np.clip(make_phantom(key[0], size=256, seed=123, index=key[1])[0], 0, 1) * 255.0
    image = cache[key]
    y, x = int(rng.integers(40, 256 - size)), int(rng.integers(30, 256 - size - 30))
    return image[y : y + size, x : x + size].copy()


def text_coverage(rng: np.random.Generator, size: int) -> np.ndarray:
    """float [size, size] 0-1: the anti-aliased coverage of a random string at a random place (may run off)."""
    from PIL import Image, ImageDraw, ImageFont

    text = "".join(rng.choice(list(CHARSET), size=int(rng.integers(2, 14))))
    x, y = int(rng.integers(-20, size // 2)), int(rng.integers(5, size - 20))
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None or rng.random() < 0.5:
        canvas = Image.new("L", (size, size), 0)
        try:
            font = ImageFont.load_default(size=int(rng.integers(8, 27)))
        except TypeError:
            font = ImageFont.load_default()
        ImageDraw.Draw(canvas).text((x, y), text, fill=255, font=font)
        return np.asarray(canvas, np.float32) / 255.0
    fonts = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
             cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
             cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC]
    canvas = np.zeros((size, size), np.uint8)
    cv2.putText(canvas, text, (x, y + 12), fonts[int(rng.integers(len(fonts)))], float(rng.uniform(0.3, 1.0)), 255,
                int(rng.integers(1, 3)), cv2.LINE_AA if rng.random() < 0.5 else cv2.LINE_8)
    return canvas.astype(np.float32) / 255.0


def zoomed(rng: np.random.Generator, make, size: int) -> np.ndarray:
    """A piece made smaller and upsampled (bilinear) to ``size``: the interpolated look of many scanners' frames."""
    factor = rng.uniform(1.2, 2.0)
    small = make(int(np.ceil(size / factor)) + 1)
    return ndi.zoom(small, size / small.shape[0], order=1)[:size, :size]


def jpeg(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """The frame through JPEG at a random quality (many ultrasound files are lossy-compressed, text included)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.rint(np.clip(image, 0, 255)).astype(np.uint8)).save(buffer, format="JPEG", quality=int(rng.integers(40, 95)))
    return np.asarray(Image.open(buffer), dtype=np.float64)


def make_example(rng: np.random.Generator, size: int, cache: dict, text_share: float = 0.4) -> Tuple[np.ndarray, np.ndarray]:
    """(frame uint8 [size, size], target float [size, size]: 1 ink, 0 background, -1 left out)."""
    if rng.random() < 0.08:  # uncorrelated noise (a synthetic or heavily processed frame): grain, no strokes
        image = rng.uniform(0, rng.uniform(60, 256), (size, size)) if rng.random() < 0.5 else rng.normal(rng.uniform(60, 160), rng.uniform(10, 60), (size, size))
    elif rng.random() < 0.3:
        image = phantom_piece(rng, size, cache)
    elif rng.random() < 0.3:
        image = zoomed(rng, lambda n: random_speckle(rng, n), size)
    else:
        image = random_speckle(rng, size)
    for _ in range(int(rng.integers(1, 3)) if rng.random() < 0.5 else 0):  # reflectors, needles, edges: not text
        image = add_structures(rng, image)
    image = np.clip(image, 0, 255)
    target = np.zeros((size, size), np.float32)
    if rng.random() < text_share:
        cover = text_coverage(rng, size)
        if cover.max() > 0.5:
            median = float(np.median(image[image > 8])) if (image > 8).any() else 90.0
            pick = rng.random()
            ink = rng.uniform(225, 255) if pick < 0.25 else (median + rng.uniform(-20, 20) if pick < 0.85 else rng.uniform(40, 255))
            image = image * (1 - cover) + ink * cover
            target = np.where(cover >= 0.5, 1.0, np.where(cover > 0, -1.0, 0.0)).astype(np.float32)
    if rng.random() < 0.25:
        image = jpeg(rng, image)
    return np.rint(np.clip(image, 0, 255)).astype(np.uint8), target


def make_pool(n: int, size: int, seed: int, text_share: float = 0.4) -> Tuple[torch.Tensor, torch.Tensor]:
    rng, cache = np.random.default_rng(seed), {}
    frames, targets = zip(*(make_example(rng, size, cache, text_share) for _ in range(n)))
    return detector_inputs(np.stack(frames)), torch.from_numpy(np.stack(targets))[:, None]


def loss_fn(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    keep = (target >= 0).float()
    weight = keep * torch.where(target > 0, torch.tensor(pos_weight), torch.tensor(1.0))
    return F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), weight=weight, reduction="sum") / keep.sum().clamp(min=1)


@torch.no_grad()
def evaluate(model: TextInkDetector, x: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict:
    prob = torch.cat([torch.sigmoid(model(x[i : i + 64])) for i in range(0, len(x), 64)])
    ink = target > 0
    has_text = ink.flatten(1).any(1)
    hits = (prob > threshold) & (target >= 0)
    return {"ink_recall": float(hits[ink].float().mean()) if ink.any() else float("nan"),
            "text_pieces_found": float(hits.flatten(1).sum(1)[has_text].ge(8).float().mean()),
            "clean_pieces_flagged": float(hits.flatten(1).sum(1)[~has_text].ge(8).float().mean())}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--pool", type=int, default=8000, help="training pieces (generated once)")
    p.add_argument("--size", type=int, default=96, help="side of the generated pieces")
    p.add_argument("--crop", type=int, default=64, help="side of the random windows trained on")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--pos_weight", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("pool", "size", "crop", "steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.crop > args.size:
        p.error(f"--crop ({args.crop}) must not exceed --size ({args.size})")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    x, y = make_pool(args.pool, args.size, seed=1000 + args.seed)
    vx, vy = make_pool(max(args.pool // 10, 64), args.size, seed=99_000 + args.seed)
    print(f"made {len(x)} training and {len(vx)} held-out pieces in {time.perf_counter() - start:.0f} s", flush=True)
    model = TextInkDetector()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / args.steps, 1.0))))
    g = torch.Generator().manual_seed(args.seed)
    progress = tqdm(range(args.steps), desc="text-ink detector")
    for step in progress:
        idx = torch.randint(0, len(x), (args.batch_size,), generator=g)
        oy, ox = (int(v) for v in torch.randint(0, args.size - args.crop + 1, (2,), generator=g))
        xb, yb = x[idx, :, oy : oy + args.crop, ox : ox + args.crop], y[idx, :, oy : oy + args.crop, ox : ox + args.crop]
        if torch.rand((), generator=g) < 0.5:  # mirrored text is still text-like ink; speckle is symmetric
            xb, yb = xb.flip(-1), yb.flip(-1)
        loss = loss_fn(model(xb), yb, args.pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{float(loss):.4f}")
        if (step + 1) % 500 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}: held-out {evaluate(model.eval(), vx, vy)}", flush=True)
            model.train()
    model.eval().save_pretrained(args.output_dir)
    print(f"saved to {args.output_dir} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
