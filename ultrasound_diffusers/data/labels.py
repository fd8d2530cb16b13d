"""Label codings for ultrasound label maps, re-coding helpers and colour palettes for figures.

Codings (all label maps are ``uint8`` arrays of shape [H, W]):

* **echo** (echo-from-noise, Stojanovski et al. 2023; 5 classes): 0 outside the fan, 1 LV cavity,
  2 tissue inside the fan, 3 LV myocardium, 4 left atrium.
* **camus** (the CAMUS ground truth; 4 classes): 0 background, 1 LV cavity, 2 LV myocardium, 3 left atrium.
* **thyroid** (SegThy with the left/right vessels merged; 4 classes): 0 other tissue, 1 thyroid,
  2 carotid artery, 3 jugular vein.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

ECHO_LABELS: Dict[int, str] = {
    0: "outside fan",
    1: "LV cavity",
    2: "tissue in fan",
    3: "myocardium",
    4: "left atrium",
}
NUM_ECHO_CLASSES = len(ECHO_LABELS)

CAMUS_LABELS: Dict[int, str] = {0: "background", 1: "LV cavity", 2: "myocardium", 3: "left atrium"}
NUM_CAMUS_CLASSES = len(CAMUS_LABELS)

THYROID_LABELS: Dict[int, str] = {0: "tissue", 1: "thyroid", 2: "carotid artery", 3: "jugular vein"}
NUM_THYROID_CLASSES = len(THYROID_LABELS)

LABEL_CODINGS: Dict[str, Dict[int, str]] = {"echo": ECHO_LABELS, "camus": CAMUS_LABELS, "thyroid": THYROID_LABELS}

#: SegThy label values -> thyroid coding (1 thyroid, 2/4 carotid left/right, 3/5 jugular left/right).
SEGTHY_TO_THYROID = {0: 0, 1: 1, 2: 2, 3: 3, 4: 2, 5: 3}

# Lookup tables: CAMUS (0 bg, 1 LV, 2 myo, 3 LA) -> echo coding inside the fan, and back.
_CAMUS_TO_ECHO_IN_FAN = np.array([2, 1, 3, 4], dtype=np.uint8)
_ECHO_TO_CAMUS = np.array([0, 1, 0, 2, 3], dtype=np.uint8)

#: Colours (RGB) of the echo coding; classes beyond 5 continue with :data:`_EXTRA_COLOURS`.
ECHO_PALETTE = np.array(
    [
        [0, 0, 0],  # 0 outside the fan
        [220, 50, 47],  # 1 LV cavity (red)
        [88, 96, 120],  # 2 tissue in fan (slate)
        [240, 200, 40],  # 3 myocardium (yellow)
        [38, 139, 210],  # 4 left atrium (blue)
    ],
    dtype=np.uint8,
)
THYROID_PALETTE = np.array(
    [
        [40, 40, 48],  # 0 tissue
        [240, 200, 40],  # 1 thyroid
        [220, 50, 47],  # 2 carotid artery
        [38, 139, 210],  # 3 jugular vein
    ],
    dtype=np.uint8,
)
_EXTRA_COLOURS = np.array(
    [
        [133, 153, 0],
        [211, 54, 130],
        [42, 161, 152],
        [203, 75, 22],
        [108, 113, 196],
        [181, 137, 0],
        [147, 161, 161],
        [255, 255, 255],
    ],
    dtype=np.uint8,
)


def label_palette(num_classes: int, coding: Optional[str] = None) -> np.ndarray:
    """RGB palette ``uint8 [num_classes, 3]`` for label maps.

    ``coding="thyroid"`` gives :data:`THYROID_PALETTE`; otherwise the echo palette is used for the first
    five classes (class 0 black) and further classes cycle through a fixed list of distinct colours.
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be at least 1, got {num_classes}")
    if coding not in (None, "echo", "camus", "thyroid"):
        raise ValueError(f"`coding` must be None, 'echo', 'camus' or 'thyroid', got {coding!r}")
    base = THYROID_PALETTE if coding == "thyroid" else ECHO_PALETTE
    if num_classes <= len(base):
        return base[:num_classes].copy()
    extra = [_EXTRA_COLOURS[i % len(_EXTRA_COLOURS)] for i in range(num_classes - len(base))]
    return np.concatenate([base, np.stack(extra)], axis=0)


