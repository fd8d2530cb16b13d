"""Bad inputs to the pipelines and to the folders they load from (issue 27 items 4-6).

Three rules, each case a test that failed before its fix:

* A. Non-finite values are errors, never results: every public input is checked for finiteness and range before
  any work (latents, label maps, soft maps), weights are checked on load, and a non-finite result is a
  ``NonFiniteResultError`` in every output type, naming what went wrong.
* B. Size guards run before the allocation they guard, estimate the peak from the shapes and know the limits a
  container or ``ulimit -v`` sets; configs read from folders are bounded at load time.
* C. Messages name the argument or config key (and the file) and what was expected.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from _pipeline_fixtures import echo_label_map, tiny_semantic_pipeline, tiny_unconditional_pipeline
from ultrasound_diffusers import DiffusionPipeline
from ultrasound_diffusers.pipelines import pipeline_semantic_ultrasound as semantic_module
from ultrasound_diffusers.pipelines.pipeline_utils import NonFiniteResultError

STEPS = 2
MAP = echo_label_map(16)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def no_network(monkeypatch, pipe):
    """Make any network call fail the test: the checks must run before the denoising loop."""

    def forward(*args, **kwargs):
        raise AssertionError("the network ran before the bad input was refused")

    monkeypatch.setattr(pipe.unet, "forward", forward)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def edit_json(path: Path, **values) -> None:
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


# ------------------------------------------------------------------------------------------- A. non-finite values
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e30, 1e3])
def test_bad_latents_are_refused_before_the_loop(pipe, unconditional, monkeypatch, value):
    for p, args, shape in ((pipe, (MAP,), (1, 1, 16, 16)), (unconditional, (), (1, 1, 8, 32))):
        no_network(monkeypatch, p)
        with pytest.raises(ValueError, match="`latents`"):
            p(*args, latents=torch.full(shape, value), num_inference_steps=STEPS, output_type="np")


def test_latents_of_another_type_or_shape_name_the_argument(pipe):
    with pytest.raises(TypeError, match="`latents`"):
        pipe(MAP, latents=np.zeros((1, 1, 16, 16), np.float32), num_inference_steps=STEPS)
    with pytest.raises(ValueError, match=r"`latents` must have shape \(2, 1, 16, 16\)"):
        pipe(MAP, num_images_per_prompt=2, latents=torch.zeros(1, 1, 16, 16), num_inference_steps=STEPS)


@pytest.mark.parametrize("value, message", [(1e30, r"\[0, 1\]"), (-0.5, r"\[0, 1\]"), (float("nan"), "NaN"),
                                            (float("inf"), "NaN or infinite")])
def test_soft_label_maps_must_hold_finite_weights_in_0_1(pipe, monkeypatch, value, message):
    no_network(monkeypatch, pipe)
    soft = torch.full((1, 5, 16, 16), 0.2)
    soft[0, 1, 2, 3] = value
    with pytest.raises(ValueError, match=message):
        pipe(soft, num_inference_steps=STEPS, output_type="np")


def nan_weight_pipeline(conditional: bool = True):
    pipe = tiny_semantic_pipeline() if conditional else tiny_unconditional_pipeline()
    with torch.no_grad():
        pipe.unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    return pipe


@pytest.mark.parametrize("output_type", OUTPUT_TYPES)
def test_nan_weights_give_an_error_naming_the_weights_in_every_output_type(output_type):
    pipe = nan_weight_pipeline()
    with pytest.raises(NonFiniteResultError, match="weights hold NaN.*conv_out.weight"):
        pipe(MAP, num_inference_steps=STEPS, output_type=output_type)
    unconditional = nan_weight_pipeline(conditional=False)
    with pytest.raises(NonFiniteResultError, match="weights"):
        unconditional(num_inference_steps=STEPS, output_type=output_type)


@pytest.mark.parametrize("output_type", OUTPUT_TYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverged_sampler_is_an_error_in_every_output_type(pipe, unconditional, monkeypatch, output_type, bad):
    """inf used to become 1 (white) under the clamp, NaN was returned with a log line."""
    for p, args in ((pipe, (MAP,)), (unconditional, ())):
        step = p.scheduler.step

        def diverging(*a, _step=step, **k):
            out = _step(*a, **k)
            out.prev_sample[..., 0, 0] = bad
            return out

        monkeypatch.setattr(p.scheduler, "step", diverging)
        with pytest.raises(NonFiniteResultError, match="diverged"):
            p(*args, num_inference_steps=STEPS, output_type=output_type)
        monkeypatch.undo()


def test_a_callback_that_returns_nan_latents_is_named(pipe):
    def poison(p, i, t, kwargs):
        return {"latents": torch.full_like(kwargs["latents"], float("nan"))}

    with pytest.raises(ValueError, match="callback_on_step_end.*poison.*NaN"):
        pipe(MAP, num_inference_steps=STEPS, callback_on_step_end=poison)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_in_a_folder_are_refused_naming_the_file(saved, tmp_path, bad):
    folder = copy_of(saved, tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = sorted(state)[3]
    state[name].view(-1)[0] = bad
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors hold NaN or infinite.*" + name):
        DiffusionPipeline.from_pretrained(folder)


def test_nan_weights_of_a_diffusers_unet_are_refused_on_load(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    from ultrasound_diffusers.pipelines import UltrasoundPipeline

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    with torch.no_grad():
        unet.conv_in.bias[0] = float("inf")
    UltrasoundPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match=r"weights in .*unet hold NaN or infinite values.*conv_in.bias"):
        DiffusionPipeline.from_pretrained(tmp_path / "p")


@pytest.mark.parametrize("spec", ["channels:snr=nan", "attenuation:inf", "attenuation:0.5:1e400",
                                  "channels:elements=2:snr=-inf"])
def test_operator_texts_with_non_finite_numbers_are_refused(spec):
    from ultrasound_diffusers.operator_registry import make_operator

    with pytest.raises(ValueError, match="finite"):
        make_operator(spec, size=(16, 16))
    with pytest.raises(ValueError, match="noise_std"):
        make_operator("missing_lines:4", size=(16, 16), noise_std=float("nan"))


def test_reconstruction_with_a_diverged_sampler_is_an_error(monkeypatch):
    """The reconstruction pipeline clamped inf samples to 1 and reported them as a result."""
    from ultrasound_diffusers.operators import MissingScanLines
    from ultrasound_diffusers.pipelines.pipeline_ultrasound_reconstruction import UltrasoundReconstructionPipeline

    inner = tiny_semantic_pipeline()
    recon = UltrasoundReconstructionPipeline(unet=inner.unet, scheduler=inner.scheduler)
    recon.set_progress_bar_config(disable=True)
    operator = MissingScanLines(2)
    y = operator(torch.zeros(1, 1, 16, 16))
    step = recon.scheduler.step

    def diverging(*a, **k):
        out = step(*a, **k)
        out.prev_sample[..., 0, 0] = float("inf")
        return out

    monkeypatch.setattr(recon.scheduler, "step", diverging)
    with pytest.raises(NonFiniteResultError, match="reconstructions"):
        recon(y, operator, segmap=MAP, method="none", num_inference_steps=STEPS)


# --------------------------------------------------------------------------------- B. size guards before allocation
def forbid_one_hot(monkeypatch):
    def one_hot(*args, **kwargs):
        raise AssertionError("label maps were resized / one-hot encoded before the size guard")

    monkeypatch.setattr(semantic_module.LabelMapProcessor, "encode", one_hot)


def test_a_million_images_per_map_is_refused_before_the_one_hot_maps(pipe, monkeypatch):
    forbid_one_hot(monkeypatch)
    with pytest.raises(ValueError, match="num_images_per_prompt.*GiB"):
        pipe(MAP, num_images_per_prompt=10**6, num_inference_steps=STEPS)


def test_a_huge_size_is_refused_before_the_maps_are_resized(pipe, monkeypatch):
    forbid_one_hot(monkeypatch)
    with pytest.raises(ValueError, match="height.*16000x16000.*GiB"):
        pipe(MAP, height=16000, width=16000, num_inference_steps=STEPS)


def test_the_unconditional_guard_names_batch_size(unconditional, monkeypatch):
    no_network(monkeypatch, unconditional)
    with pytest.raises(ValueError, match="batch_size.*GiB"):
        unconditional(batch_size=10**7, num_inference_steps=STEPS)


def test_cgroup_limits_v1_and_v2_are_read(tmp_path):
    from ultrasound_diffusers.utils.memory import cgroup_free_bytes

    v2 = tmp_path / "v2"
    (v2 / "box").mkdir(parents=True)
    (v2 / "box" / "memory.max").write_text(f"{3 * 2**30}\n")
    (v2 / "box" / "memory.current").write_text(f"{2**30}\n")
    (v2 / "memory.max").write_text("max\n")
    (tmp_path / "cg2").write_text("0::/box\n")
    assert cgroup_free_bytes(v2, tmp_path / "cg2") == 2 * 2**30

    v1 = tmp_path / "v1"
    (v1 / "memory" / "job").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{2**30}\n")  # the parent's limit is the tighter one
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{2**28}\n")
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    (tmp_path / "cg1").write_text("4:memory:/job\n0::/\n")
    assert cgroup_free_bytes(v1, tmp_path / "cg1") == 2**30 - 2**28
    assert cgroup_free_bytes(tmp_path / "none", tmp_path / "cg1") is None


def test_the_smallest_limit_wins_and_is_named(monkeypatch):
    from ultrasound_diffusers.utils import memory

    monkeypatch.setattr(memory, "meminfo_available_bytes", lambda: 64 * 2**30)
    monkeypatch.setattr(memory, "address_space_free_bytes", lambda: None)
    monkeypatch.setattr(memory, "cgroup_free_bytes", lambda: 3 * 2**30)
    assert memory.available_memory() == (3 * 2**30, "container limit (cgroup)")
    with pytest.raises(ValueError, match=r"`height`.*2048x2048.*container limit \(cgroup\)"):
        memory.check_image_size(2048, 2048, bytes_per_pixel=1000, batch=2, argument="height")
    memory.check_image_size(64, 64, bytes_per_pixel=1000, batch=2, argument="height")


def test_the_activation_estimate_is_above_the_measured_peak():
    """The estimate must not be below what one forward pass holds (else the allocator dies after the guard
    passed): the tiny test network at 16 px holds about 1 kB per pixel (peak RSS, measured with
    /tmp-free scripts on torch 2.x CPU, see utils/memory.unet_bytes_per_pixel)."""
    from _pipeline_fixtures import tiny_unet_config

    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel
    from ultrasound_diffusers.utils.memory import unet_bytes_per_pixel

    assert unet_bytes_per_pixel(tiny_unet_config()) >= 969  # measured: 969 B/px at 512 px
    assert unet_bytes_per_pixel(SemanticUNet2DModel.preset_config("sdm-128")) >= 8893  # measured at 256 px


def _generate_under_an_address_space_limit(pipe, connection) -> None:
    """In a forked child: limit the address space to 1.5 GiB above what the process maps now, then generate a
    16 px image and try a 2048 x 2048 one; send back what happened."""
    import resource

    used = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + 1536 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
    results = []
    for size in (16, 2048):
        try:
            pipe(MAP, height=size, width=size, num_inference_steps=STEPS, output_type="np")
            results.append(f"{size}: ok")
        except ValueError as error:
            results.append(f"{size}: refused: {error}")
        except BaseException as error:  # noqa: BLE001 - what the allocator throws is the failure we test for
            results.append(f"{size}: crashed: {error!r}")
    connection.send(results)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_an_address_space_limit_is_known_to_the_guard(pipe):
    """Under ``ulimit -v`` (1.5 GiB above what the process maps), 2048 x 2048 used to die in the allocator: the
    guard read only MemAvailable. A forked child sets the limit (the test process keeps its own)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_generate_under_an_address_space_limit, args=(pipe, send))
    child.start()
    send.close()  # the child holds the only sending end: its death is an EOF here
    try:
        assert receive.poll(120), "the limited child hung"
        try:
            small, large = receive.recv()
        except EOFError:
            child.join(10)
            raise AssertionError(f"the limited child died in the allocator (exit code {child.exitcode})") from None
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert small == "16: ok"
    assert large.startswith("2048: refused:") and "address-space limit (ulimit -v / RLIMIT_AS)" in large, large


