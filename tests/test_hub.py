"""Saving, every loading path (local folder, auto class, trust_remote_code, repo id from a Hub cache, offline),
loading errors, model cards and push_to_hub (mocked, no network)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _pipeline_fixtures import (
    LABEL_NAMES,
    echo_label_map,
    isolate_remote_code_cache,
    make_hub_cache,
    tiny_semantic_pipeline,
)
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

import ultrasound_diffusers.hub_utils as hub
import ultrasound_diffusers.pipelines.loading as loading
import ultrasound_diffusers.utils.packaging as packaging
from ultrasound_diffusers.pipelines import DiffusionPipeline, SemanticUltrasoundPipeline
from ultrasound_diffusers.schedulers import BMapAttenuationScheduler

STEPS = 3
REPO_ID = "us-org/tiny-echo"
# An install command that fetches the package by name from the package index, where it is not published.
INDEX_INSTALL = re.compile(r"pip install\s+(?:-U\s+|--upgrade\s+)?[\"']?ultrasound[-_]diffusers(?:\[[^\]]*\])?[\"']?(?![\w./-]|\s*@)")


def assert_same(actual, expected):
    """Same samples up to float32 round-off (a reloaded network may run its convolutions in another order)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def generate(pipe, seed=0, guidance_scale=1.5):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        echo_label_map(16),
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images



@pytest.fixture(scope="module")
def reference(pipe):
    return {"guided": generate(pipe, guidance_scale=1.5), "unguided": generate(pipe, guidance_scale=1.0)}



