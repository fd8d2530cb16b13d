"""The cyclic collector paused while the package's heavy imports load, and left out of the console script's exit."""

import gc
import subprocess
import sys

import pytest

from ultrasound_diffusers.utils.garbage_collection import collector_paused


def test_collector_paused_restores_the_callers_setting_also_on_error():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the inner block must not re-enable it early
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with collector_paused():
            raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # the caller had it off: stays off
    finally:
        gc.enable()


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_package_leaves_the_collector_as_it_found_it():
    assert _python("import gc, ultrasound_diffusers; print(gc.isenabled(), gc.get_freeze_count())") == "True 0"
    assert _python("import gc; gc.disable(); import ultrasound_diffusers; print(gc.isenabled())") == "False"


def test_console_script_settles_after_the_command_and_keeps_its_exit_code_and_output():
    from configparser import ConfigParser
    from pathlib import Path

    cfg = ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    assert "ultrasound_diffusers.cli:console_main" in cfg["options.entry_points"]["console_scripts"]
    code = ("import gc, sys\n"
            "from ultrasound_diffusers import cli\n"
            "sys.argv = ['ultrasound-diffusers', '--version']\n"
            "try:\n    cli.console_main()\nexcept SystemExit as e:\n    code = e.code\n"
            "print('frozen', gc.get_freeze_count() > 1000, 'code', code)\n")
    out = _python(code).splitlines()
    assert out[0].startswith("ultrasound-diffusers ") and out[-1] == "frozen True code 0"
    done = subprocess.run([sys.executable, "-m", "ultrasound_diffusers", "bmaps", "--size", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--size" in done.stderr  # the command's own error and code still come out
