"""Sharing on the Hub: model cards, dataset cards and uploads (diffusers keeps its own in ``diffusers.utils.hub_utils``).

* :func:`create_model_card` renders the one model card template, ``templates/model_card_template.md`` (package
  data of ``ultrasound_diffusers``; ``model_cards/`` of the repository refers to it), and
  :func:`save_model_card` writes it. :func:`push_to_hub` uploads a freshly saved pipeline folder with that card
  (and any extra files, such as the training script's validation grid).
* :func:`training_card_fields` gives the card fields of a model made by ``training/train_semantic.py`` (license,
  datasets, base model) from where its data and starting weights came from.
* :func:`create_dataset_card` writes the card of a dataset made by ``ultrasound-diffusers generate`` (which
  model made it, with which settings, under which license), :func:`push_dataset_to_hub` uploads such a dataset.
* :func:`read_card_metadata` and :func:`model_card_metadata` read the YAML metadata of a card back (the license
  of a source model or dataset), from a folder or from the Hub cache, never from the network.

This module sits below the pipelines: it imports nothing from ``ultrasound_diffusers.pipelines`` (a pipeline is
only handed in, and used through its components, configs and ``save_pretrained``), so that the pipelines and
their ``push_to_hub`` can use it. The remote-code files that ``save_pretrained`` writes for
``trust_remote_code=True`` users of plain diffusers are the loader's (``ultrasound_diffusers.pipelines.loading``).

ultrasound-diffusers is not on PyPI. The cards say how it is installed (its source folder, or the wheel built
there: :data:`~ultrasound_diffusers.utils.packaging.INSTALL_COMMAND`,
:func:`~ultrasound_diffusers.utils.packaging.wheel_install_command`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .utils.constants import CARD_NAME, MODEL_INDEX_NAME
from .utils.io import atomic_write_text
from .utils.packaging import INSTALL_COMMAND, WHEEL_BUILD_COMMAND, package_version, wheel_install_command

#: The templates of this module (package data of ``ultrasound_diffusers``, shipped in the wheel).
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
#: The one model card template (``model_cards/README.md`` of the repository points here).
MODEL_CARD_TEMPLATE = TEMPLATES_DIR / "model_card_template.md"
BASE_TAGS = ("ultrasound", "medical-imaging", "diffusers", "diffusion", "ultrasound-diffusers")
#: Tag of models trained with a diffusers-style training script (the Hub groups them by it).
TRAINING_TAG = "diffusers-training"
# The research-use disclaimer every card carries (the template words it; tests look for this phrase).
NOT_FOR_DIAGNOSIS = "Not for diagnosis"
#: ``license_name`` of cards whose license nobody stated (``license: other``).
UNKNOWN_LICENSE_NAME = "unknown"

#: Which sampler to use, the one place the cards take it from (:func:`sampler_advice_key` picks the entry; markdown).
#: B-map models: the ancestral default, or SDE-DPM-Solver++ for fewer steps; diffusers' DDIM step leaves a grey
#: haze outside the fan, the ddim-clipped sampler removes most of it (the package README's sampler tables); a
#: model whose config selects ddim-clipped keeps it; a distilled student keeps its own steps.
SAMPLER_ADVICE = {
    True: (
        "Sampling: keep the default ancestral sampler (`eta=None`, {steps} steps), or for fewer steps use\n"
        "SDE-DPM-Solver++ for per-pixel signal levels (20-50 steps). diffusers' DDIM step (`eta=0`) keeps the\n"
        "model's own noise beside the clipped clean image and leaves a grey haze outside the fan; for a\n"
        "deterministic sampler use `ddim-clipped` instead (`BMapAttenuationScheduler` with `sampler=\"ddim\"`,\n"
        "`use_clipped_model_output=True`: the noise recomputed from the clipped image), which removes most of it\n"
        "(all of it on v-prediction models). diffusers' own schedulers know no B-maps: swapped in, they sample\n"
        "another forward process than the one the model was trained with.\n\n"
        "```python\n"
        "from ultrasound_diffusers import BMapDPMSolverMultistepScheduler\n\n"
        "pipe.scheduler = BMapDPMSolverMultistepScheduler.from_config(pipe.scheduler.config, "
        "algorithm_type=\"sde-dpmsolver++\")\n"
        "```"
    ),
    "ddim-clipped": (
        "Sampling: the scheduler config selects the deterministic `ddim-clipped` sampler ({steps} steps): per-pixel\n"
        "DDIM with eta 0 and the noise recomputed from the clipped clean image, which on v-prediction B-map models\n"
        "matches or beats ancestral sampling and leaves no haze outside the fan. For the ancestral B-map sampler set\n"
        "`sampler=\"ddpm\"`. diffusers' own schedulers know no B-maps: swapped in, they sample another forward\n"
        "process than the one the model was trained with.\n\n"
        "```python\n"
        "from ultrasound_diffusers import BMapAttenuationScheduler\n\n"
        "pipe.scheduler = BMapAttenuationScheduler.from_config(pipe.scheduler.config, sampler=\"ddpm\")  # ancestral\n"
        "```"
    ),
    "student": (
        "Sampling: a distilled few-step model. Keep its scheduler (per-pixel DDIM, trailing time steps, no\n"
        "clipping) at the {steps} steps it learned, with `guidance_scale=1`: classifier-free guidance is distilled\n"
        "in, so each step is one network call. Fewer steps than it learned, or another sampler, take it off the path\n"
        "it was trained to jump along."
    ),
    False: (
        "Sampling: the scheduler swaps as usual; for fewer steps use diffusers' SDE-DPM-Solver++ (20-50 steps):\n\n"
        "```python\n"
        "from diffusers import DPMSolverMultistepScheduler\n\n"
        "pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, "
        "algorithm_type=\"sde-dpmsolver++\")\n"
        "```"
    ),
}


def sampler_advice_key(config, bmap: bool):
    """The key of :data:`SAMPLER_ADVICE` for a scheduler ``config``: ``"student"`` (a distilled few-step model:
    DDIM on trailing steps without clipping, as ``training/train_progressive_distillation.py`` saves it),
    ``"ddim-clipped"`` (a B-map model whose config selects that sampler), else ``bmap`` (True: a B-map model on the
    ancestral default; False: a plain diffusers scheduler)."""
    config = dict(config or {})
    if bmap and config.get("sampler") == "ddim":
        if config.get("timestep_spacing") == "trailing" and not config.get("clip_sample", True):
            return "student"
        if config.get("use_clipped_model_output"):
            return "ddim-clipped"
    return bmap


#: The form of a Hub license id (``apache-2.0``, ``cc-by-nc-sa-4.0``, ``openrail++``): lowercase letters and
#: digits in groups joined by ``.`` or ``-``, optionally ending in ``+`` signs.
_LICENSE_ID = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*\+*$")

__all__ = [
    "BASE_TAGS",
    "MODEL_CARD_TEMPLATE",
    "NOT_FOR_DIAGNOSIS",
    "PHANTOM_MODEL_LICENSE",
    "SAMPLER_ADVICE",
    "sampler_advice_key",
    "TRAINING_TAG",
    "create_dataset_card",
    "ModelCardFields",
    "create_model_card",
    "license_metadata",
    "model_card_metadata",
    "push_dataset_to_hub",
    "push_to_hub",
    "read_card_metadata",
    "save_model_card",
    "training_card_fields",
]


# ----------------------------------------------------------------------------------------------------------------
# Card metadata: licenses, reading cards back
# ----------------------------------------------------------------------------------------------------------------


def license_metadata(
    license: Optional[str], license_name: Optional[str] = None, license_link: Optional[str] = None,
    default_link: str = f"{CARD_NAME}#license",
) -> Dict[str, str]:
    """The license fields of a card's YAML metadata.

    ``license`` is a Hub license id (``"apache-2.0"``, ``"cc-by-nc-sa-4.0"``, ...) or ``"other"``; None means
    nobody stated one and gives ``other``. With ``other`` the Hub wants ``license_name`` (a lowercase id, here
    ``"unknown"`` when not given) and ``license_link`` (a URL or a file of the repository; default: the card's
    License section). Returns ``{"license": ...}`` plus, for ``other``, ``license_name`` and ``license_link``.
    """
    if license is not None and (not isinstance(license, str) or not _LICENSE_ID.match(license)):
        raise ValueError(f"`license` must be a Hub license id such as 'apache-2.0' or 'cc-by-nc-sa-4.0' (lowercase "
                         f"letters and digits joined by '-' or '.'), or 'other' with `license_name` and "
                         f"`license_link` for any other license; got {license!r}")
    if license and license != "other":
        return {"license": license}
    name = license_name or UNKNOWN_LICENSE_NAME
    if not isinstance(name, str) or not _LICENSE_ID.match(name):
        raise ValueError(f"`license_name` must be a lowercase id such as 'my-license-1.0', got {license_name!r}")
    return {"license": "other", "license_name": name, "license_link": license_link or default_link}


def read_card_metadata(card: Union[str, os.PathLike, None]) -> Dict[str, Any]:
    """The YAML metadata (front matter between ``---`` lines) of a card, given as its text or as the path of the
    file; ``{}`` when there is no card, no front matter or it is not valid YAML."""
    import yaml

    if card is None:
        return {}
    if isinstance(card, os.PathLike) or (isinstance(card, str) and "\n" not in card and not card.startswith("---")):
        path = Path(card)
        try:
            text = path.read_text(encoding="utf-8") if path.is_file() else ""
        except (OSError, UnicodeDecodeError):
            text = ""
    else:
        text = str(card)
    if not text.startswith("---"):
        return {}
    parts = text.split("\n---", 1)
    if len(parts) != 2:
        return {}
    try:
        meta = yaml.safe_load(parts[0][3:])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _looks_like_hub_id(value: str) -> bool:
    from .data.sources.spelling import looks_like_hub_id

    return looks_like_hub_id(value) and not os.path.exists(value)


def model_card_metadata(source: Optional[str], repo_type: str = "model") -> Dict[str, Any]:
    """The card metadata of a model (or, with ``repo_type="dataset"``, a dataset) named by a local folder or a
    Hub repo id: the folder's ``README.md``, or the ``README.md`` of the repository in the Hub cache. Never
    downloads: ``{}`` when the card is not on this machine."""
    if not source:
        return {}
    source = str(source)
    if os.path.isdir(source):
        return read_card_metadata(Path(source) / CARD_NAME)
    if not _looks_like_hub_id(source):
        return {}
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, CARD_NAME, repo_type=repo_type)
    except Exception:  # noqa: BLE001 - a malformed id or cache: no metadata
        return {}
    return read_card_metadata(Path(cached)) if isinstance(cached, str) else {}


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


def _label_rows(label_names: Union[Mapping[Any, str], Sequence[str], None], num_classes: int) -> List[Tuple[str, str]]:
    """``(label, meaning)`` rows of the card; ``label_names`` must name labels of the model's ``num_classes``."""
    if label_names is None or (not isinstance(label_names, str) and len(label_names) == 0):
        return []
    if isinstance(label_names, str) or not isinstance(label_names, (Mapping, Sequence)):
        raise ValueError(f"`label_names` must be a list of names or a {{label: name}} mapping, got {label_names!r}")
    if num_classes < 1:
        raise ValueError(f"`label_names` given ({len(label_names)} names) for a model without label classes "
                         "(unet.config.num_classes is 0: an unconditional model takes no label map)")
    if isinstance(label_names, Mapping):
        try:
            items = sorted(((int(k), v) for k, v in label_names.items()), key=lambda kv: kv[0])
        except (TypeError, ValueError):
            raise ValueError(f"`label_names` keys must be integer labels, got {list(label_names)}") from None
        outside = [k for k, _ in items if not 0 <= k < num_classes]
        if outside:
            raise ValueError(f"`label_names` names labels {outside} outside the model's {num_classes} classes "
                             f"(0..{num_classes - 1}, unet.config.num_classes)")
    else:
        if len(label_names) > num_classes:
            raise ValueError(f"`label_names` has {len(label_names)} names for a model with {num_classes} classes "
                             "(unet.config.num_classes): give one name per label, at most that many")
        items = list(enumerate(label_names))
    return [(str(k), str(v)) for k, v in items]


