"""The one deprecation helper (ultrasound_diffusers/utils/deprecation.py): the FutureWarning names the removal
version, a shim past its removal version fails, and the spellings kept from earlier releases go through it."""

import re
import warnings
from pathlib import Path

import pytest

import ultrasound_diffusers.utils.deprecation as deprecation
from ultrasound_diffusers.utils.deprecation import deprecate

ROOT = Path(__file__).resolve().parents[1]


def _old_spelling():
    deprecate("old_spelling()", "99.0.0", "Write new_spelling().")


def test_warning_names_the_removal_version_and_points_at_the_caller():
    with pytest.warns(FutureWarning, match=r"old_spelling\(\) is deprecated and will be removed in ultrasound-diffusers "
                                           r"99\.0\.0\. Write new_spelling\(\)\.") as record:
        _old_spelling()
    assert record[0].filename == __file__  # the line that called the function reading the old spelling


def test_a_shim_past_its_removal_version_fails(monkeypatch):
    monkeypatch.setattr(deprecation, "__version__", "0.2.0")
    with pytest.raises(ValueError, match=r"old_spelling\(\) was to be removed in ultrasound-diffusers 0\.2\.0"):
        deprecate("old_spelling()", "0.2.0", "Write new_spelling().")
    monkeypatch.setattr(deprecation, "__version__", "0.2.0.dev0")  # a development version of the release too
    with pytest.raises(ValueError):
        deprecate("old_spelling()", "0.2.0", "Write new_spelling().")
    monkeypatch.setattr(deprecation, "__version__", "0.1.9")
    with pytest.warns(FutureWarning):
        deprecate("old_spelling()", "0.2.0", "Write new_spelling().")


def test_kept_spellings_name_their_removal_version():
    from ultrasound_diffusers.operators import MissingScanLines
    from ultrasound_diffusers.reconstruction import resolve_phantom_image

    with pytest.warns(FutureWarning, match=r"MissingScanLines\(fan_radii=\.\.\.\) is deprecated and will be removed "
                                           r"in ultrasound-diffusers 0\.2\.0\. Pass geometry=FanGeometry"):
        MissingScanLines(4, probe_geometry="convex", fan_radii=(0.1, 0.9))
    with pytest.warns(FutureWarning, match=r"`--image phantom:1` is deprecated and will be removed in "
                                           r"ultrasound-diffusers 0\.2\.0\. Write `--image phantoms:echo:"):
        assert resolve_phantom_image("phantom:1")[2] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MissingScanLines(4, probe_geometry="convex")  # the current spelling warns nothing


def test_future_warnings_of_the_package_go_through_the_helper():
    """No module warns of a deprecation by itself: every kept old spelling goes through the helper."""
    not_yet = set()
    own = {"ultrasound_diffusers/utils/deprecation.py"}
    found = set()
    for folder in ("ultrasound_diffusers", "pipelines"):
        for path in (ROOT / folder).rglob("*.py"):
            if re.search(r"\bFutureWarning\s*,", path.read_text(encoding="utf-8")):
                found.add(path.relative_to(ROOT).as_posix())
    assert found - own <= not_yet, sorted(found - own - not_yet)
