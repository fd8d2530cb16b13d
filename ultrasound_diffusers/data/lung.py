"""Simulated lung maps (the lung-diffusion seed) -> ``datasets.DatasetDict``.

The seed's preprocessing (``process_data_to_1chanelPNG.py``): keep the first 32 depth rows of each
2-D map, average 4 x 4 blocks (a 1024-wide map becomes 8 x 256) and store it as a single-channel
image with values in [0, 1] scaled to 0-255.

Inputs: a file or a folder of ``.pt`` tensors (loaded with ``torch.load(weights_only=True)``, never
unpickled), ``.npy`` (``allow_pickle=False``) or ``.npz`` arrays. A file may hold one map [D, L], a stack
[N, D, L] or [N, 1, D, L]. The ``values`` column keeps the pooled float32 map. Splits are made per file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .converters import assign_splits, encode_png, find_files, make_dataset_dict, report_bad_file, to_uint8

_SUFFIXES = (".pt", ".pth", ".npy", ".npz")


def lung_features(height: int, width: int):
    import datasets

    s, i64 = datasets.Value("string"), datasets.Value("int64")
    return datasets.Features(
        {
            "image": datasets.Image(),
            "values": datasets.Array2D(shape=(height, width), dtype="float32"),
            "source_file": s, "index_in_file": i64, "height": i64, "width": i64,
        }
    )


def preprocess_lung_map(depth_map: np.ndarray, rows: int = 32, pool: int = 4) -> np.ndarray:
    """First ``rows`` depth rows, then ``pool x pool`` area averaging: [D, L] -> float32 [rows/pool, L/pool]."""
    arr = np.asarray(depth_map, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D map [depth, lateral], got shape {arr.shape}")
    if rows % pool or arr.shape[0] < rows or arr.shape[1] % pool:
        raise ValueError(f"map of shape {arr.shape} cannot give {rows} rows pooled by {pool} (need depth >= {rows}, width divisible by {pool})")
    top = arr[:rows]
    return top.reshape(rows // pool, pool, arr.shape[1] // pool, pool).mean(axis=(1, 3))


def _load_maps(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        import torch

        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and len(obj) == 1:
            obj = next(iter(obj.values()))
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"expected a tensor, got {type(obj).__name__}")
        arr = obj.detach().float().numpy()
    elif suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        with np.load(path, allow_pickle=False) as npz:
            if len(npz.files) != 1:
                raise ValueError(f"expected one array in the .npz, found {npz.files}")
            arr = npz[npz.files[0]]
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected [D, L], [N, D, L] or [N, 1, D, L], got shape {arr.shape}")
    return arr


def convert_lung(
    input_path,
    rows: int = 32,
    pool: int = 4,
    value_range: Tuple[float, float] = (0.0, 1.0),
    fractions: Sequence[float] = (1.0, 0.0, 0.0),
    seed: int = 0,
    strict: bool = False,
    progress: bool = False,
):
    """Convert simulated lung maps into a ``datasets.DatasetDict`` (train / validation / test by file).

    Args:
        input_path: a file or folder of ``.pt`` / ``.npy`` / ``.npz`` maps.
        rows, pool: keep the first ``rows`` depth rows and average ``pool x pool`` blocks.
        value_range: map values mapped to 0 and 255 (clipped).
        fractions: (train, validation, test) fractions of the files.
        strict: raise on corrupt / unexpected files instead of skipping them with a warning.

    Returns:
        ``datasets.DatasetDict`` with ``image`` (uint8 "L"), ``values`` (float32 pooled map),
        ``source_file`` and ``index_in_file``; no label column (the maps are unlabelled).
    """
    from tqdm.auto import tqdm

    if int(rows) < 1 or int(pool) < 1 or rows % pool:
        raise ValueError(f"`rows` must be a positive multiple of `pool`, got rows={rows}, pool={pool}")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"`value_range` must be (low, high) with high > low, got {value_range!r}")
    files = find_files(input_path, _SUFFIXES)
    if not files:
        raise ValueError(f"no {'/'.join(_SUFFIXES)} files found under {input_path}")
    pending: List[Dict[str, Any]] = []
    shape = None
    for path in tqdm(files, desc="lung maps", disable=not progress):
        try:
            maps = _load_maps(path)
            if len(maps) == 0:
                raise ValueError("the file holds no maps")
            pooled = [preprocess_lung_map(m, rows, pool) for m in maps]
        except Exception as err:  # corrupt archives raise many exception types
            report_bad_file(path, f"{type(err).__name__}: {err}", strict)
            continue
        if shape is None:
            shape = pooled[0].shape
        if pooled[0].shape != shape:
            report_bad_file(path, f"pooled maps have shape {pooled[0].shape}, expected {shape} like the first file", strict)
            continue
        for i, m in enumerate(pooled):
            pending.append({"file": path.name, "index_in_file": i, "values": m})
    if shape is None:
        raise ValueError(f"no readable lung maps under {input_path}")
    splits = assign_splits([p["file"] for p in pending], fractions, seed)
    rows_out = [
        {
            "split": splits[p["file"]], "image": encode_png(to_uint8(p["values"], (lo, hi))), "values": p["values"],
            "source_file": p["file"], "index_in_file": p["index_in_file"], "height": shape[0], "width": shape[1],
        }
        for p in pending
    ]
    return make_dataset_dict(rows_out, lung_features(*shape))
