"""Module-level ``__getattr__`` for names a package imports on first use (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Mapping


def lazy_module_getattr(package: str, modules: Mapping[str, Iterable[str]]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``package`` that imports a module of ``modules`` (paths relative to ``package``, e.g.
    ``".camus"``, each with the names it provides) on first access of one of its names and returns the
    attribute; other names raise AttributeError as a module would. Use as
    ``__getattr__ = lazy_module_getattr(__name__, {".camus": ("convert_camus",)})``."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


#: The optional dependencies of the package by import name: (the pip distribution, the extra that installs it).
OPTIONAL_IMPORTS = {
    "pydicom": ("pydicom", "dicom"),
    "nibabel": ("nibabel", "nifti"),
    "SimpleITK": ("SimpleITK", "nifti"),
    "cv2": ("opencv-python-headless", "converters"),
    "albumentations": ("albumentations", "augment"),
}


def import_optional(module: str, purpose: str, extra: str | None = None) -> Any:
    """``importlib.import_module(module)``, or an ImportError that names the extra installing it.

    Args:
        module: a module of an optional dependency (``"pydicom"``, ``"pydicom.pixels"``, ``"cv2"``, ...); its
            top-level name must be a key of :data:`OPTIONAL_IMPORTS` unless ``extra`` is given.
        purpose: what needs it, for the message (``"reading DICOM files"``).
        extra: the extra to name (default: the one :data:`OPTIONAL_IMPORTS` lists for the top-level name).

    Raises:
        ImportError: e.g. ``reading DICOM files needs `pydicom`, which is not installed: pip install
            "ultrasound-diffusers[dicom]"``.
    """
    top = module.split(".")[0]
    distribution, default_extra = OPTIONAL_IMPORTS.get(top, (top, None))
    extra = extra or default_extra
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if extra is None:
            raise
        raise ImportError(
            f"{purpose} needs `{distribution}` (import {top}), which is not installed: "
            f'pip install "ultrasound-diffusers[{extra}]" (or pip install {distribution}). ({error})'
        ) from error