def _evaluation_rows(results: Union[Mapping[str, Any], Iterable[Tuple[str, Any]], None]) -> List[Tuple[str, str]]:
    if not results:
        return []
    items = results.items() if isinstance(results, Mapping) else results
    return [(str(k), _fmt(v)) for k, v in items]


def _license_text(meta: Mapping[str, str], notes: Optional[str]) -> str:
    if meta["license"] != "other":
        text = f"`{meta['license']}`."
    elif meta["license_name"] == UNKNOWN_LICENSE_NAME:
        text = "Not specified by the uploader (`other`); ask the authors before reuse."
    else:
        text = f"`{meta['license_name']}` (`other`): see {meta['license_link']}."
    text += " The terms of the training data also apply to the model and to images generated with it."
    return text + (f"\n\n{notes}" if notes else "")


@dataclass(frozen=True)
class ModelCardFields:
    """What the uploader says about a model, for :func:`create_model_card` (every field optional; see there).

    Raises:
        ValueError: ``base_model`` is not a Hub repo id, or ``sample_image`` is not a path relative to the card.
    """

    model_name: Optional[str] = None
    description: Optional[str] = None
    license: Optional[str] = None
    license_name: Optional[str] = None
    license_link: Optional[str] = None
    license_notes: Optional[str] = None
    datasets: Optional[Sequence[str]] = None
    training_data: Optional[str] = None
    training_details: Optional[str] = None
    evaluation_results: Union[Mapping[str, Any], Iterable[Tuple[str, Any]], None] = None
    evaluation_dataset: Optional[str] = None
    evaluation_notes: Optional[str] = None
    label_names: Union[Mapping[Any, str], Sequence[str], None] = None
    limitations: Optional[Sequence[str]] = None
    tags: Optional[Sequence[str]] = None
    base_model: Optional[str] = None
    sample_image: Optional[str] = None
    sample_caption: Optional[str] = None
    num_inference_steps: int = 50
    guidance_scale: float = 1.5

    def __post_init__(self) -> None:
        if self.base_model is not None and (not isinstance(self.base_model, str) or not _looks_like_hub_id(self.base_model)):
            raise ValueError(
                f"`base_model` must be the Hub repo id the model was fine-tuned from ('org/name'), got {self.base_model!r}; "
                "describe a local starting point in `training_details` instead"
            )
        if self.sample_image is not None and (os.path.isabs(self.sample_image) or ".." in Path(self.sample_image).parts):
            raise ValueError(f"`sample_image` must be a path relative to the card (e.g. 'samples.png'), got {self.sample_image!r}")

    @classmethod
    def build(cls, fields: Optional["ModelCardFields"], values: Mapping[str, Any], caller: str) -> "ModelCardFields":
        """``fields`` (default: all unset) with ``values`` replacing its entries; an unknown name is a TypeError."""
        if fields is None:
            fields = cls()
        elif not isinstance(fields, cls):
            raise TypeError(f"{caller}(): `fields` must be a ModelCardFields, got {type(fields).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TypeError(f"{caller}() got unexpected keyword arguments {unknown}; the card's fields are {names}")
        return dataclasses.replace(fields, **values) if values else fields


def create_model_card(pipeline, repo_id: str, fields: Optional[ModelCardFields] = None, *,
                      template_path: Union[str, os.PathLike, None] = None, **values: Any):
    """Render the model card of ``pipeline`` for the Hub repository ``repo_id``.

    The YAML metadata holds ``library_name: diffusers``, the tags (ultrasound, medical-imaging, diffusers, ...,
    plus ``tags``), the license (:func:`license_metadata`: ``other`` with ``license_name`` / ``license_link`` when
    not given), ``datasets``, ``base_model``, the pipeline tag and, when ``evaluation_dataset`` is given, the
    numeric ``evaluation_results`` as model-index entries. The text covers how to install the package and load
    the pipeline, the network, the noise schedule and B-map settings (read from the scheduler's config), the
    training data, sample images, evaluation results, intended use and limitations (research only, not for
    diagnosis), the license and citations.

    Args:
        pipeline: the pipeline the card describes (its network and scheduler configs fill the tables).
        repo_id: the Hub repository, ``"org/name"``.
        fields: what the uploader says about the model (:class:`ModelCardFields`); its fields may also be given
            as keywords (``license="apache-2.0"``), which replace those of ``fields``.
        template_path: another Jinja template (default: ``templates/model_card_template.md``).

    Fields (:class:`ModelCardFields`):
        license, license_name, license_link: see :func:`license_metadata`; ``license_notes`` adds a paragraph to
            the License section (for example the terms of the base model and of the data).
        datasets: Hub dataset ids the model was trained on (local or generated data belong in ``training_data``).
        base_model: the Hub repo id the model was fine-tuned from (a local starting point cannot be named in the
            metadata: describe it in ``training_details``).
        label_names: meaning of each label (list, or {label: name}); defaults to the pipeline's
            ``label_names`` config when it has one.
        evaluation_results: ``{"FID": 41.2, "SSIM": 0.61}`` (any metric names and values).
        sample_image: path, relative to the card, of a picture of samples (shown in a Samples section);
            ``sample_caption`` says what it shows.

    Returns:
        a :class:`huggingface_hub.ModelCard`.
    """
    from huggingface_hub import ModelCard

    # 1. what the uploader says, checked; what the pipeline is, read from its configs
    f = ModelCardFields.build(fields, values, "create_model_card")
    facts = _pipeline_facts(pipeline)
    label_names = f.label_names if f.label_names is not None else getattr(getattr(pipeline, "config", None), "label_names", None)
    # 2. the YAML metadata
    model_name = f.model_name or repo_id.split("/")[-1]
    licence = license_metadata(f.license, f.license_name, f.license_link)
    card_data = _card_data(f, facts, model_name, licence)
    # 3. the text
    version = package_version()
    config = facts["scheduler_config"]
    template = Path(template_path) if template_path is not None else MODEL_CARD_TEMPLATE
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        repo_id=repo_id,
        description=f.description
        or "A physics-inspired diffusion model for ultrasound images, shared with ultrasound-diffusers.",
        pipeline_class=type(pipeline).__name__,
        is_semantic=facts["is_semantic"],
        sample_size_text=_size_text(facts["unet_config"].get("sample_size")),
        install_command=INSTALL_COMMAND,
        wheel_install_command=wheel_install_command(version),
        wheel_build_command=WHEEL_BUILD_COMMAND,
        sampler_advice=SAMPLER_ADVICE[sampler_advice_key(config, facts["bmap"])].replace(
            "{steps}", str(int(f.num_inference_steps))),
        num_inference_steps=int(f.num_inference_steps),
        guidance_scale=_fmt(float(f.guidance_scale)),
        scheduler_class=type(facts["scheduler"]).__name__ if facts["scheduler"] is not None else "none",
        scheduler_rows=[(k, _fmt(config[k])) for k in _SCHEDULER_KEYS if k in config],
        bmap=facts["bmap"],
        bmap_rows=[(k, _fmt(config[k])) for k in _BMAP_KEYS if k in config],
        bmap_geometry_text=_geometry_text(config),
        model_rows=_model_rows(facts, f.base_model),
        label_rows=_label_rows(label_names, facts["num_classes"]),
        training_data=f.training_data or "Not documented by the uploader.",
        training_details=f.training_details,
        datasets=list(f.datasets or []),
        sample_image=f.sample_image,
        sample_caption=f.sample_caption or "Samples of the model.",
        evaluation_rows=_evaluation_rows(f.evaluation_results),
        evaluation_notes=f.evaluation_notes,
        limitations=list(f.limitations or []),
        license_text=_license_text(licence, f.license_notes),
        package_version=version,
    )


