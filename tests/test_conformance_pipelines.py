"""Conformance of the pipelines with what diffusers' PipelineTesterMixin checks, and of the pipeline loader.

Written for this project after the checks of diffusers' ``PipelineTesterMixin`` (save / load round trips,
dict / tuple outputs, ``num_images_per_prompt``, batch vs single, determinism with generators,
``callback_on_step_end`` and its tensor inputs, dtypes, variants) and of diffusers' loader (per-component
``torch_dtype`` dicts, missing variants), plus the loader's safety rules (strict weights, allowed modules).
Tiny 16 px pipelines from tests/_pipeline_fixtures.py with 2-3 denoising steps.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _pipeline_fixtures import (
    echo_label_map,
    tiny_semantic_pipeline,
)
from diffusers import DDIMScheduler, DDPMScheduler

from ultrasound_diffusers import DiffusionPipeline, SemanticUltrasoundPipeline, UltrasoundPipeline

STEPS = 3






def _maps(n=2):
    return [echo_label_map(16, seed=i) for i in range(n)]


def _run(pipe, segmap=None, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    generator = torch.Generator().manual_seed(seed) if "generator" not in kwargs else kwargs.pop("generator")
    if isinstance(pipe, SemanticUltrasoundPipeline):
        return pipe(_maps() if segmap is None else segmap, generator=generator, **kwargs)
    return pipe(generator=generator, **kwargs)


# ------------------------------------------------------------------------------------------------ outputs


def test_dict_and_tuple_outputs_agree(pipe):
    as_dict = _run(pipe)
    as_tuple = _run(pipe, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    np.testing.assert_array_equal(as_dict.images, as_tuple[0])
    np.testing.assert_array_equal(as_dict.segmaps, as_tuple[1])
    np.testing.assert_array_equal(as_dict[0], as_dict.images)


def test_unconditional_dict_and_tuple_outputs_agree(unconditional):
    as_dict = _run(unconditional, batch_size=2)
    as_tuple = _run(unconditional, batch_size=2, return_dict=False)
    np.testing.assert_array_equal(as_dict.images, as_tuple[0])
    assert as_dict.images.shape == (2, 8, 32, 1)


def test_determinism_with_generators(pipe):
    first, second, other = _run(pipe, seed=1).images, _run(pipe, seed=1).images, _run(pipe, seed=2).images
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - other).max() > 1e-3


@pytest.mark.parametrize("n", [1, 3])
def test_num_images_per_prompt(pipe, n):
    out = _run(pipe, num_images_per_prompt=n)
    assert out.images.shape == (2 * n, 16, 16, 1)
    assert out.segmaps.shape == (2 * n, 16, 16)
    np.testing.assert_array_equal(out.segmaps[:n], np.repeat(out.segmaps[:1], n, axis=0))  # grouped by map


@pytest.mark.parametrize("guidance_scale", [1.0, 1.5])
def test_batch_matches_single(pipe, guidance_scale):
    """PipelineTesterMixin's test_inference_batch_single_identical: image i of a batch made with generator i
    equals the image made alone with generator i."""
    maps = _maps(3)
    generators = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    batch = _run(pipe, maps, generator=generators, guidance_scale=guidance_scale).images
    for i in (0, 2):
        single = _run(pipe, [maps[i]], generator=torch.Generator().manual_seed(10 + i), guidance_scale=guidance_scale)
        np.testing.assert_allclose(batch[i], single.images[0], atol=1e-4)


def test_unconditional_batch_matches_single(unconditional):
    generators = [torch.Generator().manual_seed(20 + i) for i in range(2)]
    batch = _run(unconditional, batch_size=2, generator=generators).images
    single = _run(unconditional, batch_size=1, generator=torch.Generator().manual_seed(21)).images
    np.testing.assert_allclose(batch[1], single[0], atol=1e-4)


# ------------------------------------------------------------------------------------------------ callbacks


def test_callback_on_step_end_receives_the_requested_tensors(pipe):
    seen = []

    def callback(pipeline, step, timestep, kwargs):
        seen.append((step, int(timestep), sorted(kwargs)))
        assert kwargs["latents"].shape == (2, 1, 16, 16)
        assert kwargs["segmap"].shape == (2, 5, 16, 16)  # one-hot maps
        return kwargs

    _run(pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "segmap"])
    assert [s for s, _, _ in seen] == list(range(STEPS))
    assert [t for _, t, _ in seen] == pipe.scheduler.timesteps.tolist()
    assert all(keys == ["latents", "segmap"] for _, _, keys in seen)


def test_callback_on_step_end_can_change_the_latents(pipe):
    def zero_at_last_step(pipeline, step, timestep, kwargs):
        if step == pipeline.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = _run(pipe, callback_on_step_end=zero_at_last_step)
    np.testing.assert_allclose(out.images, 0.5)  # zero latents in [-1, 1] are 0.5 in [0, 1]


def test_callback_tensor_inputs_are_checked(pipe):
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        _run(pipe, callback_on_step_end=lambda p, i, t, k: k, callback_on_step_end_tensor_inputs=["noise_pred_x"])


# ------------------------------------------------------------------------------------------------ save / load


def test_save_load_gives_the_same_images(pipe, saved):
    loaded = DiffusionPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is SemanticUltrasoundPipeline
    np.testing.assert_array_equal(_run(loaded, guidance_scale=1.5).images, _run(pipe, guidance_scale=1.5).images)
    assert {k: v for k, v in loaded.scheduler.config.items() if not k.startswith("_")} == {
        k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")
    }


def test_save_load_unconditional(unconditional, saved_unconditional):
    loaded = UltrasoundPipeline.from_pretrained(saved_unconditional)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_run(loaded, batch_size=2).images, _run(unconditional, batch_size=2).images)


def test_variant_save_and_load(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "v", variant="fp16")
    assert (tmp_path / "v" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = SemanticUltrasoundPipeline.from_pretrained(tmp_path / "v", variant="fp16")
    for (name, a), (_, b) in zip(pipe.unet.state_dict().items(), loaded.unet.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
def test_from_config_across_compatibles_runs(pipe, scheduler_cls):
    swapped = SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=scheduler_cls.from_config(pipe.scheduler.config))
    swapped.set_progress_bar_config(disable=True)
    images = _run(swapped).images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()


# ------------------------------------------------------------------------------------------------ dtypes


def test_to_dtype(pipe):
    half = tiny_semantic_pipeline().to(torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16
    images = _run(half).images
    assert np.isfinite(images).all()
    assert np.abs(images - _run(pipe).images).mean() < 0.1


@pytest.mark.parametrize("pipeline_cls", [SemanticUltrasoundPipeline, DiffusionPipeline])
def test_torch_dtype_dict_gives_each_component_its_dtype(saved, pipeline_cls):
    loaded = pipeline_cls.from_pretrained(saved, torch_dtype={"unet": torch.bfloat16, "default": torch.float16})
    assert loaded.unet.dtype == torch.bfloat16


def test_torch_dtype_dict_default_and_single_dtype(saved_unconditional):
    assert UltrasoundPipeline.from_pretrained(saved_unconditional, torch_dtype={"default": torch.float16}).unet.dtype == torch.float16
    assert UltrasoundPipeline.from_pretrained(saved_unconditional, torch_dtype={"scheduler": torch.float16}).unet.dtype == torch.float32
    assert UltrasoundPipeline.from_pretrained(saved_unconditional, torch_dtype=torch.bfloat16).unet.dtype == torch.bfloat16


def test_torch_dtype_dict_matches_diffusers_ddpm_pipeline(tmp_path):
    """The same dict gives the same dtypes as diffusers' own DDPMPipeline."""
    from diffusers import DDPMPipeline, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    dtypes = {"unet": torch.bfloat16, "default": torch.float16}
    theirs = DDPMPipeline.from_pretrained(tmp_path / "ddpm", torch_dtype=dtypes)
    ours = DiffusionPipeline.from_pretrained(tmp_path / "ddpm", torch_dtype=dtypes)
    assert theirs.unet.dtype == ours.unet.dtype == torch.bfloat16


