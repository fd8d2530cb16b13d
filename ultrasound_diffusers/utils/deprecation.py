"""The one way the package keeps an old spelling working for a while: :func:`deprecate`.

Every spelling kept from an earlier release (a keyword, a command-line value) calls :func:`deprecate` where it is
read, with the version that removes it. The helper works as ``diffusers.utils.deprecate`` does, but against this
package's version (diffusers' own helper compares the removal version with diffusers' version, which is not
ours): a FutureWarning that names the removal version and what to write instead, and a ValueError once the package
has reached that version, so that a release cannot ship a spelling it promised to remove.
"""

from __future__ import annotations

import warnings

from packaging import version as _version

from ..version import __version__

__all__ = ["deprecate"]


def _reached(removal_version: str, current: str) -> bool:
    return _version.parse(_version.parse(current).base_version) >= _version.parse(removal_version)


def deprecate(name: str, removal_version: str, message: str, stacklevel: int = 2) -> None:
    """Warn that ``name`` (an old spelling, e.g. ``"MissingScanLines(fan_radii=...)"``) goes away in
    ``removal_version``.

    Args:
        name: what the caller used, as the user wrote it.
        removal_version: the version of ultrasound-diffusers that removes it (``"0.2.0"``).
        message: what to write instead.
        stacklevel: as for :func:`warnings.warn`, counted from the caller of :func:`deprecate` (2: the caller's
            caller, the user's line when the caller is the function that reads the old spelling).

    Raises:
        ValueError: the package is at ``removal_version`` or later: the shim should have been removed.
    """
    if _reached(removal_version, __version__):
        raise ValueError(
            f"the deprecated spelling {name} was to be removed in ultrasound-diffusers {removal_version}, and this "
            f"is {__version__}: remove it and its deprecate() call"
        )
    warnings.warn(
        f"{name} is deprecated and will be removed in ultrasound-diffusers {removal_version}. {message}",
        FutureWarning,
        stacklevel=stacklevel + 1,
    )
