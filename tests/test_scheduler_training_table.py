"""The [T, U] table of log cumulative B-maps that training batches read (BMapAttenuationScheduler): same values as
the step-by-step sweep, built only for batches of several steps and only when it fits its byte budget."""

import torch

import ultrasound_diffusers.schedulers.scheduling_bmap_attenuation as module
from ultrasound_diffusers import BMapAttenuationScheduler


def _steps(batch, seed=0):
    return torch.randint(0, 200, (batch,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_table_equals_the_sweep(monkeypatch):
    shape = (12, 1, 24, 20)
    steps = _steps(10) + [-1, 0]
    with_table = BMapAttenuationScheduler(num_train_timesteps=200, bmap_min=0.8)
    a = with_table.signal_level(steps, shape)
    c = with_table.cumulative_bmap(steps, shape)
    assert with_table._grid(24, 20).log_table is not None
    monkeypatch.setattr(module, "_TABLE_BYTES", 0)
    sweep = BMapAttenuationScheduler(num_train_timesteps=200, bmap_min=0.8)
    b, d = sweep.signal_level(steps, shape), sweep.cumulative_bmap(steps, shape)
    assert sweep._grid(24, 20).log_table is None
    assert a.dtype == b.dtype == torch.float64 and a.shape == (12, 1, 24, 20)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
    torch.testing.assert_close(c, d, rtol=1e-13, atol=0)
    assert torch.all(a[10] == 1.0)  # t = -1: the clean level


def test_sampling_builds_no_table_and_budget_is_respected(monkeypatch):
    s = BMapAttenuationScheduler(num_train_timesteps=200)
    s.set_timesteps(5)
    x = torch.zeros(2, 1, 16, 16)
    for t in s.timesteps:
        x = s.step(torch.zeros_like(x), t, x).prev_sample
    assert s._grid(16, 16).log_table is None  # one step at a time: the anchors, O(H*W) per step
    monkeypatch.setattr(module, "_TABLE_BYTES", 1000)
    s.add_noise(torch.zeros(3, 1, 16, 16), torch.zeros(3, 1, 16, 16), torch.tensor(_steps(3)))
    assert s._grid(16, 16).log_table is None  # over budget: the sweep
    monkeypatch.setattr(module, "_TABLE_BYTES", 32 * 2**20)
    s.add_noise(torch.zeros(3, 1, 16, 16), torch.zeros(3, 1, 16, 16), torch.tensor(_steps(3)))
    grid = s._grid(16, 16)
    assert grid.log_table.shape == (200, grid.values.numel())
    assert list(grid.device_tables) == [("cpu", torch.float64)]
