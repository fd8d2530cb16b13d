"""The lazy-import ``__getattr__`` of the package and of ``ultrasound_diffusers.data``."""

import subprocess
import sys

import pytest

from ultrasound_diffusers.utils.lazy import lazy_module_getattr


def test_lazy_getattr_imports_on_first_use_and_refuses_other_names():
    getattr_ = lazy_module_getattr("ultrasound_diffusers.data", {".lung": ("convert_lung",)})
    from ultrasound_diffusers.data.lung import convert_lung

    assert getattr_("convert_lung") is convert_lung
    with pytest.raises(AttributeError, match="'ultrasound_diffusers.data' has no attribute 'convert_camus'"):
        getattr_("convert_camus")


def test_package_imports_heavy_modules_only_when_asked():
    code = (
        "import sys, ultrasound_diffusers as u\n"
        "assert 'ultrasound_diffusers.evaluation.report' not in sys.modules\n"
        "assert 'ultrasound_diffusers.data.dicom' not in sys.modules\n"
        "u.evaluate, u.convert_dicom\n"
        "assert 'ultrasound_diffusers.evaluation.report' in sys.modules\n"
        "assert 'ultrasound_diffusers.data.dicom' in sys.modules\n"
        "missing = [n for n in u.__all__ if not hasattr(u, n)]\n"
        "assert not missing, missing\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
