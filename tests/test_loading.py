"""The loader module (pipelines/loading.py): where it and the cards module (hub_utils.py) sit in the import graph,
no 0.1.0 names left on pipelines/, both halves of the remote-code files, and folders saved by 0.1.0 (old
remote-code text) still loading."""

import ast
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _pipeline_fixtures import echo_label_map, isolate_remote_code_cache

import ultrasound_diffusers.pipelines.loading as loading
import ultrasound_diffusers.pipelines.pipeline_utils as pipeline_utils
import ultrasound_diffusers.utils.packaging as packaging
from ultrasound_diffusers.pipelines import DiffusionPipeline, SemanticUltrasoundPipeline

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"ultrasound_diffusers": ROOT / "ultrasound_diffusers", "ultrasound_diffusers.pipelines": ROOT / "pipelines"}

# The remote-code text that version 0.1.0 wrote (its install advice is wrong, its import line is what matters).
OLD_SHIM = '''# Remote-code file written by ultrasound-diffusers 0.1.0.
try:
    from {module} import {cls}
except ImportError as error:  # the package is missing (or too old to have this class)
    raise ImportError(
        "This pipeline needs the `ultrasound-diffusers` package: install it with `pip install ultrasound-diffusers` "
        f"Import error: {{error}}"
    ) from error

__all__ = ["{cls}"]
'''




