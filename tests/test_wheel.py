"""The package as users get it: a wheel built from the source, installed (not editable) into a fresh virtual
environment, runs the demo and imports every area from that environment, not from the source tree.

The fresh environment reuses the dependencies installed in the environment that runs the tests (nothing is
downloaded): a ``.pth`` file in its site-packages lists the running interpreter's site-packages folders, so a
suite run inside a virtual environment hands that environment's packages on (``--system-site-packages`` would
reach the base interpreter instead, which need not have torch). Only plain folder lines go in that file, so the
running environment's own ``.pth`` files, among them the editable install of this source tree, are not run there:
the package can only come from the wheel. The wheel goes in with ``--no-deps --no-build-isolation``. Everything
runs from a temporary working directory.
"""

import json
import os
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

# One import-level check per area of the package, run inside the fresh environment. Prints a JSON report.
CHECKS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import ultrasound_diffusers as ud
    from ultrasound_diffusers import DiffusionPipeline, SemanticUNet2DModel, BMapAttenuationScheduler
    from ultrasound_diffusers import hub_utils as hub
    from ultrasound_diffusers.pipelines import loading, pipeline_utils, SemanticUltrasoundPipeline
    from ultrasound_diffusers.utils.packaging import wheel_filename
    from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH
    from ultrasound_diffusers.data.phantoms import generate_phantoms
    from ultrasound_diffusers.evaluation import physics
    from ultrasound_diffusers import acoustics, commands, generation, operators, losses, image_processor, utils
    from ultrasound_diffusers.models import unet_semantic_2d
    from ultrasound_diffusers.schedulers import scheduling_bmap_attenuation

    modules = [ud, hub, loading, pipeline_utils, physics, acoustics, commands, generation, operators, losses,
               image_processor, utils, unet_semantic_2d, scheduling_bmap_attenuation, sys.modules[generate_phantoms.__module__]]
    pipe = DiffusionPipeline.from_pretrained(DEMO_PIPELINE_PATH)
    scheduler = BMapAttenuationScheduler(num_train_timesteps=10)
    phantoms = generate_phantoms(1, anatomy="echo", size=32, seed=0)
    report = {
        "prefix": sys.prefix,
        "files": {m.__name__: m.__file__ for m in modules},
        "data_files": [str(p) for p in (hub.MODEL_CARD_TEMPLATE, loading.REMOTE_CODE_TEMPLATE,
                                        DEMO_PIPELINE_PATH / "unet" / "diffusion_pytorch_model.safetensors",
                                        DEMO_PIPELINE_PATH / "README.md")],
        "data_exist": all(p.is_file() for p in (hub.MODEL_CARD_TEMPLATE, loading.REMOTE_CODE_TEMPLATE,
                                                DEMO_PIPELINE_PATH / "unet" / "diffusion_pytorch_model.safetensors")),
        "pipeline": type(pipe).__name__,
        "card_renders": hub.NOT_FOR_DIAGNOSIS in str(hub.create_model_card(pipe, "me/demo")),
        "phantoms": len(phantoms),
        "wheel_name": wheel_filename(),
        "torch_from": str(Path(__import__("torch").__file__).resolve().parents[1]),
    }
    print("REPORT " + json.dumps(report))
    """
)


def _run(cmd, cwd, env, timeout=900):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def running_site_packages():
    """The site-packages folders of the interpreter running the tests, in its order (a virtual environment's own
    first, then the base ones where it was made with ``--system-site-packages``); never the source tree."""
    folders = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        folders.append(site.getusersitepackages())
    return [f for f in dict.fromkeys(folders) if os.path.isdir(f) and Path(f).resolve() != ROOT]


def _fresh_venv_with_running_site_packages(venv, cwd, env):
    """A new virtual environment (no pip, no system site-packages) whose ``sys.path`` continues with
    :func:`running_site_packages`, listed as plain folders in a ``.pth`` file; returns its interpreter."""
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=cwd, env=env)
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=cwd, env=env)
    (Path(purelib.stdout.strip()) / "_running_env_site_packages.pth").write_text(
        "".join(f + "\n" for f in running_site_packages()))
    return python


def test_wheel_installs_into_a_fresh_venv_and_runs_from_there(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               MPLBACKEND="Agg", HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)

    # built from a clean copy of the source (the package's own builder: the checkout gets no build/ folders)
    from ultrasound_diffusers.utils.packaging import build_wheel, wheel_builder

    if wheel_builder(env) is None:
        pytest.skip("no interpreter here can build a wheel offline: install `wheel` or setuptools >= 70.1")
    wheel = build_wheel(tmp_path / "dist", ROOT, env)
    assert [p.name for p in (tmp_path / "dist").iterdir()] == [wheel.name]
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("ultrasound_diffusers/assets/bmap-echo-phantom-64/unet/diffusion_pytorch_model.safetensors",
                   "ultrasound_diffusers/assets/bmap-echo-phantom-64/unet/config.json",
                   "ultrasound_diffusers/assets/bmap-echo-phantom-64/scheduler/scheduler_config.json",
                   "ultrasound_diffusers/assets/bmap-echo-phantom-64/model_index.json",
                   "ultrasound_diffusers/assets/bmap-echo-phantom-64/README.md",
                   "ultrasound_diffusers/assets/bmap-echo-phantom-64-fewstep/unet/diffusion_pytorch_model.safetensors",
                   "ultrasound_diffusers/assets/bmap-echo-phantom-64-fewstep/scheduler/scheduler_config.json",
                   "ultrasound_diffusers/assets/bmap-echo-phantom-64-fewstep/model_index.json",
                   "ultrasound_diffusers/templates/model_card_template.md",
                   "ultrasound_diffusers/pipelines/templates/remote_code_shim.py.tmpl",
                   "ultrasound_diffusers/pipelines/loading.py"):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "training/", "docs/", "pipelines/")) for n in names)

    # a fresh environment that sees this environment's dependencies, with the wheel installed (not editable)
    # (without a pip of its own: this interpreter's pip installs into it with --python, which saves ensurepip)
    venv = tmp_path / "venv"
    python = _fresh_venv_with_running_site_packages(venv, tmp_path, env)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", wheel], cwd=tmp_path, env=env)

    work = tmp_path / "cwd"
    work.mkdir()
    result = _run([python, "-c", CHECKS], cwd=work, env=env)
    report = json.loads(next(l for l in result.stdout.splitlines() if l.startswith("REPORT "))[len("REPORT "):])
    prefix = Path(report["prefix"]).resolve()
    assert prefix == venv.resolve()
    # the dependencies come from the running environment (a venv's own site-packages when the suite runs in one)
    assert report["torch_from"] in [str(Path(f).resolve()) for f in running_site_packages()]
    for name, file in {**report["files"], **{p: p for p in report["data_files"]}}.items():
        path = Path(file).resolve()
        assert prefix in path.parents, f"{name} comes from {path}, not from the fresh environment"
        assert ROOT not in path.parents, f"{name} comes from the source tree"
    assert report["data_exist"] and report["pipeline"] == "SemanticUltrasoundPipeline" and report["card_renders"]
    assert report["phantoms"] == 1
    assert report["wheel_name"] == wheel.name  # what the cards and remote-code files tell users to install

    # the demo through the module and the console script, both from the fresh environment
    out = work / "demo-out"
    _run([python, "-m", "ultrasound_diffusers", "demo", "--num_images", "1", "--num_inference_steps", "2",
          "--output_dir", out], cwd=work, env=env)
    assert (out / "demo.png").is_file()
    result = _run([venv / "bin" / "ultrasound-diffusers", "--help"], cwd=work, env=env)
    assert "demo" in result.stdout
