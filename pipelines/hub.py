"""Sharing pipelines: remote-code files for plain diffusers, model cards, and ``push_to_hub``.

diffusers 0.42 loads a component whose class is outside diffusers / transformers only from a ``.py`` file
that ships with the folder or repository, and only with ``trust_remote_code=True``; its ``download`` also
refuses such components of a repository unless the file is there. :func:`write_remote_code_files` therefore
writes, beside model_index.json and inside each component folder, a file of a few lines that imports the class
from the installed ``ultrasound_diffusers`` package (and explains how to install it when it is missing), and
points model_index.json at those files. ``ultrasound_diffusers.DiffusionPipeline.from_pretrained`` only reads
these files to learn which class they name; it never runs them.

:func:`create_model_card` renders the model card template (``templates/model_card_template.md``, the same
file as ``model_cards/model_card_template.md`` of the repository) and :func:`push_to_hub` uploads a freshly
saved folder together with that card.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ultrasound_diffusers.utils.io import atomic_write_text

from .pipeline_utils import MODEL_INDEX_NAME, PACKAGE_NAME, read_model_index, resolve_class

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
MODEL_CARD_TEMPLATE = TEMPLATES_DIR / "model_card_template.md"
REMOTE_CODE_TEMPLATE = TEMPLATES_DIR / "remote_code_shim.py.tmpl"
INSTALL_COMMAND = "pip install ultrasound-diffusers"
BASE_TAGS = ("ultrasound", "medical-imaging", "diffusers", "diffusion", "ultrasound-diffusers")
# The research-use disclaimer every card carries (the template words it; tests look for this phrase).
NOT_FOR_DIAGNOSIS = "Not for diagnosis"

__all__ = [
    "create_model_card",
    "push_to_hub",
    "remote_code_module_name",
    "save_model_card",
    "write_remote_code_files",
]


def _package_version() -> str:
    try:
        from ultrasound_diffusers import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


# ----------------------------------------------------------------------------------------------------------------
# Remote-code files
# ----------------------------------------------------------------------------------------------------------------


def remote_code_module_name(module: str) -> str:
    """File name (without ``.py``) of the remote-code file for a class defined in ``module``: its last part,
    e.g. ``ultrasound_diffusers.models.unet_semantic_2d`` -> ``unet_semantic_2d``."""
    name = module.rsplit(".", 1)[-1]
    if not name.isidentifier():
        raise ValueError(f"`module` must be a dotted Python module path, got {module!r}")
    return name


def render_remote_code(module: str, class_name: str) -> str:
    """Text of the remote-code file that imports ``class_name`` from ``module`` of ultrasound_diffusers."""
    if not (module == PACKAGE_NAME or module.startswith(PACKAGE_NAME + ".")) or not class_name.isidentifier():
        raise ValueError(f"remote-code files only import {PACKAGE_NAME} classes, got {module}.{class_name}")
    template = string.Template(REMOTE_CODE_TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(module=module, class_name=class_name, version=_package_version())


def _is_ours(library: Any) -> bool:
    return isinstance(library, str) and (library == PACKAGE_NAME or library.startswith(PACKAGE_NAME + "."))


def write_remote_code_files(folder: Union[str, os.PathLike]) -> List[Path]:
    """Make a saved pipeline folder loadable by ``diffusers.DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)``.

    For the pipeline class and every component whose class lives in ultrasound_diffusers, writes
    ``<module>.py`` (beside model_index.json, or inside the component's folder) that imports the class from the
    installed package, and rewrites the model_index.json entry from ``[full.module.path, Class]`` to
    ``[<module>, Class]`` (the pipeline's ``_class_name`` becomes such a pair). Components from diffusers are
    left alone. Idempotent. Returns the files written.
    """
    folder = Path(folder)
    index = read_model_index(folder)
    written: List[Path] = []

    def write(path: Path, module: str, class_name: str) -> None:
        atomic_write_text(path, render_remote_code(module, class_name))
        written.append(path)

    class_entry = index["_class_name"]
    class_name = class_entry if isinstance(class_entry, str) else class_entry[1]
    pipeline_cls = resolve_class(class_entry, folder)
    if _is_ours(pipeline_cls.__module__):
        shim = remote_code_module_name(pipeline_cls.__module__)
        write(folder / f"{shim}.py", pipeline_cls.__module__, class_name)
        index["_class_name"] = [shim, class_name]

    for name, entry in list(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str):
            continue
        library, component_class = entry
        if _is_ours(library):
            module = library
        elif (folder / name / f"{library}.py").is_file():
            module = resolve_class(entry, folder, component=name).__module__
            if not _is_ours(module):
                continue
        else:
            continue
        if not (folder / name).is_dir():
            raise ValueError(f"{folder / MODEL_INDEX_NAME} lists component {name!r} but {folder / name} does not exist")
        shim = remote_code_module_name(module)
        write(folder / name / f"{shim}.py", module, component_class)
        index[name] = [shim, component_class]

    index["_ultrasound_diffusers_version"] = _package_version()
    atomic_write_text(folder / MODEL_INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written


# ----------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------

_SCHEDULER_KEYS = (
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "variance_type",
    "prediction_type",
    "timestep_spacing",
    "clip_sample",
    "sampler",
)
_BMAP_KEYS = (
    "bmap_schedule",
    "bmap_min",
    "bmap_buffer",
    "preserve_length",
    "probe_geometry",
    "fan_apex",
    "fan_radii",
    "fan_half_angle_deg",
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _size_text(sample_size: Any) -> str:
    if isinstance(sample_size, (list, tuple)) and len(sample_size) == 2:
        return f"{sample_size[0]} x {sample_size[1]} (height x width)"
    return f"{sample_size} x {sample_size}" if sample_size is not None else "any"


def _label_rows(label_names: Union[Mapping[Any, str], Sequence[str], None]) -> List[Tuple[str, str]]:
    if not label_names:
        return []
    if isinstance(label_names, Mapping):
        items = sorted(label_names.items(), key=lambda kv: int(kv[0]))
    else:
        items = list(enumerate(label_names))
    return [(str(k), str(v)) for k, v in items]


def _evaluation_rows(results: Union[Mapping[str, Any], Iterable[Tuple[str, Any]], None]) -> List[Tuple[str, str]]:
    if not results:
        return []
    items = results.items() if isinstance(results, Mapping) else results
    return [(str(k), _fmt(v)) for k, v in items]


def create_model_card(
    pipeline,
    repo_id: str,
    *,
    model_name: Optional[str] = None,
    description: Optional[str] = None,
    license: Optional[str] = None,
    datasets: Optional[Sequence[str]] = None,
    training_data: Optional[str] = None,
    training_details: Optional[str] = None,
    evaluation_results: Union[Mapping[str, Any], Iterable[Tuple[str, Any]], None] = None,
    evaluation_dataset: Optional[str] = None,
    evaluation_notes: Optional[str] = None,
    label_names: Union[Mapping[Any, str], Sequence[str], None] = None,
    limitations: Optional[Sequence[str]] = None,
    tags: Optional[Sequence[str]] = None,
    base_model: Optional[str] = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.5,
    template_path: Union[str, os.PathLike, None] = None,
):
    """Render the model card of ``pipeline`` for the Hub repository ``repo_id``.

    The YAML metadata holds ``library_name: diffusers``, the tags (ultrasound, medical-imaging, diffusers, ...,
    plus ``tags``), the license (``"other"`` when not given), ``datasets``, the pipeline tag and, when
    ``evaluation_dataset`` is given, the numeric ``evaluation_results`` as model-index entries. The text covers
    how to load the pipeline, the network, the noise schedule and B-map settings (read from the scheduler's
    config), the training data, evaluation results, intended use and limitations (research only, not for
    diagnosis) and citations.

    Args:
        label_names: meaning of each label (list, or {label: name}); defaults to the pipeline's
            ``label_names`` config when it has one.
        evaluation_results: ``{"FID": 41.2, "SSIM": 0.61}`` (any metric names and values).
        template_path: another Jinja template (default: ``templates/model_card_template.md``).

    Returns:
        a :class:`huggingface_hub.ModelCard`.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    unet = getattr(pipeline, "unet", None)
    scheduler = getattr(pipeline, "scheduler", None)
    unet_config = dict(getattr(unet, "config", {}) or {})
    scheduler_config = dict(getattr(scheduler, "config", {}) or {})
    pipeline_class = type(pipeline).__name__
    num_classes = int(unet_config.get("num_classes", 0) or 0)
    is_semantic = int(getattr(getattr(getattr(pipeline, "unet", None), "config", None), "num_classes", 0) or 0) > 0
    bmap = "bmap_schedule" in scheduler_config
    pipeline_tag = "image-to-image" if is_semantic else "unconditional-image-generation"

    if label_names is None:
        label_names = getattr(getattr(pipeline, "config", None), "label_names", None)

    all_tags = list(BASE_TAGS)
    all_tags.append("semantic-image-synthesis" if is_semantic else "unconditional-image-generation")
    if bmap:
        all_tags.append("b-map")
    for tag in tags or []:
        if tag not in all_tags:
            all_tags.append(tag)

    eval_results = None
    if evaluation_dataset and evaluation_results:
        eval_results = [
            EvalResult(
                task_type=pipeline_tag,
                dataset_type=evaluation_dataset,
                dataset_name=evaluation_dataset,
                metric_type=str(name).lower(),
                metric_name=str(name),
                metric_value=float(value),
            )
            for name, value in (evaluation_results.items() if isinstance(evaluation_results, Mapping) else evaluation_results)
            if isinstance(value, (int, float))
        ] or None
    model_name = model_name or repo_id.split("/")[-1]
    card_data = ModelCardData(
        library_name="diffusers",
        license=license or "other",
        tags=all_tags,
        datasets=list(datasets) if datasets else None,
        pipeline_tag=pipeline_tag,
        base_model=base_model,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
    )

    model_rows: List[Tuple[str, str]] = []
    if unet is not None:
        model_rows.append(("Network", f"`{type(unet).__name__}`"))
        n_params = sum(p.numel() for p in unet.parameters()) if hasattr(unet, "parameters") else None
        if n_params is not None:
            model_rows.append(("Parameters", f"{n_params / 1e6:.2f} M"))
        model_rows.append(("Image size", _size_text(unet_config.get("sample_size"))))
        model_rows.append(("Image channels", _fmt(unet_config.get("in_channels", "?"))))
        if is_semantic:
            model_rows.append(("Label classes", str(num_classes)))
        for key in ("learn_sigma", "model_channels", "channel_mult", "num_res_blocks", "attention_resolutions"):
            if key in unet_config:
                model_rows.append((key, _fmt(unet_config[key])))

    geometry = scheduler_config.get("probe_geometry")
    if geometry == "linear":
        geometry_text = "linear probe: d is the row index over the image height"
    else:
        geometry_text = (
            f"convex probe: d is the distance from the fan apex {_fmt(scheduler_config.get('fan_apex'))}, between the "
            f"radii {_fmt(scheduler_config.get('fan_radii'))} (in image widths), within "
            f"{_fmt(scheduler_config.get('fan_half_angle_deg'))} degrees of the vertical; pixels outside the fan are "
            "not attenuated"
        )

    license_text = (
        f"`{license}`." if license else "Not specified by the uploader (`other`); ask the authors before reuse."
    ) + " The terms of the training data also apply to the model and to images generated with it."
    template = Path(template_path) if template_path is not None else MODEL_CARD_TEMPLATE
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        repo_id=repo_id,
        description=description
        or "A physics-inspired diffusion model for ultrasound images, shared with ultrasound-diffusers.",
        pipeline_class=pipeline_class,
        is_semantic=is_semantic,
        sample_size_text=_size_text(unet_config.get("sample_size")),
        install_command=INSTALL_COMMAND,
        num_inference_steps=int(num_inference_steps),
        guidance_scale=_fmt(float(guidance_scale)),
        scheduler_class=type(scheduler).__name__ if scheduler is not None else "none",
        scheduler_rows=[(k, _fmt(scheduler_config[k])) for k in _SCHEDULER_KEYS if k in scheduler_config],
        bmap=bmap,
        bmap_rows=[(k, _fmt(scheduler_config[k])) for k in _BMAP_KEYS if k in scheduler_config],
        bmap_geometry_text=geometry_text,
        model_rows=model_rows,
        label_rows=_label_rows(label_names),
        training_data=training_data or "Not documented by the uploader.",
        training_details=training_details,
        datasets=list(datasets or []),
        evaluation_rows=_evaluation_rows(evaluation_results),
        evaluation_notes=evaluation_notes,
        limitations=list(limitations or []),
        license_text=license_text,
        package_version=_package_version(),
    )


def save_model_card(pipeline, folder: Union[str, os.PathLike], repo_id: str, **card_kwargs) -> Path:
    """Render :func:`create_model_card` and write it atomically to ``folder/README.md``."""
    card = create_model_card(pipeline, repo_id, **card_kwargs)
    return atomic_write_text(Path(folder) / "README.md", str(card))


# ----------------------------------------------------------------------------------------------------------------
# Upload
# ----------------------------------------------------------------------------------------------------------------


def push_to_hub(
    pipeline,
    repo_id: str,
    *,
    commit_message: Optional[str] = None,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    create_pr: bool = False,
    revision: Optional[str] = None,
    safe_serialization: bool = True,
    variant: Optional[str] = None,
    model_card=None,
    api=None,
    **card_kwargs,
):
    """Save ``pipeline`` (with its remote-code files) into a temporary folder, add the model card and upload
    the folder to the Hub model repository ``repo_id`` (created if needed).

    Args:
        model_card: a :class:`huggingface_hub.ModelCard` or markdown text to upload instead of rendering one.
        api: a :class:`huggingface_hub.HfApi` to use (default: ``HfApi(token=token)``).
        card_kwargs: passed to :func:`create_model_card` (license, datasets, training_data,
            evaluation_results, label_names, ...).

    Returns:
        the :class:`huggingface_hub.CommitInfo` of the upload (a ``str`` holding the commit URL).
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"`repo_id` must be 'name' or 'org/name', got {repo_id!r}")
    api = api if api is not None else HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    with tempfile.TemporaryDirectory(prefix="ultrasound-diffusers-push-") as tmp:
        folder = Path(tmp) / "pipeline"
        pipeline.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
        card = model_card if model_card is not None else create_model_card(pipeline, repo_id, **card_kwargs)
        atomic_write_text(folder / "README.md", str(card))
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message or f"Upload {type(pipeline).__name__} with ultrasound-diffusers",
            create_pr=create_pr,
            revision=revision,
        )
