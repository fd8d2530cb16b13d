"""Memorisation check: how close is every generated image to its nearest training image?

For each generated image the L2 distance (pixels in [0, 1]) to its nearest training image is compared with its
distance to the nearest image of a held-out real set. A model that copies its training data puts generated images
much closer to training images than to unseen real ones. Distances are found in batches with one matrix product
per block (``|q|^2 + |r|^2 - 2 q.r``, float32) and the winner's distance is then recomputed exactly, so exact and
near copies get exact (near-zero) distances.

A generated image is flagged as a likely copy when its nearest-training distance falls below
``copy_fraction`` times the median nearest-neighbour distance between real images (held-out to train, or
leave-one-out within the training set when there is no held-out set), or below ``copy_threshold`` when given.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch


def _flatten(images: Union[np.ndarray, torch.Tensor], name: str) -> torch.Tensor:
    data = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if data.ndim < 2:
        raise ValueError(f"`{name}` must be [N, ...] with at least one feature per row, got {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise ValueError(f"`{name}` is empty")
    return data.reshape(data.shape[0], -1).to(torch.float32)


@torch.no_grad()
def nearest_neighbours(
    queries: Union[np.ndarray, torch.Tensor],
    references: Union[np.ndarray, torch.Tensor],
    batch_size: int = 256,
    exclude_self: bool = False,
    device: Union[str, torch.device] = "cpu",
) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest reference of every query under the L2 distance.

    Args:
        queries: ``[N, ...]`` (images ``[N, H, W]`` or vectors ``[N, D]``).
        references: ``[M, ...]`` with the same trailing size as ``queries``.
        batch_size: rows per block on each side (memory ``O(batch_size^2)``).
        exclude_self: ``queries`` *are* ``references``; skip the identical index (leave-one-out).
        device: where the matrix products run.

    Returns:
        ``(distances, indices)``: float64 ``[N]`` exact L2 distances and int64 ``[N]`` reference indices.
    """
    q = _flatten(queries, "queries")
    r = _flatten(references, "references")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"`queries` and `references` differ in size per item: {q.shape[1]} vs {r.shape[1]}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}")
    if exclude_self and q.shape[0] != r.shape[0]:
        raise ValueError("`exclude_self=True` needs queries and references to be the same set")
    if exclude_self and r.shape[0] < 2:
        raise ValueError("`exclude_self=True` needs at least 2 references")
    r_dev = r.to(device)
    r_sq = (r_dev * r_dev).sum(1)
    best_d = torch.full((q.shape[0],), float("inf"))
    best_i = torch.zeros(q.shape[0], dtype=torch.long)
    for qs in range(0, q.shape[0], batch_size):
        qb = q[qs : qs + batch_size].to(device)
        qb_sq = (qb * qb).sum(1, keepdim=True)
        blk_d = torch.full((qb.shape[0],), float("inf"), device=device)
        blk_i = torch.zeros(qb.shape[0], dtype=torch.long, device=device)
        for rs in range(0, r.shape[0], batch_size):
            rb = r_dev[rs : rs + batch_size]
            d2 = qb_sq + r_sq[rs : rs + batch_size][None] - 2.0 * (qb @ rb.T)
            if exclude_self:
                rows = torch.arange(qb.shape[0], device=device)
                cols = rows + qs - rs
                valid = (cols >= 0) & (cols < rb.shape[0])
                d2[rows[valid], cols[valid]] = float("inf")
            val, idx = d2.min(1)
            better = val < blk_d
            blk_d = torch.where(better, val, blk_d)
            blk_i = torch.where(better, idx + rs, blk_i)
        best_d[qs : qs + qb.shape[0]] = blk_d.cpu()
        best_i[qs : qs + qb.shape[0]] = blk_i.cpu()
    exact = (q.double() - r[best_i].double()).norm(dim=1)
    return exact.numpy(), best_i.numpy()


def _summary(distances: np.ndarray) -> Dict[str, float]:
    return {
        "min": float(distances.min()),
        "p05": float(np.percentile(distances, 5)),
        "median": float(np.median(distances)),
        "mean": float(distances.mean()),
        "max": float(distances.max()),
    }