def _pipeline_facts(pipeline) -> Dict[str, Any]:
    """What a card says of a pipeline, from its network's and scheduler's configs: ``unet``, ``scheduler``,
    their configs, ``num_classes``, ``is_semantic``, ``bmap`` (B-maps attenuate only with bmap_min < 1: a B-map
    scheduler at bmap_min = 1 is plain DDPM, and its card says so) and the Hub ``pipeline_tag``."""
    unet = getattr(pipeline, "unet", None)
    scheduler = getattr(pipeline, "scheduler", None)
    unet_config = dict(getattr(unet, "config", {}) or {})
    scheduler_config = dict(getattr(scheduler, "config", {}) or {})
    num_classes = int(unet_config.get("num_classes", 0) or 0)
    return {
        "unet": unet, "scheduler": scheduler, "unet_config": unet_config, "scheduler_config": scheduler_config,
        "num_classes": num_classes, "is_semantic": num_classes > 0,
        "bmap": bool("bmap_schedule" in scheduler_config and float(scheduler_config.get("bmap_min", 1.0)) < 1.0),
        "pipeline_tag": "image-to-image" if num_classes > 0 else "unconditional-image-generation",
    }


def _card_data(f: ModelCardFields, facts: Mapping[str, Any], model_name: str, licence: Mapping[str, Any]):
    """The card's YAML metadata (``huggingface_hub.ModelCardData``): tags, license, datasets, base model and, when
    ``evaluation_dataset`` is given, the numeric evaluation results as model-index entries."""
    from huggingface_hub import EvalResult, ModelCardData

    all_tags = list(BASE_TAGS)
    all_tags.append("semantic-image-synthesis" if facts["is_semantic"] else "unconditional-image-generation")
    if facts["bmap"]:
        all_tags.append("b-map")
    for tag in f.tags or []:
        if tag not in all_tags:
            all_tags.append(tag)
    eval_results = None
    if f.evaluation_dataset and f.evaluation_results:
        results = f.evaluation_results.items() if isinstance(f.evaluation_results, Mapping) else f.evaluation_results
        eval_results = [
            EvalResult(task_type=facts["pipeline_tag"], dataset_type=f.evaluation_dataset,
                       dataset_name=f.evaluation_dataset, metric_type=str(name).lower(), metric_name=str(name),
                       metric_value=float(value))
            for name, value in results if isinstance(value, (int, float))
        ] or None
    return ModelCardData(
        library_name="diffusers",
        tags=all_tags,
        datasets=list(f.datasets) if f.datasets else None,
        pipeline_tag=facts["pipeline_tag"],
        base_model=f.base_model,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
        **licence,
    )


