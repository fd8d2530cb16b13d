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