@pytest.mark.parametrize("key, value", [("num_classes", 10**9), ("model_channels", 10**6),
                                        ("spade_hidden_channels", 10**7)])
def test_a_folder_config_too_large_to_build_is_refused_before_allocating(saved, tmp_path, key, value):
    folder = copy_of(saved, tmp_path)
    edit_json(folder / "unet" / "config.json", **{key: value})
    with pytest.raises(ValueError, match=rf"unet[/\\]config.json: `config` .*{key}={value}.*GiB"):
        DiffusionPipeline.from_pretrained(folder)


def test_a_direct_construction_too_large_is_refused(monkeypatch):
    from _pipeline_fixtures import tiny_unet_config

    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel

    with pytest.raises(ValueError, match="num_classes=1000000000.*GiB"):
        SemanticUNet2DModel(**tiny_unet_config(num_classes=10**9))


@pytest.mark.parametrize("name", ["tiny", "tiny-uncond", "tiny-convs", "tiny-64", "lung-8x256"])
def test_count_parameters_is_exact(name):
    from _pipeline_fixtures import tiny_unet_config

    from ultrasound_diffusers.models.unet_semantic_2d import SemanticUNet2DModel, count_parameters

    configs = {
        "tiny": tiny_unet_config(),
        "tiny-uncond": tiny_unet_config(num_classes=0, resblock_updown=False),
        "tiny-convs": tiny_unet_config(resblock_updown=False, conv_resample=False, use_scale_shift_norm=False,
                                       learn_sigma=False, channel_mult=(1, 1.5, 2), attention_resolutions=(1, 4)),
    }
    config = configs.get(name) or SemanticUNet2DModel.preset_config(name)
    model = SemanticUNet2DModel(**config)
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("value", [10**8, 0, "1000", 1000.5])
def test_scheduler_num_train_timesteps_from_a_folder_is_bounded(saved, tmp_path, value):
    folder = copy_of(saved, tmp_path)
    edit_json(folder / "scheduler" / "scheduler_config.json", num_train_timesteps=value)
    with pytest.raises(ValueError, match=r"scheduler_config.json: config key `num_train_timesteps`"):
        DiffusionPipeline.from_pretrained(folder)