@pytest.fixture()
def offline_hub_cache(monkeypatch, tmp_path, saved):
    """A Hub cache with REPO_ID in it, HF_HUB_CACHE pointing there and offline mode on."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    make_hub_cache(saved, cache, REPO_ID)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# ------------------------------------------------------------------ the saved folder


def test_saved_folder_has_remote_code_files_and_points_to_them(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_semantic_ultrasound", "SemanticUltrasoundPipeline"]
    assert index["unet"] == ["unet_semantic_2d", "SemanticUNet2DModel"]
    assert index["scheduler"] == ["scheduling_bmap_attenuation", "BMapAttenuationScheduler"]
    assert index["label_names"]["3"] == LABEL_NAMES[3]
    assert (saved / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    for shim, module, cls in [
        (saved / "pipeline_semantic_ultrasound.py", "ultrasound_diffusers.pipelines.pipeline_semantic_ultrasound", "SemanticUltrasoundPipeline"),
        (saved / "unet" / "unet_semantic_2d.py", "ultrasound_diffusers.models.unet_semantic_2d", "SemanticUNet2DModel"),
        (saved / "scheduler" / "scheduling_bmap_attenuation.py", "ultrasound_diffusers.schedulers.scheduling_bmap_attenuation", "BMapAttenuationScheduler"),
    ]:
        text = shim.read_text()
        assert f"from {module} import {cls}" in text
        assert packaging.INSTALL_COMMAND in text and packaging.wheel_install_command() in text
        assert not INDEX_INSTALL.search(text)
        compile(text, str(shim), "exec")


def test_remote_code_file_explains_how_to_install_when_the_package_is_missing(saved, monkeypatch):
    code = (saved / "unet" / "unet_semantic_2d.py").read_text()
    wheel = packaging.wheel_filename()  # (read while the package is importable)
    for name in ("ultrasound_diffusers", "ultrasound_diffusers.models", "ultrasound_diffusers.models.unet_semantic_2d"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail as if the package were missing
    with pytest.raises(ImportError, match="not on PyPI") as info:
        exec(compile(code, "unet_semantic_2d.py", "exec"), {"__name__": "shim_test"})
    message = str(info.value)
    assert packaging.INSTALL_COMMAND in message and wheel in message and not INDEX_INSTALL.search(message)


def test_write_remote_code_files_is_idempotent(saved, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    before = json.loads((copy / "model_index.json").read_text())
    loading.write_remote_code_files(copy)
    assert json.loads((copy / "model_index.json").read_text()) == before


def test_save_keeps_unrelated_files_and_replaces_components(pipe, tmp_path):
    target = tmp_path / "out"
    (target / "checkpoint-10").mkdir(parents=True)
    (target / "checkpoint-10" / "state.txt").write_text("keep me")
    (target / "unet").mkdir()
    (target / "unet" / "stale.bin").write_text("old")
    pipe.save_pretrained(target)
    assert (target / "checkpoint-10" / "state.txt").read_text() == "keep me"
    assert not (target / "unet" / "stale.bin").exists()
    assert (target / "model_index.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_failed_save_leaves_the_target_untouched(pipe, tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "model_index.json").write_text("{}")

    def boom(folder):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(loading, "write_remote_code_files", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        pipe.save_pretrained(target)
    assert (target / "model_index.json").read_text() == "{}"
    assert sorted(p.name for p in target.iterdir()) == ["model_index.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ loading paths


def test_load_with_the_pipeline_class_reproduces_guided_and_unguided_samples(saved, reference):
    loaded = SemanticUltrasoundPipeline.from_pretrained(saved)
    assert type(loaded) is SemanticUltrasoundPipeline
    assert_same(generate(loaded, guidance_scale=1.5), reference["guided"])
    assert_same(generate(loaded, guidance_scale=1.0), reference["unguided"])
    assert loaded.config.label_names["1"] == LABEL_NAMES[1]


def test_load_with_the_auto_class(saved, reference):
    loaded = DiffusionPipeline.from_pretrained(str(saved))
    assert type(loaded) is SemanticUltrasoundPipeline
    assert loaded.name_or_path == str(saved)
    assert_same(generate(loaded), reference["guided"])


def test_loader_never_runs_the_folder_code(saved, tmp_path, reference):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(saved, copy)
    for shim in [copy / "pipeline_semantic_ultrasound.py", copy / "unet" / "unet_semantic_2d.py"]:
        shim.write_text('raise RuntimeError("remote code ran")\n' + shim.read_text())
    loaded = DiffusionPipeline.from_pretrained(copy)
    assert_same(generate(loaded), reference["guided"])


def test_components_can_be_passed_in(saved):
    ddim = DDIMScheduler(num_train_timesteps=100)
    loaded = DiffusionPipeline.from_pretrained(saved, scheduler=ddim, torch_dtype=torch.float64)
    assert loaded.scheduler is ddim
    assert loaded.unet.dtype == torch.float64


def test_plain_diffusers_with_trust_remote_code(saved, reference, monkeypatch, tmp_path):
    import diffusers

    modules = isolate_remote_code_cache(monkeypatch, tmp_path)
    loaded = diffusers.DiffusionPipeline.from_pretrained(saved, trust_remote_code=True)
    assert type(loaded) is SemanticUltrasoundPipeline
    assert (modules / "diffusers_modules" / "local" / "unet_semantic_2d.py").is_file()
    assert_same(generate(loaded), reference["guided"])
    with pytest.raises(ValueError, match="trust_remote_code"):
        diffusers.DiffusionPipeline.from_pretrained(saved)


def test_repo_id_from_the_hub_cache_offline(offline_hub_cache, reference):
    loaded = DiffusionPipeline.from_pretrained(REPO_ID)
    assert type(loaded) is SemanticUltrasoundPipeline
    assert loaded.name_or_path == REPO_ID
    assert_same(generate(loaded), reference["guided"])
    same = SemanticUltrasoundPipeline.from_pretrained(REPO_ID, cache_dir=str(offline_hub_cache))
    assert_same(generate(same), reference["guided"])
    with pytest.raises(Exception, match="(?i)cache|offline|local"):
        DiffusionPipeline.from_pretrained("us-org/not-cached")


def test_repo_id_with_plain_diffusers_offline(offline_hub_cache, reference, monkeypatch, tmp_path):
    import diffusers

    isolate_remote_code_cache(monkeypatch, tmp_path)
    loaded = diffusers.DiffusionPipeline.from_pretrained(REPO_ID, trust_remote_code=True)
    assert type(loaded) is SemanticUltrasoundPipeline
    assert_same(generate(loaded), reference["guided"])


@pytest.mark.slow
def test_plain_diffusers_in_a_fresh_interpreter_imports_the_package_itself(saved, tmp_path):
    """No `import ultrasound_diffusers` in the script: the remote-code files bring it in."""
    cache = tmp_path / "hub"
    make_hub_cache(saved, cache, REPO_ID)
    script = textwrap.dedent(
        f"""
        import sys, torch, diffusers
        assert "ultrasound_diffusers" not in sys.modules
        for source in ({str(saved)!r}, {REPO_ID!r}):
            pipe = diffusers.DiffusionPipeline.from_pretrained(source, trust_remote_code=True)
            pipe.set_progress_bar_config(disable=True)
            out = pipe(torch.zeros(16, 16, dtype=torch.long), num_inference_steps=2, output_type="np")
            print(type(pipe).__module__, type(pipe).__name__, out.images.shape)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [l for l in result.stdout.splitlines() if "SemanticUltrasoundPipeline" in l]
    assert lines == ["ultrasound_diffusers.pipelines.pipeline_semantic_ultrasound SemanticUltrasoundPipeline (1, 16, 16, 1)"] * 2


def _tiny_unet2d():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )


def test_auto_class_loads_plain_diffusers_pipelines(tmp_path):
    unet = _tiny_unet2d()
    ddpm = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20))
    ddpm.save_pretrained(tmp_path / "ddpm")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "ddpm")
    assert type(loaded) is DDPMPipeline
    torch.testing.assert_close(loaded.unet.conv_out.weight, unet.conv_out.weight)

    # a diffusers pipeline with our scheduler (saved by diffusers under its full module path)
    from _pipeline_fixtures import tiny_bmap_scheduler

    mixed = DDPMPipeline(unet=unet, scheduler=tiny_bmap_scheduler("fixed_small"))
    mixed.save_pretrained(tmp_path / "mixed")
    index = json.loads((tmp_path / "mixed" / "model_index.json").read_text())
    assert index["scheduler"][0] == "ultrasound_diffusers.schedulers.scheduling_bmap_attenuation"
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "mixed")
    assert type(loaded.scheduler).__name__ == "BMapAttenuationScheduler"


def test_custom_code_of_other_projects_needs_trust_remote_code(tmp_path, monkeypatch):
    isolate_remote_code_cache(monkeypatch, tmp_path)
    folder = tmp_path / "custom"
    DDPMPipeline(unet=_tiny_unet2d(), scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(folder)
    (folder / "my_pipeline.py").write_text("from diffusers import DDPMPipeline\n\n\nclass MyPipeline(DDPMPipeline):\n    pass\n")
    _edit_index(folder, _class_name=["my_pipeline", "MyPipeline"])
    with pytest.raises(ValueError, match=r"model_index\.json.*MyPipeline"):
        DiffusionPipeline.from_pretrained(folder)
    loaded = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(loaded).__name__ == "MyPipeline"


def test_a_swapped_scheduler_saves_and_loads(pipe, tmp_path):
    swapped = SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    swapped.save_pretrained(tmp_path / "ddim")
    index = json.loads((tmp_path / "ddim" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert not (tmp_path / "ddim" / "scheduler" / "scheduling_bmap_attenuation.py").exists()
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "ddim")
    assert type(loaded.scheduler) is DDIMScheduler


# ------------------------------------------------------------------ loading errors


def _copy(saved, tmp_path):
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "broken"))


def _edit_index(folder, **changes):
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index.update(changes)
    path.write_text(json.dumps(index))


def test_missing_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model_index.json"):
        DiffusionPipeline.from_pretrained(tmp_path / "empty")