def _model_rows(facts: Mapping[str, Any], base_model: Optional[str]) -> List[Tuple[str, str]]:
    """The Model table: network class, parameters, image size and channels, label classes, architecture keys."""
    unet, unet_config = facts["unet"], facts["unet_config"]
    rows: List[Tuple[str, str]] = []
    if unet is not None:
        rows.append(("Network", f"`{type(unet).__name__}`"))
        n_params = sum(p.numel() for p in unet.parameters()) if hasattr(unet, "parameters") else None
        if n_params is not None:
            rows.append(("Parameters", f"{n_params / 1e6:.2f} M"))
        rows.append(("Image size", _size_text(unet_config.get("sample_size"))))
        rows.append(("Image channels", _fmt(unet_config.get("in_channels", "?"))))
        if facts["is_semantic"]:
            rows.append(("Label classes", str(facts["num_classes"])))
        for key in ("learn_sigma", "model_channels", "channel_mult", "num_res_blocks", "attention_resolutions"):
            if key in unet_config:
                rows.append((key, _fmt(unet_config[key])))
    if base_model:
        rows.append(("Fine-tuned from", f"[`{base_model}`](https://huggingface.co/{base_model})"))
    return rows


def _geometry_text(scheduler_config: Mapping[str, Any]) -> str:
    """How the card explains the depth d of the B-maps for the scheduler's probe geometry."""
    if scheduler_config.get("probe_geometry") == "linear":
        return "linear probe: d is the row index over the image height"
    return (
        f"convex probe: d is the distance from the fan apex {_fmt(scheduler_config.get('fan_apex'))}, between the "
        f"radii {_fmt(scheduler_config.get('fan_radii'))} (in image widths), within "
        f"{_fmt(scheduler_config.get('fan_half_angle_deg'))} degrees of the vertical; pixels outside the fan are "
        "not attenuated"
    )