def generate(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(echo_label_map(16), num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images


# ------------------------------------------------------------------ the import graph


def _module_files():
    """{dotted module name: file} of every module of the package (pipelines/ mapped as setup.cfg maps it)."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            if package == "ultrasound_diffusers" and "assets" in path.parts:
                continue  # remote-code files of the bundled pipeline, not modules of the package
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _import_targets(name, path):
    """Every dotted name ``name`` imports anywhere in its file (top level and inside functions), relative imports
    resolved: the module of each ``from ... import`` and ``module.name`` for each of its names."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(targets)
    return found


def _imports(name, path, modules):
    """Modules of the package that ``name`` imports anywhere in its file (top level and inside functions)."""
    found = set()
    for target in _import_targets(name, path):
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name and target not in ("ultrasound_diffusers", "ultrasound_diffusers.pipelines"):
            found.add(target)
    return found


def _cycles_through(start, graph):
    """Import paths that lead from ``start`` back to ``start``."""
    cycles, stack = [], [(start, [start])]
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                cycles.append(path + [start])
            elif nxt not in path and len(path) < 12:
                stack.append((nxt, path + [nxt]))
    return cycles


def test_the_cards_sit_below_the_pipelines_and_the_loader_in_no_import_circle():
    modules = _module_files()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cards, loader, base = "ultrasound_diffusers.hub_utils", *("ultrasound_diffusers.pipelines." + m for m in ("loading", "pipeline_utils"))
    assert "ultrasound_diffusers.utils.packaging" in graph[cards]  # the graph sees imports at all
    assert cards in graph[base] and cards in graph["ultrasound_diffusers.generation"]  # push_to_hub, dataset cards
    into_pipelines = sorted(t for t in _import_targets(cards, modules[cards]) if t.startswith("ultrasound_diffusers.pipelines"))
    assert not into_pipelines, f"hub_utils.py must import nothing of pipelines/: {into_pipelines}"
    pipeline_modules = {m for m in modules if m.startswith("ultrasound_diffusers.pipelines.")} - {loader}
    assert not graph[loader] & pipeline_modules, "loading.py must import no other module of pipelines/"
    for module in (loader, cards, base):
        assert not _cycles_through(module, graph), _cycles_through(module, graph)[:3]


# ------------------------------------------------------------------ no names kept for 0.1.0 code


def test_pipelines_hold_pipelines_and_no_0_1_0_names():
    """The cards left pipelines/ (no ``pipelines.hub``, no card functions on the package), and the loader's names
    live in loading.py only: nothing of the unpublished 0.1.0 is re-exported."""
    import importlib.util

    import ultrasound_diffusers.pipelines as pipelines

    assert importlib.util.find_spec("ultrasound_diffusers.pipelines.hub") is None
    assert not (Path(pipelines.__file__).parent / "templates" / "model_card_template.md").exists()
    for name in ("create_model_card", "push_to_hub", "save_model_card", "write_remote_code_files"):
        assert name not in pipelines.__all__ and not hasattr(pipelines, name), name
    for name in ("resolve_class", "load_component", "read_model_index", "_shim_target", "_move_into", "_import_attr"):
        assert not hasattr(pipeline_utils, name), name
    assert not hasattr(loading, "_shim_target") and not hasattr(loading, "_move_into")


def test_the_loader_and_cards_modules_are_not_component_modules():
    """A model_index.json naming them is refused, like any module that defines no component."""
    for module in ("ultrasound_diffusers.pipelines.loading", "ultrasound_diffusers.hub_utils"):
        assert not loading.is_component_module(module)
    assert loading.is_component_module("ultrasound_diffusers.pipelines.pipeline_semantic_ultrasound")


def test_model_index_naming_the_loader_is_refused(saved, tmp_path):
    folder = Path(shutil.copytree(saved, tmp_path / "doctored"))
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["ultrasound_diffusers.pipelines.loading", "SemanticUNet2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"component 'unet'.*not a module that defines pipeline components"):
        DiffusionPipeline.from_pretrained(folder)


# ------------------------------------------------------------------ the two halves of the remote-code files


def test_written_remote_code_files_are_read_back_to_the_classes(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert loading.remote_code_target(saved / "unet" / "unet_semantic_2d.py", "SemanticUNet2DModel") == \
        "ultrasound_diffusers.models.unet_semantic_2d"
    assert loading.remote_code_target(saved / "unet" / "unet_semantic_2d.py", "OtherClass") is None
    assert loading.remote_code_target(saved / "unet" / "missing.py", "SemanticUNet2DModel") is None
    assert loading.resolve_class(index["_class_name"], saved) is SemanticUltrasoundPipeline
    assert loading.resolve_class(index["unet"], saved, component="unet").__name__ == "SemanticUNet2DModel"


def test_render_refuses_classes_of_other_packages():
    with pytest.raises(ValueError, match="only import ultrasound_diffusers classes"):
        loading.render_remote_code("diffusers.models", "UNet2DModel")


def test_folders_saved_by_0_1_0_still_load(saved, tmp_path, monkeypatch):
    """The remote-code text of 0.1.0 (another comment, another install line) names the same classes."""
    import diffusers

    folder = Path(shutil.copytree(saved, tmp_path / "old"))
    for shim in [folder / "pipeline_semantic_ultrasound.py", folder / "unet" / "unet_semantic_2d.py",
                 folder / "scheduler" / "scheduling_bmap_attenuation.py"]:
        (module, cls), = loading._SHIM_IMPORT.findall(shim.read_text())
        shim.write_text(OLD_SHIM.format(module=module, cls=cls))
    expected = generate(DiffusionPipeline.from_pretrained(saved))
    np.testing.assert_allclose(generate(DiffusionPipeline.from_pretrained(folder)), expected, atol=1e-5)
    isolate_remote_code_cache(monkeypatch, tmp_path)
    plain = diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(plain) is SemanticUltrasoundPipeline


def test_the_bundled_demo_pipeline_loads_with_both_loaders(tmp_path, monkeypatch):
    import diffusers

    from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH

    assert type(DiffusionPipeline.from_pretrained(DEMO_PIPELINE_PATH)) is SemanticUltrasoundPipeline
    isolate_remote_code_cache(monkeypatch, tmp_path)
    assert type(diffusers.DiffusionPipeline.from_pretrained(DEMO_PIPELINE_PATH, trust_remote_code=True)) is \
        SemanticUltrasoundPipeline


def test_bundled_remote_code_files_are_what_the_template_renders_now():
    """Regenerated with the current template (and install advice) whenever it changes."""
    from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH

    for shim in sorted(DEMO_PIPELINE_PATH.rglob("*.py")):
        (module, cls), = loading._SHIM_IMPORT.findall(shim.read_text())
        assert shim.read_text() == loading.render_remote_code(module, cls), shim


# ------------------------------------------------------------------ components, libraries


def test_load_components_takes_passed_components_and_settings(saved):
    from diffusers import DDIMScheduler

    index = loading.read_model_index(saved)
    ddim = DDIMScheduler(num_train_timesteps=100)
    kwargs = {"scheduler": ddim, "dtype": {"unet": torch.float64}, "label_names": ["a", "b", "c", "d", "e"], "extra": 1}
    components, settings = loading.load_components(SemanticUltrasoundPipeline, saved, index, kwargs)
    assert components["scheduler"] is ddim and components["unet"].dtype == torch.float64
    assert settings == {"label_names": ["a", "b", "c", "d", "e"]}
    assert kwargs == {"extra": 1}  # what the pipeline does not understand is left for the caller to report


def test_import_component_libraries_refuses_other_libraries(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "ultrasound_diffusers.cli", raising=False)
    index = {"_class_name": "DDPMPipeline", "unet": ["some_project.models", "UNet"]}
    with pytest.raises(ValueError, match=r"component 'unet'.*some_project.*trust_remote_code"):
        loading.import_component_libraries(index, tmp_path, trust_remote_code=False)
    loading.import_component_libraries(index, tmp_path, trust_remote_code=True)  # asked for: left to diffusers
    with pytest.raises(ValueError, match="not a module that defines pipeline components"):
        loading.import_component_libraries({"unet": ["ultrasound_diffusers.cli", "X"]}, tmp_path, False)
    assert "ultrasound_diffusers.cli" not in sys.modules  # refused without being imported


def test_install_hint_names_the_source_folder_and_the_wheel():
    hint = packaging.install_hint("9.9.9")
    assert "not on PyPI" in hint and packaging.INSTALL_COMMAND in hint
    assert "dist/ultrasound_diffusers-9.9.9-py3-none-any.whl" in hint and packaging.WHEEL_BUILD_COMMAND in hint
