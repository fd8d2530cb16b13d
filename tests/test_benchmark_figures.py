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


def test_demo_time_benchmark_builds_an_importable_copy_of_a_revision_and_times_a_command(tmp_path):
    """benchmark_demo_time.py runs an earlier revision's demo from a `git archive` copy, its pipelines/ folder put
    where setup.cfg maps it; a copy that does not import from itself would time today's code twice."""
    import shutil
    import subprocess
    import sys

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    bench = _load("benchmark_demo_time")
    copy = bench.package_at("HEAD", tmp_path / "copy")
    code = "import ultrasound_diffusers.pipelines as p, ultrasound_diffusers.version as v; print(p.__file__)"
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(copy / "ultrasound_diffusers" / "pipelines" / "__init__.py")
    wall, cpu, own = bench.timed([sys.executable, "-c", "print('generated 3 images in 1.5 s')"], {}, str(tmp_path))
    assert own == 1.5 and wall > 0 and cpu >= 0
    with pytest.raises(SystemExit, match="failed"):
        bench.timed([sys.executable, "-c", "raise SystemExit(3)"], {}, str(tmp_path))
