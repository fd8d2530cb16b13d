"""Installation: the declared requirements are ranges that keep a user's torch, and the core package (the demo
included) works without the converters' extras (issue 31).

* The core imports, and the demo runs, in a subprocess whose import system refuses pydicom, nibabel, SimpleITK,
  cv2 and albumentations; the converters then raise an ImportError that names the extra to install.
* ``setup.cfg``'s requirements admit torch 2.11, 2.12 (the GPU machines' builds) and every version installed here.
* pip, offline, resolving this source folder in a venv that holds another torch (2.11.0, as installed-package
  metadata) keeps that torch: the report installs ``ultrasound-diffusers`` alone. With the old ``torch==2.13.0`` pin
  the same resolution fails (nothing to replace torch with offline), which the test checks too, so it can fail.
"""

import configparser
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("pydicom", "nibabel", "SimpleITK", "cv2", "albumentations")


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _requirements(section: str = "options", key: str = "install_requires"):
    value = _setup_cfg()[section][key]
    return [Requirement(line) for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]


def _extras():
    parser = _setup_cfg()
    return {name: [Requirement(x) for x in value.splitlines() if x.strip()]
            for name, value in parser["options.extras_require"].items()}


# ---------------------------------------------------------------------------------------------------- extras
_BLOCKING_PRELUDE = """
import importlib.abc, sys
BLOCKED = {blocked!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
"""


