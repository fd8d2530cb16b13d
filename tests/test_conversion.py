"""Conversion of guided-diffusion / SDM state dicts to SemanticUNet2DModel.

The tests build original-layout state dicts with a small reference network written here from the documented
naming scheme (``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``; ResBlock
``in_layers/emb_layers/out_layers/skip_connection``; SDM blocks ``in_norm/out_norm`` SPADE norms; attention
``norm/qkv/proj_out`` as 1x1 Conv1d with the legacy or the new qkv order).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ultrasound_diffusers.models.conversion import (
    convert_original_checkpoint,
    convert_original_state_dict,
    infer_config_from_original_state_dict,
    load_original_state_dict,
    original_key_mapping,
    to_original_state_dict,
)
from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel

GROUPS = 8



# ------------------------------------------------------------------------------ reference (original layout)

def convert(checkpoint, **kwargs):
    """convert_original_checkpoint with the reference's group count and (unless heads are given) 16-channel heads."""
    kwargs.setdefault("norm_num_groups", GROUPS)
    if "num_heads" not in kwargs:
        kwargs.setdefault("num_head_channels", 16)
    return convert_original_checkpoint(checkpoint, **kwargs)




def ref_timestep_embedding(t, dim):
    # computed in float32, as the original code does whatever the network's dtype
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class RefSPADE(nn.Module):
    def __init__(self, channels, label_nc, hidden):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, seg):
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        a = self.mlp_shared(seg)
        return self.norm(x) * (1 + self.mlp_gamma(a)) + self.mlp_beta(a)


