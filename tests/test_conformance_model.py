"""Conformance of SemanticUNet2DModel with what diffusers' model tester mixin checks.

Written for this project after the checks of diffusers' ``ModelTesterMixin`` (save / load round trips,
variants, dtypes, layerwise casting, dict vs tuple outputs, determinism), plus strict weight loading.
Tiny 16 px models (tests/_pipeline_fixtures.py), CPU only.
"""

from __future__ import annotations

import json

import pytest
import torch
from _pipeline_fixtures import echo_label_map, tiny_semantic_unet

from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel



def _inputs(batch: int = 2, conditional: bool = True, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 1, 16, 16, generator=generator)
    timestep = torch.tensor([3, 70][:batch] + [11] * max(0, batch - 2))
    kwargs = {}
    if conditional:
        labels = torch.from_numpy(echo_label_map(16)).long()
        kwargs["segmap"] = labels[None].expand(batch, -1, -1)
    return sample, timestep, kwargs


def _public(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def unet():
    return tiny_semantic_unet()


@pytest.fixture(scope="module")
def unconditional_unet():
    return tiny_semantic_unet(num_classes=0)


# ------------------------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("conditional", [True, False])
def test_output_shape_and_dict_tuple_equivalence(unet, unconditional_unet, conditional):
    model = unet if conditional else unconditional_unet
    sample, t, kwargs = _inputs(conditional=conditional)
    with torch.no_grad():
        out_dict = model(sample, t, **kwargs)
        out_tuple = model(sample, t, return_dict=False, **kwargs)
    assert isinstance(out_tuple, tuple) and len(out_tuple) == 1
    assert out_dict.sample.shape == (2, 2, 16, 16)  # learn_sigma: prediction + variance channels
    assert torch.equal(out_dict.sample, out_tuple[0])
    assert torch.equal(out_dict[0], out_dict.sample) and torch.equal(out_dict.to_tuple()[0], out_dict.sample)


def test_determinism(unet):
    sample, t, kwargs = _inputs()
    with torch.no_grad():
        first = unet(sample, t, **kwargs).sample
        second = unet(sample, t, **kwargs).sample
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


def test_batch_matches_single(unet):
    sample, t, kwargs = _inputs()
    with torch.no_grad():
        batched = unet(sample, t, **kwargs).sample
        single = unet(sample[1:], t[1:], segmap=kwargs["segmap"][1:]).sample
    torch.testing.assert_close(batched[1:], single, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip(unet, tmp_path):
    unet.save_pretrained(tmp_path)
    loaded = SemanticUNet2DModel.from_pretrained(tmp_path).eval()
    assert _public(loaded.config) == _public(unet.config)  # lists, not tuples, in the config
    sample, t, kwargs = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, t, **kwargs).sample, unet(sample, t, **kwargs).sample, atol=0, rtol=0)
    for (name, a), (_, b) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_rectangular_config_round_trip(tmp_path):
    model = tiny_semantic_unet(num_classes=0, sample_size=(8, 32))
    model.save_pretrained(tmp_path)
    assert _public(SemanticUNet2DModel.from_pretrained(tmp_path).config) == _public(model.config)


def test_from_config_round_trip(unet):
    rebuilt = SemanticUNet2DModel.from_config(unet.config)
    assert dict(rebuilt.config) == dict(unet.config)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in unet.parameters())


def test_variant_round_trip(unet, tmp_path):
    unet.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = SemanticUNet2DModel.from_pretrained(tmp_path, variant="fp16")
    for (name, a), (_, b) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    # the plain (no-variant) weights are not there: diffusers refuses with an error
    with pytest.raises((OSError, ValueError)):
        SemanticUNet2DModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_save_load_torch_dtype(unet, tmp_path, dtype):
    unet.save_pretrained(tmp_path)
    loaded = SemanticUNet2DModel.from_pretrained(tmp_path, torch_dtype=dtype)
    assert loaded.dtype == dtype
    assert all(p.dtype == dtype for p in loaded.parameters())
    loaded.to(torch.float32)
    sample, t, kwargs = _inputs()
    with torch.no_grad():
        out = loaded(sample, t, **kwargs).sample
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_to_dtype_runs_and_keeps_outputs_close(unet):
    sample, t, kwargs = _inputs()
    model = tiny_semantic_unet().to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        reference = unet(sample, t, **kwargs).sample
        out = model(sample, t, **kwargs).sample  # float32 input is cast to the model's dtype
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


# ------------------------------------------------------------------------------------------------ layerwise casting


