"""Tests of ultrasound_diffusers.training_utils: reproducible training inputs, mask ablation, checkpoints, grids."""

import numpy as np
import pytest
import torch

from ultrasound_diffusers.training_utils import (
    EpochShuffleSampler,
    checkpoint_is_complete,
    derive_seed,
    draw_training_inputs,
    drop_classes,
    list_checkpoints,
    make_grid,
)


# ---------------------------------------------------------------------------------------------------- randomness
def test_derive_seed_is_pinned():
    """The seeds are part of the checkpoint format: a resumed run must draw what the run that wrote it drew."""
    assert derive_seed(7, 0, 0, 0) == 8460147692890830636
    assert derive_seed(0, "shuffle", 3) == 6404286981216754730
    assert derive_seed(7, 0, 0, 1) != derive_seed(7, 0, 0, 0) != derive_seed(7, 0, 1, 0)
    assert 0 <= derive_seed(-5, "x") < 2**63


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(20, seed=3), EpochShuffleSampler(20, seed=3)
    a.use_epoch(2)
    b.use_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(20)) and len(a) == 20
    b.use_epoch(3)
    assert list(a) != list(b)
    b.use_epoch(2)
    assert list(a) == list(b)  # the order depends on nothing but (seed, epoch)


def test_training_inputs_drop_and_flip():
    clean = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).view(2, 1, 4, 6)
    labels = torch.zeros(2, 4, 6, dtype=torch.long)
    labels[:, :, :3] = 2
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    c, seg, t, noise = draw_training_inputs(clean, labels, 3, 100, 0.0, False, gen())
    assert torch.equal(c, clean) and seg.shape == (2, 3, 4, 6)
    assert torch.equal(seg.sum(1), torch.ones(2, 4, 6)) and bool((seg[:, 2, :, :3] == 1).all())
    assert t.dtype == torch.int64 and bool(((t >= 0) & (t < 100)).all()) and noise.shape == clean.shape
    _, seg_dropped, t2, noise2 = draw_training_inputs(clean, labels, 3, 100, 1.0, False, gen())
    assert torch.count_nonzero(seg_dropped) == 0
    assert torch.equal(t, t2) and torch.equal(noise, noise2)  # same generator, same draws
    flipped = [draw_training_inputs(clean, labels, 3, 100, 0.0, True, torch.Generator().manual_seed(s)) for s in range(8)]
    kinds = set()
    for c, seg, _, _ in flipped:
        for i in range(2):
            is_flipped = torch.equal(c[i], clean[i].flip(-1))
            assert is_flipped or torch.equal(c[i], clean[i])
            assert bool((seg[i, 2, :, 3:] == 1).all()) == is_flipped  # the label map follows its image
            kinds.add(is_flipped)
    assert kinds == {True, False}
    # offset noise: a per-image, per-channel constant on top of the same draws
    c0, seg0, t0, n0 = draw_training_inputs(clean, labels, 3, 100, 0.5, True, gen())
    c1, seg1, t1, n1 = draw_training_inputs(clean, labels, 3, 100, 0.5, True, gen(), noise_offset=0.1)
    assert torch.equal(c0, c1) and torch.equal(seg0, seg1) and torch.equal(t0, t1)
    shift = n1 - n0
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift), atol=1e-6)
    assert bool((shift[:, :, 0, 0].abs() > 0).all()) and float(shift.abs().max()) < 1.0


def test_class_dropping_is_drawn_last_and_changes_only_the_label_map():
    torch.manual_seed(0)
    clean = torch.rand(4, 1, 8, 8) * 2 - 1
    labels = torch.randint(0, 5, (4, 8, 8))
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    base = draw_training_inputs(clean, labels, 5, 50, 0.0, True, gen(), noise_offset=0.1)
    off = draw_training_inputs(clean, labels, 5, 50, 0.0, True, gen(), noise_offset=0.1, class_drop_rate=0.0)
    ablated = draw_training_inputs(clean, labels, 5, 50, 0.0, True, gen(), noise_offset=0.1, class_drop_rate=0.5)
    assert all(torch.equal(a, b) for a, b in zip(base, off))  # rate 0: exactly the draws of runs made before it
    for i in (0, 2, 3):  # images, timesteps and noise are unchanged
        assert torch.equal(base[i], ablated[i])
    seg, seg_ablated = base[1], ablated[1]
    assert not torch.equal(seg, seg_ablated)
    assert torch.equal(seg_ablated.sum(1), torch.ones(4, 8, 8))  # still one class per pixel
    # a pixel either keeps its class or moved to class 0
    kept = (seg_ablated == seg).all(1)
    assert bool((seg_ablated[:, 0][~kept] == 1).all())
    again = draw_training_inputs(clean, labels, 5, 50, 0.0, True, gen(), noise_offset=0.1, class_drop_rate=0.5)
    assert torch.equal(again[1], seg_ablated)


# ---------------------------------------------------------------------------------------------------- mask ablation
def _maps(batch=6, size=12, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (batch, size, size), generator=g)


def test_drop_classes_rate_zero_is_the_identity():
    maps = _maps()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert torch.equal(drop_classes(maps, 0.0, g), maps)
    assert torch.equal(g.get_state(), state)  # nothing drawn
    array = maps.numpy().astype(np.uint8)
    out = drop_classes(array, 0.0, torch.Generator().manual_seed(3))
    assert isinstance(out, np.ndarray) and np.array_equal(out, array)