# ------------------------------------------------------------------------------- C. messages naming the argument
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_classes", "five", r"config key `num_classes` must be an integer >= 0.*'five'"),
        ("norm_num_groups", 7, r"config key `norm_num_groups` \(7\) must divide"),
        ("model_channels", 8.5, "config key `model_channels` must be a positive integer"),
        ("channel_mult", [1, "x"], "config key `channel_mult`"),
        ("learn_sigma", "yes", "config key `learn_sigma` must be true or false"),
        ("dropout", float("nan"), "config key `dropout`"),
    ],
)
def test_bad_unet_config_values_in_a_folder_name_the_key_and_file(saved, tmp_path, key, value, message):
    folder = copy_of(saved, tmp_path)
    edit_json(folder / "unet" / "config.json", **{key: value})
    with pytest.raises(ValueError, match=r"unet[/\\]config.json: " + message):
        DiffusionPipeline.from_pretrained(folder)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"x": "cavity"}, "`label_names` keys must be integer labels.*'x'"),
        ({"7": "cavity"}, "`label_names` names label 7.*5 classes"),
        ({"0": 3}, "`label_names` entries must be text"),
    ],
)
def test_bad_label_names_in_model_index_name_the_file(saved, tmp_path, value, message):
    folder = copy_of(saved, tmp_path)
    edit_json(folder / "model_index.json", label_names=value)
    with pytest.raises(ValueError, match=r"model_index.json: " + message):
        DiffusionPipeline.from_pretrained(folder)