def _as_label_array(label_map) -> np.ndarray:
    if hasattr(label_map, "detach"):  # torch tensor
        label_map = label_map.detach().cpu().numpy()
    arr = np.asarray(label_map)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("`label_map` must hold integer class indices")
    if arr.dtype.kind not in "uif" and arr.dtype != bool:
        raise ValueError(f"`label_map` must be an integer array, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError("`label_map` must not contain negative class indices")
    return arr.astype(np.int64)


def colorize_labels(label_map, num_classes: Optional[int] = None, palette=None, coding: Optional[str] = None) -> np.ndarray:
    """Colour a label map for figures.

    Args:
        label_map: integer class indices, array-like (numpy, torch, PIL "L") of shape [H, W], [N, H, W]
            or [N, 1, H, W].
        num_classes: number of classes K (default: max label + 1). Labels must be < K.
        palette: optional ``[K, 3]`` RGB palette (0-255); default :func:`label_palette`.
        coding: palette family when ``palette`` is None (``"thyroid"`` or the echo default).

    Returns:
        ``uint8`` RGB array of shape [..., H, W, 3] (a [N, 1, H, W] input gives [N, H, W, 3]).
    """
    arr = _as_label_array(label_map)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"`label_map` must have shape [H, W] or [N, H, W], got {arr.shape}")
    max_label = int(arr.max()) if arr.size else 0
    if num_classes is None:
        num_classes = max_label + 1
    if max_label >= int(num_classes):
        raise ValueError(f"`label_map` holds label {max_label} but `num_classes` is {num_classes}")
    if palette is None:
        pal = label_palette(num_classes, coding)
    else:
        pal = np.asarray(palette)
        if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] < int(num_classes):
            raise ValueError(f"`palette` must have shape [>= {num_classes}, 3], got {pal.shape}")
        pal = np.clip(pal, 0, 255).astype(np.uint8)
    return pal[arr]


