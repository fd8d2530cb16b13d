"""Building the package wheel from its source folder, offline (for Space folders and the wheel test).

The package is not on PyPI: a Hugging Face Space or a fresh environment installs it from a wheel built here with
``pip wheel --no-deps --no-build-isolation`` (nothing downloaded). The build runs on a clean copy of the parts the
wheel is made of, so that the source folder gets no ``build/`` or ``*.egg-info`` folders and a stale ``build/``
folder never leaks old modules into the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Union

#: What the wheel is built from, relative to the source folder.
SOURCE_FILES = ("setup.cfg", "pyproject.toml", "README.md")
SOURCE_DIRS = ("ultrasound_diffusers", "pipelines")

_PROBE = ("import importlib.util as u, sys; "
          "sys.exit(not (u.find_spec('setuptools.command.bdist_wheel') or u.find_spec('wheel')))")


def source_root() -> Optional[Path]:
    """The package's source folder (with ``setup.cfg``) when it is installed from one (editable), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.cfg").is_file() and all((root / d).is_dir() for d in SOURCE_DIRS) else None


def require_source_root() -> Path:
    """:func:`source_root`, or a ValueError that says how to get one (the package was installed from a wheel)."""
    root = source_root()
    if root is None:
        raise ValueError("building the wheel needs the package's source folder: install the package from its "
                         "source (`pip install -e ./ultrasound-diffusers`) and run it there")
    return root


def wheel_builder(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """An interpreter whose setuptools builds wheels offline (setuptools >= 70.1 has ``bdist_wheel``, older ones
    need the ``wheel`` package): this one, else the one this virtual environment was made from (a venv made with
    ``python -m venv`` carries its own, older setuptools); None when neither can."""
    for python in dict.fromkeys([sys.executable, getattr(sys, "_base_executable", sys.executable)]):
        if subprocess.run([python, "-c", _PROBE], env=None if env is None else dict(env)).returncode == 0:
            return python
    return None


def build_wheel(output_dir: Union[str, os.PathLike], root: Optional[Union[str, os.PathLike]] = None,
                env: Optional[Mapping[str, str]] = None) -> Path:
    """Build the wheel of the source folder ``root`` (default: :func:`source_root`) into ``output_dir``.

    Returns:
        the path of the wheel.

    Raises:
        ValueError: no source folder (the package was installed from a wheel).
        RuntimeError: no interpreter here can build a wheel offline, or the build failed (with pip's message).
    """
    root = Path(root) if root is not None else require_source_root()
    if not (root / "setup.cfg").is_file():
        raise ValueError(f"building the wheel needs the package's source folder; {root} has no setup.cfg")
    python = wheel_builder(env)
    if python is None:
        raise RuntimeError("no interpreter here can build a wheel offline: install `wheel` or setuptools >= 70.1")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    before = set(output_dir.glob("*.whl"))
    with tempfile.TemporaryDirectory(prefix="ultrasound-diffusers-wheel-") as tmp:
        src = Path(tmp) / "src"
        skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
        for name in SOURCE_DIRS:
            shutil.copytree(root / name, src / name, ignore=skip)
        for name in SOURCE_FILES:
            if (root / name).is_file():
                shutil.copyfile(root / name, src / name)
        result = subprocess.run(
            [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(output_dir),
             str(src)], capture_output=True, text=True, env=None if env is None else dict(env),
        )
    new = sorted(set(output_dir.glob("*.whl")) - before) or sorted(output_dir.glob("ultrasound_diffusers-*.whl"))
    if result.returncode != 0 or not new:
        raise RuntimeError(f"building the wheel failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return new[-1]
