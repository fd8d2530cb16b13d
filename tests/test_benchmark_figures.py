"""The figure writers of the benchmark scripts run (one once imported a visualization helper that had been removed,
and only a full benchmark run found out)."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_channel_reconstruction_figure_writes_one_row_per_case(tmp_path):
    bench = _load("benchmark_channel_reconstruction")
    rng = np.random.default_rng(0)
    cases = ["quarter_elements", "single_transmit"]
    data = {"truth": rng.random((16, 16))}
    for case in cases:
        data[case] = {"das": rng.random((16, 16)), "dps": rng.random((16, 16)), "uncertainty": rng.random((16, 16))}
    bench.make_figure(data, cases, tmp_path / "channels.png")
    from PIL import Image

    with Image.open(tmp_path / "channels.png") as im:
        width, height = im.size
    assert 0.45 < height / width < 0.65  # two rows of four panels: 10 x 5.4 inches before tight bounding