#: License of models trained only on the package's own phantoms (which carry no other terms): the package's.
PHANTOM_MODEL_LICENSE = "apache-2.0"


def _license_words(meta: Mapping[str, Any]) -> str:
    lic = meta.get("license")
    if not lic:
        return "not found (its card is not on this machine, or states none)"
    if lic == "other":
        return f"`other` ({meta.get('license_name') or 'unnamed'}, {meta.get('license_link') or 'no link'})"
    return f"`{lic}`"


def training_card_fields(
    *,
    dataset_name: Optional[str] = None,
    train_data_dir: Optional[str] = None,
    pretrained_model: Optional[str] = None,
    license: Optional[str] = None,
    license_name: Optional[str] = None,
    license_link: Optional[str] = None,
) -> Dict[str, Any]:
    """Card fields of a model trained by ``training/train_semantic.py``, from where its data and starting weights
    came from: keyword arguments for :func:`create_model_card`.

    * ``datasets``: ``[dataset_name]`` when it is a Hub dataset id; none for phantoms (``phantoms:<anatomy>``, the
      default), an imagefolder (``train_data_dir``) or a local dataset folder.
    * ``base_model``: ``pretrained_model`` when it is a Hub repo id (a local folder is named in
      ``license_notes`` only: the metadata takes Hub ids).
    * ``license``: the one given; else the license that the training data's and the base model's cards state (read
      from the dataset / model folder or the Hub cache, never downloaded) when they agree; ``apache-2.0``
      (:data:`PHANTOM_MODEL_LICENSE`) for a model trained from scratch on phantoms; otherwise ``other`` with
      ``license_name: unknown`` and a ``license_link`` to the Hub dataset page (or the card's License section).
      ``license_notes`` says where each term came from.
    * ``tags``: ``diffusers-training``.
    """
    from .data.sources.spelling import is_phantoms_spec

    notes: List[str] = []
    datasets: Optional[List[str]] = None
    found: List[Optional[str]] = []  # the licenses the sources state (None: a source that states none)
    link = None
    if train_data_dir is not None:
        notes.append(f"Training data: the image folder `{train_data_dir}`; its license is not recorded.")
        found.append(None)
    elif dataset_name is None or is_phantoms_spec(str(dataset_name)):  # a folder named phantoms_x is a folder
        notes.append(
            f"Training data: phantoms generated by ultrasound-diffusers (`{dataset_name or 'phantoms:echo'}`), "
            "no patient data and no terms beyond the package's Apache-2.0 license."
        )
    elif _looks_like_hub_id(str(dataset_name)):
        datasets = [str(dataset_name)]
        meta = model_card_metadata(str(dataset_name), repo_type="dataset")
        link = f"https://huggingface.co/datasets/{dataset_name}"
        notes.append(f"Training data: the Hub dataset [`{dataset_name}`]({link}), license {_license_words(meta)}.")
        found.append(meta.get("license") if meta.get("license") != "other" else None)
    else:
        notes.append(f"Training data: the local dataset `{dataset_name}`; its license is not recorded.")
        found.append(None)

    base_model = None
    if pretrained_model:
        meta = model_card_metadata(str(pretrained_model))
        if _looks_like_hub_id(str(pretrained_model)):
            base_model = str(pretrained_model)
            notes.append(f"Fine-tuned from the Hub model [`{base_model}`](https://huggingface.co/{base_model}), "
                         f"license {_license_words(meta)}.")
        else:
            notes.append(f"Fine-tuned from the local pipeline `{pretrained_model}` (not on the Hub), license "
                         f"{_license_words(meta)}.")
        found.append(meta.get("license") if meta.get("license") != "other" else None)

    if license:
        chosen = {"license": license, "license_name": license_name, "license_link": license_link}
        notes.insert(0, "License chosen by the trainer.")
    elif not found:
        chosen = {"license": PHANTOM_MODEL_LICENSE}
        notes.insert(0, f"`{PHANTOM_MODEL_LICENSE}`: the default for a model trained from scratch on the package's "
                        "phantoms.")
    elif None not in found and len(set(found)) == 1:
        chosen = {"license": found[0]}
        notes.insert(0, "The license of the model's sources (below).")
    else:
        chosen = {"license": "other", "license_name": license_name or UNKNOWN_LICENSE_NAME, "license_link": license_link or link}
        notes.insert(0, "The license could not be determined from the model's sources:")
    return {
        **{k: v for k, v in chosen.items() if v is not None},
        "license_notes": "\n".join(f"- {n}" for n in notes),
        "datasets": datasets,
        "base_model": base_model,
        "tags": [TRAINING_TAG],
    }


