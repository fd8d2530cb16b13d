"""benchmarks/gpu_benchmark.py keeps working: its CPU smoke mode (the same code paths as the GPU run, at toy sizes)
prints every section with finite results and writes no results file (issue 31)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_smoke_mode_prints_every_section(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_benchmark.py"), "--cpu-smoke", "--budget_s", "120",
         "--output_dir", str(tmp_path / "results")],
        capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    assert "CPU smoke mode" in out
    train_rows = re.findall(r"^\s+2\s+(fp32|bf16)\s+(none|full)\s+([0-9.]+)\s+[0-9.]+\s+[0-9.]+\s+n/a\s+(\w+)$", out, re.M)
    assert {(p, c) for p, c, _, _ in train_rows} == {("fp32", "none"), ("bf16", "none"), ("bf16", "full")}, out
    assert all(float(rate) > 0 and finite == "True" for _, _, rate, finite in train_rows)
    assert re.search(r"schedule \+ hybrid loss alone .* at batch 2: [0-9.]+ ms", out)
    assert "channels_last (bf16)" in out
    assert re.search(r"scheduler step at batch 2 \(per-pixel maths\): float64 [0-9.]+ ms, float32 [0-9.]+ ms", out)
    sample_rows = re.findall(r"^\s+(fp32|bf16|fp16)\s+(ancestral 3|SDE-DPM-Solver\+\+ 2)\s+([0-9.]+)\s+n/a\s+(\w+)$", out, re.M)
    assert len(sample_rows) == 6 and all(finite == "True" for *_, finite in sample_rows), out
    for precision in ("bf16", "fp16"):
        match = re.search(rf"correctness {precision} vs fp32 .*mean \|diff\| ([0-9.e+-]+), max ([0-9.e+-]+), non-finite (\d+)", out)
        assert match and float(match.group(1)) < 0.05 and match.group(3) == "0", out
    assert not (tmp_path / "results").exists()  # only a GPU run writes results
