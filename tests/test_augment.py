import numpy as np
import pytest

from ultrasound_diffusers.data.augment import LabelAugmentation, augment_label_map, augment_label_maps, elastic_displacement_field
from ultrasound_diffusers.data.labels import (
    ECHO_PALETTE,
    apply_fan,
    colorize_labels,
    echo_to_camus,
    label_grid,
    overlay_labels,
    recode_camus_with_fan,
    remap_labels,
)
from ultrasound_diffusers.data.phantoms import phantom_label_maps
from ultrasound_diffusers.geometry import fan_mask


@pytest.fixture(scope="module")
def maps():
    return phantom_label_maps(3, "echo", 64, seed=0)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_augmentation_is_deterministic_and_reapplies_the_fan(maps):
    lab = maps[0]
    fan = fan_mask(64, 64).numpy()
    a = augment_label_map(lab, seed=7)
    b = augment_label_map(lab, seed=7)
    c = augment_label_map(lab, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for out in (a, c):
        assert out.dtype == np.uint8 and out.shape == lab.shape
        assert (out[~fan] == 0).all(), "outside the fan must stay 0"
        assert (out[fan] != 0).all(), "inside the fan background becomes tissue (2)"
        assert set(np.unique(out)) <= {0, 1, 2, 3, 4}
        assert not np.array_equal(out, lab)
        # a plausible deformation: the LV moves and bends but stays recognisable
        assert 0.4 < _iou(out == 1, lab == 1) < 1.0


def test_augment_label_maps_layout(maps):
    out = augment_label_maps(maps, num_copies=2, seed=3)
    assert out.shape == (6, 64, 64)
    np.testing.assert_array_equal(out[1 * 2 + 1], augment_label_map(maps[1], np.random.SeedSequence([3, 1, 1])))
    assert not np.array_equal(out[0], out[1])
    assert augment_label_maps(maps, num_copies=0).shape == (0, 64, 64)


def test_augmentation_with_image_uses_the_same_warp(maps):
    lab = maps[2]
    image = (lab == 1).astype(np.float32)  # an "image" that is bright exactly in the LV
    params = LabelAugmentation(elastic_max_displacement=20.0)
    out_lab, out_img = augment_label_map(lab, seed=1, image=image, params=params)
    assert out_img.shape == image.shape
    assert _iou(out_img > 0.5, out_lab == 1) > 0.85


def test_no_elastic_and_identity_affine_keeps_the_map(maps):
    params = LabelAugmentation(rotate_deg=0, translate=(0, 0), scale=(1, 1), shear_deg=0, elastic_max_displacement=0)
    np.testing.assert_array_equal(augment_label_map(maps[0], seed=0, params=params), maps[0])


def test_elastic_field_bounds():
    rng = np.random.default_rng(0)
    field = elastic_displacement_field(64, 48, rng, control_points=10, max_displacement=(6.0, 4.0))
    assert field.shape == (2, 64, 48)
    assert np.abs(field[0]).max() <= 6.0 + 1e-5 and np.abs(field[1]).max() <= 4.0 + 1e-5
    assert np.abs(field).max() > 1.0
    assert np.abs(field[:, 0, :]).max() < np.abs(field).max()  # locked borders move less


def test_bad_augmentation_parameters():
    with pytest.raises(ValueError, match="scale"):
        LabelAugmentation(scale=(1.1, 0.9))
    with pytest.raises(ValueError, match="label_map"):
        augment_label_map(np.zeros((2, 4, 4), np.uint8))


def test_label_recoding():
    camus = np.array([[0, 1, 2, 3], [0, 1, 2, 3]], dtype=np.uint8)
    fan = np.array([[True] * 4, [False, True, True, False]])
    echo = recode_camus_with_fan(camus, fan)
    np.testing.assert_array_equal(echo, [[2, 1, 3, 4], [0, 1, 3, 0]])
    np.testing.assert_array_equal(echo_to_camus(echo), [[0, 1, 2, 3], [0, 1, 2, 0]])
    np.testing.assert_array_equal(apply_fan(np.array([[0, 1], [3, 0]]), np.array([[True, True], [False, True]])), [[2, 1], [0, 2]])
    np.testing.assert_array_equal(remap_labels(np.array([0, 4, 5]), {0: 0, 4: 2, 5: 3}), [0, 2, 3])
    with pytest.raises(ValueError, match="unexpected label values"):
        remap_labels(np.array([7]), {0: 0})
    with pytest.raises(ValueError, match="CAMUS"):
        recode_camus_with_fan(np.array([[4]]), np.array([[True]]))


def test_colorize_labels_and_grid(maps):
    rgb = colorize_labels(maps[0], 5)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[maps[0] == 3][0], ECHO_PALETTE[3])
    assert (rgb[maps[0] == 0] == 0).all()
    assert colorize_labels(maps, 5).shape == (3, 64, 64, 3)
    assert colorize_labels(maps[:, None], 5).shape == (3, 64, 64, 3)
    big = colorize_labels(np.arange(12).reshape(3, 4), 12)
    assert len({tuple(c) for c in big.reshape(-1, 3)}) == 12  # distinct colours beyond the echo palette
    with pytest.raises(ValueError, match="num_classes"):
        colorize_labels(maps[0], 3)
    over = overlay_labels(np.full((64, 64), 0.5), maps[0], 5, alpha=0.5)
    assert over.shape == (64, 64, 3) and (over[maps[0] == 0] == 128).all()
    grid = label_grid([np.zeros((64, 64))] * 3, list(maps), 5, ncols=2)
    assert grid.shape == (2 * 2 * 66 + 2, 2 * 66 + 2, 3)