def test_more_label_names_than_classes_are_refused(pipe):
    from ultrasound_diffusers.pipelines import SemanticUltrasoundPipeline

    with pytest.raises(ValueError, match="`label_names` names label 5.*5 classes.*100 names"):
        SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=pipe.scheduler, label_names=[str(i) for i in range(100)])
    kept = SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=pipe.scheduler, label_names={1: "cavity", "3": "wall"})
    assert kept.config.label_names == {"1": "cavity", "3": "wall"}


@pytest.mark.parametrize("generator", [0, np.random.RandomState(0), np.random.default_rng(0), "seed", []])
def test_generator_must_be_a_torch_generator(pipe, unconditional, monkeypatch, generator):
    no_network(monkeypatch, pipe)
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        pipe(MAP, generator=generator, num_inference_steps=STEPS)
    with pytest.raises(TypeError, match="`generator`"):
        unconditional(generator=generator, num_inference_steps=STEPS)


def test_a_generator_list_of_the_wrong_length_is_named(pipe):
    with pytest.raises(ValueError, match="`generator` is a list of 3 generators; expected 2"):
        pipe(MAP, num_images_per_prompt=2, generator=[torch.Generator() for _ in range(3)], num_inference_steps=STEPS)


def test_a_callback_returning_none_is_named(pipe, unconditional):
    def forgetful_callback(p, i, t, kwargs):
        kwargs["latents"].mul_(1.0)  # returns None

    for p, args in ((pipe, (MAP,)), (unconditional, ())):
        with pytest.raises(TypeError, match="`callback_on_step_end` .*forgetful_callback.* must return a dict.*None"):
            p(*args, num_inference_steps=STEPS, callback_on_step_end=forgetful_callback)


