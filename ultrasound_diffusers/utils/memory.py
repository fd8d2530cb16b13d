"""Memory accounting helpers (used by the scheduler's memory test and benchmark)."""

from __future__ import annotations

from typing import Any, Optional, Set

import torch


def tensor_nbytes(obj: Any, _seen: Optional[Set[int]] = None) -> int:
    """Bytes of every distinct tensor reachable from ``obj`` through attributes, dicts, lists and tuples."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(tensor_nbytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return tensor_nbytes(vars(obj), seen)
    return 0


#: Largest image side (pixels) any entry point accepts; real ultrasound frames are at most a few thousand.
MAX_IMAGE_SIDE = 16384


def available_memory_bytes() -> Optional[int]:
    """Memory the process can still allocate (``MemAvailable`` of /proc/meminfo, or psutil), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported platform
        return None


def check_image_size(
    height: int,
    width: int,
    *,
    bytes_per_pixel: float,
    batch: int = 1,
    argument: str = "size",
    what: str = "this work",
    max_side: int = MAX_IMAGE_SIDE,
    available: Optional[int] = None,
) -> int:
    """Refuse, before anything is allocated, an image size that cannot fit.

    Args:
        height, width: requested size in pixels.
        bytes_per_pixel: estimated peak bytes per pixel of one image (activations, buffers).
        batch: images processed at once.
        argument: the argument named in the error.
        what: what the memory is for, named in the error.
        max_side: largest accepted side (default :data:`MAX_IMAGE_SIDE`).
        available: bytes available (default: :func:`available_memory_bytes`).

    Returns:
        The estimated peak bytes.

    Raises:
        ValueError: naming ``argument`` when a side exceeds ``max_side`` or the estimate exceeds 80 % of the
        available memory.
    """
    for name, value in (("height", height), ("width", width)):
        if value > max_side:
            raise ValueError(f"`{argument}`: {name} {value} px is larger than the {max_side} px this package accepts")
    need = int(float(bytes_per_pixel) * height * width * max(int(batch), 1))
    free = available_memory_bytes() if available is None else available
    if free is not None and need > 0.8 * free:
        raise ValueError(
            f"`{argument}` {height}x{width} (batch {batch}) needs about {need / 2**30:.1f} GiB for {what}, more than "
            f"the {free / 2**30:.1f} GiB available; use a smaller size or batch"
        )
    return need


def unet_bytes_per_pixel(config: Any, channels_factor: float = 12.0) -> float:
    """Rough peak activation bytes per output pixel of one UNet forward pass without gradients (float32): the
    full-resolution feature maps and skip connections, about ``channels_factor`` x ``block_out_channels[0]``
    (or ``model_channels``) floats per pixel, plus the tensors of the sampling loop."""
    base = None
    for key in ("model_channels", "block_out_channels"):
        value = getattr(config, key, None) if not isinstance(config, dict) else config.get(key)
        if value is not None:
            base = value[0] if isinstance(value, (list, tuple)) else value
            break
    base = int(base or 128)
    return 4.0 * (channels_factor * base + 16)
