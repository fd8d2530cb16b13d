"""Memorisation check (ultrasound_diffusers.evaluation.memorization)."""

import numpy as np
import pytest

from ultrasound_diffusers.evaluation.memorization import memorization_statistics, nearest_neighbours



def test_nearest_neighbours_matches_brute_force():
    rng = np.random.default_rng(0)
    q, r = rng.random((23, 5, 4)), rng.random((17, 5, 4))
    dist, idx = nearest_neighbours(q, r, batch_size=6)  # blocks that do not divide either size
    full = np.linalg.norm(q.reshape(23, 1, -1) - r.reshape(1, 17, -1), axis=-1)
    np.testing.assert_array_equal(idx, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-6)
    # leave-one-out within one set never returns the query itself
    d_self, i_self = nearest_neighbours(r, r, batch_size=4, exclude_self=True)
    np.fill_diagonal(full_rr := np.linalg.norm(r.reshape(17, 1, -1) - r.reshape(1, 17, -1), axis=-1), np.inf)
    np.testing.assert_array_equal(i_self, full_rr.argmin(1))
    assert np.all(i_self != np.arange(17)) and np.all(d_self > 0)
    with pytest.raises(ValueError, match="differ in size"):
        nearest_neighbours(q, rng.random((3, 4, 4)))


def test_memorization_finds_planted_copies():
    rng = np.random.default_rng(1)
    train = rng.random((40, 16, 16)).astype(np.float32)
    heldout = rng.random((20, 16, 16)).astype(np.float32)
    generated = rng.random((30, 16, 16)).astype(np.float32)
    planted = {3: 7, 11: 0, 25: 39}  # generated index -> training index
    for g, t in planted.items():
        generated[g] = train[t]
    generated[17] = np.clip(train[21] + 0.01 * rng.normal(size=(16, 16)), 0, 1)  # a near copy
    stats = memorization_statistics(generated, train, heldout, batch_size=8)
    summary = stats["summary"]
    assert sorted(summary["likely_copies"]) == sorted(list(planted) + [17])
    for g, t in planted.items():
        assert stats["train_indices"][g] == t and stats["train_distances"][g] < 1e-5
    assert stats["train_indices"][17] == 21
    # copies are closer to train than to held-out data; novel samples are not
    assert summary["num_likely_copies"] == 4 and summary["fraction_likely_copies"] == pytest.approx(4 / 30)
    novel = np.setdiff1d(np.arange(30), list(planted) + [17])
    assert np.all(stats["train_distances"][novel] > summary["copy_threshold"])
    # without a held-out set the baseline is leave-one-out within train, and the copies are still found
    alone = memorization_statistics(generated, train)["summary"]
    assert sorted(alone["likely_copies"]) == sorted(summary["likely_copies"])
    assert "leave-one-out" in alone["baseline"]
