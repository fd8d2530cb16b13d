"""Downstream segmentation: do generated (image, label) pairs teach a segmentation network?

The echo-from-noise protocol (Stojanovski et al., ASMUS 2023) at a size a CPU can run: a segmentation network is
trained on generated pairs and tested on real labelled images (Dice per class); the same network trained on real
pairs gives the reference number. Training is short (``steps`` of Adam, a few hundred by default) and
deterministic for a given seed.

Two networks, chosen by name (:data:`SEGMENTERS`, :func:`build_segmenter`; ``segmenter=`` of
:func:`train_segmentation_model` and ``--segmenter`` of ``ultrasound-diffusers evaluate``):

* ``"tinyunet"`` (default): the package's own small UNet (:class:`TinyUNet`), cross-entropy + soft Dice, Adam
  3e-3 with a cosine decay. Fast; no extra dependency.
* ``"monai-unet"``: MONAI's ``monai.networks.nets.UNet`` as echo-from-noise trains it (:class:`MonaiUNetSegmenter`;
  needs the ``monai`` extra, ``pip install "./ultrasound-diffusers[monai]"``).

:func:`echo_structure_dice` adds the three structures echo-from-noise reports (LV endocardium, LV epicardium,
left atrium) when the class names identify them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

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


#: What echo-from-noise reports for a network trained only on synthetic images and tested on real CAMUS images
#: (Dice in %, mean over test images; Stojanovski et al., ASMUS 2023): LV endocardium, LV epicardium, left atrium.
ECHO_FROM_NOISE_DICE: Dict[str, float] = {"lv_endocardium": 88.6, "lv_epicardium": 91.9, "left_atrium": 85.2}

#: MONAI UNet levels of the ``monai-unet`` segmenter (see :class:`MonaiUNetSegmenter`).
MONAI_UNET_CHANNELS: Tuple[int, ...] = (16, 32, 64, 128, 256)
MONAI_UNET_STRIDES: Tuple[int, ...] = (2, 2, 2, 2)

MONAI_EXTRA_HINT = 'pip install "./ultrasound-diffusers[monai]"'


def _import_monai_unet():
    try:
        from monai.networks.nets import UNet
    except ImportError as err:
        raise ImportError(
            f"`segmenter='monai-unet'` needs MONAI, which is not installed ({err}); install the `monai` extra: "
            f"{MONAI_EXTRA_HINT} (or choose segmenter 'tinyunet')"
        ) from err
    return UNet


class MonaiUNetSegmenter(torch.nn.Module):
    """MONAI's ``UNet`` set up as echo-from-noise's segmentation network, scaled down for a CPU.

    ``forward(x)``: float ``[N, in_channels, H, W]`` in [0, 1] -> logits ``[N, num_classes, H, W]``. The input is
    standardised with the training set's mean and std (buffers ``mean``, ``std``, set by
    :func:`train_segmentation_model`; 0 and 1 until then) and padded (replicate) to a multiple of 16; the logits
    are cropped back.

    Taken from echo-from-noise (``echo_segmentations/runner.py`` of github ``david-stojanovski/echo_from_noise``):
    ``monai.networks.nets.UNet(spatial_dims=2, in_channels=1, out_channels=K, num_res_units=0,
    act=("LeakyReLU", {"negative_slope": 0.1}))`` with MONAI's defaults otherwise (instance norm, no dropout), one
    input channel standardised by the training set's mean and std, cross-entropy loss, Adam at 1e-3 with a cosine
    decay to 1e-4. Their result with it, trained on synthetic images only and tested on real CAMUS images: Dice
    88.6 (LV endocardium), 91.9 (LV epicardium), 85.2 (left atrium); see :data:`ECHO_FROM_NOISE_DICE`.

    Scaled down for a CPU: their network has eight levels, channels (2, 4, ..., 256) and seven stride-2 steps,
    for 256 x 256 images trained for 300 epochs at batch size 1 with random gamma, flip, rotation and affine
    augmentation. Here: the five deepest levels, channels :data:`MONAI_UNET_CHANNELS` = (16, 32, 64, 128, 256),
    strides :data:`MONAI_UNET_STRIDES` = (2, 2, 2, 2) (a 64 px image reaches 4 px at the bottom), the images at
    the size of the evaluated set (64 px for the demo report), ``steps`` Adam steps of ``batch_size`` images
    drawn with replacement (300 x 8 by default, about 12 passes over 200 images), the cosine decay over those
    steps, no augmentation.

    Args:
        in_channels: image channels (1 for grayscale ultrasound).
        num_classes: K, the network's output channels.
        channels, strides: MONAI ``UNet`` levels (default: the values above).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 5,
        channels: Sequence[int] = MONAI_UNET_CHANNELS,
        strides: Sequence[int] = MONAI_UNET_STRIDES,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {num_classes}")
        if len(channels) != len(strides) + 1:
            raise ValueError(f"`channels` needs one entry more than `strides`, got {tuple(channels)}, {tuple(strides)}")
        UNet = _import_monai_unet()
        self.unet = UNet(
            spatial_dims=2,
            in_channels=int(in_channels),
            out_channels=int(num_classes),
            channels=tuple(int(c) for c in channels),
            strides=tuple(int(s) for s in strides),
            num_res_units=0,
            act=("LeakyReLU", {"negative_slope": 0.1}),
        )
        self.multiple = int(np.prod([int(s) for s in strides]))
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def set_normalization(self, mean: float, std: float) -> None:
        """Standardise inputs as ``(x - mean) / std`` (the training images' statistics)."""
        self.mean.fill_(float(mean))
        self.std.fill_(max(float(std), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.multiple, (-w) % self.multiple
        x = (x - self.mean) / self.std
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.unet(x)[..., :h, :w]


@dataclasses.dataclass(frozen=True)
class SegmenterSpec:
    """How one named segmenter is built and trained (an entry of :data:`SEGMENTERS`).

    Attributes:
        name: the registry key.
        build: ``build(in_channels, num_classes, base_channels=..., depth=...) -> torch.nn.Module`` mapping
            ``[N, C, H, W]`` images in [0, 1] to ``[N, K, H, W]`` logits.
        learning_rate: Adam's default initial learning rate.
        final_learning_rate: where the cosine decay ends, as a fraction of the initial rate.
        soft_dice: add a soft Dice term (mean over classes) to the cross-entropy.
        standardize: standardise inputs with the training images' mean and std (the model's
            ``set_normalization``).
        description: one line for reports.
    """

    name: str
    build: Callable[..., torch.nn.Module]
    learning_rate: float
    final_learning_rate: float
    soft_dice: bool
    standardize: bool
    description: str


def _build_tinyunet(in_channels: int, num_classes: int, base_channels: int = 16, depth: int = 2) -> torch.nn.Module:
    return TinyUNet(in_channels, num_classes, base_channels=base_channels, depth=depth)


def _build_monai_unet(in_channels: int, num_classes: int, **_: object) -> torch.nn.Module:
    return MonaiUNetSegmenter(in_channels, num_classes)


#: Segmenters by name: the one seam where a network is chosen.
SEGMENTERS: Dict[str, SegmenterSpec] = {
    "tinyunet": SegmenterSpec(
        name="tinyunet", build=_build_tinyunet, learning_rate=3e-3, final_learning_rate=0.05, soft_dice=True,
        standardize=False,
        description="the package's TinyUNet (GroupNorm conv blocks), cross-entropy + soft Dice, Adam 3e-3 cosine",
    ),
    "monai-unet": SegmenterSpec(
        name="monai-unet", build=_build_monai_unet, learning_rate=1e-3, final_learning_rate=0.1, soft_dice=False,
        standardize=True,
        description="MONAI UNet as in echo-from-noise (channels 16-256, strides 2x4, no residual units, LeakyReLU "
        "0.1, standardised input), cross-entropy, Adam 1e-3 cosine to 1e-4",
    ),
}
DEFAULT_SEGMENTER = "tinyunet"


def get_segmenter(name: str) -> SegmenterSpec:
    """The :class:`SegmenterSpec` named ``name`` (a key of :data:`SEGMENTERS`)."""
    key = str(name).strip().lower()
    if key not in SEGMENTERS:
        raise ValueError(f"`segmenter` must be one of {', '.join(SEGMENTERS)}, got {name!r}")
    return SEGMENTERS[key]


def build_segmenter(name: str, num_classes: int, in_channels: int = 1, **options) -> torch.nn.Module:
    """A fresh (randomly initialised from torch's global RNG) segmentation network of the named kind.

    Args:
        name: a key of :data:`SEGMENTERS` (``"tinyunet"`` or ``"monai-unet"``).
        num_classes: K output classes.
        in_channels: image channels.
        **options: ``base_channels``, ``depth`` (``tinyunet`` only; ignored by ``monai-unet``).
    """
    return get_segmenter(name).build(in_channels, num_classes, **options)


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


def _progress_description(progress: Union[bool, str, None]) -> Optional[str]:
    """The bar description ``progress`` of :func:`train_segmentation_model` asks for; None: no bar."""
    if isinstance(progress, str):
        if not progress.strip():
            raise ValueError("`progress` given as a string is the bar's description and must not be empty "
                             "(pass False for no bar)")
        return progress
    if progress is None or isinstance(progress, (bool, np.bool_)):
        return "segmentation" if progress else None
    raise TypeError(f"`progress` must be a bool or a bar description (str), got {type(progress).__name__}")


def train_segmentation_model(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    steps: int = 300,
    batch_size: int = 8,
    learning_rate: Optional[float] = None,
    base_channels: int = 16,
    depth: int = 2,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    progress: Union[bool, str] = False,
    segmenter: str = DEFAULT_SEGMENTER,
) -> torch.nn.Module:
    """Train a segmentation network on ``(images [N, H, W] in [0, 1], labels int [N, H, W])``.

    Args:
        segmenter: a key of :data:`SEGMENTERS`: ``"tinyunet"`` (:class:`TinyUNet`, cross-entropy + soft Dice)
            or ``"monai-unet"`` (:class:`MonaiUNetSegmenter`, cross-entropy, inputs standardised with the
            training images' mean and std).
        steps, batch_size: Adam steps, and images per step drawn with replacement.
        learning_rate: initial learning rate (default: the segmenter's, 3e-3 / 1e-3), decayed along a cosine to
            the segmenter's final fraction of it (0.05 / 0.1).
        base_channels, depth: ``tinyunet`` only.
        seed: the network's initialisation (drawn inside ``torch.random.fork_rng``, so the caller's global RNG
            state is left as it was) and the batches (their own generator): the result depends only on the
            inputs and ``seed``.
        device: where the network trains (``"cpu"``, ``"cuda"``, a ``torch.device``).
        progress: a tqdm bar over the steps: False (or None) none, True a bar named ``"segmentation"``, a
            non-empty string a bar with that description (e.g. ``"segmentation (generated)"``).

    Returns:
        The trained network in eval mode.
    """
    desc = _progress_description(progress)
    spec = get_segmenter(segmenter)
    imgs = torch.as_tensor(np.asarray(images, dtype=np.float32))
    labs = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if imgs.ndim != 3 or labs.shape != imgs.shape:
        raise ValueError(f"`images` [N, H, W] and `labels` of the same shape expected, got {imgs.shape}, {labs.shape}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"`steps` and `batch_size` must be positive, got {steps}, {batch_size}")
    if int(labs.max()) >= num_classes or int(labs.min()) < 0:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{int(labs.min())}, {int(labs.max())}]")
    lr = spec.learning_rate if learning_rate is None else float(learning_rate)
    if not lr > 0:
        raise ValueError(f"`learning_rate` must be positive, got {learning_rate}")
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the caller's global RNG state is left as it was
        torch.manual_seed(int(seed))
        model = build_segmenter(spec.name, num_classes, 1, base_channels=base_channels, depth=depth)
    if spec.standardize:
        model.set_normalization(float(imgs.mean()), float(imgs.std()))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * spec.final_learning_rate)
    model.train()
    iterator = range(int(steps))
    if desc is not None:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=desc, unit="step")
    for _ in iterator:
        idx = torch.randint(0, imgs.shape[0], (min(batch_size, imgs.shape[0]),), generator=generator)
        x = imgs[idx][:, None].to(device)
        y = labs[idx].to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if spec.soft_dice:
            probs = logits.softmax(1)
            one_hot = F.one_hot(y, num_classes).permute(0, 3, 1, 2).float()
            inter = (probs * one_hot).sum((0, 2, 3))
            soft_dice = (2 * inter + 1.0) / (probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1.0)
            loss = loss + (1.0 - soft_dice.mean())
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


