"""The comparison report of ``evaluate --generated a=DIR b=DIR`` (issue 20) on tiny synthetic sets."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ultrasound_diffusers.cli import main
from ultrasound_diffusers.evaluation.comparison import (
    DEPTH_BANDS,
    LPIPS_NOTE,
    _FeatureGrams,
    bootstrap_interval,
    compare,
    excludes_zero,
    pair_by_labels,
    TrainingRuns,
    parse_generated,
)
from ultrasound_diffusers.evaluation.fid import frechet_distance_from_features, mmd2_unbiased
from ultrasound_diffusers.evaluation.io import ImageSet

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluation_cli import synthetic_echo, write_folder  # noqa: E402


def _rows(report):
    return {(r["key"]): r for r in report["comparison"]["rows"]}


def _contains_zero(d):
    return d["low"] <= 1e-9 and d["high"] >= -1e-9


# ---------------------------------------------------------------------------------------------------------------
# small parts
# ---------------------------------------------------------------------------------------------------------------


def test_parse_generated_names_paths_and_errors():
    assert parse_generated(["samples/"]) == (False, {"generated": "samples/"})
    assert parse_generated("runs/lr=1e-4/samples") == (False, {"generated": "runs/lr=1e-4/samples"})
    named, sets = parse_generated(["bmap=a/b", "plain=runs/x=1"])
    assert named and list(sets) == ["bmap", "plain"] and sets["plain"] == "runs/x=1"
    # a name given twice collects the runs of one arm (issue 32: training-seed variance), in order
    named, sets = parse_generated(["a=x", "b=z", "a=y"])
    assert list(sets) == ["a", "b"] and isinstance(sets["a"], TrainingRuns) and tuple(sets["a"]) == ("x", "y")
    assert sets["b"] == "z"
    with pytest.raises(ValueError, match="name every set"):
        parse_generated(["a=x", "y"])
    with pytest.raises(ValueError, match="unnamed sets"):
        parse_generated(["x", "y"])
    with pytest.raises(ValueError, match="reserved"):
        parse_generated(["real=x"])
    with pytest.raises(ValueError, match="nothing after"):
        parse_generated(["a="])


def test_feature_grams_reproduce_fid_and_kid():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 1.3, size=(9, 5))
    g = _FeatureGrams(x, y)
    r, s = np.arange(12), np.arange(9)
    assert g.fid(r, s) == pytest.approx(frechet_distance_from_features(x, y, warn=False), rel=1e-9)
    assert g.kid(r, s) == pytest.approx(mmd2_unbiased(x, y), rel=1e-9)
    # a resample with a duplicated row: FID is the FID of the duplicated feature sets
    r2 = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert g.fid(r2, s) == pytest.approx(frechet_distance_from_features(x[r2], y, warn=False), rel=1e-9)


def test_bootstrap_interval_and_zero_flag():
    rng = np.random.default_rng(1)
    reps = rng.normal(2.0, 1.0, 4000)
    lo, hi = bootstrap_interval(reps, 0.95)
    assert lo == pytest.approx(2.0 - 1.96, abs=0.1) and hi == pytest.approx(2.0 + 1.96, abs=0.1)
    lo2, hi2 = bootstrap_interval(reps + 0.5, 0.95, estimate=2.0)  # biased replicates: shifted back
    assert lo2 == pytest.approx(lo, abs=0.05) and hi2 == pytest.approx(hi, abs=0.05)
    assert bootstrap_interval([np.nan, np.nan]) == (None, None)
    assert excludes_zero(0.1, 0.2) and excludes_zero(-0.2, -0.1) and not excludes_zero(-0.1, 0.2)
    assert not excludes_zero(-2e-7, -1e-7, scale=2.0)  # float rounding is not a difference


def test_pair_by_labels_by_index_by_content_and_error():
    x, y = synthetic_echo(4, size=16, seed=0)
    real = ImageSet(x, y)
    assert pair_by_labels(real, ImageSet(x, y)).tolist() == [0, 1, 2, 3]
    order = [2, 0, 3, 3]
    assert pair_by_labels(real, ImageSet(x[order], y[order])).tolist() == order
    other = y.copy()
    other[1, 0, 0] = 4
    with pytest.raises(ValueError, match="image 1 .* equals no real label map"):
        pair_by_labels(real, ImageSet(x, other), "plain")
    with pytest.raises(ValueError, match="needs label maps"):
        pair_by_labels(real, ImageSet(x), "plain")


# ---------------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------------


def test_comparison_report_table_intervals_and_pictures(tmp_path):
    rx, ry = synthetic_echo(10, size=32, seed=1)
    gx, _ = synthetic_echo(10, size=32, seed=2)  # generated from the real label maps' shapes, different speckle
    gx = np.where(ry > 0, gx, 0.0)
    sets = {
        "ref": ImageSet(gx, ry),
        "same": ImageSet(gx.copy(), ry),  # identical to the reference
        "dark": ImageSet(gx * 0.6, ry),  # clearly darker
    }
    out = tmp_path / "cmp"
    report = compare(ImageSet(rx, ry), sets, out, metrics="fid,kid,depth,speckle,classes,realism", paired=True,
                     feature_extractor="random", kid_subsets=5, speckle_window=4, num_bootstrap=200,
                     num_feature_bootstrap=40, progress=False)
    for rel in ("report.md", "metrics.json", "plots/depth_profiles.png", "plots/label_grid.png",
                "plots/dark/speckle.png", "plots/ref/class_histograms.png"):
        assert (out / rel).is_file(), rel
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mode"] == "comparison" and saved["reference_set"] == "ref"
    assert saved["config"]["bootstrap"]["num_resamples"] == 200
    assert set(saved["sets"]) == {"ref", "same", "dark"} and "fid" in saved["sets"]["dark"]  # every metric per set
    rows = _rows(report)
    bands = {b for b, _, _ in DEPTH_BANDS}
    for key in ("mean_inside_fan", "depth_profile_l1", "speckle_snr_median", "contrast_tissue_vs_lv_cavity"):
        assert {k.split("[")[1][:-1] for k in rows if k.startswith(key + "[")} == bands, key
    for key in ("fid", "kid", "psnr", "ssim", "mean_inside_fan", "mean_inside_fan[deep]"):
        assert key in rows, key
        assert set(rows[key]["differences"]) == {"same", "dark"}
    # a set identical to the reference: every difference interval contains 0
    for row in report["comparison"]["rows"]:
        d = row["differences"]["same"]
        if d["low"] is not None:
            assert _contains_zero(d) and d["excludes_zero"] is False, row["key"]
    # a clearly darker set: the intervals of the intensity differences exclude 0, on the negative side
    for key in ("mean_inside_fan", "mean_inside_fan[shallow]", "mean_inside_fan[deep]",
                "contrast_tissue_vs_lv_cavity"):
        d = rows[key]["differences"]["dark"]
        assert d["excludes_zero"] is True and d["high"] < 0, key
        assert d["low"] <= d["value"] <= d["high"]
    assert rows["fid"]["differences"]["dark"]["excludes_zero"] is True
    assert rows["fid"]["differences"]["dark"]["low"] > 0
    # each set's own value carries its interval, around the value
    v = rows["mean_inside_fan"]["values"]["dark"]
    assert v["low"] < v["value"] < v["high"]
    assert saved["paired"]["dark"]["by_index"] is True
    md = (out / "report.md").read_text()
    header = "| metric | depth band | real | ref | same | dark | same - ref | excludes 0 | dark - ref | excludes 0 |"
    assert header in md
    assert "**yes**" in md and "plots/depth_profiles.png" in md and "plots/label_grid.png" in md
    assert LPIPS_NOTE in md
    assert "## Realism" in md and "| property | real-scan range | real | ref | same | dark |" in md


def _width_of_differences(tmp_path, n, name):
    rx, ry = synthetic_echo(n, size=24, seed=10)
    ax, ay = synthetic_echo(n, size=24, seed=11)
    bx, by = synthetic_echo(n, size=24, seed=12, attenuation=0.5)
    report = compare(ImageSet(rx, ry), {"a": ImageSet(ax, ay), "b": ImageSet(bx, by)}, tmp_path / name,
                     metrics="depth", num_bootstrap=300, progress=False, num_grid_columns=2)
    rows = _rows(report)
    return {k: rows[k]["differences"]["b"]["high"] - rows[k]["differences"]["b"]["low"]
            for k in ("mean_inside_fan", "mean_inside_fan[deep]", "depth_profile_l1")}


def test_intervals_shrink_with_more_images(tmp_path):
    small = _width_of_differences(tmp_path, 5, "small")
    large = _width_of_differences(tmp_path, 40, "large")
    for key in small:
        assert large[key] < 0.7 * small[key], (key, small[key], large[key])


def test_cli_comparison_and_single_set_and_errors(tmp_path, capsys):
    rx, ry = synthetic_echo(6, size=16, seed=1)
    gx, _ = synthetic_echo(6, size=16, seed=2)
    real = write_folder(tmp_path / "real", rx, ry)
    a = write_folder(tmp_path / "a", gx, ry)
    b = write_folder(tmp_path / "b", gx * 0.5, ry)
    out = tmp_path / "report"
    base = ["evaluate", "--real", str(real), "--metrics", "depth", "--no_progress", "--bootstrap", "30"]
    code = main(base + ["--generated", f"bmap={a}", f"plain={b}", "--paired", "--reference_set", "plain",
                        "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "bmap - plain" in printed and "PSNR" in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["reference_set"] == "plain" and saved["set_names"] == ["bmap", "plain"]
    assert (out / "plots" / "label_grid.png").is_file()
    # one named set: a comparison report without differences
    assert main(base + ["--generated", f"only={a}", "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert one["set_names"] == ["only"] and all(r["differences"] == {} for r in one["comparison"]["rows"])
    # one unnamed set: today's single-set report
    single = tmp_path / "single"
    assert main(["evaluate", "--real", str(real), "--generated", str(a), "--metrics", "depth", "--no_progress",
                 "--out", str(single)]) == 0
    assert (single / "sample_grid.png").is_file() and "mode" not in json.loads((single / "metrics.json").read_text())
    capsys.readouterr()
    # clear errors
    # a repeated name: two training runs of one arm, pooled, with a two-level bootstrap
    assert main(base + ["--generated", f"bmap={a}", f"bmap={b}", f"plain={b}", f"plain={a}", "--out",
                        str(tmp_path / "runs")]) == 0
    runs = json.loads((tmp_path / "runs" / "metrics.json").read_text())
    assert runs["runs"]["bmap"] == {"num_runs": 2, "images_per_run": [6, 6]} and runs["num_images"]["bmap"] == 12
    assert "two-level bootstrap" in runs["config"]["bootstrap"]["resampling"]
    assert "spread between training runs (runs per set" in (tmp_path / "runs" / "report.md").read_text()
    capsys.readouterr()
    assert main(base + ["--generated", f"bmap={a}", "--reference_set", "nope", "--out", str(tmp_path / "e2")]) == 2
    assert "not one of the generated sets" in capsys.readouterr().err
    other = write_folder(tmp_path / "other", gx, synthetic_echo(6, size=16, seed=5)[1][::-1] * 0 + 2)
    assert main(base + ["--generated", f"x={other}", "--paired", "--out", str(tmp_path / "e3")]) == 2
    assert "equals no real label map" in capsys.readouterr().err


def test_compare_shares_evaluate_options():
    """compare() takes evaluate()'s keyword options by name, with evaluate()'s defaults, and refuses others."""
    import inspect

    from ultrasound_diffusers.evaluation import comparison, report

    from ultrasound_diffusers.evaluation.options import OPTION_NAMES, EvaluationOptions

    # one settings object for both, taken as `options=` or field by field (the keywords win)
    for fn in (report.evaluate, comparison.compare):
        params = inspect.signature(fn).parameters
        assert params["options"].kind is inspect.Parameter.KEYWORD_ONLY and params["options"].default is None
        assert "fields" in params and params["fields"].kind is inspect.Parameter.VAR_KEYWORD
    options = EvaluationOptions.build(EvaluationOptions(seg_steps=5, seed=3), {"seg_steps": 7})
    assert options.seg_steps == 7 and options.seed == 3 and options.label_column == "auto"
    assert report.SHARED_OPTIONS == OPTION_NAMES and "seg_steps" in OPTION_NAMES
    # a name that is no option is a TypeError naming it, before any work, from both entry points
    with pytest.raises(TypeError, match="num_samples_in_grid"):
        comparison.compare("a", {"x": "b"}, "c", num_samples_in_grid=3)
    with pytest.raises(TypeError, match="seg_stepz"):
        report.evaluate("a", "b", "c", seg_stepz=3)
    with pytest.raises(TypeError, match="EvaluationOptions"):
        report.evaluate("a", "b", "c", options={"seg_steps": 3})


def test_training_runs_widen_the_interval_by_their_spread(tmp_path):
    """Issue 32: with two training runs per arm that disagree (one run's images half as bright), the two-level
    bootstrap (runs, then images) gives the arm's difference an interval that covers the disagreement, where
    treating the pooled images as one run gives a narrow, overconfident one. Point values are those of the pooled
    images either way."""
    rx, ry = synthetic_echo(30, size=24, seed=20)
    ax, ay = synthetic_echo(30, size=24, seed=21)
    bx, by = synthetic_echo(30, size=24, seed=22)
    a_runs = [ImageSet(ax, ay), ImageSet(ax * 0.5, ay)]       # arm a: its two runs disagree
    b_runs = [ImageSet(bx * 0.75, by), ImageSet(bx * 0.75, by)]  # arm b: two runs that agree, between them
    kw = dict(metrics="depth", num_bootstrap=400, progress=False, num_grid_columns=2)
    runs = compare(ImageSet(rx, ry), {"a": TrainingRuns(a_runs), "b": TrainingRuns(b_runs)}, tmp_path / "runs", **kw)
    pooled = compare(ImageSet(rx, ry), {"a": ImageSet(np.concatenate([ax, ax * 0.5]), np.concatenate([ay, ay])),
                                         "b": ImageSet(np.concatenate([bx, bx]) * 0.75, np.concatenate([by, by]))},
                     tmp_path / "pooled", **kw)
    r, p = _rows(runs)["mean_inside_fan"], _rows(pooled)["mean_inside_fan"]
    assert r["values"]["a"]["value"] == pytest.approx(p["values"]["a"]["value"])
    wide = r["differences"]["b"]["high"] - r["differences"]["b"]["low"]
    narrow = p["differences"]["b"]["high"] - p["differences"]["b"]["low"]
    assert wide > 2 * narrow, (wide, narrow)
    assert _contains_zero(r["differences"]["b"])  # with two disagreeing runs, no claim that b differs from a
    assert runs["runs"] == {"a": {"num_runs": 2, "images_per_run": [30, 30]}, "b": {"num_runs": 2, "images_per_run": [30, 30]}}
    # a plain list of ImageSets means the same; runs of different image sizes are refused by name
    listed = compare(ImageSet(rx, ry), {"a": a_runs, "b": b_runs}, tmp_path / "listed", **kw)
    assert _rows(listed)["mean_inside_fan"]["differences"] == r["differences"]
    small, small_labels = synthetic_echo(4, size=16, seed=23)
    with pytest.raises(ValueError, match="set 'a': its training runs have different image sizes"):
        compare(ImageSet(rx, ry), {"a": [ImageSet(ax, ay), ImageSet(small, small_labels)]}, tmp_path / "bad", **kw)