def test_a_label_map_given_to_the_unconditional_pipeline_is_named(unconditional, monkeypatch):
    no_network(monkeypatch, unconditional)
    for label_map in (MAP, torch.from_numpy(MAP), PIL.Image.fromarray(MAP), MAP.tolist()):
        with pytest.raises(ValueError, match="takes no label map.*SemanticUltrasoundPipeline") as info:
            unconditional(label_map, num_inference_steps=STEPS)
        assert len(str(info.value)) < 300  # a description, not the map's values


def test_a_nested_python_list_is_a_label_map(pipe):
    def run(segmap):
        return pipe(segmap, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(3))

    expected = run(MAP)
    for nested in (MAP.tolist(), [MAP.tolist()], [row for row in MAP.astype(float).tolist()]):
        out = run(nested)
        np.testing.assert_allclose(out.images, expected.images, atol=1e-6)
        np.testing.assert_array_equal(out.segmaps, expected.segmaps)
    with pytest.raises(ValueError, match="`segmap`.*rectangular"):
        run([[0, 1], [2]])


@pytest.mark.parametrize(
    "make",
    [
        lambda a: torch.from_numpy(a),
        lambda a: a,
        lambda a: a.tolist(),
        lambda a: PIL.Image.fromarray(a.astype(np.float32), mode="F"),
    ],
    ids=["tensor", "numpy", "list", "pil-F"],
)
def test_a_huge_label_is_reported_as_itself(pipe, make):
    labels = np.zeros((16, 16))
    labels[2, 3] = 1e20
    with pytest.raises(ValueError) as info:
        pipe(make(labels), num_inference_steps=STEPS)
    assert "1e+20" in str(info.value) and "-9223372036854775808" not in str(info.value)


def test_the_model_reports_a_huge_float_label_as_itself(pipe):
    labels = torch.zeros(1, 16, 16)
    labels[0, 2, 3] = 1e20
    with pytest.raises(ValueError, match=r"1e\+20"):
        pipe.unet(torch.zeros(1, 1, 16, 16), 5, segmap=labels)