def test_unknown_pipeline_class(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_index(folder, _class_name="NoSuchUltrasoundPipeline")
    with pytest.raises(ValueError, match=r"model_index\.json.*NoSuchUltrasoundPipeline"):
        DiffusionPipeline.from_pretrained(folder)


def test_unknown_component_class(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_index(folder, unet=["ultrasound_diffusers.models.unet_semantic_2d", "NoSuchUNet"])
    with pytest.raises(ValueError, match=r"model_index\.json.*unet.*NoSuchUNet"):
        DiffusionPipeline.from_pretrained(folder)


def test_missing_component(saved, tmp_path):
    import shutil

    folder = _copy(saved, tmp_path)
    shutil.rmtree(folder / "unet")
    with pytest.raises(ValueError, match=r"unet.*does not exist"):
        DiffusionPipeline.from_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    del index["scheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"model_index\.json has no component 'scheduler'"):
        DiffusionPipeline.from_pretrained(folder, unet=tiny_semantic_pipeline().unet)


def test_unknown_scheduler_config_key(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["bmap_mn"] = 0.5
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"scheduler_config\.json.*bmap_mn"):
        DiffusionPipeline.from_pretrained(folder)


def test_bad_repo_id():
    with pytest.raises(ValueError, match="neither an existing folder nor a Hub repo id"):
        DiffusionPipeline.from_pretrained("a/b/c")


# ------------------------------------------------------------------ model card and push_to_hub


def _split_card(text):
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


ROOT = Path(__file__).resolve().parents[1]


def test_one_model_card_template_and_model_cards_points_to_it():
    assert hub.MODEL_CARD_TEMPLATE.is_file()
    assert hub.MODEL_CARD_TEMPLATE.parent == Path(hub.__file__).resolve().parent / "templates"  # package data
    assert hub.MODEL_CARD_TEMPLATE.parent == ROOT / "ultrasound_diffusers" / "templates"  # beside hub_utils, not in pipelines/
    templates = [p for p in ROOT.rglob("*card_template*") if ".git" not in p.parts and "build" not in p.parts]
    assert [p.resolve() for p in templates if "egg-info" not in str(p)] == [hub.MODEL_CARD_TEMPLATE.resolve()]
    assert "ultrasound_diffusers/templates/model_card_template.md" in (ROOT / "model_cards" / "README.md").read_text()


@pytest.mark.parametrize("folder", ["DEMO_PIPELINE_PATH", "FEWSTEP_PIPELINE_PATH"])
def test_bundled_demo_card_is_the_model_cards_copy_with_truthful_metadata(folder):
    import ultrasound_diffusers.demo as demo

    path = getattr(demo, folder)
    bundled = (path / "README.md").read_bytes()
    assert bundled == (ROOT / "model_cards" / f"{path.name}.md").read_bytes()
    meta, body = _split_card(bundled.decode())
    assert meta["library_name"] == "diffusers" and meta["license"] == "apache-2.0"
    assert "diffusers-training" in meta["tags"] and "ultrasound" in meta["tags"]
    assert "datasets" not in meta and "base_model" not in meta  # phantoms and a local stage 1: nothing on the Hub
    assert "phantoms" in body and packaging.INSTALL_COMMAND in body and packaging.wheel_filename() in body


def test_model_card_content(pipe):
    card = hub.create_model_card(
        pipe,
        REPO_ID,
        license="cc-by-nc-sa-4.0",
        datasets=["camus"],
        training_data="CAMUS echocardiography, 2CH/4CH at ED/ES.",
        evaluation_results={"FID": 41.25, "SSIM": 0.613},
        evaluation_dataset="camus",
        tags=["echocardiography"],
    )
    meta, body = _split_card(str(card))
    assert meta["library_name"] == "diffusers"
    assert {"ultrasound", "medical-imaging", "diffusers", "b-map", "echocardiography"} <= set(meta["tags"])
    assert meta["license"] == "cc-by-nc-sa-4.0" and meta["datasets"] == ["camus"]
    assert meta["pipeline_tag"] == "image-to-image"
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert {m["name"]: m["value"] for m in metrics} == {"FID": 41.25, "SSIM": 0.613}
    assert f'DiffusionPipeline.from_pretrained("{REPO_ID}")' in body
    assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in body
    assert "| `bmap_min` | 0.97 |" in body and "| `bmap_schedule` | cosine |" in body
    assert "| `probe_geometry` | convex |" in body
    assert "| 41.25 |" in body and "| 0.613 |" in body
    assert "CAMUS echocardiography, 2CH/4CH at ED/ES." in body
    assert hub.NOT_FOR_DIAGNOSIS in body and "Research use only" in body
    assert "| 4 | left atrium |" in body  # label meanings from the pipeline config


def test_model_card_without_optional_information(pipe):
    plain = SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=DDPMScheduler(num_train_timesteps=100))
    meta, body = _split_card(str(hub.create_model_card(plain, "me/x")))
    assert meta["license"] == "other" and "model-index" not in meta and "b-map" not in meta["tags"]
    assert "No evaluation results were given" in body
    assert "standard DDPM forward process" in body
    assert "Not documented by the uploader." in body


class _FakeApi:
    """Records what push_to_hub would send instead of talking to the Hub."""

    def __init__(self):
        self.calls = []
        self.uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        root = Path(folder_path)
        self.uploaded = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return f"https://huggingface.co/{repo_id}/commit/abc"


def test_push_to_hub_uploads_the_folder_and_the_card(pipe, tmp_path, monkeypatch):
    import huggingface_hub

    api = _FakeApi()
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: api.create_repo(repo_id, **kw))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: api.upload_folder(**kw))
    url = pipe.push_to_hub(REPO_ID, private=True, license="cc-by-nc-sa-4.0", datasets=["camus"])
    assert url.endswith("/commit/abc")
    assert api.calls[0][0] == "create_repo" and api.calls[0][2]["private"] is True
    assert api.calls[1][0] == "upload_folder" and "SemanticUltrasoundPipeline" in api.calls[1][2]["commit_message"]
    expected = {
        "README.md",
        "model_index.json",
        "pipeline_semantic_ultrasound.py",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/unet_semantic_2d.py",
        "scheduler/scheduler_config.json",
        "scheduler/scheduling_bmap_attenuation.py",
    }
    assert set(api.uploaded) == expected
    meta, body = _split_card(api.uploaded["README.md"].decode())
    assert meta["license"] == "cc-by-nc-sa-4.0" and "ultrasound" in meta["tags"]
    assert REPO_ID in body

    # what was uploaded loads back as the pipeline (e.g. the Hub's copy)
    folder = tmp_path / "uploaded"
    for name, data in api.uploaded.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    assert_same(generate(DiffusionPipeline.from_pretrained(folder)), generate(pipe))


def test_save_pretrained_with_push_to_hub(pipe, tmp_path):
    api = _FakeApi()
    pipe.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="me/pushed", api=api, model_card="# custom card\n")
    assert (tmp_path / "local" / "model_index.json").is_file()
    assert api.calls[0][1] == "me/pushed"
    assert api.uploaded["README.md"] == b"# custom card\n"


