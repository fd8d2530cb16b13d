"""Memory accounting and the guards that run before large allocations.

* :func:`tensor_nbytes`: bytes held by the tensors reachable from an object (the scheduler's memory test).
* :func:`available_memory`: what the process may still allocate: the smallest of the system's ``MemAvailable``,
  the room left under its address-space limit (``ulimit -v``, ``RLIMIT_AS``) and under its container's cgroup
  limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), or a CUDA device's free memory.
* :func:`check_image_size` / :func:`check_allocation`: refuse, before anything is allocated, work whose estimated
  peak exceeds 80 % of that, naming the argument and the limit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple, Union

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


#: Limits above this many bytes mean "no limit" (cgroup v1 writes 2**63 rounded down to a page for none).
_NO_LIMIT = 2**60


def _read_int(path: Union[str, os.PathLike]) -> Optional[int]:
    """The integer in a one-line file (``max`` and unreadable files give None)."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def meminfo_available_bytes(meminfo: Union[str, os.PathLike] = "/proc/meminfo") -> Optional[int]:
    """``MemAvailable`` of /proc/meminfo in bytes (psutil where there is no /proc), None if unknown."""
    try:
        with open(meminfo, encoding="ascii") as handle:
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


def address_space_free_bytes(status: Union[str, os.PathLike] = "/proc/self/status") -> Optional[int]:
    """Address space the process may still map under its ``RLIMIT_AS`` (``ulimit -v``): the soft limit minus the
    current ``VmSize``; None without a limit (or where it cannot be read)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):  # not a POSIX system
        return None
    if soft in (resource.RLIM_INFINITY, -1) or soft >= _NO_LIMIT:
        return None
    used = 0
    try:
        with open(status, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return max(int(soft) - used, 0)


def cgroup_free_bytes(
    root: Union[str, os.PathLike] = "/sys/fs/cgroup", proc_cgroup: Union[str, os.PathLike] = "/proc/self/cgroup"
) -> Optional[int]:
    """Memory the process's control group (a container's limit) still allows: limit minus usage, the smallest
    over the group and its parents, for cgroup v2 (``memory.max`` / ``memory.current``) and v1
    (``memory.limit_in_bytes`` / ``memory.usage_in_bytes``); None without a limit."""
    root = Path(root)
    groups = []  # (folder relative to its hierarchy's mount, file names)
    try:
        lines = Path(proc_cgroup).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1].split(","), parts[2].strip().lstrip("/")
        if parts[0] == "0" and parts[1] == "":
            groups.append((root / path, root, ("memory.max", "memory.current")))
        elif "memory" in controllers:
            groups.append((root / "memory" / path, root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")))
    if not groups:  # no /proc/self/cgroup: the hierarchy roots as mounted in a container
        groups = [(root, root, ("memory.max", "memory.current")),
                  (root / "memory", root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes"))]
    free = None
    for folder, top, (limit_name, usage_name) in groups:
        # the group's own folder and its parents up to the mount (a container often sees only the mount's root)
        candidates = [folder] + [p for p in folder.parents if p == top or top in p.parents]
        for candidate in candidates:
            limit = _read_int(candidate / limit_name)
            if limit is None or limit >= _NO_LIMIT:
                continue
            usage = _read_int(candidate / usage_name) or 0
            value = max(limit - usage, 0)
            free = value if free is None else min(free, value)
    return free


def memory_limits() -> Dict[str, Optional[int]]:
    """Bytes the process can still allocate by each limit that applies: ``"system memory (MemAvailable)"``,
    ``"address-space limit (ulimit -v / RLIMIT_AS)"`` and ``"container limit (cgroup)"``; None where a limit
    is unknown or absent."""
    return {
        "system memory (MemAvailable)": meminfo_available_bytes(),
        "address-space limit (ulimit -v / RLIMIT_AS)": address_space_free_bytes(),
        "container limit (cgroup)": cgroup_free_bytes(),
    }


def available_memory(device: Any = None) -> Tuple[Optional[int], str]:
    """``(bytes, what limits them)``: the free memory of a CUDA ``device`` (``torch.cuda.mem_get_info``), else
    the smallest of :func:`memory_limits` (None, "" if none is known)."""
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        try:
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            return int(free), f"free memory of {torch.device(device)}"
        except (RuntimeError, AssertionError):
            pass
    known = [(v, k) for k, v in memory_limits().items() if v is not None]
    if not known:
        return None, ""
    return min(known)


def available_memory_bytes(device: Any = None) -> Optional[int]:
    """Memory the process can still allocate: the smallest of the system's ``MemAvailable``, the room left under
    ``RLIMIT_AS`` and the room left under a cgroup limit (or a CUDA device's free memory); None if unknown."""
    return available_memory(device)[0]


def check_allocation(
    nbytes: float, *, argument: str, what: str, device: Any = None, available: Optional[int] = None,
    hint: str = "use smaller values", detail: str = "",
) -> int:
    """Refuse, before allocating, ``nbytes`` that exceed 80 % of what the process may still allocate (see
    :func:`available_memory`). Returns ``int(nbytes)``; ValueError naming ``argument`` (followed by ``detail``),
    ``what`` the memory is for and the limit that applies."""
    need = int(nbytes)
    if available is None:
        free, source = available_memory(device)
    else:
        free, source = available, "available memory"
    if free is not None and need > 0.8 * free:
        raise ValueError(
            f"`{argument}`{detail} needs about {need / 2**30:.2f} GiB for {what}, more than the {free / 2**30:.2f} GiB that "
            f"the {source} leaves; {hint}"
        )
    return need


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
    device: Any = None,
    extra_bytes: float = 0.0,
) -> int:
    """Refuse, before anything is allocated, an image size that cannot fit.

    Args:
        height, width: requested size in pixels.
        bytes_per_pixel: estimated peak bytes per pixel of one image (activations, buffers).
        batch: images processed at once.
        argument: the argument named in the error.
        what: what the memory is for, named in the error.
        max_side: largest accepted side (default :data:`MAX_IMAGE_SIDE`).
        available: bytes available (default: :func:`available_memory` of ``device``, which knows the
            ``ulimit -v`` and cgroup limits).
        device: where the memory is allocated (a CUDA device reads its own free memory).
        extra_bytes: bytes needed besides the per-pixel ones (e.g. model weights not yet loaded).

    Returns:
        The estimated peak bytes.

    Raises:
        ValueError: naming ``argument`` when a side exceeds ``max_side`` or the estimate exceeds 80 % of the
        available memory (naming the limit that applies).
    """
    for name, value in (("height", height), ("width", width)):
        if value > max_side:
            raise ValueError(f"`{argument}`: {name} {value} px is larger than the {max_side} px this package accepts")
    need = float(bytes_per_pixel) * height * width * max(int(batch), 1) + float(extra_bytes)
    return check_allocation(
        need, argument=argument, detail=f" {height}x{width} (batch {batch})", what=what, device=device,
        available=available, hint="use a smaller size or batch",
    )


