"""Lung media (issue 29): geometry, the seed's 8 x 256 preprocessing, category statistics, the phantoms source,
and the bundled lung model."""

import numpy as np
import pytest

from ultrasound_diffusers.data import lung_media as L


@pytest.fixture(scope="module")
def media():
    # 4 maps per category (indices 0..11 cycle normal, interstitial, consolidation)
    return L.simulate_lung_media(12, seed=7)


def test_shapes_units_and_ranges(media):
    n, h, w = 12, L.DEFAULT_HEIGHT, L.DEFAULT_WIDTH
    for name in ("speed", "attenuation", "density", "aeration"):
        arr = getattr(media, name)
        assert arr.shape == (n, h, w) and arr.dtype == np.float32 and np.isfinite(arr).all(), name
    assert media.category.dtype == np.int64 and media.category.tolist() == [0, 1, 2] * 4
    assert 540 <= media.speed.min() and media.speed.max() <= 3300.5
    assert 0.0 <= media.aeration.min() and media.aeration.max() <= 0.97
    assert 0.09 <= media.attenuation.min() and media.attenuation.max() <= 40.0
    assert media.pixel_size_m == (L.LATERAL_PITCH_M, L.AXIAL_PITCH_M)
    assert media.impedance.shape == (n, h, w)
    # skin at the top row: no air, tissue speed
    assert np.allclose(media.aeration[:, 0], 0.0) and (np.abs(media.speed[:, 0] - 1615) < 1).all()
    # pleural line inside its stated range (6-13.4 mm), within the seed's 24 mm window
    assert 6.0e-3 <= media.pleura_depth_m.min() and media.pleura_depth_m.max() <= 13.4e-3


def test_lung_values_are_normalised_slowness_and_invert(media):
    values = L.lung_map_values(media)
    assert values.shape == media.speed.shape and 0.0 <= values.min() and values.max() <= 1.0
    assert np.allclose(L.map_to_speed(values), media.speed, rtol=1e-4)
    # inside the lung (rows well under the deepest pleura) the map reads the aeration exactly
    deep = slice(int(15e-3 / L.AXIAL_PITCH_M) + 1, None)
    assert np.allclose(L.map_to_aeration(values[:, deep]), media.aeration[:, deep], atol=2e-3)
    props = L.map_to_properties(values[:, deep])
    assert np.allclose(props["attenuation"], media.attenuation[:, deep], rtol=1e-3, atol=1e-3)
    assert np.allclose(props["density"], media.density[:, deep], rtol=1e-3, atol=0.5)
    # the anchors: aerated foam -> 0, deflated lung -> M_LUNG_TISSUE, C_MAX -> 1
    assert L.speed_to_map(L.C_MIN) == 0.0 and abs(L.speed_to_map(L.C_MAX) - 1.0) < 1e-6
    assert abs(L.speed_to_map(1560.0) - L.M_LUNG_TISSUE) < 1e-7 and 0.7 < L.M_LUNG_TISSUE < 0.8


def test_seed_preprocessing_first_32_rows_4x4_mean(media):
    pooled, cats = L.lung_maps(12, seed=7)
    assert pooled.shape == (12, 8, 256) and pooled.dtype == np.float32 and cats.tolist() == media.category.tolist()
    full = L.lung_map_values(media)
    expected = full[:, :32].reshape(12, 8, 4, 256, 4).mean(axis=(2, 4))
    assert np.allclose(pooled, expected, atol=1e-6)
    # chunking does not change the maps, and a later start continues the same sequence
    again, _ = L.lung_maps(12, seed=7, chunk=5)
    assert np.array_equal(again, pooled)
    tail, _ = L.lung_maps(4, seed=7, start=8)
    assert np.array_equal(tail, pooled[8:])


def test_determinism_and_seeds():
    a, _ = L.lung_maps(3, seed=1)
    b, _ = L.lung_maps(3, seed=1)
    c, _ = L.lung_maps(3, seed=2)
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_category_statistics_inside_their_ranges():
    maps, cats = L.lung_maps(36, seed=11)
    st = L.pooled_category_statistics(maps)
    normal, inter, cons = (cats == 0), (cats == 1), (cats == 2)
    # normal: aerated (phi 0.82-0.92 with +-0.02 texture), no poorly aerated column
    assert (st["lung_aeration"][normal] > 0.78).all() and (st["lung_aeration"][normal] < 0.95).all()
    assert (st["poorly_aerated_fraction"][normal] == 0).all()
    # interstitial: B-lines present (some poorly aerated columns) but no wide non-aerated run
    assert (st["poorly_aerated_fraction"][inter] > 0).all() and (st["poorly_aerated_fraction"][inter] < 0.8).all()
    assert (st["non_aerated_run_mm"][inter] < L.CONSOLIDATION_MIN_WIDTH_MM).all()
    # consolidation / effusion: a non-aerated run at least 8 mm wide, tissue-like aeration there
    assert (st["non_aerated_run_mm"][cons] >= L.CONSOLIDATION_MIN_WIDTH_MM).all()
    assert np.array_equal(L.classify_lung_maps(maps), cats)