def _run_blocked(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = _BLOCKING_PRELUDE.format(blocked=BLOCKED) + textwrap.dedent(body)
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.slow
def test_core_and_demo_work_without_the_converter_extras(tmp_path):
    result = _run_blocked(
        """
        import importlib, json, sys
        import numpy as np
        for name in ("ultrasound_diffusers", "ultrasound_diffusers.pipelines", "ultrasound_diffusers.schedulers",
                     "ultrasound_diffusers.models", "ultrasound_diffusers.data", "ultrasound_diffusers.evaluation",
                     "ultrasound_diffusers.acoustics", "ultrasound_diffusers.commands", "ultrasound_diffusers.cli",
                     "ultrasound_diffusers.losses", "ultrasound_diffusers.generation", "ultrasound_diffusers.demo"):
            importlib.import_module(name)
        from ultrasound_diffusers.cli import build_parser
        build_parser()
        # the demo, shrunk: one image, two steps
        from ultrasound_diffusers.demo import run_demo
        figure = run_demo(num_images=1, num_inference_steps=2, output_dir="demo_out")
        messages = {}
        import ultrasound_diffusers.data.converters as converters
        import ultrasound_diffusers.data.camus as camus
        import ultrasound_diffusers.data.dicom as dicom
        from ultrasound_diffusers.data.augment import augment_label_map
        calls = {
            "cv2": lambda: converters.convex_hull_mask(np.ones((4, 4), bool)),
            "nibabel": lambda: camus._read_nifti("missing.nii.gz"),
            "SimpleITK": lambda: camus._read_mhd("missing.mhd"),
            "pydicom": lambda: dicom.convert_dicom("missing_dir"),
            "albumentations": lambda: augment_label_map(np.zeros((16, 16), np.uint8), seed=0),
        }
        for name, call in calls.items():
            try:
                call()
                messages[name] = None
            except ImportError as error:
                messages[name] = str(error)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("RESULT" + json.dumps({"figure": str(figure), "loaded": loaded, "messages": messages}))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT")][-1]
    report = json.loads(line[len("RESULT"):])
    assert Path(tmp_path, report["figure"]).is_file()
    assert report["loaded"] == []
    extras = _extras()
    for module, message in report["messages"].items():
        assert message is not None, f"{module}: the call ran without the blocked module"
        assert 'pip install "ultrasound-diffusers[' in message, message
        extra = message.split("ultrasound-diffusers[")[1].split("]")[0]
        # the named extra exists and installs the distribution that provides the module
        assert extra in extras, (module, extra)
        from ultrasound_diffusers.utils.lazy import OPTIONAL_IMPORTS

        distribution = OPTIONAL_IMPORTS[module][0]
        assert distribution.lower() in {r.name.lower() for r in extras[extra]}, (module, extra)


def test_moved_packages_are_extras_not_core_requirements():
    core = {r.name.lower() for r in _requirements()}
    from ultrasound_diffusers.utils.lazy import OPTIONAL_IMPORTS

    moved = {dist.lower() for dist, _ in OPTIONAL_IMPORTS.values()}
    assert core.isdisjoint(moved), core & moved
    extras = _extras()
    tested = {r.name.lower() for r in extras["test"]}
    assert moved <= tested, "the test extra must pull every optional reader the tests use"
    converters = {r.name.lower() for r in extras["converters"]}
    assert moved <= converters


# ---------------------------------------------------------------------------------------------------- ranges
def test_torch_is_a_range_admitting_the_gpu_builds():
    (torch_req,) = [r for r in _requirements() if r.name == "torch"]
    assert not any(spec.operator in ("==", "===") for spec in torch_req.specifier), str(torch_req)
    for version in ("2.11.0", "2.11.0+cu130", "2.12.0", "2.12.1", "2.13.0", "2.14.1"):
        assert torch_req.specifier.contains(version), (str(torch_req), version)
    assert not torch_req.specifier.contains("3.0.0")


def test_every_requirement_admits_the_installed_version():
    for req in _requirements():
        installed = importlib.metadata.version(req.name)
        local = Version(installed).public  # "2.13.0+cpu" -> "2.13.0"
        assert req.specifier.contains(local, prereleases=True), f"{req} does not admit the installed {installed}"


# ---------------------------------------------------------------------------------------------------- pip
def _source_copy(dest: Path, setup_cfg_text: str) -> Path:
    """The files pip needs to read this project's metadata: setup.cfg, pyproject.toml, README.md and the package
    folders (empty: metadata only)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    (dest / "setup.cfg").write_text(setup_cfg_text)
    for pkg in _setup_cfg()["options"]["packages"].split():
        folder = dest / ("pipelines" if pkg == "ultrasound_diffusers.pipelines" else pkg.replace(".", "/"))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").touch()
    return dest


def _venv_with_torch(path: Path, version: str) -> Path:
    """A venv that sees this interpreter's packages, with its own torch ``version`` as installed-package metadata
    (a venv's site-packages come first, so pip sees that torch, as it would a real install of that build)."""
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    python = path / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    info = Path(purelib) / f"torch-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (info / "INSTALLER").write_text("test\n")
    (info / "RECORD").write_text("")
    return python


def _pip_dry_run(python: Path, source: Path, report: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return subprocess.run(
        [python, "-m", "pip", "--isolated", "--disable-pip-version-check", "install", "--dry-run", "--no-index",
         "--no-build-isolation", "--quiet", "--report", str(report), str(source)],
        capture_output=True, text=True, timeout=180, env=env,
    )


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools to read setup.cfg")
def test_pip_keeps_another_torch_within_the_range(tmp_path):
    python = _venv_with_torch(tmp_path / "venv", "2.11.0")
    seen = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert seen == "2.11.0"
    text = (ROOT / "setup.cfg").read_text()

    result = _pip_dry_run(python, _source_copy(tmp_path / "src", text), tmp_path / "report.json")
    assert result.returncode == 0, result.stderr[-3000:]
    installs = [(i["metadata"]["name"], i["metadata"]["version"])
                for i in json.loads((tmp_path / "report.json").read_text())["install"]]
    assert installs == [("ultrasound-diffusers", "0.1.0")], installs

    # The old pin would make pip replace that torch (offline: fail to), so the check above can fail.
    (torch_line,) = [line for line in text.splitlines() if line.strip().startswith("torch")]
    pinned = text.replace(torch_line, "    torch==2.13.0")
    result = _pip_dry_run(python, _source_copy(tmp_path / "pinned", pinned), tmp_path / "pinned.json")
    assert result.returncode != 0
    assert "conflicting dependencies" in result.stderr or "torch" in result.stdout + result.stderr, result.stderr