def overlay_labels(image, label_map, num_classes: Optional[int] = None, alpha: float = 0.4, skip_zero: bool = True, **kwargs) -> np.ndarray:
    """Blend coloured labels over a grayscale image ([H, W], values 0-255 or 0-1) -> ``uint8 [H, W, 3]``.

    With ``skip_zero`` class 0 stays uncoloured.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] == 3:
        img = img.mean(-1)
    if img.ndim != 2:
        raise ValueError(f"`image` must have shape [H, W], got {img.shape}")
    if img.size and img.max() <= 1.0:
        img = img * 255.0
    lab = _as_label_array(label_map)
    if lab.shape != img.shape:
        raise ValueError(f"`label_map` shape {lab.shape} does not match `image` shape {img.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must lie in [0, 1], got {alpha}")
    colours = colorize_labels(lab, num_classes, **kwargs).astype(np.float32)
    gray = np.repeat(img[..., None], 3, axis=-1)
    weight = np.full(lab.shape + (1,), alpha, dtype=np.float32)
    if skip_zero:
        weight[lab == 0] = 0.0
    return np.clip(gray * (1 - weight) + colours * weight, 0, 255).round().astype(np.uint8)


def recode_camus_with_fan(label_map, fan_mask) -> np.ndarray:
    """CAMUS labels (0 bg, 1 LV, 2 myo, 3 LA) -> echo coding using a fan mask.

    Outside the fan every pixel becomes 0; inside, background becomes 2 (tissue), myocardium 3 and
    left atrium 4 (the echo-from-noise re-coding). Labels outside the fan are dropped.

    Args:
        label_map: int [H, W] with values in 0..3.
        fan_mask: bool [H, W], True inside the scan sector.

    Returns:
        ``uint8 [H, W]`` in the 5-class echo coding.
    """
    lab = _as_label_array(label_map)
    fan = np.asarray(fan_mask, dtype=bool)
    if lab.shape != fan.shape:
        raise ValueError(f"`fan_mask` shape {fan.shape} does not match `label_map` shape {lab.shape}")
    if lab.size and lab.max() > 3:
        raise ValueError(f"`label_map` must use the CAMUS coding 0..3, found label {int(lab.max())}")
    out = _CAMUS_TO_ECHO_IN_FAN[lab]
    out[~fan] = 0
    return out


def echo_to_camus(label_map) -> np.ndarray:
    """Echo coding (5 classes) -> CAMUS coding (4 classes): outside fan and tissue both become 0."""
    lab = _as_label_array(label_map)
    if lab.size and lab.max() > 4:
        raise ValueError(f"`label_map` must use the echo coding 0..4, found label {int(lab.max())}")
    return _ECHO_TO_CAMUS[lab]


def apply_fan(label_map, fan_mask, tissue_label: int = 2) -> np.ndarray:
    """Re-apply a fan to an echo-coded label map: 0 outside, and background (0) inside becomes ``tissue_label``."""
    lab = _as_label_array(label_map).astype(np.uint8)
    fan = np.asarray(fan_mask, dtype=bool)
    if lab.shape[-2:] != fan.shape:
        raise ValueError(f"`fan_mask` shape {fan.shape} does not match `label_map` shape {lab.shape}")
    out = lab.copy()
    out[..., ~fan] = 0
    out[(out == 0) & fan] = tissue_label
    return out


def remap_labels(label_map, mapping: Dict[int, int], name: str = "label_map") -> np.ndarray:
    """Map label values through ``mapping``; a value without an entry raises ValueError."""
    lab = _as_label_array(label_map)
    if lab.size == 0:
        return lab.astype(np.uint8)
    lut_size = max(int(lab.max()), max(mapping)) + 1
    lut = np.full(lut_size, -1, dtype=np.int64)
    for k, v in mapping.items():
        lut[int(k)] = int(v)
    out = lut[lab]
    if (out < 0).any():
        bad = sorted(set(np.unique(lab[out < 0]).tolist()))
        raise ValueError(f"`{name}` holds unexpected label values {bad}; expected {sorted(mapping)}")
    return out.astype(np.uint8)


def label_grid(images: Sequence, labels: Sequence, num_classes: Optional[int] = None, ncols: int = 8, pad: int = 2, coding: Optional[str] = None) -> np.ndarray:
    """Mosaic for figures: each column shows an image above its coloured label map.

    Args:
        images: sequence of grayscale images (PIL or arrays [H, W], 0-255 or 0-1), all the same size.
        labels: sequence of label maps [H, W].
        num_classes: for the palette (default: the max label + 1 over all maps).

    Returns:
        ``uint8 [rows * 2 * (H + pad) + pad, ncols * (W + pad) + pad, 3]``.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError("`images` and `labels` must be non-empty and of the same length")
    imgs = [np.asarray(im, dtype=np.float32) for im in images]
    labs = [_as_label_array(lb) for lb in labels]
    H, W = imgs[0].shape[:2]
    if num_classes is None:
        num_classes = max(int(lb.max()) for lb in labs) + 1
    n = len(imgs)
    ncols = max(1, min(int(ncols), n))
    nrows = (n + ncols - 1) // ncols
    canvas = np.full((nrows * 2 * (H + pad) + pad, ncols * (W + pad) + pad, 3), 255, dtype=np.uint8)
    for k, (im, lb) in enumerate(zip(imgs, labs)):
        if im.shape[:2] != (H, W) or lb.shape != (H, W):
            raise ValueError("all images and label maps must share one size")
        if im.ndim == 3:
            im = im.mean(-1)
        if im.size and im.max() <= 1.0:
            im = im * 255.0
        r, c = divmod(k, ncols)
        y0, x0 = pad + r * 2 * (H + pad), pad + c * (W + pad)
        canvas[y0 : y0 + H, x0 : x0 + W] = np.clip(im, 0, 255).round().astype(np.uint8)[..., None]
        y1 = y0 + H + pad
        canvas[y1 : y1 + H, x0 : x0 + W] = colorize_labels(lb, num_classes, coding=coding)
    return canvas