def save_model_card(pipeline, folder: Union[str, os.PathLike], repo_id: str, **card_kwargs) -> Path:
    """Render :func:`create_model_card` and write it atomically to ``folder/README.md``."""
    card = create_model_card(pipeline, repo_id, **card_kwargs)
    return atomic_write_text(Path(folder) / CARD_NAME, str(card))


# ----------------------------------------------------------------------------------------------------------------
# Upload of a pipeline
# ----------------------------------------------------------------------------------------------------------------


def _check_extra_files(extra_files: Optional[Mapping[str, Union[str, os.PathLike]]]) -> Dict[str, Path]:
    checked: Dict[str, Path] = {}
    for name, path in dict(extra_files or {}).items():
        parts = Path(str(name)).parts
        if not parts or os.path.isabs(str(name)) or ".." in parts:
            raise ValueError(f"`extra_files` keys must be paths inside the repository, got {name!r}")
        if parts[0] == MODEL_INDEX_NAME or parts[0] == CARD_NAME:
            raise ValueError(f"`extra_files` must not replace {parts[0]} (pass `model_card=` for the card)")
        if not Path(path).is_file():
            raise ValueError(f"`extra_files[{name!r}]`: {path} is not a file")
        checked[str(name)] = Path(path)
    return checked


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
    extra_files: Optional[Mapping[str, Union[str, os.PathLike]]] = None,
    api=None,
    **card_kwargs,
):
    """Save ``pipeline`` (with its remote-code files) into a temporary folder, add the model card and upload
    the folder to the Hub model repository ``repo_id`` (created if needed).

    Args:
        model_card: a :class:`huggingface_hub.ModelCard` or markdown text to upload instead of rendering one.
        extra_files: ``{path in the repository: local file}`` uploaded with the pipeline (the pictures and files
            the card links to, e.g. ``{"validation_grid.png": ..., "training_args.json": ...}``).
        api: a :class:`huggingface_hub.HfApi` to use (default: ``HfApi(token=token)``).
        card_kwargs: passed to :func:`create_model_card` (license, datasets, training_data,
            evaluation_results, label_names, ...).

    Returns:
        the :class:`huggingface_hub.CommitInfo` of the upload (a ``str`` holding the commit URL).
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"`repo_id` must be 'name' or 'org/name', got {repo_id!r}")
    extras = _check_extra_files(extra_files)
    api = api if api is not None else HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    with tempfile.TemporaryDirectory(prefix="ultrasound-diffusers-push-") as tmp:
        folder = Path(tmp) / "pipeline"
        pipeline.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
        card = model_card if model_card is not None else create_model_card(pipeline, repo_id, **card_kwargs)
        atomic_write_text(folder / CARD_NAME, str(card))
        for name, path in extras.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / name)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message or f"Upload {type(pipeline).__name__} with ultrasound-diffusers",
            create_pr=create_pr,
            revision=revision,
        )


# ----------------------------------------------------------------------------------------------------------------
# Dataset card (ultrasound-diffusers generate) and its upload
# ----------------------------------------------------------------------------------------------------------------


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _settings_dict(settings: Any) -> Dict[str, Any]:
    """The settings of a generation run as a dict (a ``GenerationSettings`` or a dict of its fields)."""
    if isinstance(settings, Mapping):
        return dict(settings)
    to_dict = getattr(settings, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    raise TypeError(f"`settings` must be GenerationSettings or a dict of its fields, got {type(settings).__name__}")


def _yaml_lines(meta: Mapping[str, Any]) -> List[str]:
    """YAML of ``meta`` (keys in the given order; every string quoted, so ids and paths stay strings)."""
    lines = []
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(str(v))}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return lines


def create_dataset_card(
    settings: Any,
    num_rows: int,
    label_names: Optional[Mapping[str, str]] = None,
    repo_id: Optional[str] = None,
    command: Optional[str] = None,
    model_license: Optional[Mapping[str, Any]] = None,
) -> str:
    """Markdown dataset card (with YAML metadata) saying which model, settings, labels and license made the dataset.

    Args:
        settings: the run's ``GenerationSettings`` (or the dict of its fields): model, scheduler, steps, seeds, ...
        num_rows: number of images in the dataset.
        label_names: ``{label: meaning}``.
        repo_id: the dataset's Hub id (its name is the card's title).
        command: the command line that made the dataset.
        model_license: the source model's license fields (``{"license": ..., "license_name": ...,
            "license_link": ...}``); default: read from the model's card (:func:`model_card_metadata`, the
            model's folder or the Hub cache), ``other`` / ``unknown`` when it states none.

    The YAML holds the tags, the task and size categories, ``license`` (the source model's: the images are its
    outputs; ``other`` with ``license_name`` / ``license_link`` when unknown), ``source_model`` (the model's Hub
    id or path) and ``source_model_license``.
    """
    s = _settings_dict(settings)
    title = repo_id.split("/")[-1] if repo_id else "Synthetic ultrasound images"
    model = str(s["model"])
    source = dict(model_license) if model_license is not None else model_card_metadata(model)
    model_licence = license_metadata(
        source.get("license"), source.get("license_name"), source.get("license_link"),
        default_link=f"https://huggingface.co/{model}" if _looks_like_hub_id(model) else f"{CARD_NAME}#license-and-provenance",
    )
    if model_licence["license"] != "other":
        licence_words = f"`{model_licence['license']}`"
    elif model_licence["license_name"] == UNKNOWN_LICENSE_NAME:
        licence_words = "not stated on the model's card (`other`); ask the model's authors before reuse"
    else:
        licence_words = f"`{model_licence['license_name']}` (`other`, see {model_licence['license_link']})"
    meta: Dict[str, Any] = {
        "tags": ["ultrasound", "synthetic", "medical-imaging", "diffusers", "ultrasound-diffusers"],
        "task_categories": ["image-segmentation"],
        "size_categories": [_size_category(num_rows)],
        "pretty_name": title,
        **model_licence,
        "source_model": model,
        "source_model_license": model_licence["license"] if model_licence["license"] != "other" else model_licence["license_name"],
    }
    model_ref = f"[`{model}`](https://huggingface.co/{model})" if _looks_like_hub_id(model) else f"`{model}`"
    lines = ["---", *_yaml_lines(meta), "---", ""]
    lines += [
        f"# {title}",
        "",
        f"{num_rows} synthetic ultrasound images, each paired with the label map it was generated from, made with "
        "`ultrasound-diffusers generate` (label-conditioned diffusion with the physics-inspired "
        "B-map forward process). Intended for research, e.g. training segmentation networks on synthetic data; "
        "not for clinical use.",
        "",
        "## How it was made",
        "",
        "| setting | value |",
        "|---|---|",
        f"| model | {model_ref} |",
        f"| model license | {licence_words} |",
        f"| pipeline | `{s['pipeline_class']}` |",
        f"| scheduler | `{s['scheduler_class']}` |",
        f"| inference steps | {s['num_inference_steps']} |",
        f"| guidance scale | {s['guidance_scale']} |",
        f"| eta | {'scheduler default' if s['eta'] is None else s['eta']} |",
        f"| seed | {s['seed']} |",
        f"| label maps | {s['labels']} |",
        f"| number of label maps | {s['num_labels']} |",
        f"| images per label map | {s['images_per_label']} |",
        f"| image size | {s['height']} x {s['width']} |",
        f"| label augmentation | {'none' if not s['augment'] else 'affine + elastic (echo-from-noise), ' + json.dumps(s['augment'])} |",
        f"| labels resized | {'yes (nearest)' if s['resize_labels'] else 'no'} |",
        f"| model (configs + weights) SHA-256 | `{s['model_digest'][:16]}...` |",
        f"| label maps SHA-256 | `{s['labels_digest'][:16]}...` |",
        "",
        "Scheduler configuration:",
        "",
        "```json",
        json.dumps(s["scheduler_config"], indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    if label_names:
        lines += ["## Labels", "", "| label | meaning |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(label_names.items(), key=lambda kv: int(kv[0]))]
        lines.append("")
    lines += [
        "## Columns",
        "",
        "- `image`: the generated image (PNG); `label`: the label map it was generated from (PNG, pixel value = class).",
        "- `source_id`, `label_index`: the label map in the source; `copy_index`: which of its images this is.",
        "- `seed`: the torch seed of the image's noise, derived from (global seed, label index, copy index); "
        "`augmentation_seed`: the seed of the label augmentation (or null), `augmented`.",
        "- `model`, `pipeline_class`, `scheduler_class`, `scheduler_config` (JSON), `num_inference_steps`, "
        "`guidance_scale`, `eta`, `global_seed`, `height`, `width`.",
        "",
        "Rows are sorted by (`label_index`, `copy_index`); the same arguments give the same dataset on any number "
        "of processes.",
        "",
    ]
    if command:
        lines += ["## Command", "", "```bash", command, "```", ""]
    lines += [
        "## License and provenance",
        "",
        f"Source model: {model_ref}, license {licence_words}. The images are outputs of that model, conditioned on "
        "the label maps above: the terms of the model and of the label source (for example CAMUS: CC BY-NC-SA 4.0, "
        "non-commercial) apply. The `license` of this card is the model's; add the label source's terms if they "
        "are stricter.",
        "",
    ]
    return "\n".join(lines)


def push_dataset_to_hub(dataset, repo_id: str, card: str, private: Optional[bool] = None,
                        token: Optional[str] = None, api=None) -> str:
    """Upload the dataset card, then the dataset (``Dataset.push_to_hub`` keeps the card's text and adds its
    own metadata) to the Hub dataset repository ``repo_id`` (created if needed). ``api``: a
    :class:`huggingface_hub.HfApi` (default: ``HfApi(token=token)``). Returns the repository id."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id
    api.upload_file(
        path_or_fileobj=card.encode("utf-8"), path_in_repo=CARD_NAME, repo_id=repo_id, repo_type="dataset",
        commit_message="Dataset card (ultrasound-diffusers generate)",
    )
    dataset.push_to_hub(repo_id, private=private, token=token, commit_message="Synthetic ultrasound dataset")
    return repo_id