class RefResBlock(nn.Module):
    def __init__(self, cin, cout, temb, scale_shift, label_nc=0, hidden=8, up=False, down=False):
        super().__init__()
        self.spade, self.scale_shift, self.up, self.down = label_nc > 0, scale_shift, up, down
        if self.spade:
            self.in_norm = RefSPADE(cin, label_nc, hidden)
            self.in_layers = nn.Sequential(nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
            self.out_norm = RefSPADE(cout, label_nc, hidden)
            self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        else:
            self.in_layers = nn.Sequential(nn.GroupNorm(GROUPS, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
            self.out_layers = nn.Sequential(
                nn.GroupNorm(GROUPS, cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1)
            )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(temb, 2 * cout if scale_shift else cout))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, seg, emb):
        if self.spade:
            h = self.in_layers[0](self.in_norm(x, seg))
        else:
            h = self.in_layers[1](self.in_layers[0](x))
        h, x = self.resample(h), self.resample(x)
        h = self.in_layers[-1](h)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = (self.out_norm(h, seg) if self.spade else self.out_layers[0](h)) * (1 + scale) + shift
        else:
            h = h + e
            h = self.out_norm(h, seg) if self.spade else self.out_layers[0](h)
        rest = self.out_layers if self.spade else self.out_layers[1:]
        return self.skip_connection(x) + rest(h)


class RefAttention(nn.Module):
    def __init__(self, channels, heads, new_order):
        super().__init__()
        self.heads, self.new_order = heads, new_order
        self.norm = nn.GroupNorm(GROUPS, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x, seg=None, emb=None):
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        d = c // self.heads
        if self.new_order:
            q, k, v = [t.reshape(b * self.heads, d, -1) for t in qkv.chunk(3, dim=1)]
        else:
            q, k, v = qkv.reshape(b * self.heads, 3 * d, -1).split(d, dim=1)
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        out = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        return (flat + self.proj_out(out)).reshape(b, c, hh, ww)


class RefDown(nn.Module):
    def __init__(self, ch, conv):
        super().__init__()
        if conv:
            self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.conv = conv

    def forward(self, x, seg=None, emb=None):
        return self.op(x) if self.conv else F.avg_pool2d(x, 2)


class RefUp(nn.Module):
    def __init__(self, ch, conv):
        super().__init__()
        if conv:
            self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.use_conv = conv

    def forward(self, x, seg=None, emb=None):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Seq(nn.Sequential):
    def forward(self, x, seg, emb):
        for layer in self:
            x = layer(x) if isinstance(layer, nn.Conv2d) else layer(x, seg, emb)
        return x


class RefUNet(nn.Module):
    """The original UNet structure with the original parameter names (small widths, GroupNorm(8))."""

    def __init__(self, in_ch=1, mc=16, out_ch=2, mult=(1, 2), nrb=1, attn=(2,), heads=2, new_order=True,
                 num_classes=3, hidden=8, scale_shift=True, updown=True, conv_resample=True):
        super().__init__()
        self.mc, self.num_classes = mc, num_classes
        temb = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([Seq(nn.Conv2d(in_ch, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers = [RefResBlock(ch, int(m * mc), temb, scale_shift)]
                ch = int(m * mc)
                if ds in attn:
                    layers.append(RefAttention(ch, heads, new_order))
                self.input_blocks.append(Seq(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                down = RefResBlock(ch, ch, temb, scale_shift, down=True) if updown else RefDown(ch, conv_resample)
                self.input_blocks.append(Seq(down))
                chans.append(ch)
                ds *= 2
        k = num_classes
        self.middle_block = Seq(
            RefResBlock(ch, ch, temb, scale_shift, k, hidden), RefAttention(ch, heads, new_order),
            RefResBlock(ch, ch, temb, scale_shift, k, hidden),
        )
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(nrb + 1):
                layers = [RefResBlock(ch + chans.pop(), int(m * mc), temb, scale_shift, k, hidden)]
                ch = int(m * mc)
                if ds in attn:
                    layers.append(RefAttention(ch, heads, new_order))
                if level and i == nrb:
                    layers.append(RefResBlock(ch, ch, temb, scale_shift, k, hidden, up=True) if updown else RefUp(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(Seq(*layers))
        self.out = nn.Sequential(nn.GroupNorm(GROUPS, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))

    def forward(self, x, t, seg=None):
        emb = self.time_embed(ref_timestep_embedding(t, self.mc).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, seg, emb)
            hs.append(h)
        h = self.middle_block(h, seg, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), seg, emb)
        return self.out(h)


def randomized(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = 0.4 if "qkv" in name else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def inputs(batch=2, in_ch=1, h=16, w=16, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_ch, h, w, generator=gen)
    lab = torch.randint(0, k, (batch, h, w), generator=gen) if k else None
    return x, torch.tensor([3, 700])[:batch], lab


def run_pair(ref_kwargs, convert_kwargs, h=16, w=16, dtype=torch.float64):
    ref = randomized(RefUNet(**ref_kwargs))
    model = convert(ref.state_dict(), **convert_kwargs)
    k = ref.num_classes
    x, t, lab = inputs(in_ch=ref_kwargs.get("in_ch", 1), h=h, w=w, k=k)
    ref, model = ref.to(dtype), torch.nn.Module.to(model, dtype)
    with torch.no_grad():
        seg = F.one_hot(lab, k).permute(0, 3, 1, 2).to(dtype) if k else None
        expected = ref(x.to(dtype), t, seg)
        got = model(x.to(dtype), t, lab).sample
    return expected, got, model


# ------------------------------------------------------------------------------------------------- tests


def test_sdm_new_order_outputs_identical():
    expected, got, model = run_pair(dict(heads=2, new_order=True), dict(num_head_channels=16, sample_size=16))
    assert got.shape == expected.shape == (2, 2, 16, 16)
    assert expected.abs().max() > 0.1
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)
    assert model.config.learn_sigma and model.config.out_channels == 1 and model.config.num_classes == 3


def test_sdm_float32_outputs_match():
    expected, got, _ = run_pair(dict(heads=2, new_order=True), dict(num_head_channels=16), dtype=torch.float32)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_legacy_attention_order_needs_the_right_heads():
    ref_kwargs = dict(heads=2, new_order=False, mc=32, mult=(1, 2))
    expected, got, _ = run_pair(ref_kwargs, dict(source="sdm", num_head_channels=32))  # 2 heads at 64 ch
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)
    # the same weights read with a wrong head count (or order) give another network
    expected, got, _ = run_pair(ref_kwargs, dict(source="sdm", num_head_channels=64))
    assert (got - expected).abs().max() > 1e-3
    expected, got, _ = run_pair(ref_kwargs, dict(source="sdm", num_head_channels=32, use_new_attention_order=True))
    assert (got - expected).abs().max() > 1e-3


def test_unconditional_plain_blocks_rectangular():
    ref_kwargs = dict(num_classes=0, mult=(1, 2, 2), attn=(4,), updown=False, scale_shift=False, heads=4, new_order=False)
    expected, got, model = run_pair(
        ref_kwargs, dict(source="improved-diffusion", num_heads=4, sample_size=(8, 32)), h=8, w=32
    )
    assert got.shape == (2, 2, 8, 32)
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)
    assert model.config.num_classes == 0 and not model.config.use_scale_shift_norm
    assert tuple(model.config.sample_size) == (8, 32)


def test_average_pool_resampling():
    ref_kwargs = dict(mult=(1, 1, 2), attn=(), updown=False, conv_resample=False, out_ch=1)
    expected, got, model = run_pair(ref_kwargs, dict(learn_sigma=False, num_head_channels=16))
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)
    assert not model.config.conv_resample and not model.config.learn_sigma


def test_inferred_config():
    ref = RefUNet(in_ch=3, mc=16, out_ch=6, mult=(1, 2, 3), nrb=2, attn=(2, 4), num_classes=5, hidden=24)
    config = infer_config_from_original_state_dict(ref.state_dict())
    assert config == dict(
        in_channels=3, model_channels=16, channel_mult=(1, 2, 3), num_res_blocks=2, attention_resolutions=(2, 4),
        resblock_updown=True, conv_resample=True, use_scale_shift_norm=True, num_classes=5,
        spade_hidden_channels=24, total_out_channels=6,
    )
    ref = RefUNet(mc=16, mult=(1, 2), updown=False, conv_resample=False, scale_shift=False, attn=(), num_classes=0)
    config = infer_config_from_original_state_dict(ref.state_dict())
    assert config["resblock_updown"] is False and config["conv_resample"] is False
    assert config["use_scale_shift_norm"] is False and config["num_classes"] == 0 and config["num_res_blocks"] == 1


def test_mapping_round_trip_is_exact():
    ref = randomized(RefUNet(heads=2, new_order=False, mc=32, mult=(1, 2)))
    original = ref.state_dict()
    model = convert(original, source="sdm", num_head_channels=32)
    back = to_original_state_dict(model, use_new_attention_order=False)
    assert set(back) == set(original)
    for key, value in original.items():
        assert back[key].shape == value.shape and torch.equal(back[key], value), key
    # every layer of the mapping exists in our model
    ours = {k.rpartition(".")[0] for k in model.state_dict()}
    mapped = {pair[1] for pair in original_key_mapping(model.config)}
    assert ours <= mapped


def test_key_names_of_the_mapping():
    ref = RefUNet()
    model = convert(ref.state_dict())
    pairs = {orig: ours for orig, ours, _ in original_key_mapping(model.config)}
    assert pairs["time_embed.0"] == "time_embedding.linear_1"
    assert pairs["input_blocks.0.0"] == "conv_in"
    assert pairs["input_blocks.1.0.in_layers.2"] == "down_blocks.0.resnets.0.conv1"
    assert pairs["input_blocks.2.0.in_layers.0"] == "down_blocks.0.downsampler.norm1"
    assert pairs["middle_block.0.in_norm.mlp_gamma"] == "mid_block.resnets.0.norm1.mlp_gamma"
    assert pairs["middle_block.1.qkv"] == "mid_block.attention.to_qkv"
    assert pairs["output_blocks.1.2.out_layers.2"] == "up_blocks.0.upsampler.conv2"
    assert pairs["output_blocks.3.0.skip_connection"] == "up_blocks.1.resnets.1.conv_shortcut"
    assert pairs["out.2"] == "conv_out"


def test_leftover_and_missing_keys_are_listed():
    state = RefUNet().state_dict()
    extra = dict(state, **{"label_emb.weight": torch.zeros(3, 64)})
    with pytest.raises(ValueError, match=r"not consumed.*label_emb\.weight"):
        convert(extra)
    missing = {k: v for k, v in state.items() if k != "middle_block.2.out_norm.mlp_beta.bias"}
    with pytest.raises(ValueError, match=r"not filled.*mid_block\.resnets\.1\.norm2\.mlp_beta\.bias"):
        convert(missing)
    config = dict(SemanticUNet2DModel(**dict(
        in_channels=1, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
        num_classes=3, spade_hidden_channels=8, norm_num_groups=GROUPS, num_head_channels=16)).config)
    expected = SemanticUNet2DModel.from_config(config).state_dict().keys()
    converted = convert_original_state_dict(state, config, expected_keys=expected)
    assert set(converted) == set(expected)


def test_contradicting_or_unknown_options_raise():
    state = RefUNet().state_dict()
    with pytest.raises(ValueError, match="contradicts the checkpoint"):
        convert(state, model_channels=32)
    with pytest.raises(ValueError, match="contradicts the checkpoint"):
        convert(state, attention_resolutions=(8,))
    with pytest.raises(ValueError, match="unknown config keys"):
        convert(state, bogus=1)
    with pytest.raises(ValueError, match="unknown `source`"):
        convert(state, source="nope")
    with pytest.raises(ValueError, match="input_blocks"):
        convert({"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="learn_sigma"):
        convert(RefUNet(out_ch=3).state_dict())


class NotATensor:
    """An arbitrary pickled object: ``torch.load(weights_only=True)`` refuses to rebuild it."""


def test_load_from_file_safely(tmp_path):
    ref = randomized(RefUNet())
    state = ref.state_dict()
    torch.save(state, tmp_path / "model.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pt")
    plain = load_original_state_dict(tmp_path / "model.pt")
    wrapped = load_original_state_dict(tmp_path / "wrapped.pt")
    assert list(plain) == list(state) and list(wrapped) == list(state)
    assert all(torch.equal(wrapped[k], state[k]) for k in state)

    torch.save({"input_blocks.0.0.weight": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights-only"):
        load_original_state_dict(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError):
        load_original_state_dict(tmp_path / "absent.pt")


def test_converted_model_save_load_identical(tmp_path):
    ref = randomized(RefUNet())
    torch.save(ref.state_dict(), tmp_path / "model.pt")
    model = convert(tmp_path / "model.pt", num_head_channels=16)
    model.save_pretrained(tmp_path / "unet")
    loaded = SemanticUNet2DModel.from_pretrained(tmp_path / "unet").eval()
    x, t, lab = inputs()
    with torch.no_grad():
        seg = F.one_hot(lab, 3).permute(0, 3, 1, 2).float()
        assert torch.equal(loaded(x, t, lab).sample, model(x, t, lab).sample)
        assert torch.allclose(loaded(x, t, lab).sample, ref(x, t, seg), atol=1e-5)


def test_cli_convert(tmp_path):
    from ultrasound_diffusers.cli import main

    ref = randomized(RefUNet())
    torch.save(ref.state_dict(), tmp_path / "model.pt")
    config = '{"norm_num_groups": 8, "num_head_channels": 16}'
    out = tmp_path / "folder"
    code = main(["convert", "--checkpoint", str(tmp_path / "model.pt"), "--output_dir", str(out),
                 "--sample_size", "16", "--config", config,
                 "--scheduler_args", '{"num_train_timesteps": 50}'])
    assert code == 0
    unet = SemanticUNet2DModel.from_pretrained(out / "unet").eval()
    assert unet.config.sample_size == 16 and unet.config.num_classes == 3
    scheduler_config = (out / "scheduler" / "scheduler_config.json").read_text()
    assert '"num_train_timesteps": 50' in scheduler_config and '"learned_range"' in scheduler_config
    x, t, lab = inputs()
    with torch.no_grad():
        seg = F.one_hot(lab, 3).permute(0, 3, 1, 2).float()
        assert torch.allclose(unet(x, t, lab).sample, ref(x, t, seg), atol=1e-5)

    # refuses to overwrite without --overwrite; --model_only writes a bare model folder
    assert main(["convert", "--checkpoint", str(tmp_path / "model.pt"), "--output_dir", str(out), "--config", config]) == 2
    code = main(["convert", "--checkpoint", str(tmp_path / "model.pt"), "--output_dir", str(out), "--config", config,
                 "--model_only", "--overwrite", "--dtype", "bfloat16"])
    assert code == 0 and (out / "config.json").is_file() and not (out / "unet").exists()
    from safetensors.torch import load_file

    stored = load_file(out / "diffusion_pytorch_model.safetensors")
    assert stored and all(v.dtype == torch.bfloat16 for v in stored.values())


# ------------------------------------------------------------------------------ attention heads and sizes


def test_head_layout_is_required_and_the_consistent_ones_are_listed():
    from ultrasound_diffusers.models.conversion import consistent_head_layouts

    state = randomized(RefUNet(heads=2, mc=16, mult=(1, 2), attn=(1, 2))).state_dict()
    layouts = consistent_head_layouts(state)
    assert layouts["attention_channels"] == [16, 32]
    assert layouts["num_head_channels"] == layouts["num_heads"] == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match=r"does not store the number of attention heads.*16, 32 channels.*"
                                         r"\[1, 2, 4, 8, 16\].*num_head_channels=64"):
        convert_original_checkpoint(state, norm_num_groups=GROUPS)


def test_source_default_heads_only_on_request_and_a_wrong_default_is_a_different_network():
    """A checkpoint trained with 32-channel heads: the ultrasound-sdm default (64) gives another network."""
    ref_kwargs = dict(heads=2, new_order=True, mc=32, mult=(1, 2))  # 2 heads of 16 / 32 channels
    expected, got, model = run_pair(ref_kwargs, dict(num_heads=2))
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)
    assert model.config.num_head_channels == -1 and model.config.num_heads == 2  # recorded in the config
    expected, got, model = run_pair(ref_kwargs, dict(num_head_channels=None, use_source_head_defaults=True))
    assert model.config.num_head_channels == 64
    assert (got - expected).abs().max() > 1e-3


def test_num_heads_alone_is_not_overridden_by_the_source_width():
    state = randomized(RefUNet(heads=2, mc=32, mult=(1, 2))).state_dict()
    model = convert_original_checkpoint(state, norm_num_groups=GROUPS, num_heads=4)
    assert model.config.num_heads == 4 and model.config.num_head_channels == -1
    assert model.mid_block.attention.num_heads == 4


@pytest.mark.parametrize("heads", [dict(num_head_channels=24), dict(num_heads=3), dict(num_head_channels=True)])
def test_head_layout_that_does_not_fit_the_weights_is_refused(heads):
    state = randomized(RefUNet(heads=2, mc=16, mult=(1, 2))).state_dict()
    with pytest.raises(ValueError, match=r"num_head"):
        convert_original_checkpoint(state, norm_num_groups=GROUPS, **heads)


@pytest.mark.parametrize("size", [0, -3, (8, 0), (0, 8), 2.5, True, (8, 8, 8)])
def test_model_sample_size_must_be_positive(size):
    with pytest.raises(ValueError, match="sample_size"):
        SemanticUNet2DModel(sample_size=size, model_channels=8, channel_mult=(1,), num_res_blocks=1,
                            attention_resolutions=(), num_head_channels=8, norm_num_groups=4)


def test_cli_convert_refuses_a_zero_sample_size(tmp_path, capsys):
    from ultrasound_diffusers.cli import main

    torch.save(randomized(RefUNet()).state_dict(), tmp_path / "model.pt")
    base = ["convert", "--checkpoint", str(tmp_path / "model.pt"), "--config", '{"norm_num_groups": 8, "num_head_channels": 16}']
    for size in ("0", "16,0", "-4"):
        with pytest.raises(SystemExit) as info:
            main(base + ["--output_dir", str(tmp_path / "zero"), "--sample_size", size])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "--sample_size" in err and "positive" in err  # the one size rule
    assert not (tmp_path / "zero").exists()


def test_cli_convert_refuses_missing_heads_and_records_the_heads(tmp_path, capsys):
    from ultrasound_diffusers.cli import main

    torch.save(randomized(RefUNet()).state_dict(), tmp_path / "model.pt")
    base = ["convert", "--checkpoint", str(tmp_path / "model.pt"), "--config", '{"norm_num_groups": 8}']
    assert main(base + ["--output_dir", str(tmp_path / "noheads"), "--sample_size", "16"]) == 2
    err = capsys.readouterr().err
    assert "does not store the number of attention heads" in err and "--num_head_channels" in err
    assert not (tmp_path / "noheads").exists()

    out = tmp_path / "heads"
    assert main(base + ["--output_dir", str(out), "--sample_size", "16", "--num_head_channels", "8",
                        "--scheduler_args", '{"num_train_timesteps": 50}']) == 0
    assert "num_head_channels=8, as given" in capsys.readouterr().out
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["num_head_channels"] == 8 and config["sample_size"] == 16
    card = (out / "README.md").read_text()
    assert "num_head_channels=8, as given" in card and "do not store the head count" in card

    out = tmp_path / "defaults"
    assert main(base + ["--output_dir", str(out), "--source", "improved-diffusion", "--source_head_defaults",
                        "--scheduler_args", '{"num_train_timesteps": 50}']) == 0
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["num_head_channels"] == -1 and config["num_heads"] == 4
    assert "--source_head_defaults" in (out / "README.md").read_text()