def test_push_to_hub_uploads_the_extra_files_the_card_links_to(pipe, tmp_path):
    picture = tmp_path / "grid.png"
    picture.write_bytes(b"png bytes")
    api = _FakeApi()
    hub.push_to_hub(pipe, "me/with-grid", api=api, extra_files={"validation_grid.png": picture},
                    sample_image="validation_grid.png", sample_caption="The grid")
    assert api.uploaded["validation_grid.png"] == b"png bytes"
    assert "![Samples](validation_grid.png)" in api.uploaded["README.md"].decode() and "*The grid*" in api.uploaded["README.md"].decode()
    for bad in ({"../x.png": picture}, {"README.md": picture}, {"y.png": tmp_path / "missing.png"}):
        with pytest.raises(ValueError, match="extra_files"):
            hub.push_to_hub(pipe, "me/with-grid", api=_FakeApi(), extra_files=bad)


# ------------------------------------------------------------------ the metadata of every kind of card


def _hub_card(cache, repo_id, text, repo_type="model"):
    """Put a README.md with ``text`` for ``repo_id`` into the Hub cache ``cache``."""
    folder = cache.parent / f"card-{repo_id.replace('/', '-')}"
    folder.mkdir()
    (folder / "README.md").write_text(text)
    make_hub_cache(folder, cache, repo_id)
    if repo_type == "dataset":
        (cache / ("models--" + repo_id.replace("/", "--"))).rename(cache / ("datasets--" + repo_id.replace("/", "--")))


def test_model_card_metadata_licenses_base_model_and_samples(pipe, tmp_path):
    meta, body = _split_card(str(hub.create_model_card(pipe, "me/x")))
    assert meta["license"] == "other" and meta["license_name"] == "unknown" and meta["license_link"] == "README.md#license"
    assert "## License" in body and "Not specified by the uploader" in body
    meta, body = _split_card(str(hub.create_model_card(
        pipe, "me/x", license="other", license_name="my-terms-1.0", license_link="https://example.org/terms",
        base_model="org/base", sample_image="grid.png", sample_caption="Validation samples")))
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "my-terms-1.0", "https://example.org/terms")
    assert meta["base_model"] == "org/base" and "https://huggingface.co/org/base" in body
    assert "![Samples](grid.png)" in body and "*Validation samples*" in body
    meta, _ = _split_card(str(hub.create_model_card(pipe, "me/x", license="apache-2.0")))
    assert meta["license"] == "apache-2.0" and "license_name" not in meta
    with pytest.raises(ValueError, match="base_model"):
        hub.create_model_card(pipe, "me/x", base_model=str(tmp_path))  # a local folder is no Hub id
    with pytest.raises(ValueError, match="sample_image"):
        hub.create_model_card(pipe, "me/x", sample_image="/abs/grid.png")
    with pytest.raises(ValueError, match="license_name"):
        hub.create_model_card(pipe, "me/x", license="other", license_name="My Terms")
    # the card's fields as one object (issue 28: 23 keyword parameters became ModelCardFields); keywords win
    fields = hub.ModelCardFields(license="apache-2.0", sample_caption="from the object")
    meta, body = _split_card(str(hub.create_model_card(pipe, "me/x", fields, license="mit", sample_image="g.png")))
    assert meta["license"] == "mit" and "*from the object*" in body
    assert str(hub.create_model_card(pipe, "me/x", fields)) == str(hub.create_model_card(
        pipe, "me/x", license="apache-2.0", sample_caption="from the object"))
    with pytest.raises(TypeError, match="licence"):
        hub.create_model_card(pipe, "me/x", licence="mit")
    with pytest.raises(ValueError, match="base_model"):
        hub.ModelCardFields(base_model="../local")


def test_license_must_have_the_form_of_a_hub_license_id(pipe):
    for good in ("apache-2.0", "cc-by-nc-sa-4.0", "mit", "llama3.1", "openrail++", "other"):
        assert hub.license_metadata(good)["license"] == good
    for bad in ("not-a-license!", "Apache 2.0", "MIT", " mit", "cc-by--4.0", "-mit", "", "x" * 0):
        with pytest.raises(ValueError, match="`license` must be a Hub license id"):
            hub.license_metadata(bad)
    with pytest.raises(ValueError, match="`license` must be a Hub license id"):
        hub.create_model_card(pipe, "me/x", license="not-a-license!")
    with pytest.raises(ValueError, match="license_name"):
        hub.license_metadata("other", "terms!")


