"""The echo-from-noise label augmentation: random affine + elastic copies of a label map, fan re-applied.

Stojanovski et al. (ASMUS 2023) make 5 augmented copies of every CAMUS label map: a random affine
transform (rotation +-5 degrees, vertical translation up to 5 %, scale 0.8-1.05, shear 5 degrees), then an
elastic deformation (a 10 x 10 grid of cubic B-spline control points, borders locked, displacements up
to 30 px at 256 px), and re-apply the fan of the original image: pixels
outside the fan become 0 and background inside it becomes tissue (2).

The affine part runs through albumentations (``A.Affine``, nearest-neighbour for labels); the elastic
part is a B-spline control-point field evaluated with ``scipy.ndimage.zoom`` and applied with
``scipy.ndimage.map_coordinates``, so its displacement never exceeds the configured maximum.
Everything is deterministic for a seed: copy ``k`` of map ``i`` uses ``SeedSequence([seed, i, k])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import scipy.ndimage

from ..utils.lazy import import_optional
from .labels import apply_fan


@dataclass(frozen=True)
class LabelAugmentation:
    """Parameters of :func:`augment_label_map` (defaults: echo-from-noise).

    Attributes:
        rotate_deg: rotation drawn from [-rotate_deg, rotate_deg].
        translate: maximal translation (x, y) as fractions of the width / height.
        scale: zoom range.
        shear_deg: shear drawn from [-shear_deg, shear_deg] (both axes).
        elastic_control_points: control points per axis of the elastic grid (borders locked).
        elastic_max_displacement: maximal control-point displacement in pixels at ``reference_size``
            (scaled with the image size; 0 disables the elastic part).
        reference_size: the image size the displacement refers to.
    """

    rotate_deg: float = 5.0
    translate: Tuple[float, float] = (0.0, 0.05)
    scale: Tuple[float, float] = (0.8, 1.05)
    shear_deg: float = 5.0
    elastic_control_points: int = 10
    elastic_max_displacement: float = 30.0
    reference_size: int = 256

    def __post_init__(self):
        if self.rotate_deg < 0 or self.shear_deg < 0:
            raise ValueError("`rotate_deg` and `shear_deg` must be non-negative")
        if len(self.translate) != 2 or min(self.translate) < 0:
            raise ValueError(f"`translate` must be (x, y) fractions >= 0, got {self.translate!r}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"`scale` must be (low, high) with 0 < low <= high, got {self.scale!r}")
        if int(self.elastic_control_points) < 3:
            raise ValueError(f"`elastic_control_points` must be at least 3, got {self.elastic_control_points}")
        if self.elastic_max_displacement < 0 or self.reference_size <= 0:
            raise ValueError("`elastic_max_displacement` must be >= 0 and `reference_size` positive")


def _affine_transform(params: LabelAugmentation, seed: int):
    A = import_optional("albumentations", "label-map augmentation")
    cv2 = import_optional("cv2", "label-map augmentation", extra="augment")

    tx, ty = params.translate
    return A.Compose(
        [
            A.Affine(
                rotate=(-params.rotate_deg, params.rotate_deg),
                translate_percent={"x": (-tx, tx), "y": (-ty, ty)},
                scale=params.scale,
                shear=(-params.shear_deg, params.shear_deg),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=1.0,
            )
        ],
        seed=int(seed),
    )


def elastic_displacement_field(height: int, width: int, rng: np.random.Generator, control_points: int = 10, max_displacement: Tuple[float, float] = (30.0, 30.0)) -> np.ndarray:
    """Smooth random displacement field ``float32 [2, H, W]`` (dy, dx) in pixels.

    Displacements are drawn uniformly in ``[-max, max]`` on a ``control_points x control_points`` grid
    spanning the image, the border control points stay fixed, and they are used as the coefficients of a
    cubic B-spline; ``max_displacement`` (dy_max, dx_max) bounds the field.
    """
    n = int(control_points)
    coarse = np.empty((2, n, n), dtype=np.float64)
    coarse[0] = rng.uniform(-max_displacement[0], max_displacement[0], (n, n))
    coarse[1] = rng.uniform(-max_displacement[1], max_displacement[1], (n, n))
    coarse[:, [0, -1], :] = 0.0
    coarse[:, :, [0, -1]] = 0.0
    # prefilter=False: the control values are cubic B-spline coefficients (an approximating spline, as in
    # torchio's RandomElasticDeformation), so the field is smooth and never exceeds the coefficients
    field = np.stack(
        [scipy.ndimage.zoom(c, (height / n, width / n), order=3, mode="nearest", grid_mode=True, prefilter=False) for c in coarse]
    )
    return field[:, :height, :width].astype(np.float32)


def _warp(array: np.ndarray, field: np.ndarray, order: int) -> np.ndarray:
    H, W = array.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    coords = np.stack([yy + field[0], xx + field[1]])
    return scipy.ndimage.map_coordinates(array, coords, order=order, mode="constant", cval=0).astype(array.dtype)


def augment_label_map(
    label_map: np.ndarray,
    seed=0,
    fan_mask: Optional[np.ndarray] = None,
    params: Optional[LabelAugmentation] = None,
    image: Optional[np.ndarray] = None,
    tissue_label: int = 2,
):
    """One augmented copy of an echo-coded label map.

    Args:
        label_map: uint8 [H, W] in the echo coding (0 outside fan, 1 LV, 2 tissue, 3 myocardium, 4 LA).
        seed: int or ``numpy.random.SeedSequence``; the copy is a pure function of it.
        fan_mask: bool [H, W] fan to re-apply; default: the input's fan (``label_map > 0``).
        params: :class:`LabelAugmentation` (default: echo-from-noise).
        image: optional grayscale image [H, W] transformed with the same (bilinear) warp.
        tissue_label: the background class inside the fan (2 in the echo coding); it is treated as empty
            during the warp and re-filled from the fan afterwards. For a coding without a fan pass
            ``fan_mask=np.ones(...)`` and ``tissue_label=0``.

    Returns:
        uint8 [H, W] label map, or ``(label_map, image)`` when ``image`` is given.
    """
    lab = np.asarray(label_map)
    if lab.ndim != 2:
        raise ValueError(f"`label_map` must have shape [H, W], got {lab.shape}")
    lab = lab.astype(np.uint8)
    H, W = lab.shape
    params = params or LabelAugmentation()
    fan = lab > 0 if fan_mask is None else np.asarray(fan_mask, dtype=bool)
    if fan.shape != lab.shape:
        raise ValueError(f"`fan_mask` shape {fan.shape} does not match `label_map` shape {lab.shape}")
    if image is not None:
        image = np.asarray(image)
        if image.shape != lab.shape:
            raise ValueError(f"`image` shape {image.shape} does not match `label_map` shape {lab.shape}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    affine_ss, elastic_ss = ss.spawn(2)
    affine_seed = int(affine_ss.generate_state(1)[0])
    # the tissue label (2) is treated as background during the warp and re-filled from the fan
    work = np.where(lab == tissue_label, 0, lab).astype(np.uint8)
    out = _affine_transform(params, affine_seed)(image=work if image is None else image, mask=work)
    lab_aug, img_aug = out["mask"], (out["image"] if image is not None else None)
    if params.elastic_max_displacement > 0:
        max_d = (params.elastic_max_displacement * H / params.reference_size, params.elastic_max_displacement * W / params.reference_size)
        field = elastic_displacement_field(H, W, np.random.default_rng(elastic_ss), params.elastic_control_points, max_d)
        lab_aug = _warp(lab_aug, field, order=0)
        if img_aug is not None:
            img_aug = _warp(img_aug, field, order=1)
    lab_aug = apply_fan(lab_aug, fan, tissue_label)
    return (lab_aug, img_aug) if image is not None else lab_aug


def augment_label_maps(label_maps: np.ndarray, num_copies: int = 5, seed: int = 0, fan_mask: Optional[np.ndarray] = None, params: Optional[LabelAugmentation] = None) -> np.ndarray:
    """``num_copies`` augmented copies of each label map: uint8 [N * num_copies, H, W].

    Copy ``k`` of map ``i`` sits at row ``i * num_copies + k`` and depends only on ``(seed, i, k)``.
    ``fan_mask`` ([H, W] or [N, H, W]) defaults to each input's own fan (``label > 0``).
    """
    maps = np.asarray(label_maps)
    if maps.ndim != 3:
        raise ValueError(f"`label_maps` must have shape [N, H, W], got {maps.shape}")
    if int(num_copies) < 0:
        raise ValueError(f"`num_copies` must be non-negative, got {num_copies}")
    if fan_mask is not None:
        fan_mask = np.asarray(fan_mask, dtype=bool)
        if fan_mask.ndim == 2:
            fan_mask = np.broadcast_to(fan_mask, maps.shape)
        if fan_mask.shape != maps.shape:
            raise ValueError(f"`fan_mask` must have shape [H, W] or {maps.shape}, got {fan_mask.shape}")
    out = np.empty((maps.shape[0] * int(num_copies),) + maps.shape[1:], dtype=np.uint8)
    for i in range(maps.shape[0]):
        for k in range(int(num_copies)):
            ss = np.random.SeedSequence([int(seed), i, k])
            out[i * num_copies + k] = augment_label_map(maps[i], ss, None if fan_mask is None else fan_mask[i], params)
    return out


__all__ = ["LabelAugmentation", "augment_label_map", "augment_label_maps", "elastic_displacement_field"]