def test_bad_torch_dtype_is_refused(saved):
    with pytest.raises(TypeError, match="torch_dtype"):
        SemanticUltrasoundPipeline.from_pretrained(saved, torch_dtype={"unet": "sixteen"})


# ------------------------------------------------------------------------------------------------ variants


def test_missing_variant_raises_value_error_like_diffusers(saved):
    with pytest.raises(ValueError, match=r"variant=fp16`, but no such modeling files are available"):
        SemanticUltrasoundPipeline.from_pretrained(saved, variant="fp16")
    with pytest.raises(ValueError, match=r"no such modeling files"):
        DiffusionPipeline.from_pretrained(saved, variant="fp16")


def test_variant_of_a_diffusers_pipeline_raises_the_same(tmp_path):
    """The reference behaviour: diffusers' own loader on a DDPMPipeline folder without the variant."""
    from diffusers import DDPMPipeline, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ValueError, match=r"no such modeling files"):
        DDPMPipeline.from_pretrained(tmp_path / "ddpm", variant="fp16")


# ------------------------------------------------------------------------------------------------ strict loading


def _copy(saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    return folder


def test_pipeline_with_missing_unet_keys_is_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(saved, tmp_path)
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    del state["up_blocks.0.resnets.0.conv1.weight"]
    save_file(state, path, metadata={"format": "pt"})
    for loader in (DiffusionPipeline, SemanticUltrasoundPipeline):
        with pytest.raises(ValueError, match=r"missing keys \(1: up_blocks\.0\.resnets\.0\.conv1\.weight\)"):
            loader.from_pretrained(folder)


def test_load_component_is_strict_for_diffusers_models_too(tmp_path):
    from diffusers import UNet2DModel
    from safetensors.torch import load_file, save_file

    from ultrasound_diffusers.pipelines.loading import load_component

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    unet.save_pretrained(tmp_path / "unet")
    path = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["surplus.weight"] = torch.zeros(1)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected keys \(1: surplus\.weight\)"):
        load_component(UNet2DModel, tmp_path, "unet")


# ------------------------------------------------------------------------------------------------ allowed modules


def _edit_index(folder, **changes):
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index.update(changes)
    path.write_text(json.dumps(index))


ENTRY_POINTS = ["ultrasound_diffusers.__main__", "ultrasound_diffusers.cli", "ultrasound_diffusers.commands.convert",
                "ultrasound_diffusers.models.conversion"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
@pytest.mark.parametrize("where", ["unet", "_class_name"])
def test_model_index_naming_an_entry_point_is_refused_without_importing_it(saved, tmp_path, monkeypatch, module, where):
    import sys

    folder = _copy(saved, tmp_path)
    class_name = "SemanticUNet2DModel" if where == "unet" else "SemanticUltrasoundPipeline"
    _edit_index(folder, **{where: [module, class_name]})
    monkeypatch.setattr(sys, "argv", ["pytest", "convert"])  # what the CLI would parse if it ran
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ValueError, match=r"is not a module that defines pipeline components"):
        DiffusionPipeline.from_pretrained(folder)
    assert module not in sys.modules


def test_remote_code_file_pointing_to_an_entry_point_is_refused(saved, tmp_path, monkeypatch):
    import sys

    folder = _copy(saved, tmp_path)
    shim = folder / "unet" / "unet_semantic_2d.py"
    shim.write_text("from ultrasound_diffusers.__main__ import SemanticUNet2DModel\n")
    monkeypatch.delitem(sys.modules, "ultrasound_diffusers.__main__", raising=False)
    _edit_index(folder, unet=["unet_semantic_2d", "SemanticUNet2DModel"])
    with pytest.raises(ValueError, match=r"remote-code file .*unet_semantic_2d\.py"):
        DiffusionPipeline.from_pretrained(folder)
    assert "ultrasound_diffusers.__main__" not in sys.modules


def test_plain_diffusers_pipeline_naming_an_entry_point_is_refused(tmp_path, monkeypatch):
    import sys

    from diffusers import DDPMPipeline, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    folder = tmp_path / "ddpm"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
    monkeypatch.delitem(sys.modules, "ultrasound_diffusers.__main__", raising=False)
    _edit_index(folder, scheduler=["ultrasound_diffusers.__main__", "BMapAttenuationScheduler"])
    with pytest.raises(ValueError, match=r"not a module that defines pipeline components"):
        DiffusionPipeline.from_pretrained(folder)
    _edit_index(folder, scheduler=["antigravity", "DDPMScheduler"])
    with pytest.raises(ValueError, match=r"library `antigravity` is not diffusers"):
        DiffusionPipeline.from_pretrained(folder)
    assert "ultrasound_diffusers.__main__" not in sys.modules and "antigravity" not in sys.modules


def test_diffusers_classes_come_from_the_top_level_package(saved, tmp_path, monkeypatch):
    import sys

    folder = _copy(saved, tmp_path)
    _edit_index(folder, scheduler=["diffusers.commands.diffusers_cli", "DDIMScheduler"])
    monkeypatch.delitem(sys.modules, "diffusers.commands.diffusers_cli", raising=False)
    loaded = DiffusionPipeline.from_pretrained(folder)
    assert type(loaded.scheduler) is DDIMScheduler
    assert "diffusers.commands.diffusers_cli" not in sys.modules


def test_component_modules_are_allowed():
    from ultrasound_diffusers.pipelines.loading import is_component_module

    for name in ["ultrasound_diffusers", "ultrasound_diffusers.pipelines", "ultrasound_diffusers.models.unet_semantic_2d",
                 "ultrasound_diffusers.schedulers.scheduling_bmap_attenuation",
                 "ultrasound_diffusers.pipelines.pipeline_semantic_ultrasound"]:
        assert is_component_module(name), name
    for name in ENTRY_POINTS + ["ultrasound_diffusers.schedulers.scheduling___main__", "os", "ultrasound_diffusers.utils.io"]:
        assert not is_component_module(name), name


def test_main_module_is_safe_to_import(monkeypatch, capsys):
    import importlib
    import sys

    monkeypatch.setattr(sys, "argv", ["x", "--version"])
    monkeypatch.delitem(sys.modules, "ultrasound_diffusers.__main__", raising=False)
    importlib.import_module("ultrasound_diffusers.__main__")  # no SystemExit, no output
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------------------ mixin basics


@pytest.mark.parametrize("pipeline_cls", [SemanticUltrasoundPipeline, UltrasoundPipeline])
def test_call_signature_has_the_common_arguments(pipeline_cls):
    import inspect

    params = inspect.signature(pipeline_cls.__call__).parameters
    for name in ("num_inference_steps", "generator", "latents", "output_type", "return_dict",
                 "callback_on_step_end", "callback_on_step_end_tensor_inputs", "height", "width", "timesteps"):
        assert name in params, name
    assert "latents" in pipeline_cls._callback_tensor_inputs


def test_components_rebuild_the_pipeline(pipe):
    components = pipe.components
    assert set(components) == {"unet", "scheduler"}
    rebuilt = SemanticUltrasoundPipeline(**components)
    rebuilt.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_run(rebuilt).images, _run(pipe).images)