def test_drop_classes_rate_one_leaves_only_background():
    maps = _maps()
    out = drop_classes(maps, 1.0, torch.Generator().manual_seed(1))
    assert out.shape == maps.shape and out.dtype == maps.dtype
    assert int(out.max()) == 0
    single = drop_classes(maps[0], 1.0, torch.Generator().manual_seed(1), background=3)
    assert single.shape == maps[0].shape and set(single.unique().tolist()) == {3}


def test_drop_classes_drops_whole_classes_and_never_the_background():
    maps = _maps(batch=64, num_classes=4, seed=2)
    out = drop_classes(maps, 0.5, torch.Generator().manual_seed(5), num_classes=4)
    assert bool((out[maps == 0] == 0).all())  # background pixels stay background
    changed = out != maps
    assert bool((out[changed] == 0).all())  # dropped pixels become background
    dropped_fractions = []
    for b in range(len(maps)):
        for k in range(1, 4):
            region = maps[b] == k
            if region.any():
                states = set(out[b][region].tolist())
                assert states in ({k}, {0}), (b, k, states)  # a class is dropped as a whole or kept
                dropped_fractions.append(states == {0})
    assert 0.3 < np.mean(dropped_fractions) < 0.7  # 192 independent draws at P = 0.5
    # every map draws its own classes
    assert len({tuple(row) for row in (out == 0).flatten(1).tolist()}) > 1


def test_drop_classes_is_reproducible_with_a_seed():
    maps = _maps(batch=16)
    a = drop_classes(maps, 0.4, torch.Generator().manual_seed(9), num_classes=5)
    b = drop_classes(maps, 0.4, torch.Generator().manual_seed(9), num_classes=5)
    c = drop_classes(maps, 0.4, torch.Generator().manual_seed(10), num_classes=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    n = drop_classes(maps.numpy(), 0.4, torch.Generator().manual_seed(9), num_classes=5)
    assert np.array_equal(n, a.numpy())


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_drop_classes_refuses_a_rate_outside_zero_one(rate):
    with pytest.raises(ValueError, match=r"class drop rate.*\[0, 1\]"):
        drop_classes(_maps(), rate, torch.Generator())


def test_drop_classes_refuses_bad_maps():
    with pytest.raises(ValueError, match=r"\[H, W\] or \[B, H, W\]"):
        drop_classes(torch.zeros(1, 1, 2, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="integer class indices"):
        drop_classes(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="`num_classes` is 3"):
        drop_classes(torch.full((2, 2), 4), 0.5, num_classes=3)
    with pytest.raises(ValueError, match="negative"):
        drop_classes(torch.full((2, 2), -1), 0.5)
    with pytest.raises(ValueError, match="`background`"):
        drop_classes(torch.zeros(2, 2, dtype=torch.long), 0.5, num_classes=2, background=2)


# ---------------------------------------------------------------------------------------------------- checkpoints
def _checkpoint(root, step, optimizer=True, weights="unet"):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if optimizer:
        (folder / "optimizer.bin").write_bytes(b"x")
    if weights == "unet":
        (folder / "unet").mkdir()
        (folder / "unet" / "config.json").write_text("{}")
        (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    elif weights == "accelerate":
        (folder / "model.safetensors").write_bytes(b"x")
    return folder


def test_checkpoints_complete_partial_and_order(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == []
    a = _checkpoint(tmp_path, 1000)
    b = _checkpoint(tmp_path, 200, weights="accelerate")
    _checkpoint(tmp_path, 300, optimizer=False)
    _checkpoint(tmp_path, 400, weights=None)
    (tmp_path / "checkpoint-500").mkdir()
    _checkpoint(tmp_path / "x", 600).rename(tmp_path / ".checkpoint-600.tmp")
    assert checkpoint_is_complete(a) and checkpoint_is_complete(b)
    assert not checkpoint_is_complete(tmp_path / "checkpoint-300")
    assert list_checkpoints(tmp_path) == [(200, b), (1000, a)]  # by step, not by name


# ---------------------------------------------------------------------------------------------------- grids
def test_make_grid_layout():
    images = np.zeros((2, 6, 5, 1), np.float32)
    images[1] = 1.0
    labels = np.zeros((2, 6, 5), np.int64)
    labels[:, 3:] = 2
    grid = make_grid(images, labels, num_classes=3)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 6 + 2, 5 + 2 + 5, 3)
    assert (grid[:6, 7:] == 0).all() and (grid[8:, 7:] == 255).all()  # the samples, right of their label maps
    assert (grid[6:8] == 255).all() and (grid[:, 5:7] == 255).all()  # white separators
    assert not np.array_equal(grid[0, 0], grid[5, 0])  # classes 0 and 2 in different colours
    alone = make_grid(np.random.default_rng(0).random((3, 4, 4, 3)))
    assert alone.shape == (3 * 4 + 2 * 2, 4, 3)
    with pytest.raises(ValueError, match="`labels`"):
        make_grid(images, labels[:1])
    with pytest.raises(ValueError, match="`images`"):
        make_grid(np.zeros((2, 4, 4)))