#: echo-from-noise's structures as unions of classes, by class name: (LV cavity), (LV cavity + myocardium), (left
#: atrium). The names are those of the echo coding (:data:`~.physics.ECHO_CLASS_NAMES`; CAMUS names alike).
ECHO_STRUCTURES: Dict[str, Tuple[str, ...]] = {
    "lv_endocardium": ("lv_cavity",),
    "lv_epicardium": ("lv_cavity", "myocardium"),
    "left_atrium": ("left_atrium",),
}


def echo_structure_dice(
    prediction: Union[np.ndarray, torch.Tensor],
    target: Union[np.ndarray, torch.Tensor],
    class_names: Mapping[int, str],
) -> Optional[Dict[str, Dict[str, Optional[float]]]]:
    """Dice of the structures echo-from-noise reports: LV endocardium (the LV cavity), LV epicardium (LV cavity
    and myocardium together) and left atrium.

    Args:
        prediction, target: int ``[N, H, W]`` class maps.
        class_names: index -> name; the structures are found by the names ``lv_cavity``, ``myocardium`` and
            ``left_atrium`` (:data:`ECHO_STRUCTURES`).

    Returns:
        ``{structure: {"dice", "mean_per_image", "std_per_image", "num_images"}}`` (Dice in [0, 1]; ``dice`` over
        the whole set as :func:`dice_per_class`, ``mean_per_image`` +- ``std_per_image`` over the images that have
        the structure in the prediction or the target, as echo-from-noise averages over test images), or None
        when ``class_names`` lacks one of the names.
    """
    index = {str(v): int(k) for k, v in class_names.items()}
    if any(name not in index for classes in ECHO_STRUCTURES.values() for name in classes):
        return None
    pred = torch.as_tensor(np.asarray(prediction) if not isinstance(prediction, torch.Tensor) else prediction)
    tgt = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
    if pred.shape != tgt.shape or pred.ndim != 3:
        raise ValueError(
            f"`prediction` and `target` must be [N, H, W] of one shape, got {tuple(pred.shape)} and {tuple(tgt.shape)}"
        )
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for structure, names in ECHO_STRUCTURES.items():
        members = torch.tensor([index[n] for n in names])
        p, t = torch.isin(pred, members), torch.isin(tgt, members)
        inter = (p & t).sum((1, 2)).double()
        denom = (p.sum((1, 2)) + t.sum((1, 2))).double()
        present = denom > 0
        per_image = (2 * inter[present] / denom[present]).numpy()
        total = float(denom.sum())
        out[structure] = {
            "dice": 2 * float(inter.sum()) / total if total else None,
            "mean_per_image": float(per_image.mean()) if per_image.size else None,
            "std_per_image": float(per_image.std()) if per_image.size else None,
            "num_images": int(per_image.size),
        }
    return out


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
        **train_kwargs: passed to :func:`train_segmentation_model` (segmenter, steps, batch_size, seed, device,
            progress, ...).

    Returns:
        ``{"segmenter": name, "dice": {name: value}, "mean_dice": float, "num_train": N, "num_test": M,
        "num_classes": K}``, plus ``"structures"`` (:func:`echo_structure_dice`) when the class names identify
        the LV cavity, myocardium and left atrium.
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
    segmenter = get_segmenter(train_kwargs.get("segmenter", DEFAULT_SEGMENTER)).name
    model = train_segmentation_model(train_images, train_labels, num_classes, **train_kwargs)
    device = train_kwargs.get("device", "cpu")
    pred = predict_segmentation(model, test_images, device=device)
    dice = dice_per_class(pred, test_labels, num_classes)
    foreground = [k for k in range(num_classes) if k not in background_classes and not np.isnan(dice[k])]
    result: Dict[str, object] = {
        "segmenter": segmenter,
        "dice": _named_dice(dice, names),
        "mean_dice": float(np.mean(dice[foreground])) if foreground else None,
        "num_train": int(np.asarray(train_images).shape[0]),
        "num_test": int(np.asarray(test_images).shape[0]),
        "num_classes": int(num_classes),
    }
    structures = echo_structure_dice(pred, np.asarray(test_labels), names)
    if structures is not None:
        result["structures"] = structures
    return result