def test_label_names_must_fit_the_model_classes(pipe):
    """100 names for a 5-class model (or labels outside its classes) are refused, naming the argument."""
    assert pipe.unet.config.num_classes == 5
    _, body = _split_card(str(hub.create_model_card(pipe, "me/x", label_names=["bg", "cavity"])))
    assert "| 1 | cavity |" in body  # fewer names than classes: the rest stay unnamed
    _, body = _split_card(str(hub.create_model_card(pipe, "me/x", label_names={"4": "atrium", 0: "bg"})))
    assert "| 4 | atrium |" in body and "| 0 | bg |" in body
    with pytest.raises(ValueError, match=r"`label_names` has 100 names for a model with 5 classes"):
        hub.create_model_card(pipe, "me/x", label_names=[f"class {i}" for i in range(100)])
    with pytest.raises(ValueError, match=r"`label_names` names labels \[7\] outside the model's 5 classes"):
        hub.create_model_card(pipe, "me/x", label_names={0: "bg", 7: "x"})
    with pytest.raises(ValueError, match="`label_names` keys must be integer labels"):
        hub.create_model_card(pipe, "me/x", label_names={"cavity": "x"})
    with pytest.raises(ValueError, match="`label_names` must be a list of names"):
        hub.create_model_card(pipe, "me/x", label_names="echo")
    from ultrasound_diffusers import SemanticUNet2DModel, UltrasoundPipeline

    config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
    plain = UltrasoundPipeline(unet=SemanticUNet2DModel(**{**config, "num_classes": 0}), scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="without label classes"):
        hub.create_model_card(plain, "me/x", label_names=["bg"])


