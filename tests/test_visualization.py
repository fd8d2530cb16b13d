"""Figures shared by the evaluation plots: overlaid density histograms."""

import numpy as np
import pytest

from ultrasound_diffusers.visualization import density_histograms


def test_density_histograms_draw_every_non_empty_series_and_the_marker():
    bins = np.linspace(0.0, 1.0, 11)
    rng = np.random.default_rng(0)
    fig = density_histograms([("a", rng.random(50)), ("empty", np.array([])), ("b", rng.random(30))], bins,
                             "distance", marker=0.25, marker_label="threshold")
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * (len(bins) - 1)  # one bar per bin for each non-empty series
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "threshold"]
    assert ax.get_xlabel() == "distance" and ax.get_ylabel() == "density"
    heights = np.array([p.get_height() for p in ax.patches[: len(bins) - 1]])
    assert float((heights * np.diff(bins)).sum()) == pytest.approx(1.0)  # a density
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [0.25]


def test_evaluation_histograms_use_it():
    from ultrasound_diffusers.evaluation.memorization import plot_memorization_histogram
    from ultrasound_diffusers.evaluation.physics import RAYLEIGH_SNR, plot_speckle_histograms

    fig = plot_speckle_histograms({"real": {"snr_values": np.full(10, 1.9)}, "none": {"snr_values": []}})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["real (median 1.90)", "Rayleigh 1.91"]
    assert fig.axes[0].get_lines()[0].get_xdata()[0] == RAYLEIGH_SNR
    fig = plot_memorization_histogram({"train_distances": np.arange(5.0), "summary": {"copy_threshold": None}})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["generated -> train"]


def test_tile_figure_places_every_tile_pixel_exact_with_titles():
    from PIL import Image

    from ultrasound_diffusers.visualization import tile_figure

    rng = np.random.default_rng(0)
    grey = [rng.random((8, 6)) for _ in range(4)]
    rgb = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    rows = [[grey[0], grey[1], rgb], [grey[2], grey[3], rgb]]
    scale, gap = 3, 5
    fig = tile_figure(rows, ["a", "b", "c"], "a title", scale=scale, gap=gap)
    assert isinstance(fig, Image.Image) and fig.mode == "RGB"
    pixels = np.asarray(fig)
    tile_h, tile_w = 8 * scale, 6 * scale
    assert pixels.shape[1] == gap + 3 * (tile_w + gap)
    top = pixels.shape[0] - 2 * (tile_h + gap)  # the title and column titles take the band above the grid
    assert top > gap and (pixels[:top].min(axis=-1) < 128).any()  # some dark text in that band
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = top + r * (tile_h + gap), gap + c * (tile_w + gap)
            shown = pixels[y:y + tile_h:scale, x:x + tile_w:scale]  # nearest neighbour: every scale-th pixel
            expected = tile if tile.ndim == 3 else np.repeat(
                (np.clip(tile, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
            np.testing.assert_array_equal(shown, expected)
    assert (pixels[top - 1 + gap: top + gap - 1, :gap] == 255).all()  # white margin left of the grid
    bare = np.asarray(tile_figure(rows, scale=scale, gap=gap))  # no titles: no band above the grid
    assert bare.shape[0] == gap + 2 * (tile_h + gap)


@pytest.mark.parametrize("rows, kwargs, match", [
    ([], {}, "at least one row"),
    ([[np.zeros((4, 4)), np.zeros((4, 5))]], {}, "same shape"),
    ([[np.zeros((4, 4))], [np.zeros((4, 4)), np.zeros((4, 4))]], {}, "every row"),
    ([[np.zeros((4, 4))]], {"column_titles": ["a", "b"]}, "one title per column"),
    ([[np.full((4, 4), np.nan)]], {}, "non-finite"),
    ([[np.zeros((2, 4, 4))]], {}, r"rows\[0\]\[0\]"),
    ([[np.zeros((4, 4))]], {"scale": 0}, "scale"),
])
def test_tile_figure_refuses_bad_tiles_naming_the_argument(rows, kwargs, match):
    from ultrasound_diffusers.visualization import tile_figure

    with pytest.raises(ValueError, match=match):
        tile_figure(rows, **kwargs)


def test_save_figure_writes_a_pil_figure_as_png_marked_as_ours(tmp_path):
    from PIL import Image

    from ultrasound_diffusers.visualization import PNG_SOFTWARE, save_figure, tile_figure

    path = tmp_path / "grid.png"
    assert save_figure(tile_figure([[np.zeros((4, 4))]], ["x"]), path) == str(path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.text.get("Software") == PNG_SOFTWARE
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # atomic: no temporary left beside it
