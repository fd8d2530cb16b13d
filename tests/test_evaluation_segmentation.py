"""Downstream segmentation (ultrasound_diffusers.evaluation.segmentation)."""

import numpy as np
import pytest
import torch

from ultrasound_diffusers.evaluation.segmentation import TinyUNet, dice_per_class, downstream_segmentation



def test_dice_per_class():
    target = np.array([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    pred = np.array([[[0, 0, 1, 0], [0, 1, 1, 1]]])
    dice = dice_per_class(pred, target, num_classes=3)
    # class 0: |P|=4, |T|=4, overlap 3 -> 6/8; class 1: |P|=4, |T|=4, overlap 3 -> 6/8; class 2 absent -> NaN
    np.testing.assert_allclose(dice[:2], [6 / 8, 6 / 8])
    pred2 = np.array([[[0, 0, 0, 0], [0, 0, 0, 1]]])  # class 0: |P|=7, |T|=4, overlap 4 -> 8/11; class 1: 2/5
    np.testing.assert_allclose(dice_per_class(pred2, target, 2), [8 / 11, 2 / 5])
    assert np.isnan(dice[2])
    assert np.allclose(dice_per_class(target, target, 2), 1.0)


def test_tiny_unet_shapes_odd_sizes():
    net = TinyUNet(1, 4, base_channels=4, depth=2)
    assert net(torch.zeros(2, 1, 18, 13)).shape == (2, 4, 18, 13)
    with pytest.raises(ValueError, match="num_classes"):
        TinyUNet(1, 1)


def _disks(n, seed):
    """Bright speckled disks (class 1) and a dark ring (class 2) on a mid-grey speckled background (class 0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:24, 0:24]
    images, labels = [], []
    for _ in range(n):
        cy, cx, r = rng.uniform(8, 16), rng.uniform(8, 16), rng.uniform(3, 5)
        d = np.hypot(yy - cy, xx - cx)
        lab = np.where(d < r, 1, np.where(d < r + 2.5, 2, 0))
        means = np.array([0.4, 0.85, 0.05])
        images.append(np.clip(means[lab] * rng.rayleigh(1.0, lab.shape) / 1.25, 0, 1))
        labels.append(lab)
    return np.stack(images).astype(np.float32), np.stack(labels)


def test_downstream_dice_high_for_same_distribution():
    train_x, train_y = _disks(16, seed=0)
    test_x, test_y = _disks(6, seed=1)
    res = downstream_segmentation(
        train_x, train_y, test_x, test_y, class_names={0: "bg", 1: "disk", 2: "ring"},
        steps=60, batch_size=8, base_channels=8, learning_rate=1e-2, seed=0,
    )
    assert set(res["dice"]) == {"bg", "disk", "ring"}
    assert res["dice"]["disk"] > 0.8 and res["mean_dice"] > 0.65
    assert res["num_classes"] == 3 and res["num_test"] == 6
    # control: the same training on mismatched (shuffled) pairs does not reach that Dice
    shuffled = downstream_segmentation(
        train_x, np.random.default_rng(0).permutation(train_y), test_x, test_y,
        steps=60, batch_size=8, base_channels=8, learning_rate=1e-2, seed=0,
    )
    assert shuffled["mean_dice"] < res["mean_dice"] - 0.3


# ---- segmenter choice (issue 17): tinyunet (default) and MONAI's UNet as echo-from-noise trains it -------------

from ultrasound_diffusers.evaluation import segmentation as seg_module  # noqa: E402

try:
    import monai  # noqa: F401

    HAVE_MONAI = True
except ImportError:
    HAVE_MONAI = False

needs_monai = pytest.mark.skipif(not HAVE_MONAI, reason='MONAI is not installed (pip install "./ultrasound-diffusers[monai]")')


def test_segmenter_registry_and_default():
    assert seg_module.DEFAULT_SEGMENTER == "tinyunet"
    assert set(seg_module.SEGMENTERS) == {"tinyunet", "monai-unet"}
    with torch.random.fork_rng(devices=[]):
        net = seg_module.build_segmenter("TinyUNet", 3, base_channels=4, depth=1)
    assert isinstance(net, TinyUNet)
    with pytest.raises(ValueError, match="`segmenter` must be one of tinyunet, monai-unet"):
        seg_module.build_segmenter("unet3d", 3)


def test_missing_monai_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "monai" or name.startswith("monai."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"ultrasound-diffusers\[monai\]"):
        seg_module.build_segmenter("monai-unet", 4)
    x, y = _disks(2, seed=0)
    with pytest.raises(ImportError, match="monai"):
        downstream_segmentation(x, y, x, y, steps=1, segmenter="monai-unet")


@needs_monai
def test_monai_unet_is_the_echo_from_noise_network():
    from monai.networks.blocks import ResidualUnit
    from monai.networks.nets import UNet

    net = seg_module.build_segmenter("monai-unet", 5)
    assert isinstance(net, seg_module.MonaiUNetSegmenter) and isinstance(net.unet, UNet)
    assert tuple(net.unet.channels) == (16, 32, 64, 128, 256)
    assert tuple(net.unet.strides) == (2, 2, 2, 2)
    assert net.unet.num_res_units == 0
    assert not any(isinstance(m, ResidualUnit) for m in net.modules())
    assert net.unet.in_channels == 1 and net.unet.out_channels == 5 and net.unet.dimensions == 2
    acts = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert acts and all(abs(m.negative_slope - 0.1) < 1e-12 for m in acts)
    # four stride-2 levels: sizes that are not multiples of 16 are padded and cropped back
    with torch.no_grad():
        assert net(torch.rand(2, 1, 24, 20)).shape == (2, 5, 24, 20)
    with pytest.raises(ValueError, match="num_classes"):
        seg_module.MonaiUNetSegmenter(1, 1)


@needs_monai
def test_monai_unet_tiny_run_per_class_dice_and_seeding():
    train_x, train_y = _disks(16, seed=0)
    test_x, test_y = _disks(6, seed=1)
    state = torch.random.get_rng_state()
    res = downstream_segmentation(
        train_x, train_y, test_x, test_y, class_names={0: "bg", 1: "disk", 2: "ring"},
        steps=40, batch_size=8, learning_rate=1e-2, seed=0, segmenter="monai-unet",
    )
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded inside fork_rng
    assert res["segmenter"] == "monai-unet"
    assert set(res["dice"]) == {"bg", "disk", "ring"} and res["num_classes"] == 3
    assert res["dice"]["disk"] > 0.7 and res["mean_dice"] > 0.5
    assert "structures" not in res  # the class names are not echo ones
    again = downstream_segmentation(
        train_x, train_y, test_x, test_y, class_names={0: "bg", 1: "disk", 2: "ring"},
        steps=40, batch_size=8, learning_rate=1e-2, seed=0, segmenter="monai-unet",
    )
    assert again["dice"] == res["dice"]
    # the input is standardised with the training images' statistics
    model = seg_module.train_segmentation_model(train_x, train_y, 3, steps=1, segmenter="monai-unet")
    assert float(model.mean) == pytest.approx(float(train_x.mean()), rel=1e-5)
    assert float(model.std) == pytest.approx(float(train_x.std()), rel=1e-4)


def test_echo_structure_dice():
    names = {0: "outside_fan", 1: "lv_cavity", 2: "tissue", 3: "myocardium", 4: "left_atrium"}
    target = np.zeros((2, 4, 4), dtype=np.int64)
    target[:, 0, :2] = 1  # LV cavity: 2 px per image
    target[:, 1, :2] = 3  # myocardium: 2 px
    target[0, 3, 0] = 4  # left atrium only in image 0
    pred = target.copy()
    pred[:, 1, :2] = 1  # the myocardium predicted as LV cavity: epicardium (union) still right
    out = seg_module.echo_structure_dice(pred, target, names)
    assert set(out) == {"lv_endocardium", "lv_epicardium", "left_atrium"}
    # endocardium: |P| = 4, |T| = 2, overlap 2 per image -> 4/6
    assert out["lv_endocardium"]["dice"] == pytest.approx(4 / 6)
    assert out["lv_endocardium"]["mean_per_image"] == pytest.approx(4 / 6)
    assert out["lv_epicardium"]["dice"] == pytest.approx(1.0)
    assert out["left_atrium"]["num_images"] == 1 and out["left_atrium"]["dice"] == pytest.approx(1.0)
    assert seg_module.echo_structure_dice(pred, target, {0: "bg", 1: "disk"}) is None


def _echo_phantoms(n, seed):
    from ultrasound_diffusers.data.phantoms import iter_phantom_batches

    images, labels, _ = next(iter_phantom_batches(n, "echo", size=32, seed=seed, batch_size=n))
    return images, labels.astype(np.int64)


@needs_monai
def test_evaluate_report_with_monai_unet(tmp_path):
    import json

    from ultrasound_diffusers.evaluation.io import ImageSet
    from ultrasound_diffusers.evaluation.report import evaluate, format_summary

    real = ImageSet(*_echo_phantoms(6, seed=1), source="real")
    train = ImageSet(*_echo_phantoms(6, seed=2), source="train")
    gen = ImageSet(*_echo_phantoms(6, seed=3), source="generated")
    report = evaluate(real, gen, tmp_path / "rep", train=train, metrics="segmentation", seg_steps=3,
                      seg_batch_size=2, segmenter="monai-unet", progress=False)
    seg = json.loads((tmp_path / "rep" / "metrics.json").read_text())["segmentation"]
    assert seg == report["segmentation"]
    assert seg["segmenter"] == "monai-unet" and seg["steps"] == 3 and seg["batch_size"] == 2
    classes = {"outside_fan", "lv_cavity", "tissue", "myocardium", "left_atrium"}
    for run in ("trained_on_real", "trained_on_generated"):
        assert seg[run]["segmenter"] == "monai-unet"
        assert set(seg[run]["dice"]) == classes
        assert set(seg[run]["structures"]) == {"lv_endocardium", "lv_epicardium", "left_atrium"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Network: `monai-unet`" in md
    assert "| trained on | outside_fan | lv_cavity | tissue | myocardium | left_atrium |" in md
    assert "| real | lv_epicardium |" in md and "| generated | left_atrium |" in md and "| 85.2 |" in md
    assert "monai-unet" in format_summary(report)
    with pytest.raises(ValueError, match="`segmenter` must be one of"):
        evaluate(real, gen, tmp_path / "rep2", metrics="segmentation", segmenter="nnunet", progress=False)
    assert not (tmp_path / "rep2").exists()


def test_cli_segmenter_flag_without_monai(tmp_path, monkeypatch, capsys):
    """``--segmenter monai-unet`` without MONAI: one line naming the extra, exit code 2, nothing written."""
    from ultrasound_diffusers.cli import main

    def missing():
        raise ImportError('needs MONAI; install the `monai` extra: pip install "./ultrasound-diffusers[monai]"')

    monkeypatch.setattr(seg_module, "_import_monai_unet", missing)
    code = main(["evaluate", "--real", str(tmp_path / "real"), "--generated", str(tmp_path / "gen"),
                 "--out", str(tmp_path / "rep"), "--segmenter", "monai-unet", "--no_progress"])
    assert code == 2
    assert "ultrasound-diffusers[monai]" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_progress_names_the_bar(capsys):
    """``progress``: False no bar, True a bar named "segmentation", a string a bar with that description."""
    x, y = _disks(2, seed=0)
    kwargs = dict(steps=2, batch_size=2, base_channels=4, depth=1)
    plain = seg_module.train_segmentation_model(x, y, 3, progress=False, **kwargs)
    assert "segmentation" not in capsys.readouterr().err
    named = seg_module.train_segmentation_model(x, y, 3, progress="segmentation (generated)", **kwargs)
    assert "segmentation (generated)" in capsys.readouterr().err
    seg_module.train_segmentation_model(x, y, 3, progress=True, **kwargs)
    err = capsys.readouterr().err
    assert "segmentation" in err and "(generated)" not in err
    for a, b in zip(plain.parameters(), named.parameters()):  # the bar does not change the training
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="`progress`"):
        seg_module.train_segmentation_model(x, y, 3, progress=" ", **kwargs)
    with pytest.raises(TypeError, match="`progress`"):
        seg_module.train_segmentation_model(x, y, 3, progress=1.5, **kwargs)
