"""Figures people would rather look at than read: B-maps over time, depth profiles, image grids."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .utils.io import atomic_write


def new_figure(**kwargs):
    """A matplotlib ``Figure`` that belongs to no pyplot state and needs no GUI backend (kwargs: ``figsize``, ...).
    Library code draws on these, so it never changes the user's matplotlib backend."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def density_histograms(
    series: Sequence[Tuple[str, np.ndarray]],
    bins: np.ndarray,
    xlabel: str,
    marker: Optional[float] = None,
    marker_label: Optional[str] = None,
):
    """One panel of overlaid, semi-transparent density histograms, e.g. distances or speckle SNR of several sets.

    Args:
        series: ``[(legend label, values 1-D)]``, drawn in order; empty value arrays are skipped.
        bins: the shared bin edges.
        xlabel: the x-axis label (the y axis is "density").
        marker: an optional reference value drawn as a dashed vertical line, with ``marker_label`` in the legend.

    Returns:
        a 6 x 3.6 inch matplotlib ``Figure``.
    """
    fig = new_figure(figsize=(6.0, 3.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for label, values in series:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size:
            ax.hist(values, bins=bins, alpha=0.5, density=True, label=label)
    if marker is not None:
        ax.axvline(marker, color="k", linestyle="--", linewidth=1, label=marker_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bmap_steps(num_train_timesteps: int, num: int = 6) -> list:
    """``num`` evenly spread train steps from 0 to T-1 (inclusive)."""
    if num < 1:
        raise ValueError(f"`num` must be >= 1, got {num}")
    return sorted({int(round(v)) for v in np.linspace(0, num_train_timesteps - 1, num)})


def plot_bmaps(
    scheduler,
    sample_size: Union[int, Tuple[int, int]] = 128,
    timesteps: Optional[Sequence[int]] = None,
    num: int = 6,
    what: str = "signal",
    save_path: Optional[Union[str, os.PathLike]] = None,
    profile: bool = True,
    dpi: int = 120,
):
    """Plot the attenuation front of a :class:`BMapAttenuationScheduler` at a few steps.

    Top row: per-pixel maps at each step; bottom (``profile=True``): the map along the central column against
    normalised depth, one line per step, with plain DDPM's (depth-independent) value dashed.

    Args:
        scheduler: a ``BMapAttenuationScheduler``.
        sample_size: image size, an int or (H, W).
        timesteps: train steps to show (default: ``num`` evenly spread steps).
        what: ``"signal"`` (a_t / abar_t = the cumulative B-map Bbar_t, in [0, 1]), ``"bmap"`` (the per-step M_t)
            or ``"snr_ratio"`` (SNR relative to DDPM's at the same step).
        save_path: write a PNG there (atomically) and close the figure; otherwise return the figure.

    Returns:
        The matplotlib figure (None when ``save_path`` is given).
    """
    if what not in ("signal", "bmap", "snr_ratio"):
        raise ValueError(f"`what` must be 'signal', 'bmap' or 'snr_ratio', got {what!r}")
    height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    T = scheduler.config.num_train_timesteps
    if timesteps is None and (isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= T):
        raise ValueError(f"`num` (--num) must be an integer in [1, {T}], got {num!r}")
    steps = list(timesteps) if timesteps is not None else bmap_steps(T, num)
    from .utils.memory import check_image_size

    # float64 maps per step, the central-column profile and matplotlib's RGBA raster of each panel
    check_image_size(height, width, bytes_per_pixel=8.0 * len(steps) * 3 + 16.0 * len(steps), argument="sample_size (--size)",
                     what="the B-map figure", max_side=4096)
    shape = (len(steps), 1, height, width)
    if what == "bmap":
        maps = scheduler.bmap(torch.tensor(steps), shape)[:, 0]
        label = "per-step B-map $M_t$"
    else:
        maps = scheduler.cumulative_bmap(torch.tensor(steps), shape)[:, 0]
        label = r"cumulative B-map $\bar B_t = a_t / \bar\alpha_t$"
        if what == "snr_ratio":
            abar = scheduler.alphas_cumprod.double()[steps].view(-1, 1, 1)
            a = abar * maps
            maps = (a / (1 - a)) / (abar / (1 - abar))
            label = "SNR relative to DDPM"
    maps = maps.numpy()
    rows = 2 if profile else 1
    fig = new_figure(figsize=(2.2 * len(steps), 2.3 * rows + 0.4))
    axes = fig.subplots(rows, len(steps), squeeze=False)
    vmin = float(min(maps.min(), np.sqrt(scheduler.config.bmap_min) if what == "bmap" else maps.min()))
    for i, t in enumerate(steps):
        ax = axes[0, i]
        im = ax.imshow(maps[i], cmap="magma", vmin=vmin, vmax=1.0, aspect="auto" if height * 4 < width else "equal")
        ax.set_title(f"t = {t}", fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.8, label=label)
    if profile:
        depth, inside = scheduler.depth_map(height, width)
        col = width // 2
        rows_in = inside[:, col].numpy()
        d = depth[:, col].numpy()[rows_in]
        merged = fig.add_subplot(2, 1, 2)
        for ax in axes[1]:
            ax.remove()
        for i, t in enumerate(steps):
            merged.plot(d, maps[i][:, col][rows_in], label=f"t = {t}")
        merged.axhline(1.0, color="grey", ls="--", lw=0.8, label="DDPM")
        merged.set_xlabel("normalised depth d (central beam)")
        merged.set_ylabel(label, fontsize=8)
        merged.legend(fontsize=7, ncol=min(len(steps) + 1, 7))
        merged.grid(alpha=0.3)
    cfg = scheduler.config
    fig.suptitle(
        f"B-maps: {cfg.probe_geometry} probe, bmap_schedule={cfg.bmap_schedule}, bmap_min={cfg.bmap_min}, T={T}",
        fontsize=10,
    )
    if save_path is None:
        return fig
    save_figure(fig, save_path, dpi=dpi)
    return None


#: The PNG ``Software`` text of every figure this package writes: the output rule
#: (:func:`~ultrasound_diffusers.utils.io.check_output_file`) lets a rerun replace such a file without --overwrite.
PNG_SOFTWARE = "ultrasound-diffusers"


def save_figure(fig, path: Union[str, os.PathLike], dpi: int = 120) -> str:
    """Save a figure as PNG atomically; returns the path. ``fig``: a matplotlib figure (closed afterwards if pyplot
    manages it; ``dpi`` applies) or a PIL image (:func:`tile_figure`; written at its own pixel size)."""
    from PIL import Image, PngImagePlugin

    if isinstance(fig, Image.Image):
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", PNG_SOFTWARE)
        with atomic_write(path, "wb") as handle:
            fig.save(handle, format="png", pnginfo=info)
        return str(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": PNG_SOFTWARE})
    import sys

    if "matplotlib.pyplot" in sys.modules:  # a figure made with pyplot by the caller: release it
        sys.modules["matplotlib.pyplot"].close(fig)
    return str(path)


def _tile_rgb(tile, name: str) -> np.ndarray:
    """One tile of :func:`tile_figure` as ``uint8`` [H, W, 3]."""
    tile = np.asarray(tile)
    if tile.ndim == 3 and tile.shape[-1] == 3 and tile.dtype == np.uint8:
        return tile
    if tile.ndim != 2:
        raise ValueError(f"`{name}` must be a [H, W] grey image in [0, 1] or a [H, W, 3] uint8 RGB image, got shape "
                         f"{tuple(tile.shape)} ({tile.dtype})")
    grey = tile.astype(np.float64)
    if not np.isfinite(grey).all():
        raise ValueError(f"`{name}` has non-finite values")
    grey = (np.clip(grey, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def tile_figure(
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str] = (),
    title: str = "",
    scale: int = 4,
    gap: int = 10,
):
    """A grid of equal-sized images with column titles and a title line, drawn with PIL: a few milliseconds where
    the same grid as matplotlib subplots takes most of a second (the demo's whole command is a few seconds).

    Args:
        rows: ``rows[r][c]`` is the tile at row ``r``, column ``c``: a ``[H, W]`` grey image with values in [0, 1]
            (clipped; shown black to white) or a ``[H, W, 3]`` ``uint8`` RGB image (e.g. from
            :func:`~ultrasound_diffusers.data.labels.colorize_labels`). Every tile has the same H and W.
        column_titles: one short title per column, or none.
        title: one line above the grid, or "".
        scale: integer up-scaling of each tile, nearest neighbour (pixels stay sharp: speckle is the content).
        gap: white pixels between tiles and around the grid.

    Returns:
        an RGB ``PIL.Image.Image`` (save it with :func:`save_figure`).
    """
    from PIL import Image, ImageDraw, ImageFont

    grid = [[_tile_rgb(tile, f"rows[{r}][{c}]") for c, tile in enumerate(row)] for r, row in enumerate(rows)]
    if not grid or not grid[0]:
        raise ValueError("`rows` must hold at least one row with at least one tile")
    n_cols = len(grid[0])
    if any(len(row) != n_cols for row in grid):
        raise ValueError(f"every row of `rows` must have {n_cols} tiles, got {[len(row) for row in grid]}")
    shapes = {tile.shape for row in grid for tile in row}
    if len(shapes) != 1:
        raise ValueError(f"every tile of `rows` must have the same shape, got {sorted(shapes)}")
    if column_titles and len(column_titles) != n_cols:
        raise ValueError(f"`column_titles` must have one title per column ({n_cols}), got {len(column_titles)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"`scale` must be an integer >= 1, got {scale!r}")
    height, width = grid[0][0].shape[:2]
    tile_h, tile_w = height * scale, width * scale
    title_font = ImageFont.load_default(size=18)
    head_font = ImageFont.load_default(size=14)
    title_h = 30 if title else 0
    head_h = 22 if column_titles else 0
    top = gap + title_h + head_h
    canvas = Image.new("RGB", (gap + n_cols * (tile_w + gap), top + len(grid) * (tile_h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((canvas.width / 2, gap + title_h / 2), title, fill="black", font=title_font, anchor="mm")
    for c, text in enumerate(column_titles):
        x = gap + c * (tile_w + gap) + tile_w / 2
        draw.text((x, gap + title_h + head_h / 2), text, fill="black", font=head_font, anchor="mm")
    for r, row in enumerate(grid):
        for c, tile in enumerate(row):
            image = Image.fromarray(tile, "RGB").resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(image, (gap + c * (tile_w + gap), top + r * (tile_h + gap)))
    return canvas
