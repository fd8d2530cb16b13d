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