def test_card_sampler_advice_comes_from_one_place_and_recommends_no_ddim(pipe):
    """The card's sampler advice is hub.SAMPLER_ADVICE: the ancestral default or SDE-DPM-Solver++, never DDIM
    (the worst sampler for B-map models by the README's table); its code runs as written."""
    _, body = _split_card(str(hub.create_model_card(pipe, "me/x")))
    advice = hub.SAMPLER_ADVICE[True].replace("{steps}", "50")
    assert advice in body and "fewer-step DDIM" not in body and "DDIMScheduler.from_config" not in body
    code = advice.split("```python\n")[1].split("```")[0]
    swapped = SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=pipe.scheduler)  # the fixture stays as it is
    exec(code, {"pipe": swapped})
    assert type(swapped.scheduler).__name__ == "BMapDPMSolverMultistepScheduler"
    assert swapped.scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert swapped.scheduler.config.bmap_min == pipe.scheduler.config.bmap_min
    # a model whose config selects ddim-clipped is told to keep it (and how to go ancestral); a distilled student
    # keeps its own steps at guidance 1; neither is told to keep "the default ancestral sampler"
    clipped = SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=BMapAttenuationScheduler.from_config(
        pipe.scheduler.config, sampler="ddim", use_clipped_model_output=True))
    student = SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=BMapAttenuationScheduler.from_config(
        pipe.scheduler.config, sampler="ddim", timestep_spacing="trailing", clip_sample=False))
    for other, key, steps in ((clipped, "ddim-clipped", 50), (student, "student", 4)):
        assert hub.sampler_advice_key(other.scheduler.config, True) == key
        _, body = _split_card(str(hub.create_model_card(other, "me/x", num_inference_steps=steps)))
        assert hub.SAMPLER_ADVICE[key].replace("{steps}", str(steps)) in body and "default ancestral" not in body
    code = hub.SAMPLER_ADVICE["ddim-clipped"].split("```python\n")[1].split("```")[0]
    exec(code, {"pipe": clipped})
    assert clipped.scheduler.config.sampler == "ddpm" and clipped.scheduler.config.bmap_min == pipe.scheduler.config.bmap_min
    plain = SemanticUltrasoundPipeline(unet=pipe.unet, scheduler=DDPMScheduler(num_train_timesteps=100))
    _, body = _split_card(str(hub.create_model_card(plain, "me/x")))
    assert hub.SAMPLER_ADVICE[False] in body
    code = hub.SAMPLER_ADVICE[False].split("```python\n")[1].split("```")[0]
    namespace = {"pipe": plain}
    exec(code, namespace)
    assert type(plain.scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_card_install_lines_need_nothing_that_is_not_installed():
    """The wheel route builds with pip alone (``python -m build`` needs the ``build`` package), and says where
    the source folder is."""
    card = hub.MODEL_CARD_TEMPLATE.read_text() + loading.REMOTE_CODE_TEMPLATE.read_text() + packaging.install_hint()
    assert "python -m build" not in card and "{{ wheel_build_command }}" in hub.MODEL_CARD_TEMPLATE.read_text()
    assert packaging.WHEEL_BUILD_COMMAND == "pip wheel --no-deps -w dist ." and packaging.WHEEL_BUILD_COMMAND in packaging.install_hint()
    assert "setup.cfg" in hub.MODEL_CARD_TEMPLATE.read_text() and "setup.cfg" in loading.REMOTE_CODE_TEMPLATE.read_text()


def _train_args(ts, tmp_path, *extra):
    return ts.parse_args(["--output_dir", str(tmp_path / "run"), "--validation_inference_steps", "7", *extra])


def _grids(out, steps):
    (out / "samples").mkdir(parents=True)
    for step in steps:
        (out / "samples" / f"step-{step:07d}.png").write_bytes(f"grid {step}".encode())


def test_training_card_on_phantoms_has_license_tag_and_the_last_grid(pipe, tmp_path):
    from test_training import ts

    args = _train_args(ts, tmp_path, "--dataset_name", "phantoms:echo", "--use_ema")
    out = Path(args.output_dir)
    _grids(out, [2, 4, 6])
    upload = ts.save_final_pipeline(pipe, args, num_examples=10, global_step=4, num_processes=1)
    text = (out / "README.md").read_text()
    meta, body = _split_card(text)
    assert meta["license"] == "apache-2.0" and "license_name" not in meta
    assert "datasets" not in meta and "base_model" not in meta
    assert hub.TRAINING_TAG in meta["tags"] and meta["library_name"] == "diffusers"
    assert (out / "validation_grid.png").read_bytes() == b"grid 4"  # the last grid of this run (step 6 is stale)
    assert "](validation_grid.png)" in body and "step 4 of 4" in body and "EMA weights" in body
    assert "phantoms:echo" in body and "no patient data" in body
    assert upload["model_card"] == text
    assert set(upload["extra_files"]) == {"validation_grid.png", "training_args.json"}
    assert not INDEX_INSTALL.search(text) and packaging.INSTALL_COMMAND in text
    ts.check_output_dir(str(out))  # the copy of the grid is part of a run: the folder can be resumed into

    # without any grid the card has no Samples section and no stale copy is left
    for grid in (out / "samples").iterdir():
        grid.unlink()
    upload = ts.save_final_pipeline(pipe, args, num_examples=10, global_step=4, num_processes=1)
    assert not (out / "validation_grid.png").exists() and "validation_grid.png" not in upload["model_card"]
    assert set(upload["extra_files"]) == {"training_args.json"}


def test_training_card_names_the_hub_dataset_and_base_model(pipe, tmp_path, offline_hub_cache):
    from test_training import ts

    _hub_card(offline_hub_cache, "org/echo-data", "---\nlicense: cc-by-nc-sa-4.0\n---\n# data\n", "dataset")
    _hub_card(offline_hub_cache, "org/echo-base", "---\nlicense: cc-by-nc-sa-4.0\n---\n# base\n")
    args = _train_args(ts, tmp_path, "--dataset_name", "org/echo-data", "--pretrained_model_name_or_path", "org/echo-base")
    ts.save_final_pipeline(pipe, args, num_examples=10, global_step=4, num_processes=1)
    meta, body = _split_card((Path(args.output_dir) / "README.md").read_text())
    assert meta["datasets"] == ["org/echo-data"] and meta["base_model"] == "org/echo-base"
    assert meta["license"] == "cc-by-nc-sa-4.0"  # what both sources state
    assert hub.TRAINING_TAG in meta["tags"] and "fine-tuned from `org/echo-base`" in body

    # a dataset whose card is not on this machine: the license cannot be told, the link goes to the dataset
    args = _train_args(ts, tmp_path / "b", "--dataset_name", "org/uncached-data")
    ts.save_final_pipeline(pipe, args, num_examples=10, global_step=4, num_processes=1)
    meta, body = _split_card((Path(args.output_dir) / "README.md").read_text())
    assert meta["datasets"] == ["org/uncached-data"] and "base_model" not in meta
    assert (meta["license"], meta["license_name"]) == ("other", "unknown")
    assert meta["license_link"] == "https://huggingface.co/datasets/org/uncached-data"


def test_training_card_from_a_local_pipeline_names_it_in_the_text_only(pipe, saved, tmp_path):
    from test_training import ts

    folder = tmp_path / "base"
    import shutil

    shutil.copytree(saved, folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n")
    args = _train_args(ts, tmp_path, "--pretrained_model_name_or_path", str(folder))
    ts.save_final_pipeline(pipe, args, num_examples=10, global_step=4, num_processes=1)
    meta, body = _split_card((Path(args.output_dir) / "README.md").read_text())
    assert "base_model" not in meta and str(folder) in body
    assert meta["license"] == "mit"  # the base model's terms; phantoms add none


def _generation_settings(model):
    return {
        "model": model, "pipeline_class": "SemanticUltrasoundPipeline", "scheduler_class": "BMapAttenuationScheduler",
        "scheduler_config": {"num_train_timesteps": 100}, "model_digest": "0" * 64, "labels": "phantoms:echo:2",
        "labels_digest": "1" * 64, "num_labels": 2, "height": 16, "width": 16, "images_per_label": 1,
        "num_inference_steps": 2, "guidance_scale": 1.5, "eta": None, "seed": 0, "augment": None,
        "augment_tissue_label": None, "resize_labels": False, "chunk_size": 8,
    }


def test_dataset_card_names_the_source_model_and_its_license(saved, tmp_path, offline_hub_cache):
    from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH

    meta, body = _split_card(hub.create_dataset_card(_generation_settings(str(DEMO_PIPELINE_PATH)), 2))
    assert meta["source_model"] == str(DEMO_PIPELINE_PATH)
    assert meta["license"] == "apache-2.0" == meta["source_model_license"]  # read from the bundled card
    assert "synthetic" in meta["tags"] and meta["task_categories"] == ["image-segmentation"]

    _hub_card(offline_hub_cache, "org/echo-model", "---\nlicense: cc-by-nc-sa-4.0\n---\n# model\n")
    meta, body = _split_card(hub.create_dataset_card(_generation_settings("org/echo-model"), 2, repo_id="me/synth"))
    assert (meta["source_model"], meta["license"], meta["pretty_name"]) == ("org/echo-model", "cc-by-nc-sa-4.0", "synth")
    assert "https://huggingface.co/org/echo-model" in body

    # a folder without a card, and a Hub model whose card is not on this machine
    meta, body = _split_card(hub.create_dataset_card(_generation_settings(str(saved)), 2))
    assert (meta["license"], meta["license_name"], meta["source_model_license"]) == ("other", "unknown", "unknown")
    assert meta["license_link"] == "README.md#license-and-provenance" and "## License and provenance" in body
    meta, _ = _split_card(hub.create_dataset_card(_generation_settings("org/not-cached"), 2))
    assert meta["license_link"] == "https://huggingface.co/org/not-cached"
    meta, _ = _split_card(hub.create_dataset_card(_generation_settings("org/not-cached"), 2, model_license={"license": "mit"}))
    assert meta["license"] == "mit"


# ------------------------------------------------------------------ no card or remote-code file names a failing install


def test_no_card_or_remote_code_file_names_an_install_that_would_fail(pipe, saved, tmp_path):
    """The package is not on PyPI: nothing may tell users to install it by name from the index."""
    texts = {
        "model card template": hub.MODEL_CARD_TEMPLATE.read_text(),
        "remote-code template": loading.REMOTE_CODE_TEMPLATE.read_text(),
        "rendered model card": str(hub.create_model_card(pipe, REPO_ID)),
        "dataset card": hub.create_dataset_card(_generation_settings("org/x"), 2),
        "install hint": packaging.install_hint(),
    }
    shims = [p for p in ROOT.rglob("*.py") if ".git" not in p.parts and p.read_text(errors="ignore").startswith("# Remote-code file written")]
    assert len(shims) >= 3  # the bundled demo pipeline's at least
    shims += list(saved.rglob("*.py"))
    texts.update({str(p): p.read_text() for p in shims})
    texts.update({str(p): p.read_text() for p in (ROOT / "model_cards").glob("*.md")})
    folder = _copy(saved, tmp_path)
    _edit_index(folder, _class_name="NoSuchUltrasoundPipeline")
    with pytest.raises(ValueError) as info:
        DiffusionPipeline.from_pretrained(folder)
    texts["unknown-class error"] = str(info.value)
    bad = {name: INDEX_INSTALL.search(text).group(0) for name, text in texts.items() if INDEX_INSTALL.search(text)}
    assert not bad
    for name in ("rendered model card", "install hint", str(saved / "unet" / "unet_semantic_2d.py")):
        assert packaging.INSTALL_COMMAND in texts[name] and packaging.wheel_filename() in texts[name], name
    # the regular expression itself catches what it must
    for wrong in ("pip install ultrasound-diffusers", "pip install -U ultrasound-diffusers`", "pip install 'ultrasound-diffusers[metrics]'"):
        assert INDEX_INSTALL.search(wrong), wrong
    for right in ("pip install ./ultrasound-diffusers", "pip install dist/ultrasound_diffusers-0.1.0-py3-none-any.whl"):
        assert not INDEX_INSTALL.search(right), right


def test_card_of_a_bmap_scheduler_at_bmap_min_1_says_plain_ddpm(tmp_path):
    """bmap_min = 1 is exactly DDPM: no b-map tag, no B-map description (the lung model is such a pipeline)."""
    from _pipeline_fixtures import tiny_bmap_scheduler, tiny_unconditional_pipeline

    from ultrasound_diffusers.hub_utils import create_model_card

    cards = {}
    for bmap_min in (1.0, 0.97):
        scheduler = tiny_bmap_scheduler("learned_range", probe_geometry="linear", bmap_min=bmap_min)
        cards[bmap_min] = str(create_model_card(tiny_unconditional_pipeline(scheduler=scheduler), repo_id="org/x"))
    assert "b-map" not in cards[1.0].split("---")[1] and "standard DDPM forward process" in cards[1.0]
    assert "b-map" in cards[0.97].split("---")[1] and "B-map attenuation" in cards[0.97]
