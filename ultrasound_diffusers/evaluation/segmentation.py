"""Downstream segmentation: do generated (image, label) pairs teach a segmentation network?

The echo-from-noise protocol at a size a CPU can run: a tiny UNet (:class:`TinyUNet`) is trained on generated
pairs and tested on real labelled images (Dice per class); the same network trained on real pairs gives the
reference number. Training is short (a few hundred steps of Adam on cross-entropy plus soft Dice) and
deterministic for a given seed.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F


class _ConvBlock(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = max(1, min(8, out_channels // 4))
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, out_channels, 3, padding=1),
            torch.nn.GroupNorm(groups, out_channels),
            torch.nn.SiLU(),
            torch.nn.Conv2d(out_channels, out_channels, 3, padding=1),
            torch.nn.GroupNorm(groups, out_channels),
            torch.nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyUNet(torch.nn.Module):
    """A small UNet for segmentation.

    ``forward(x)``: float ``[N, in_channels, H, W]`` (H, W divisible by ``2**depth``; other sizes are padded) ->
    logits ``[N, num_classes, H, W]``.

    Args:
        in_channels: image channels (1 for grayscale ultrasound).
        num_classes: number of label classes.
        base_channels: channels at full resolution; doubled at each of the ``depth`` down-sampling levels.
        depth: number of down-sampling levels.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 5, base_channels: int = 16, depth: int = 2) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {num_classes}")
        if base_channels < 4 or depth < 1:
            raise ValueError(f"`base_channels` must be >= 4 and `depth` >= 1, got {base_channels}, {depth}")
        self.depth = int(depth)
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.inc = _ConvBlock(in_channels, chans[0])
        self.down = torch.nn.ModuleList([_ConvBlock(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = torch.nn.ModuleList(
            [torch.nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.dec = torch.nn.ModuleList([_ConvBlock(2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.head = torch.nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mult = 2**self.depth
        pad_h, pad_w = (-h) % mult, (-w) % mult
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up, dec in zip(self.up, self.dec):
            y = dec(torch.cat([up(y), skips.pop()], dim=1))
        return self.head(y)[..., :h, :w]


def dice_per_class(
    prediction: Union[np.ndarray, torch.Tensor],
    target: Union[np.ndarray, torch.Tensor],
    num_classes: int,
) -> np.ndarray:
    """Dice ``2|P and T| / (|P| + |T|)`` per class over a whole set.

    Args:
        prediction, target: int ``[N, H, W]`` class maps.
        num_classes: K.

    Returns:
        float64 ``[K]``; NaN for a class absent from both prediction and target.
    """
    pred = torch.as_tensor(np.asarray(prediction) if not isinstance(prediction, torch.Tensor) else prediction)
    tgt = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
    if pred.shape != tgt.shape:
        raise ValueError(
            f"`prediction` and `target` must have one shape, got {tuple(pred.shape)} and {tuple(tgt.shape)}"
        )
    out = np.full(int(num_classes), np.nan)
    for k in range(int(num_classes)):
        p, t = pred == k, tgt == k
        denom = int(p.sum()) + int(t.sum())
        if denom:
            out[k] = 2.0 * int((p & t).sum()) / denom
    return out


def train_segmentation_model(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    steps: int = 300,
    batch_size: int = 8,
    learning_rate: float = 3e-3,
    base_channels: int = 16,
    depth: int = 2,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
    desc: str = "segmentation",
) -> TinyUNet:
    """Train a :class:`TinyUNet` on ``(images [N, H, W] in [0, 1], labels int [N, H, W])``.

    Loss: cross-entropy + soft Dice (mean over classes). Batches are drawn with replacement from a seeded
    generator, so the result depends only on the inputs and ``seed``.
    """
    imgs = torch.as_tensor(np.asarray(images, dtype=np.float32))
    labs = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if imgs.ndim != 3 or labs.shape != imgs.shape:
        raise ValueError(f"`images` [N, H, W] and `labels` of the same shape expected, got {imgs.shape}, {labs.shape}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"`steps` and `batch_size` must be positive, got {steps}, {batch_size}")
    if int(labs.max()) >= num_classes or int(labs.min()) < 0:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{int(labs.min())}, {int(labs.max())}]")
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the caller's global RNG state is left as it was
        torch.manual_seed(int(seed))
        model = TinyUNet(1, num_classes, base_channels=base_channels, depth=depth).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=learning_rate * 0.05)
    model.train()
    iterator = range(int(steps))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=desc, unit="step")
    for _ in iterator:
        idx = torch.randint(0, imgs.shape[0], (min(batch_size, imgs.shape[0]),), generator=generator)
        x = imgs[idx][:, None].to(device)
        y = labs[idx].to(device)
        logits = model(x)
        probs = logits.softmax(1)
        one_hot = F.one_hot(y, num_classes).permute(0, 3, 1, 2).float()
        inter = (probs * one_hot).sum((0, 2, 3))
        soft_dice = (2 * inter + 1.0) / (probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1.0)
        loss = F.cross_entropy(logits, y) + (1.0 - soft_dice.mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def predict_segmentation(
    model: torch.nn.Module, images: np.ndarray, batch_size: int = 16, device: Union[str, torch.device] = "cpu"
) -> np.ndarray:
    """Class maps int64 ``[N, H, W]`` predicted by ``model`` for ``images`` ``[N, H, W]`` in [0, 1]."""
    imgs = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if imgs.ndim != 3:
        raise ValueError(f"`images` must be [N, H, W], got {tuple(imgs.shape)}")
    model = model.to(device).eval()
    preds = [
        model(imgs[s : s + batch_size][:, None].to(device)).argmax(1).cpu() for s in range(0, imgs.shape[0], batch_size)
    ]
    return torch.cat(preds).numpy()


def _named_dice(dice: np.ndarray, class_names: Mapping[int, str]) -> Dict[str, Optional[float]]:
    return {class_names.get(k, f"class_{k}"): (None if np.isnan(v) else float(v)) for k, v in enumerate(dice)}


def downstream_segmentation(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: Optional[int] = None,
    class_names: Optional[Mapping[int, str]] = None,
    background_classes: tuple = (0,),
    **train_kwargs,
) -> Dict[str, object]:
    """Train on one labelled set, test on another; Dice per class.

    Args:
        train_images, train_labels: ``[N, H, W]`` training pairs (e.g. generated).
        test_images, test_labels: ``[M, H, W]`` test pairs (real); sizes must match the training pairs.
        num_classes: K (default: 1 + the largest label in either set).
        class_names: index -> name for the report (default: ``class_<k>``).
        background_classes: classes left out of ``mean_dice`` (for echo: 0, outside the fan).
        **train_kwargs: passed to :func:`train_segmentation_model` (steps, batch_size, seed, device, ...).

    Returns:
        ``{"dice": {name: value}, "mean_dice": float, "num_train": N, "num_test": M, "num_classes": K}``.
    """
    if np.asarray(train_images).shape[1:] != np.asarray(test_images).shape[1:]:
        raise ValueError(
            f"train and test images must share one size, got {np.asarray(train_images).shape[1:]} and "
            f"{np.asarray(test_images).shape[1:]}"
        )
    if num_classes is None:
        num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    num_classes = max(int(num_classes), 2)
    names = dict(class_names or {})
    model = train_segmentation_model(train_images, train_labels, num_classes, **train_kwargs)
    device = train_kwargs.get("device", "cpu")
    pred = predict_segmentation(model, test_images, device=device)
    dice = dice_per_class(pred, test_labels, num_classes)
    foreground = [k for k in range(num_classes) if k not in background_classes and not np.isnan(dice[k])]
    return {
        "dice": _named_dice(dice, names),
        "mean_dice": float(np.mean(dice[foreground])) if foreground else None,
        "num_train": int(np.asarray(train_images).shape[0]),
        "num_test": int(np.asarray(test_images).shape[0]),
        "num_classes": int(num_classes),
    }
