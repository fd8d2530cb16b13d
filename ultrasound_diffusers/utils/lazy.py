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