@pytest.mark.parametrize("storage_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_layerwise_casting_inference(storage_dtype):
    """diffusers' test_layerwise_casting_inference: float8 storage, float32 compute, one forward pass."""
    reference = tiny_semantic_unet()
    model = tiny_semantic_unet()
    model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    assert model.dtype == torch.float32  # the compute dtype
    assert model.conv_in.weight.dtype == storage_dtype  # weights stored in float8
    sample, t, kwargs = _inputs()
    with torch.no_grad():
        out = model(sample, t, **kwargs).sample
        expected = reference(sample, t, **kwargs).sample
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # float8 weights: close to the float32 model, not equal to it
    assert (out - expected).abs().mean() < 0.25 * expected.abs().mean()


def test_layerwise_casting_keeps_norms_in_full_precision():
    model = tiny_semantic_unet()
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert model.conv_norm_out.weight.dtype == torch.float32
    assert model.mid_block.resnets[0].norm1.mlp_shared.weight.dtype == torch.float32  # SPADE norm: skipped


# ------------------------------------------------------------------------------------------------ variants


def test_missing_variant_is_a_value_error_with_diffusers_message(unet, tmp_path):
    unet.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"variant=fp16`, but no such modeling files are available") as info:
        SemanticUNet2DModel.from_pretrained(tmp_path, variant="fp16")
    assert isinstance(info.value, OSError)  # what diffusers' model loader raised before: callers keep working
    assert str(tmp_path) in str(info.value)


# ------------------------------------------------------------------------------------------------ strict loading


def _doctor_weights(folder, drop=(), add=None, reshape=None):
    from safetensors.torch import load_file, save_file

    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    for key in drop:
        state.pop(key)
    state.update(add or {})
    for key, shape in (reshape or {}).items():
        state[key] = torch.zeros(shape)
    save_file(state, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "doctor, names",
    [
        (dict(drop=["conv_in.weight", "mid_block.attention.to_qkv.bias"]), ["missing keys", "conv_in.weight", "to_qkv.bias"]),
        (dict(add={"extra_head.weight": torch.zeros(3)}), ["unexpected keys", "extra_head.weight"]),
        (dict(reshape={"conv_out.bias": (7,)}), ["conv_out.bias"]),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
@pytest.mark.parametrize("low_cpu_mem_usage", [True, False])
def test_incomplete_weights_are_refused_naming_the_keys(unet, tmp_path, doctor, names, low_cpu_mem_usage):
    unet.save_pretrained(tmp_path)
    _doctor_weights(tmp_path, **doctor)
    with pytest.raises(ValueError) as info:
        SemanticUNet2DModel.from_pretrained(tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
    for name in names:
        assert name in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_complete_weights_load_and_loading_info_is_still_available(unet, tmp_path):
    unet.save_pretrained(tmp_path)
    model, info = SemanticUNet2DModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert all(p.device.type == "cpu" for p in model.parameters())


# ------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("size", [1, 2])
def test_too_small_sample_names_the_minimum_size(size):
    model = SemanticUNet2DModel.from_preset("tiny-64")  # 32 channels in 32 groups: one value per group at 1 px
    with pytest.raises(ValueError, match=r"too small for this network.*at least 8") as info:
        model(torch.randn(1, 1, size, size), 3, segmap=torch.zeros(1, size, size, dtype=torch.long))
    assert "training" not in str(info.value)
    model(torch.randn(1, 1, 8, 8), 3, segmap=torch.zeros(1, 8, 8, dtype=torch.long))  # the size it names works


def test_sharded_variant_round_trip_and_a_missing_shard_is_refused(unet, tmp_path):
    unet.save_pretrained(tmp_path, variant="fp16", max_shard_size="40KB")
    shards = sorted(tmp_path.glob("diffusion_pytorch_model.fp16-*-of-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    loaded = SemanticUNet2DModel.from_pretrained(tmp_path, variant="fp16")
    for (name, a), (_, b) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="no such modeling files"):
        SemanticUNet2DModel.from_pretrained(tmp_path, variant="bf16")
    (tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").unlink()  # shards without their index
    from ultrasound_diffusers.models.loading import has_weight_variant

    assert has_weight_variant(tmp_path, "fp16") and not has_weight_variant(tmp_path, "fp1")


def test_unknown_config_keys_are_refused_naming_the_file(unet, tmp_path):
    unet.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["timestep_scal"] = 0.25  # a typo of timestep_scale: diffusers would only warn and ignore it
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: unknown SemanticUNet2DModel config keys \['timestep_scal'\]"):
        SemanticUNet2DModel.from_pretrained(tmp_path)


def test_ema_model_folders_still_load(unet, tmp_path):
    """diffusers' EMAModel stores its state in the model's config.json; those keys are not typos."""
    from diffusers.training_utils import EMAModel

    ema = EMAModel(unet.parameters(), decay=0.9, model_cls=SemanticUNet2DModel, model_config=unet.config)
    ema.save_pretrained(tmp_path / "unet_ema")
    loaded = EMAModel.from_pretrained(tmp_path / "unet_ema", SemanticUNet2DModel)
    assert loaded.decay == 0.9
