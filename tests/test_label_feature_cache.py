"""SemanticUNet2DModel.label_feature_cache: SPADE label features computed once per label map, reused at every step
with the same outputs (and the same gradients with respect to the sample)."""

import contextlib

import numpy as np
import pytest
import torch
from _pipeline_fixtures import echo_label_map, tiny_semantic_pipeline, tiny_semantic_unet

from ultrasound_diffusers.models.unet_semantic_2d import LabelFeatureCache, SPADEGroupNorm

SIZE = 16


def _unet(num_classes=5):
    torch.manual_seed(0)
    unet = tiny_semantic_unet(num_classes=num_classes, sample_size=SIZE, learn_sigma=True)
    with torch.no_grad():  # the zero-initialised output layers would hide any difference
        for p in unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return unet.eval()


def _inputs(seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, SIZE, SIZE, generator=gen)
    labels = torch.from_numpy(np.stack([echo_label_map(SIZE, seed + i) for i in range(batch)]).astype(np.int64))
    return x, labels


def _count_modulations(monkeypatch):
    calls = []
    original = SPADEGroupNorm.modulation

    def counted(self, *args, **kwargs):
        calls.append(id(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SPADEGroupNorm, "modulation", counted)
    return calls


def test_same_outputs_with_and_without_the_cache_and_each_norm_computed_once(monkeypatch):
    unet = _unet()
    norms = [m for m in unet.modules() if isinstance(m, SPADEGroupNorm)]
    assert norms
    x, labels = _inputs()
    with torch.no_grad():
        plain = [unet(x * (1 + i), 900 - 100 * i, segmap=labels).sample for i in range(3)]
    calls = _count_modulations(monkeypatch)
    with torch.no_grad(), unet.label_feature_cache() as cache:
        cached = [unet(x * (1 + i), 900 - 100 * i, segmap=labels.clone()).sample for i in range(3)]
        assert cache.hits == 2 * len(norms) and cache.misses == len(norms) and cache.nbytes > 0
    assert len(calls) == len(norms)  # once per norm, not once per norm and step
    for a, b in zip(plain, cached):
        assert torch.equal(a, b)
    assert all(norm.label_cache is None for norm in norms) and unet._label_cache is None  # removed on exit


def test_another_label_map_is_not_served_the_old_features(monkeypatch):
    unet = _unet()
    x, labels = _inputs()
    _, other = _inputs(seed=5)
    assert not torch.equal(labels, other)
    with torch.no_grad():
        expected = unet(x, 500, segmap=other).sample
        with unet.label_feature_cache():
            unet(x, 500, segmap=labels)
            got = unet(x, 500, segmap=other).sample
            half = unet(x[:1], 500, segmap=labels[:1]).sample  # another batch size
        assert torch.equal(got, expected)
        assert torch.equal(half, unet(x[:1], 500, segmap=labels[:1]).sample)


def test_memory_bound_keeps_only_what_fits_and_outputs_stay_equal(monkeypatch):
    unet = _unet()
    x, labels = _inputs()
    norms = [m for m in unet.modules() if isinstance(m, SPADEGroupNorm)]
    with torch.no_grad():
        expected = unet(x, 300, segmap=labels).sample
        with unet.label_feature_cache(max_bytes=0) as cache:
            for _ in range(2):
                assert torch.equal(unet(x, 300, segmap=labels).sample, expected)
            assert cache.hits == 0 and cache.nbytes == 0 and cache.misses == 2 * len(norms)
        with unet.label_feature_cache() as full:
            unet(x, 300, segmap=labels)
            one_norm = min(g.numel() * g.element_size() * 2 for g, _ in full.features.values())
            total = full.nbytes
        with unet.label_feature_cache(max_bytes=total - one_norm) as partial:
            unet(x, 300, segmap=labels)
            assert 0 < partial.nbytes <= total - one_norm and len(partial.features) < len(norms)
            assert torch.equal(unet(x, 300, segmap=labels).sample, expected)
    with pytest.raises(ValueError, match="max_bytes"):
        LabelFeatureCache(-1)


def test_gradient_with_respect_to_the_sample_is_unchanged():
    """Posterior sampling (DPS) differentiates the network's output with respect to x_t inside the cache."""
    unet = _unet()
    x, labels = _inputs()

    def grad():
        x_in = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(unet(x_in, 400, segmap=labels).sample.square().sum(), x_in)
        return g

    expected = grad()
    with unet.label_feature_cache():
        first, second = grad(), grad()  # the second call uses the kept features
    assert torch.allclose(first, expected, rtol=1e-5, atol=1e-6) and torch.allclose(second, expected, rtol=1e-5, atol=1e-6)


def test_nested_blocks_share_one_cache_and_unconditional_networks_have_none():
    unet = _unet()
    with unet.label_feature_cache() as outer:
        with unet.label_feature_cache() as inner:
            assert inner is outer
        assert unet._label_cache is outer  # the inner block does not end the outer one
    assert unet._label_cache is None
    with _unet(num_classes=0).label_feature_cache() as none:
        assert none is None


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_the_pipeline_samples_inside_it_with_identical_images(monkeypatch, guidance_scale):
    pipe = tiny_semantic_pipeline()
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    norms = [m for m in pipe.unet.modules() if isinstance(m, SPADEGroupNorm)]
    labels = np.stack([echo_label_map(pipe.unet.config.sample_size, s) for s in range(2)])
    kwargs = dict(num_inference_steps=5, guidance_scale=guidance_scale, output_type="np")
    calls = _count_modulations(monkeypatch)
    cached = pipe(labels, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert len(calls) == len(norms)  # computed once for the 5 steps
    monkeypatch.setattr(pipe.unet, "label_feature_cache", lambda *a, **k: contextlib.nullcontext())
    calls.clear()
    plain = pipe(labels, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert len(calls) == 5 * len(norms)
    np.testing.assert_array_equal(cached, plain)


def test_the_reconstruction_pipeline_uses_it_for_guided_sampling(monkeypatch):
    from ultrasound_diffusers.operators import MissingScanLines
    from ultrasound_diffusers.pipelines import UltrasoundReconstructionPipeline
    from ultrasound_diffusers.schedulers import BMapAttenuationScheduler

    unet = _unet()
    scheduler = BMapAttenuationScheduler(num_train_timesteps=100, variance_type="learned_range")
    pipe = UltrasoundReconstructionPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    norms = [m for m in unet.modules() if isinstance(m, SPADEGroupNorm)]
    op = MissingScanLines(2)
    y = op(torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    labels = torch.from_numpy(echo_label_map(SIZE).astype(np.int64))[None]
    kwargs = dict(segmap=labels, method="dps", num_inference_steps=4, num_samples=2, output_type="pt")
    calls = _count_modulations(monkeypatch)
    cached = pipe(y, op, generator=torch.Generator().manual_seed(3), **kwargs).samples
    assert len(calls) == len(norms)
    monkeypatch.setattr(unet, "label_feature_cache", lambda *a, **k: contextlib.nullcontext())
    plain = pipe(y, op, generator=torch.Generator().manual_seed(3), **kwargs).samples
    assert torch.allclose(cached, plain, atol=1e-5)


def test_a_compiled_network_samples_inside_it_without_graph_breaks():
    """torch.compile(fullgraph=True) refuses any graph break: the cache's data-dependent lookups stay out of the
    compiled graph, which computes the features itself (same outputs)."""
    unet = _unet()
    x, labels = _inputs()
    with torch.no_grad():
        expected = unet(x, 500, segmap=labels).sample
        compiled = torch.compile(unet, backend="eager", fullgraph=True)
        with unet.label_feature_cache() as cache:
            for _ in range(2):
                assert torch.allclose(compiled(x, 500, segmap=labels).sample, expected, atol=1e-5)
        assert cache.hits == 0


def test_a_block_around_the_pipeline_call_sets_the_bound(monkeypatch):
    """The README's way to change the bound or turn the cache off: the pipeline's own block reuses the caller's."""
    pipe = tiny_semantic_pipeline()
    norms = [m for m in pipe.unet.modules() if isinstance(m, SPADEGroupNorm)]
    labels = echo_label_map(pipe.unet.config.sample_size)
    calls = _count_modulations(monkeypatch)
    with pipe.unet.label_feature_cache(max_bytes=0):
        pipe(labels, num_inference_steps=3, output_type="np")
    assert len(calls) == 3 * len(norms)  # off: computed at every step
    calls.clear()
    with pipe.unet.label_feature_cache(max_bytes=10 * 2**30) as cache:
        pipe(labels, num_inference_steps=3, output_type="np")
        assert cache.nbytes > 0
    assert len(calls) == len(norms)