def unet_bytes_per_pixel(config: Any, channels_factor: float = 24.0) -> float:
    """Peak bytes per output pixel of one UNet forward pass without gradients (float32), an upper estimate:
    ``4 * (channels_factor * C0 + 4 * S + 2 * K + 64)`` with the full-resolution width ``C0``
    (``model_channels * channel_mult[0]`` or ``block_out_channels[0]``), the SPADE width ``S``
    (``spade_hidden_channels``, label-conditioned networks only) and ``K`` label channels (``num_classes``). The
    constants were measured (peak RSS, torch 2.x CPU, scaled dot-product attention) at 1.2-1.6x below the
    estimate for the tiny test network, ``tiny-64`` and ``sdm-128``; the last term covers the sampling loop's
    tensors."""

    def get(key, default=None):
        return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)

    base = None
    for key in ("model_channels", "block_out_channels"):
        value = get(key)
        if value is not None:
            base = value[0] if isinstance(value, (list, tuple)) else value
            break
    try:
        base = float(base or 128)
        mult = get("channel_mult")
        if get("model_channels") is not None and isinstance(mult, (list, tuple)) and mult:
            base *= max(float(mult[0]), 1.0)
        classes = max(float(get("num_classes", 0) or 0), 0.0)
        spade = float(get("spade_hidden_channels", 128) or 0) if classes > 0 else 0.0
    except (TypeError, ValueError):  # a config with non-numeric values: the model's own checks name the key
        base, classes, spade = 128.0, 0.0, 0.0
    return 4.0 * (channels_factor * base + 4.0 * spade + 2.0 * classes + 64.0)