def memorization_statistics(
    generated: np.ndarray,
    train: np.ndarray,
    heldout: Optional[np.ndarray] = None,
    copy_fraction: float = 0.5,
    copy_threshold: Optional[float] = None,
    batch_size: int = 256,
    device: Union[str, torch.device] = "cpu",
) -> Dict[str, object]:
    """Nearest-neighbour distances of generated images to the training set (and a held-out real set).

    Args:
        generated: ``[N, H, W]`` float in [0, 1].
        train: ``[M, H, W]``, same image size as ``generated``.
        heldout: optional ``[K, H, W]`` real images the model never saw.
        copy_fraction: flag generated images closer to a training image than this fraction of the median
            real-to-train nearest-neighbour distance.
        copy_threshold: an absolute L2 threshold instead (overrides ``copy_fraction``).

    Returns:
        A dict with per-image arrays (``train_distances``, ``train_indices``, ``heldout_distances``,
        ``heldout_indices``, ``baseline_distances``) and JSON-ready summaries (``summary``).
    """
    if not 0.0 < float(copy_fraction) <= 1.0:
        raise ValueError(f"`copy_fraction` must lie in (0, 1], got {copy_fraction}")
    gen, tr = np.asarray(generated), np.asarray(train)
    if gen.shape[1:] != tr.shape[1:]:
        raise ValueError(f"`generated` and `train` images differ in size: {gen.shape[1:]} vs {tr.shape[1:]}")
    pixels = int(np.prod(gen.shape[1:]))
    d_train, i_train = nearest_neighbours(gen, tr, batch_size=batch_size, device=device)
    result: Dict[str, object] = {"train_distances": d_train, "train_indices": i_train}
    summary: Dict[str, object] = {
        "num_generated": int(gen.shape[0]),
        "num_train": int(tr.shape[0]),
        "pixels_per_image": pixels,
        "distance_to_train": _summary(d_train),
    }
    if heldout is not None:
        ho = np.asarray(heldout)
        if ho.shape[1:] != gen.shape[1:]:
            raise ValueError(f"`heldout` and `generated` images differ in size: {ho.shape[1:]} vs {gen.shape[1:]}")
        d_held, i_held = nearest_neighbours(gen, ho, batch_size=batch_size, device=device)
        baseline, _ = nearest_neighbours(ho, tr, batch_size=batch_size, device=device)
        result.update(heldout_distances=d_held, heldout_indices=i_held)
        summary["num_heldout"] = int(ho.shape[0])
        summary["distance_to_heldout"] = _summary(d_held)
        ratio = d_train / np.maximum(d_held, 1e-12)
        summary["median_train_to_heldout_ratio"] = float(np.median(ratio))
        summary["fraction_closer_to_train"] = float(np.mean(d_train < d_held))
        summary["baseline"] = "held-out real -> train nearest-neighbour distance"
    elif tr.shape[0] >= 2:
        baseline, _ = nearest_neighbours(tr, tr, batch_size=batch_size, exclude_self=True, device=device)
        summary["baseline"] = "train -> train leave-one-out nearest-neighbour distance"
    else:
        baseline = np.array([np.nan])
        summary["baseline"] = "none (a single training image)"
    result["baseline_distances"] = baseline
    summary["baseline_distance"] = _summary(baseline)
    if copy_threshold is not None:
        threshold = float(copy_threshold)
    else:
        threshold = float(copy_fraction) * float(np.median(baseline))
    copies = np.flatnonzero(d_train < threshold) if np.isfinite(threshold) else np.array([], dtype=np.int64)
    summary["copy_threshold"] = threshold if np.isfinite(threshold) else None
    summary["num_likely_copies"] = int(copies.size)
    summary["fraction_likely_copies"] = float(copies.size / gen.shape[0])
    summary["likely_copies"] = [int(i) for i in copies[np.argsort(d_train[copies])][:50]]
    summary["rms_distance_to_train_median"] = float(np.median(d_train) / np.sqrt(pixels))
    result["likely_copies"] = copies
    result["summary"] = summary
    return result


def plot_memorization_histogram(stats: Dict[str, object], num_bins: int = 30):
    """Histogram figure of nearest-neighbour distances (generated->train, generated->held-out, baseline)."""
    from ..visualization import density_histograms

    series = [("generated -> train", stats["train_distances"])]
    if "heldout_distances" in stats:
        series.append(("generated -> held-out", stats["heldout_distances"]))
    baseline = np.asarray(stats.get("baseline_distances", []), dtype=np.float64)
    if baseline.size and np.all(np.isfinite(baseline)):
        series.append(("real baseline", baseline))
    values = np.concatenate([np.asarray(v, np.float64) for _, v in series])
    bins = np.linspace(0.0, float(values.max()) * 1.05 + 1e-9, num_bins + 1)
    threshold = stats["summary"].get("copy_threshold")  # type: ignore[union-attr]
    return density_histograms(series, bins, "nearest-neighbour L2 distance (pixels in [0, 1])", marker=threshold,
                              marker_label="copy threshold")


def plot_closest_pairs(
    generated: np.ndarray,
    train: np.ndarray,
    stats: Dict[str, object],
    heldout: Optional[np.ndarray] = None,
    num_pairs: int = 8,
):
    """Figure with the ``num_pairs`` generated images closest to a training image, next to that image.

    Rows: generated image, its nearest training image, and (when given) its nearest held-out image.
    """
    from matplotlib.figure import Figure

    d_train = np.asarray(stats["train_distances"])
    order = np.argsort(d_train)[: max(1, int(num_pairs))]
    rows = [("generated", generated, order, None), ("nearest train", train, stats["train_indices"][order], d_train)]
    if heldout is not None and "heldout_indices" in stats:
        rows.append(("nearest held-out", heldout, stats["heldout_indices"][order], stats["heldout_distances"]))
    fig = Figure(figsize=(1.4 * len(order) + 0.6, 1.5 * len(rows)), dpi=100)
    for r, (title, images, indices, distances) in enumerate(rows):
        for c, idx in enumerate(indices):
            ax = fig.add_subplot(len(rows), len(order), r * len(order) + c + 1)
            ax.imshow(images[int(idx)], cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if distances is not None:
                ax.set_title(f"d={float(distances[order[c]]):.2f}", fontsize=7)
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.tight_layout()
    return fig
