"""training/ablation.sh (issue 32): one work folder for every training seed, each arm's runs grouped in the report.

The script's Python is replaced by ``echo`` (``PYTHON=echo``), so these tests read the commands it would run."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "ablation.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(work, *steps, **env):
    result = subprocess.run(["bash", str(SCRIPT), str(work), *steps], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": "echo", **env}, check=False)
    return result


def test_evaluate_groups_every_arm_over_every_seed_folder(tmp_path):
    for seed, arm in [(0, "bmap"), (1, "bmap"), (0, "plain"), (1, "plain"), (0, "strong")]:
        (tmp_path / f"seed{seed}" / f"generated-{arm}" / "dataset").mkdir(parents=True)
    out = run(tmp_path, "evaluate")
    assert out.returncode == 0, out.stderr
    generated = out.stdout.split("--generated ")[1].split(" --train")[0].split()
    assert generated == [f"bmap={tmp_path}/seed0/generated-bmap/dataset", f"bmap={tmp_path}/seed1/generated-bmap/dataset",
                         f"plain={tmp_path}/seed0/generated-plain/dataset", f"plain={tmp_path}/seed1/generated-plain/dataset",
                         f"strong={tmp_path}/seed0/generated-strong/dataset"]
    assert f"--real {tmp_path}/heldout" in out.stdout and "--paired" in out.stdout


def test_seed_and_strength_pick_the_run_folder_and_the_flag(tmp_path):
    out = run(tmp_path, "generate-strong", SEED="1")
    assert out.returncode == 0, out.stderr
    assert f"--pipeline {tmp_path}/seed1/strong/pipeline" in out.stdout
    assert f"--output_dir {tmp_path}/seed1/generated-strong" in out.stdout
    out = run(tmp_path, "train-strong", SEED="1", STRONG_BMAP_MIN="0.85", FINETUNE="0")
    assert out.returncode == 0, out.stderr
    assert "--bmap_min 0.85" in out.stdout and "--seed 1" in out.stdout
    assert (tmp_path / "seed1" / "strong").is_dir()
    out = run(tmp_path, "nonsense")
    assert out.returncode == 2 and "unknown step 'nonsense'" in out.stderr


def test_training_resumes_and_skips_finished_stages(tmp_path):
    """An interrupted stage continues from its latest checkpoint (--resume_from_checkpoint latest in both stages); a
    finished stage is not run again (stage 1 skipped from checkpoint-2400, both from checkpoint-3200)."""
    pipeline = tmp_path / "seed0" / "bmap" / "pipeline"

    def stages(**env):
        out = run(tmp_path, "train-bmap", **env)
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.splitlines() if "train_semantic.py" in line]

    fresh = stages()
    assert len(fresh) == 2 and all("--resume_from_checkpoint latest" in line for line in fresh)
    assert "--max_train_steps 2400" in fresh[0] and "--max_train_steps 3200" in fresh[1]
    (pipeline / "checkpoint-2400").mkdir(parents=True)
    (pipeline / "checkpoint-800").mkdir()
    after_stage_one = stages()
    assert len(after_stage_one) == 1 and "--max_train_steps 3200" in after_stage_one[0]
    (pipeline / "checkpoint-3200").mkdir()
    assert stages() == []
    assert len(stages(STAGE1_STEPS="4000", FINETUNE="0")) == 1  # a longer stage 1 resumes past 3200