def test_save_in_float16_and_load_with_torch_dtype(pipe, tmp_path):
    half = tiny_semantic_pipeline().to(torch.float16)
    half.save_pretrained(tmp_path / "fp16")
    loaded = SemanticUltrasoundPipeline.from_pretrained(tmp_path / "fp16", dtype=torch.float16)
    assert loaded.unet.dtype == torch.float16
    for (name, a), (_, b) in zip(half.unet.state_dict().items(), loaded.unet.state_dict().items()):
        assert torch.equal(a, b), name


def test_pipeline_runs_with_layerwise_casting(pipe):
    cast = tiny_semantic_pipeline()
    cast.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    images = _run(cast).images
    assert np.isfinite(images).all()
    assert np.abs(images - _run(pipe).images).mean() < 0.1  # float8 weights: close to, not equal to, float32


def test_dtype_keyword_takes_a_dict_too(saved):
    loaded = DiffusionPipeline.from_pretrained(saved, dtype={"unet": torch.bfloat16})
    assert loaded.unet.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ counts


@pytest.mark.parametrize("steps", [np.int64(2), np.int32(2), 2])
def test_numpy_integer_step_counts_are_accepted(pipe, unconditional, steps):
    assert _run(pipe, num_inference_steps=steps, num_images_per_prompt=np.int64(1)).images.shape == (2, 16, 16, 1)
    assert _run(unconditional, num_inference_steps=steps, batch_size=np.int64(2)).images.shape == (2, 8, 32, 1)
    assert len(pipe.scheduler.timesteps) == 2


@pytest.mark.parametrize("name", ["num_inference_steps", "num_images_per_prompt"])
@pytest.mark.parametrize("value", [True, 2.0, "2", 0])
def test_bool_float_and_string_counts_are_refused(pipe, name, value):
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        _run(pipe, **{name: value})


def test_bool_batch_size_is_refused(unconditional):
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        _run(unconditional, batch_size=True)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "config"])
def test_damaged_component_files_are_a_value_error_naming_the_file(saved, tmp_path, damage):
    folder = _copy(saved, tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64)
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        (folder / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"component 'unet' \(SemanticUNet2DModel\) in .*unet cannot be loaded"):
        DiffusionPipeline.from_pretrained(folder)
