"""The console script: sub-command discovery, the B-map plot command, clear errors."""

import subprocess

import pytest
import sys

from PIL import Image

from ultrasound_diffusers.cli import build_parser, main


def test_help_lists_subcommands(capsys):
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert "bmaps" in names


def test_bmaps_command_writes_png(tmp_path, capsys):
    out = tmp_path / "fig" / "b.png"
    assert main(["bmaps", "--probe_geometry", "linear", "--size", "8,64", "--num", "3", "--out", str(out)]) == 0
    assert "B-map figure written" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert not list(out.parent.glob(".*tmp"))  # atomic write left nothing behind


def test_bmaps_command_reads_scheduler_folder(tmp_path):
    from ultrasound_diffusers import BMapAttenuationScheduler

    BMapAttenuationScheduler(bmap_min=0.5, probe_geometry="linear").save_pretrained(tmp_path / "sched")
    out = tmp_path / "b.png"
    assert main(["bmaps", "--scheduler", str(tmp_path / "sched"), "--size", "16", "--out", str(out)]) == 0
    assert out.exists()


def test_bad_size_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:  # argparse refuses it with the one size rule
        main(["bmaps", "--size", "0,x", "--out", str(tmp_path / "b.png")])
    assert info.value.code == 2 and "--size" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists()


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "ultrasound_diffusers", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "bmaps" in result.stdout


@pytest.mark.parametrize("argv", [
    ["convert", "--checkpoint", "c.pt"], ["demo"], ["generate", "--pipeline", "p", "--labels", "phantoms:echo:2"],
    ["phantoms", "--num_images", "2"], ["evaluate", "--real", "r", "--generated", "g"], ["reconstruct"],
])
def test_every_folder_writing_command_takes_output_dir(argv):
    """One output-folder flag name across commands; evaluate and reconstruct keep --out as an alias."""
    parser = build_parser()
    args = parser.parse_args(argv + ["--output_dir", "somewhere"])
    assert getattr(args, "output_dir", getattr(args, "out", None)) == "somewhere"
    if argv[0] in ("evaluate", "reconstruct"):
        assert parser.parse_args(argv + ["--out", "elsewhere"]).out == "elsewhere"
