"""Tests of SemanticUNet2DModel: shapes, label-map handling, errors, save/load, checkpointing, training."""

import math

import pytest
import torch
import torch.nn.functional as F
from _pipeline_fixtures import tiny_unet_config

from ultrasound_diffusers.models.unet_semantic_2d import (
    SEMANTIC_UNET_PRESETS,
    SemanticUNet2DModel,
    SemanticUNet2DOutput,
    prepare_segmap,
    timestep_embedding,
)

K = 4



def tiny_config(**overrides):
    """The tests' tiny network with 16 base channels, resampling resblocks and scale-shift norms, K classes."""
    return tiny_unet_config(**{
        "model_channels": 16, "resblock_updown": True, "use_scale_shift_norm": True, "num_classes": K,
        "norm_num_groups": 8, **overrides,
    })


def randomize(model, seed=0, scale=0.2):
    """Replace every parameter (the zero-initialised output layers included) by seeded random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            p.copy_(noise + 1.0 if name.endswith("norm.weight") or ".norm1.weight" in name or ".norm2.weight" in name else noise)
    return model.eval()


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    return randomize(SemanticUNet2DModel(**tiny_config(**overrides)), seed)


def labels(batch=2, h=16, w=16, seed=0, k=K):
    return torch.randint(0, k, (batch, h, w), generator=torch.Generator().manual_seed(seed))


def onehot(lab, k=K):
    return F.one_hot(lab, k).permute(0, 3, 1, 2).float()


# --------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("in_channels, learn_sigma, num_classes", [(1, True, K), (3, False, K), (1, False, 0), (3, True, 0)])
@torch.no_grad()
def test_output_shapes(in_channels, learn_sigma, num_classes):
    model = make(in_channels=in_channels, out_channels=in_channels, learn_sigma=learn_sigma, num_classes=num_classes)
    x = torch.randn(3, in_channels, 16, 16)
    seg = labels(3) if num_classes else None
    out = model(x, torch.tensor([1, 5, 9]), seg)
    assert isinstance(out, SemanticUNet2DOutput)
    assert out.sample.shape == (3, in_channels * (2 if learn_sigma else 1), 16, 16)
    assert torch.isfinite(out.sample).all()


@torch.no_grad()
def test_rectangular_8x256_unconditional():
    model = make(num_classes=0, channel_mult=(1, 2, 2, 2), attention_resolutions=(4, 8), resblock_updown=False)
    x = torch.randn(2, 1, 8, 256)
    out = model(x, 7).sample
    assert out.shape == (2, 2, 8, 256)
    # a batch of one gives the same result as in a batch of two
    assert torch.allclose(model(x[:1], 7).sample, out[:1], atol=1e-5)


@pytest.mark.parametrize("resblock_updown", [True, False])
@torch.no_grad()
def test_odd_sizes_and_more_levels_than_rows(resblock_updown):
    # 15 x 20 is not a power of two; 4 levels halve 15 -> 8 -> 4 -> 2 (rounded up) and back to the skip sizes
    model = make(channel_mult=(1, 1, 2, 2), attention_resolutions=(8,), resblock_updown=resblock_updown)
    out = model(torch.randn(1, 1, 15, 20), 3, labels(1, 15, 20)).sample
    assert out.shape == (1, 2, 15, 20)
    # 3 rows through 3 halvings: 3 -> 2 -> 1 -> 1
    out = model(torch.randn(1, 1, 3, 40), 3, labels(1, 3, 40)).sample
    assert out.shape == (1, 2, 3, 40)


@torch.no_grad()
def test_fresh_model_starts_at_zero_output():
    # guided-diffusion initialisation: residual branches and the output conv start at zero
    model = SemanticUNet2DModel(**tiny_config())
    out = model(torch.randn(2, 1, 16, 16), 3, labels()).sample
    assert torch.count_nonzero(out) == 0
    assert any(p.abs().sum() > 0 for p in model.parameters())


# --------------------------------------------------------------------------------------------------- segmap


@torch.no_grad()
def test_integer_and_onehot_segmaps_agree():
    model = make()
    x, lab = torch.randn(2, 1, 16, 16), labels()
    a = model(x, 4, lab).sample
    b = model(x, 4, lab[:, None]).sample
    c = model(x, 4, onehot(lab)).sample
    d = model(x, 4, lab.to(torch.uint8)).sample
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    # float label maps with whole values ([B, H, W] or [B, 1, H, W]) are labels, as at every entry point
    e = model(x, 4, lab.float()).sample
    f = model(x, 4, lab[:, None].double()).sample
    assert torch.equal(a, e) and torch.equal(a, f)


@torch.no_grad()
def test_label_map_changes_output_and_all_zero_map_works():
    model = make()
    x = torch.randn(2, 1, 16, 16)
    lab = labels()
    out_a = model(x, 4, lab).sample
    out_b = model(x, 4, (lab + 1) % K).sample
    null = model(x, 4, torch.zeros(2, K, 16, 16)).sample
    assert torch.isfinite(null).all()
    assert (out_a - out_b).abs().max() > 1e-3
    assert (out_a - null).abs().max() > 1e-3


@torch.no_grad()
def test_segmap_batch_broadcast_and_resize():
    model = make()
    x = torch.randn(3, 1, 16, 16)
    lab = labels(1)
    assert torch.allclose(model(x, 2, lab).sample, model(x, 2, lab.expand(3, -1, -1)).sample, atol=1e-6)
    # a label map at twice the resolution is resized with nearest interpolation
    big = lab.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(model(x, 2, big).sample, model(x, 2, lab).sample)


def test_prepare_segmap():
    lab = torch.tensor([[[0, 1], [2, 3]]])
    out = prepare_segmap(lab, 4)
    assert out.shape == (1, 4, 2, 2) and out.dtype == torch.float32
    assert torch.equal(out.argmax(1), lab) and torch.equal(out.sum(1), torch.ones(1, 2, 2))
    soft = torch.rand(1, 4, 2, 2, dtype=torch.float64)
    assert torch.equal(prepare_segmap(soft, 4, dtype=torch.float64), soft)
    assert prepare_segmap(lab, 4, batch_size=3).shape == (3, 4, 2, 2)
    assert prepare_segmap(lab, 4, size=(4, 4)).shape == (1, 4, 4, 4)


@pytest.mark.parametrize(
    "segmap, match",
    [
        (torch.full((2, 16, 16), K), "labels must lie in"),
        (torch.full((2, 16, 16), -1), "labels must lie in"),
        (torch.zeros(2, K + 1, 16, 16), "one-hot"),
        (torch.full((2, 16, 16), 0.5), "non-integer"),  # float label maps: whole values only
        (torch.full((2, 1, 16, 16), float("nan")), "NaN"),
        (torch.zeros(2, 2, 16, 16, dtype=torch.long), r"\[B, H, W\]"),
        (torch.zeros(2, 16, 32, dtype=torch.long), "aspect"),
        (torch.zeros(3, 16, 16, dtype=torch.long), "batch size"),
    ],
)
@torch.no_grad()
def test_bad_segmaps_raise(segmap, match):
    model = make()
    with pytest.raises(ValueError, match=match):
        model(torch.randn(2, 1, 16, 16), 1, segmap)


def test_segmap_presence_is_checked():
    with pytest.raises(ValueError, match="segmap` is required"):
        make()(torch.randn(1, 1, 16, 16), 1)
    with pytest.raises(ValueError, match="unconditional"):
        make(num_classes=0)(torch.randn(1, 1, 16, 16), 1, labels(1))


def test_bad_inputs_and_configs_raise():
    model = make()
    with pytest.raises(ValueError, match="sample"):
        model(torch.randn(1, 3, 16, 16), 1, labels(1))
    with pytest.raises(ValueError, match="timestep"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2, 3]), labels())
    with pytest.raises(ValueError, match="downsampling factors"):
        SemanticUNet2DModel(**tiny_config(attention_resolutions=(16,)))  # a pixel resolution, not a factor
    with pytest.raises(ValueError, match="num_head_channels"):
        SemanticUNet2DModel(**tiny_config(num_head_channels=6))
    with pytest.raises(ValueError, match="num_classes"):
        SemanticUNet2DModel(**tiny_config(num_classes=-1))


# --------------------------------------------------------------------------------------------------- timesteps


@torch.no_grad()
def test_timestep_forms_agree():
    model = make()
    x, lab = torch.randn(2, 1, 16, 16), labels()
    ref = model(x, torch.tensor([7, 7]), lab).sample
    for t in (7, 7.0, torch.tensor(7), torch.tensor([7]), torch.tensor([7.0, 7.0], dtype=torch.float64)):
        assert torch.equal(model(x, t, lab).sample, ref)
    per_sample = model(x, torch.tensor([7, 500]), lab).sample
    assert torch.equal(per_sample[0], ref[0]) and not torch.allclose(per_sample[1], ref[1])


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 3.0])
    emb = timestep_embedding(t, 9)
    assert emb.shape == (2, 9)
    half = 4
    freqs = torch.tensor([10000 ** (-i / half) for i in range(half)])
    assert torch.allclose(emb[1, :4], torch.cos(3.0 * freqs)) and torch.allclose(emb[1, 4:8], torch.sin(3.0 * freqs))
    assert torch.equal(emb[0, :4], torch.ones(4)) and torch.equal(emb[:, 8], torch.zeros(2))


@torch.no_grad()
def test_timestep_scale():
    a = make(timestep_scale=0.25)
    b = make()
    x, lab = torch.randn(1, 1, 16, 16), labels(1)
    assert torch.allclose(a(x, 400, lab).sample, b(x, 100, lab).sample, atol=1e-6)


# --------------------------------------------------------------------------------------------------- diffusers


@torch.no_grad()
def test_determinism_and_tuple_output():
    model = make(dropout=0.3)
    x, lab = torch.randn(2, 1, 16, 16), labels()
    a = model(x, 3, lab).sample
    b = model(x, 3, lab).sample
    (c,) = model(x, 3, lab, return_dict=False)
    assert torch.equal(a, b) and torch.equal(a, c)


@torch.no_grad()
def test_save_load_round_trip(tmp_path):
    model = make(num_heads_upsample=2, num_head_channels=-1, num_heads=1)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = SemanticUNet2DModel.from_pretrained(tmp_path / "m").eval()
    def public(config):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(model.config)
    x, lab = torch.randn(2, 1, 16, 16), labels()
    assert torch.equal(loaded(x, 5, lab).sample, model(x, 5, lab).sample)

    # sharded checkpoint
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    sharded = SemanticUNet2DModel.from_pretrained(tmp_path / "sharded").eval()
    assert torch.equal(sharded(x, 5, lab).sample, model(x, 5, lab).sample)

    # dtype on load (bf16 convolutions are very slow on CPU, so only the weights are checked in bf16)
    half = SemanticUNet2DModel.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16)
    ref_state = model.state_dict()
    for name, p in half.state_dict().items():
        assert p.dtype == torch.bfloat16 and torch.equal(p, ref_state[name].bfloat16()), name
    double = SemanticUNet2DModel.from_pretrained(tmp_path / "m", torch_dtype=torch.float64).eval()
    out = double(x.double(), 5, lab).sample
    assert out.dtype == torch.float64
    assert torch.allclose(out.float(), model(x, 5, lab).sample, atol=1e-4)


def test_gradient_checkpointing_same_output_and_gradients():
    model = make(dropout=0.0).train()
    x, lab = torch.randn(2, 1, 16, 16), labels()

    def grads():
        model.zero_grad()
        out = model(x, torch.tensor([3, 9]), lab).sample
        (out**2).mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_ref, g_ref = grads()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    out_ck, g_ck = grads()
    model.disable_gradient_checkpointing()
    assert torch.allclose(out_ref, out_ck, atol=1e-6)
    for name in g_ref:
        assert torch.allclose(g_ref[name], g_ck[name], atol=1e-5, rtol=1e-4), name


def test_training_reduces_loss_and_updates_spade():
    torch.manual_seed(0)
    model = SemanticUNet2DModel(**tiny_config()).train()  # the real (zero) initialisation
    spade = {n: p.detach().clone() for n, p in model.named_parameters() if "mlp_gamma" in n or "mlp_shared" in n}
    assert spade
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, lab = torch.randn(4, 1, 16, 16), labels(4)
    target = torch.randn(4, 2, 16, 16) * 0.5 + onehot(labels(4))[:, :2]
    t = torch.tensor([1, 10, 100, 500])
    losses = []
    for _ in range(12):
        loss = F.mse_loss(model(x, t, lab).sample, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    moved = [n for n, p in model.named_parameters() if n in spade and not torch.equal(p, spade[n])]
    assert len(moved) == len(spade)
    grads = [p.grad.abs().sum().item() for n, p in model.named_parameters() if n in spade]
    assert all(g > 0 for g in grads)


# --------------------------------------------------------------------------------------------------- presets


def test_presets():
    config = SemanticUNet2DModel.preset_config("sdm-128")
    assert config["channel_mult"] == (1, 1, 2, 3, 4) and config["model_channels"] == 128
    assert config["attention_resolutions"] == (4, 8, 16)  # 32, 16 and 8 px at 128 px
    assert config["num_head_channels"] == 64 and config["resblock_updown"] and config["use_scale_shift_norm"]
    assert config["learn_sigma"] and config["spade_hidden_channels"] == 128
    for name, preset in SEMANTIC_UNET_PRESETS.items():
        assert set(preset) <= set(SemanticUNet2DModel._init_parameter_names()), name

    model = SemanticUNet2DModel.from_preset("tiny-64", num_classes=3)
    assert model.config.num_classes == 3
    n_params = sum(p.numel() for p in model.parameters())
    assert 1e6 < n_params < 5e6
    out = model(torch.randn(1, 1, 64, 64), 10, torch.zeros(1, 64, 64, dtype=torch.long)).sample
    assert out.shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="unknown preset"):
        SemanticUNet2DModel.from_preset("nope")
    with pytest.raises(ValueError, match="unknown config keys"):
        SemanticUNet2DModel.from_preset("tiny-64", bogus=1)


def test_scaled_dot_product_attention_matches_explicit_softmax():
    from ultrasound_diffusers.models.unet_semantic_2d import AttentionBlock2D

    block = randomize(AttentionBlock2D(16, num_head_channels=8, num_groups=8), scale=0.5)
    x = torch.randn(2, 16, 3, 5)
    flat = block.norm(x.reshape(2, 16, 15)).transpose(1, 2)
    q, k, v = block.to_qkv(flat).reshape(2, 15, 3, 2, 8).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    ref = x + block.to_out((w @ v).transpose(1, 2).reshape(2, 15, 16)).transpose(1, 2).reshape(2, 16, 3, 5)
    assert torch.allclose(block(x), ref, atol=1e-5)


def test_levels_keep_the_weight_key_names_of_saved_models():
    """Encoder levels hold a ``downsampler``, decoder levels an ``upsampler`` (the key names of every saved model)."""
    from ultrasound_diffusers.models.unet_semantic_2d import UNetLevel

    keys = make().state_dict().keys()
    assert any(k.startswith("down_blocks.0.downsampler.") for k in keys)
    assert any(k.startswith("up_blocks.0.upsampler.") for k in keys)
    assert not any(".upsampler." in k for k in keys if k.startswith("down_blocks."))
    with pytest.raises(ValueError, match="one way"):
        UNetLevel([], None, downsampler=torch.nn.Identity(), upsampler=torch.nn.Identity())
