"""Bad command-line input ends in one line that names the flag and what was expected (issue #27, item 6), before
any work starts."""

from __future__ import annotations

import pytest

from ultrasound_diffusers.cli import main
from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH

CASES = [
    (["demo", "--device", "cuda"], "--device", "not available here"),
    (["reconstruct", "--device", "cuda:3"], "--device", "usable: cpu"),
    (["app", "--pipeline", "/nonexistent"], "--pipeline", "no such folder"),
    (["demo", "--pipeline", "./no/such/pipeline"], "--pipeline", "no such folder"),
    (["convert", "--checkpoint", "c.pt", "--output_dir", "o", "--max_shard_size", "bogus"], "--max_shard_size", "500MB"),
    (["bmaps", "--scheduler", "/nonexistent"], "--scheduler", "no such scheduler folder"),
    (["bmaps", "--size", "20000"], "--size", "20000"),
    (["bmaps", "--num", "0"], "--num", "must be an integer from 1"),
    (["generate", "--pipeline", str(DEMO_PIPELINE_PATH), "--labels", "phantoms:echo:100000000", "--output_dir", "o"],
     "labels", "at most 1,000,000"),
    (["phantoms", "--num_images", "2", "--noise_db", "nan", "--output_dir", "o"], "--noise_db", "finite"),
    (["phantoms", "--num_images", "2", "--gain_db", "inf", "--output_dir", "o"], "--gain_db", "finite"),
    (["phantoms", "--num_images", "2", "--tgc", "nan", "--output_dir", "o"], "--tgc", "finite"),
    (["prepare", "lung", "--input", "x", "--split_fractions", "nan,0,0", "--output_dir", "o"], "--split_fractions", "finite"),
]


@pytest.mark.parametrize("argv, flag, expected", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_flag_names_itself(argv, flag, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if flag in ("--device", "--pipeline", "--max_shard_size", "--noise_db", "--gain_db",
                                               "--tgc", "--split_fractions", "--num") else _returns(2) as outcome:
        code = main(argv)
        outcome.code = code
    err = capsys.readouterr().err
    assert flag in err and expected in err, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


class _returns:
    def __init__(self, code):
        self.expected = code
        self.code = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        assert exc[0] is None and self.code == self.expected
        return False


@pytest.mark.parametrize("spec, expected", [
    ("channels:elements=0", "elements='0': expected an integer K >= 1"),
    ("channels:depth=-1", "depth='-1'"),
    ("missing_lines:4:99", "expected missing_lines:K"),
    ("missing_lines:0", "K (keep every K-th scan line)"),
    ("channels:snr=nan", "finite"),
])
def test_operator_texts_name_the_option(spec, expected):
    """Errors name the option of the text the user wrote, not an internal parameter (`keep_every`)."""
    from ultrasound_diffusers.operator_registry import make_operator

    with pytest.raises(ValueError) as info:
        make_operator(spec, (32, 32))
    assert expected in str(info.value) and "keep_every" not in str(info.value)


@pytest.mark.parametrize("argv, flag", [
    (["evaluate", "--real", "r", "--generated", "g", "--output_dir", "o", "--seg_steps", "0"], "--seg_steps"),
    (["demo", "--num_inference_steps", "0"], "--num_inference_steps"),
    (["generate", "--pipeline", "p", "--labels", "l", "--output_dir", "o", "--batch_size", "-1"], "--batch_size"),
    (["reconstruct", "--num_samples", "0"], "--num_samples"),
    (["phantoms", "--num_images", "0", "--output_dir", "o"], "--num_images"),
    (["demo", "--seed", "-1"], "--seed"),
])
def test_counts_are_checked_when_the_command_line_is_read(argv, flag, capsys):
    from ultrasound_diffusers.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert f"{flag} must be an integer" in err