def test_consolidation_and_effusion_are_tissue_like():
    media = L.simulate_lung_media(10, seed=3, categories="consolidation")
    assert (media.category == 2).all() and media.effusion.any() and not media.effusion.all()
    deep = media.speed[:, int(21e-3 / L.AXIAL_PITCH_M)]  # a row at 21 mm
    # every map has tissue-like columns there (consolidation 1500-1560 m/s, compressed lung under an effusion
    # 1250-1500 m/s); normal maps have none
    assert all(((d > 1200) & (d < 1570)).mean() > 0.2 for d in deep)
    cons = ~media.effusion
    assert all(((d > 1495) & (d < 1570)).mean() > 0.2 for d in deep[cons])
    normal = L.simulate_lung_media(4, seed=3, categories=["normal"])
    assert (normal.speed[:, int(21e-3 / L.AXIAL_PITCH_M)] < 700).all()
    assert (normal.attenuation[:, -1] > 30).all()


def test_ribs_are_bone_above_the_pleura():
    media = L.simulate_lung_media(6, seed=0)
    with_ribs = [i for i in range(6) if media.rib_shadow[i].any()]
    assert with_ribs, "80 % of the views cross a rib"
    for i in with_ribs:
        rows, cols = np.nonzero(media.speed[i] > 2500)  # cortical bone
        assert rows.size and (rows * L.AXIAL_PITCH_M < media.pleura_depth_m[i, cols]).all()
        assert media.attenuation[i].max() > 10


def test_bad_arguments():
    with pytest.raises(ValueError, match="categories"):
        L.simulate_lung_media(2, categories=["pneumothorax"])
    with pytest.raises(ValueError, match="num_maps"):
        L.lung_maps(-1)
    with pytest.raises(ValueError, match="pooled lung maps"):
        L.pooled_category_statistics(np.zeros((2, 4, 256)))


def test_dataset_and_phantoms_source(tmp_path, capsys):
    import datasets

    from ultrasound_diffusers.cli import main
    from ultrasound_diffusers.data.phantoms import ANATOMIES, generate_phantoms, iter_phantom_batches
    from ultrasound_diffusers.data.sources import parse_phantoms_spec

    ds = L.lung_dataset(4, seed=5)
    assert ds.column_names == ["image", "values", "category", "seed", "index", "height", "width"]
    values = np.asarray(ds["values"], np.float32)
    assert values.shape == (4, 8, 256) and np.array_equal(values, L.lung_maps(4, seed=5)[0])
    png = np.asarray(ds[0]["image"], np.float32) / 255
    assert png.shape == (8, 256) and np.abs(png - values[0]).max() <= 0.5 / 255 + 1e-6
    # the one registry
    assert "lung" in ANATOMIES and parse_phantoms_spec("phantoms:lung:3:5").anatomy == "lung"
    assert generate_phantoms(4, anatomy="lung", seed=5)["values"] == ds["values"]
    maps, labels, meta = next(iter_phantom_batches(3, "lung", None, 5, batch_size=8))
    assert labels is None and np.array_equal(maps, values[:3]) and meta[1]["category"] == "interstitial"
    with pytest.raises(ValueError, match="8x256"):
        generate_phantoms(2, anatomy="lung", size=64)
    # the command line
    out = tmp_path / "lung"
    assert main(["phantoms", "--anatomy", "lung", "--num_images", "3", "--seed", "5", "--output_dir", str(out)]) == 0
    saved = datasets.load_from_disk(str(out))
    assert np.array_equal(np.asarray(saved["values"], np.float32), values[:3])
    assert saved.features["category"].names == list(L.LUNG_CATEGORIES)
    assert main(["phantoms", "--anatomy", "lung", "--num_images", "2", "--tgc", "0.5", "--output_dir", str(tmp_path / "x")]) != 0
    assert "--tgc apply to the B-mode anatomies only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bundled_lung_pipeline_loads_offline_and_samples(monkeypatch):
    import torch

    from ultrasound_diffusers import DiffusionPipeline, UltrasoundPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = DiffusionPipeline.from_pretrained(L.LUNG_PIPELINE_PATH)
    assert isinstance(pipe, UltrasoundPipeline)
    assert list(pipe.unet.config.sample_size) == [8, 256] and pipe.unet.config.num_classes == 0
    assert pipe.unet.config.learn_sigma and pipe.scheduler.config.beta_schedule == "linear"
    assert pipe.scheduler.config.num_train_timesteps == 1000 and pipe.scheduler.config.bmap_min == 1.0
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 256, 1) and np.isfinite(images).all()
    assert 0.0 <= images.min() and images.max() <= 1.0
    from pathlib import Path

    card = Path(__file__).resolve().parents[1] / "model_cards" / "lung-phantom-8x256.md"
    assert (L.LUNG_PIPELINE_PATH / "README.md").read_bytes() == card.read_bytes()
