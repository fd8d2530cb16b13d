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
