"""How the package is installed, and building its wheel from the source folder, offline.

ultrasound-diffusers is not published on PyPI, so installing it by name from the package index fails (or installs
an unrelated project that took the name). It is installed from its source folder, or from the wheel built there:
:data:`INSTALL_COMMAND`, :data:`WHEEL_BUILD_COMMAND`, :func:`wheel_install_command` and :func:`install_hint` are
the one wording of that, used by the model cards (:mod:`ultrasound_diffusers.hub_utils`), the remote-code files
and the loader's errors (``ultrasound_diffusers.pipelines.loading``).

A Hugging Face Space or a fresh environment installs the package from a wheel built here (:func:`build_wheel`)
with ``pip wheel --no-deps --no-build-isolation`` (nothing downloaded). The build runs on a clean copy of the
parts the wheel is made of, so that the source folder gets no ``build/`` or ``*.egg-info`` folders and a stale
``build/`` folder never leaks old modules into the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Union

from ..version import __version__

#: Name of the package (what Python imports, and the name of its wheel).
PACKAGE_NAME = "ultrasound_diffusers"
#: Name of the distribution (what pip calls the project).
DISTRIBUTION_NAME = "ultrasound-diffusers"
#: How to install the package from its source folder (a clone or an unpacked source archive): it is not on PyPI.
INSTALL_COMMAND = "pip install ./ultrasound-diffusers"
#: How to build the wheel inside the source folder with pip alone (``python -m build`` needs the ``build`` package).
WHEEL_BUILD_COMMAND = "pip wheel --no-deps -w dist ."

#: What the wheel is built from, relative to the source folder.
SOURCE_FILES = ("setup.cfg", "pyproject.toml", "README.md")
SOURCE_DIRS = ("ultrasound_diffusers", "pipelines")

_PROBE = ("import importlib.util as u, sys; "
          "sys.exit(not (u.find_spec('setuptools.command.bdist_wheel') or u.find_spec('wheel')))")


# ----------------------------------------------------------------------------------------------------------------
# The package: version and how to install it
# ----------------------------------------------------------------------------------------------------------------


def package_version() -> str:
    """Version of the installed ultrasound_diffusers."""
    return __version__


def wheel_filename(version: Optional[str] = None) -> str:
    """File name of the wheel that :data:`WHEEL_BUILD_COMMAND` (or ``python -m build --wheel``) writes for
    ``version`` (default: the installed one), e.g. ``ultrasound_diffusers-0.1.0-py3-none-any.whl``."""
    return f"{PACKAGE_NAME}-{version or package_version()}-py3-none-any.whl"


def wheel_install_command(version: Optional[str] = None) -> str:
    """``pip install dist/<wheel>``: installs the wheel built in the source folder."""
    return f"pip install dist/{wheel_filename(version)}"


def install_hint(version: Optional[str] = None) -> str:
    """One sentence saying how to install ultrasound-diffusers (for error messages and remote-code files)."""
    return (
        f"{DISTRIBUTION_NAME} is not on PyPI: install it from its source folder (`{INSTALL_COMMAND}`, or "
        f"`pip install -e .` inside it) or from a wheel built there (`{WHEEL_BUILD_COMMAND}`, then "
        f"`{wheel_install_command(version)}`)"
    )


# ----------------------------------------------------------------------------------------------------------------
# Building the wheel
# ----------------------------------------------------------------------------------------------------------------


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
