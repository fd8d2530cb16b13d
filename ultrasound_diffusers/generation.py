"""Synthetic dataset generation at scale: label maps in, a labelled ``datasets.Dataset`` out.

:func:`generate_dataset` draws ``images_per_label`` images from every label map of a source with a
label-conditioned pipeline (:class:`~ultrasound_diffusers.pipelines.SemanticUltrasoundPipeline`) and returns a
``datasets.Dataset`` with the generated ``image``, the ``label`` map it was drawn from and metadata (source id,
seed, model, scheduler settings, ...). It is what echo-from-noise did with its model: take the CAMUS training
labels, augment each five times, generate an image per map, and train a segmentation network on the result.

Work items and seeds
    Work item ``g = label_index * images_per_label + copy_index`` is image ``copy_index`` of label map
    ``label_index``. Its random numbers come from ``numpy.random.SeedSequence([seed, label_index, copy_index])``
    alone (:func:`derive_seeds`): one 63-bit seed for the torch generator of the image's noise and one for its
    label augmentation. The dataset is sorted by ``(label_index, copy_index)``.

Chunks, processes and resuming
    The items are cut into contiguous chunks of ``chunk_size`` (chunk boundaries and the batches inside a chunk
    depend only on ``chunk_size`` and ``batch_size``). Under ``accelerate launch`` the unfinished chunks are dealt
    out round-robin to the processes; each process writes its chunks as small saved datasets under
    ``output_dir/chunks/``, each one built in a temporary sibling folder and renamed into place only when
    complete, with a ``chunk.json`` marker holding the run's fingerprint (a hash of everything that changes the
    output: model weights and configs, label maps, settings). Restarted with the same arguments, a run skips
    every chunk whose marker matches and redoes the rest, so an interruption costs at most the chunks in flight;
    folders without a valid marker are never taken for finished chunks. At the end the main process merges the
    chunks in order into ``output_dir/dataset`` (``datasets.load_from_disk``), writes the dataset card
    ``output_dir/README.md`` and, if asked, PNG folders and a Hub upload.

    Because batch composition does not depend on the number of processes, 1 and N processes give bit-identical
    datasets (on the same kind of device). Different ``batch_size`` values (or thread counts) run the network on
    differently shaped work; CPU/GPU kernels may then round differently in the last float bit, which can move a
    pixel by one grey level in rare cases (none in the tests here). Everything else (labels, seeds, metadata)
    is identical.

Layout of ``output_dir``::

    generation.json        run manifest: fingerprint, settings, status ("running" / "complete")
    chunks/chunk-<start>-<stop>/   finished chunks (removed after the merge unless keep_chunks=True)
    dataset/               the merged dataset (save_to_disk)
    README.md              dataset card
    png/images/*.png, png/images/metadata.csv, png/labels/*.png   (save_png=True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .hub_utils import create_dataset_card
from .utils.io import remove_stale_temporaries

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Version of the on-disk layout (chunks, manifest); part of the fingerprint.
GENERATION_FORMAT_VERSION = 1
MANIFEST_NAME = "generation.json"
CHUNK_MARKER_NAME = "chunk.json"
CHUNKS_DIR = "chunks"
DATASET_DIR = "dataset"
PNG_DIR = "png"
CARD_NAME = "README.md"
#: The default folder of ``generate --export nnunet`` inside a run folder.
NNUNET_DIR = "nnunet_raw"
_CHUNK_RE = re.compile(r"^chunk-(\d+)-(\d+)$")

__all__ = [
    "export_png_folders",
    "push_dataset_to_hub",
    "GenerationOptions",
    "GenerationSettings",
    "chunk_ranges",
    "derive_seeds",
    "generate_dataset",
    "generation_features",
    "pipeline_digest",
    "process_state",
]


# The label-map sources (ultrasound_diffusers.data.label_sources) that a run reads its label maps from.
from .data.label_sources import LabelSource, _prepare_label, check_label_source, load_label_source  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# Seeds, chunks, fingerprints
# ----------------------------------------------------------------------------------------------------------------


def derive_seeds(seed: int, label_index: int, copy_index: int) -> Tuple[int, int]:
    """(image seed, augmentation seed) of image ``copy_index`` of label map ``label_index``: two 63-bit integers
    drawn from ``numpy.random.SeedSequence([seed, label_index, copy_index])``. They depend on nothing else (not
    on the process, the batch or the chunk that makes the image)."""
    state = np.random.SeedSequence([int(seed), int(label_index), int(copy_index)]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1)), int(state[1] >> np.uint64(1))


def chunk_ranges(num_items: int, chunk_size: int) -> List[Tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges of at most ``chunk_size`` items covering ``range(num_items)``."""
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size}")
    return [(s, min(s + chunk_size, num_items)) for s in range(0, num_items, chunk_size)]


def _config_dict(obj) -> Dict[str, Any]:
    config = getattr(obj, "config", None)
    if config is None:
        return {}
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def pipeline_digest(pipeline) -> str:
    """SHA-256 of a pipeline's component classes, configs and weights (the bytes of every state-dict tensor)."""
    import torch

    digest = hashlib.sha256()
    digest.update(type(pipeline).__name__.encode())
    for name, component in sorted(pipeline.components.items()):
        digest.update(f"|{name}:{type(component).__name__}|".encode())
        digest.update(json.dumps(_config_dict(component), sort_keys=True, default=_json_default).encode())
        if isinstance(component, torch.nn.Module):
            for key, tensor in component.state_dict().items():
                digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class GenerationSettings:
    """Everything that determines the generated dataset (hashed into the run's fingerprint)."""

    model: str
    pipeline_class: str
    scheduler_class: str
    scheduler_config: Dict[str, Any]
    model_digest: str
    labels: str
    labels_digest: str
    num_labels: int
    height: int
    width: int
    images_per_label: int
    num_inference_steps: int
    guidance_scale: float
    eta: Optional[float]
    seed: int
    augment: Optional[Dict[str, Any]]
    augment_tissue_label: Optional[int]
    resize_labels: bool
    chunk_size: int
    format_version: int = GENERATION_FORMAT_VERSION

    @property
    def num_items(self) -> int:
        return self.num_labels * self.images_per_label

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=_json_default))

    def fingerprint(self) -> str:
        """Hash of the settings that change the rows (the label source's description, e.g. the spelling of its
        path, does not: its content is in ``labels_digest``)."""
        settings = self.to_dict()
        settings.pop("labels")
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


def generation_features():
    """The ``datasets.Features`` of a generated dataset."""
    import datasets

    s, i64, f64 = datasets.Value("string"), datasets.Value("int64"), datasets.Value("float64")
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Image(),
            "source_id": s,
            "label_index": i64,
            "copy_index": i64,
            "seed": i64,
            "augmented": datasets.Value("bool"),
            "augmentation_seed": i64,
            "global_seed": i64,
            "model": s,
            "pipeline_class": s,
            "scheduler_class": s,
            "scheduler_config": s,
            "num_inference_steps": i64,
            "guidance_scale": f64,
            "eta": f64,
            "height": i64,
            "width": i64,
        }
    )


def _png(array_or_image) -> Dict[str, Any]:
    import PIL.Image

    image = array_or_image if isinstance(array_or_image, PIL.Image.Image) else PIL.Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


# ----------------------------------------------------------------------------------------------------------------
# Run folder: manifest and chunks
# ----------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _chunk_name(start: int, stop: int) -> str:
    return f"chunk-{start:09d}-{stop:09d}"


def _chunk_is_complete(folder: Path, fingerprint: str, start: int, stop: int) -> bool:
    """A chunk counts as finished only with a marker naming this run and range and a saved dataset beside it."""
    marker = _read_json(folder / CHUNK_MARKER_NAME)
    if marker is None:
        return False
    if (marker.get("fingerprint"), marker.get("start"), marker.get("stop"), marker.get("num_rows")) != (
        fingerprint, start, stop, stop - start
    ):
        return False
    return (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()


def _finished_chunks(chunks_dir: Path, fingerprint: str, ranges: Sequence[Tuple[int, int]]) -> set:
    return {
        (start, stop) for start, stop in ranges
        if _chunk_is_complete(chunks_dir / _chunk_name(start, stop), fingerprint, start, stop)
    }


def _remove_temporaries(chunks_dir: Path) -> None:
    """Delete leftovers of interrupted chunk writes (hidden ``.chunk-*`` siblings made by replace_directory)."""
    if not chunks_dir.is_dir():
        return
    for entry in chunks_dir.iterdir():
        if entry.name.startswith(".chunk-") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _clear_run(output_dir: Path) -> None:
    for name in (CHUNKS_DIR, DATASET_DIR, PNG_DIR):
        shutil.rmtree(output_dir / name, ignore_errors=True)
    for name in (MANIFEST_NAME, CARD_NAME):
        try:
            (output_dir / name).unlink()
        except FileNotFoundError:
            pass


_RUN_ENTRIES = (CHUNKS_DIR, DATASET_DIR, PNG_DIR, MANIFEST_NAME, CARD_NAME, NNUNET_DIR)

#: ``kind`` of the output rule for a generation run folder.
KIND = "generate"


def is_run_entry(name: str) -> bool:
    """Whether a name in a run folder is one a generation run writes (hidden temporaries included)."""
    return name in _RUN_ENTRIES or name.startswith(".")


def _run_status(output_dir: Path, fingerprint: str) -> str:
    """'fresh' (nothing there), 'resume' (same run, unfinished), 'complete' (same run, done), 'other' (a run
    with other arguments) or 'foreign' (a non-empty folder that is not a generation run: never touched)."""
    manifest = _read_json(output_dir / MANIFEST_NAME)
    if manifest is None:
        if not output_dir.is_dir():
            return "fresh"
        from .utils.io import foreign_entries

        entries = foreign_entries(output_dir, lambda name: False)
        if not entries:
            return "fresh"
        if set(entries) <= {CHUNKS_DIR, DATASET_DIR} and (output_dir / CHUNKS_DIR).exists():
            return "other"  # a run whose manifest was lost before the first chunk: ours, discard on --overwrite
        return "foreign"
    if not all(is_run_entry(e.name) for e in output_dir.iterdir()):
        return "foreign"  # a run folder the user has put other files in
    if manifest.get("fingerprint") != fingerprint:
        return "other"
    if manifest.get("status") == "complete" and (output_dir / DATASET_DIR / "state.json").is_file():
        return "complete"
    return "resume"


def _write_manifest(output_dir: Path, settings: GenerationSettings, status: str, **extra) -> None:
    from .utils.io import atomic_write_text

    manifest = {
        "fingerprint": settings.fingerprint(),
        "status": status,
        "num_items": settings.num_items,
        "settings": settings.to_dict(),
        **extra,
    }
    atomic_write_text(output_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Dataset card and Hub upload
# ----------------------------------------------------------------------------------------------------------------


def _hub_api(token: Optional[str] = None):
    from huggingface_hub import HfApi

    return HfApi(token=token)


def push_dataset_to_hub(dataset, repo_id: str, card: str, private: Optional[bool] = None,
                        token: Optional[str] = None) -> str:
    """Upload the dataset card, then the dataset: :func:`ultrasound_diffusers.hub_utils.push_dataset_to_hub`.
    Returns the repository id."""
    from . import hub_utils

    return hub_utils.push_dataset_to_hub(dataset, repo_id, card, private=private, token=token, api=_hub_api(token))


def export_png_folders(dataset, folder: PathLike) -> Path:
    """Write ``images/`` (with an imagefolder ``metadata.csv``) and ``labels/`` PNG folders, atomically."""
    import csv

    import datasets

    from .utils.io import replace_directory

    raw = dataset.cast_column("image", datasets.Image(decode=False)).cast_column("label", datasets.Image(decode=False))
    n_labels = max(int(max(dataset["label_index"], default=0)) + 1, 1)
    n_copies = max(int(max(dataset["copy_index"], default=0)) + 1, 1)
    w1, w2 = max(6, len(str(n_labels - 1))), max(3, len(str(n_copies - 1)))

    def build(tmp: Path) -> None:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        with open(tmp / "images" / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "source_id", "label_index", "copy_index", "seed"])
            for row in raw:
                name = f"{row['label_index']:0{w1}d}-{row['copy_index']:0{w2}d}.png"
                (tmp / "images" / name).write_bytes(row["image"]["bytes"])
                (tmp / "labels" / name).write_bytes(row["label"]["bytes"])
                writer.writerow([name, row["source_id"], row["label_index"], row["copy_index"], row["seed"]])

    return replace_directory(build, folder)


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


def process_state(accelerator):
    """The given Accelerator / PartialState, or the process state of the current launch (``PartialState``;
    ``ACCELERATE_USE_CPU=true`` selects CPU processes, as ``Accelerator()`` does)."""
    if accelerator is not None:
        return accelerator
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _model_size(pipeline) -> Tuple[int, int]:
    from .pipelines.pipeline_utils import resolve_sample_size

    return resolve_sample_size(pipeline.unet.config.sample_size)


def _augmentation_params(augment) -> Optional[Any]:
    if augment is None or augment is False:
        return None
    from .data.augment import LabelAugmentation

    if augment is True:
        return LabelAugmentation()
    if isinstance(augment, LabelAugmentation):
        return augment
    if isinstance(augment, dict):
        return LabelAugmentation(**augment)
    raise ValueError(f"`augment` must be a bool, a dict or a LabelAugmentation, got {type(augment).__name__}")


def _quiet_pipeline(pipeline):
    """The pipeline's own progress bar off for the run: ``progress_bar_disabled()`` of the package's pipelines
    (which restores the earlier configuration); other diffusers pipelines are just told ``disable=True``."""
    if hasattr(pipeline, "progress_bar_disabled"):
        return pipeline.progress_bar_disabled()
    pipeline.set_progress_bar_config(disable=True)
    return contextlib.nullcontext(pipeline)


def _generate_chunk(pipeline, source: LabelSource, settings: GenerationSettings, start: int, stop: int,
                    batch_size: int, aug_params, bar=None):
    """Generate items ``[start, stop)`` and return them as a ``datasets.Dataset``."""
    import datasets
    import torch

    features = generation_features()
    columns: Dict[str, list] = {name: [] for name in features}
    k = settings.images_per_label
    label_indices = sorted({g // k for g in range(start, stop)})
    base = dict(zip(label_indices, source.get_many(label_indices)))
    size = (settings.height, settings.width)
    fan = None
    tissue = settings.augment_tissue_label
    if aug_params is not None and tissue is None:
        fan, tissue = np.ones(size, dtype=bool), 0
    scheduler_config = json.dumps(settings.scheduler_config, sort_keys=True, default=_json_default)

    for b0 in range(start, stop, batch_size):
        items = range(b0, min(b0 + batch_size, stop))
        maps, seeds, aug_seeds = [], [], []
        for g in items:
            li, ci = divmod(g, k)
            image_seed, aug_seed = derive_seeds(settings.seed, li, ci)
            label = _prepare_label(base[li], size, settings.resize_labels, f"label map {li}")
            if aug_params is not None:
                from .data.augment import augment_label_map

                label = augment_label_map(label.astype(np.uint8), seed=aug_seed, fan_mask=fan, params=aug_params,
                                          tissue_label=tissue).astype(np.int64)
            maps.append(label)
            seeds.append(image_seed)
            aug_seeds.append(aug_seed if aug_params is not None else None)
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        output = pipeline(
            segmap=np.stack(maps), num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, eta=settings.eta, generator=generators, output_type="np",
        )
        if not np.isfinite(output.images).all():
            bad = [items[i] for i in range(len(items)) if not np.isfinite(output.images[i]).all()]
            raise ValueError(
                f"the pipeline returned NaN or infinite images (items {bad[:5]}{' ...' if len(bad) > 5 else ''}); "
                "nothing of this chunk was written: check the model weights and the sampling settings"
            )
        from .pipelines.pipeline_utils import numpy_to_pil

        images = numpy_to_pil(output.images)
        for g, image, label, image_seed, aug_seed in zip(items, images, maps, seeds, aug_seeds):
            li, ci = divmod(g, k)
            columns["image"].append(_png(image))
            columns["label"].append(_png(label.astype(np.uint8)))
            columns["source_id"].append(source.source_id(li))
            columns["label_index"].append(li)
            columns["copy_index"].append(ci)
            columns["seed"].append(image_seed)
            columns["augmented"].append(aug_params is not None)
            columns["augmentation_seed"].append(aug_seed)
            columns["global_seed"].append(settings.seed)
            columns["model"].append(settings.model)
            columns["pipeline_class"].append(settings.pipeline_class)
            columns["scheduler_class"].append(settings.scheduler_class)
            columns["scheduler_config"].append(scheduler_config)
            columns["num_inference_steps"].append(settings.num_inference_steps)
            columns["guidance_scale"].append(settings.guidance_scale)
            columns["eta"].append(settings.eta)
            columns["height"].append(settings.height)
            columns["width"].append(settings.width)
        if bar is not None:
            bar.update(len(items))
    return datasets.Dataset.from_dict(columns, features=features)


@contextlib.contextmanager
def _quiet_datasets():
    """Silence the ``datasets`` progress bars (one per small save / load) inside the block, then restore them."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _write_chunk(chunk, chunks_dir: Path, fingerprint: str, start: int, stop: int, process_index: int,
                 seconds: float) -> Path:
    """Save a chunk under a temporary name with its marker, then rename it into place (atomic)."""
    from .utils.io import replace_directory

    def build(tmp: Path) -> None:
        with _quiet_datasets():
            chunk.save_to_disk(str(tmp))
        marker = {"fingerprint": fingerprint, "start": start, "stop": stop, "num_rows": chunk.num_rows,
                  "process_index": process_index, "seconds": round(seconds, 3)}
        (tmp / CHUNK_MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    return replace_directory(build, chunks_dir / _chunk_name(start, stop))


def _merge_chunks(chunks_dir: Path, fingerprint: str, ranges: Sequence[Tuple[int, int]], settings: GenerationSettings):
    import datasets

    parts = []
    for start, stop in ranges:
        folder = chunks_dir / _chunk_name(start, stop)
        if not _chunk_is_complete(folder, fingerprint, start, stop):
            raise RuntimeError(f"chunk {folder} is missing or unfinished; run the same command again to finish it")
        with _quiet_datasets():
            parts.append(datasets.load_from_disk(str(folder)))
    merged = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    expected_labels = [g // settings.images_per_label for g in range(settings.num_items)]
    expected_copies = [g % settings.images_per_label for g in range(settings.num_items)]
    if merged["label_index"] != expected_labels or merged["copy_index"] != expected_copies:
        raise RuntimeError(f"the chunks in {chunks_dir} do not cover the work items in order")
    return merged


@dataclasses.dataclass
class GenerationOptions:
    """What a caller chooses for :func:`generate_dataset` (the run's :class:`GenerationSettings`, which are
    fingerprinted, add what the pipeline and the label maps contribute).

    Sampling:
        images_per_label (`int`, defaults to 1): images drawn from each label map (each from its own augmented
            copy when ``augment``).
        num_inference_steps, guidance_scale, eta: sampling settings passed to the pipeline (``eta=None``: the
            scheduler's own sampler).
        batch_size (`int`, defaults to 8): images per network batch.
        seed (`int`, defaults to 0): global seed; image ``(label_index, copy_index)`` uses :func:`derive_seeds` of
            ``(seed, label_index, copy_index)``.
        augment: ``True`` for the echo-from-noise label augmentation (affine + elastic, fan re-applied; see
            :mod:`ultrasound_diffusers.data.augment`), a dict / ``LabelAugmentation`` with other parameters, or
            ``False``.
        augment_tissue_label (`int` or None, defaults to 2): the tissue-in-fan label of the echo coding that the
            augmentation re-fills inside the fan (the fan is each map's ``label > 0``); ``None`` for codings
            without a fan (the whole image is the field of view, background 0).
        resize_labels (`bool`): resize label maps of another size to the model's size (nearest neighbour).
        chunk_size (`int`, defaults to 64): items per chunk, the unit of resuming and of work distribution.

    Label source:
        label_column, id_column, split: for dataset label sources (see :func:`load_label_source`).

    Output:
        save_png (`bool`): also write ``output_dir/png/images`` (with an imagefolder ``metadata.csv``) and
            ``output_dir/png/labels``.
        push_to_hub (`str`, *optional*): Hub dataset repository id to upload the dataset and its card to.
        hub_private, hub_token: Hub options.
        model_id (`str`, *optional*): name of the model in the metadata (default: the pipeline's
            ``_name_or_path``).
        overwrite (`bool`): discard a run of other arguments found in ``output_dir`` (otherwise a ValueError).
        keep_chunks (`bool`): keep the chunk folders after the merge.
        command: the command line, recorded in the dataset card.
        progress (`bool`): show progress bars (main process): images/s and the time left.
    """

    images_per_label: int = 1
    num_inference_steps: int = 50
    guidance_scale: float = 1.0
    eta: Optional[float] = None
    batch_size: int = 8
    seed: int = 0
    augment: Union[bool, Dict[str, Any], Any] = False
    augment_tissue_label: Optional[int] = 2
    resize_labels: bool = False
    chunk_size: int = 64
    label_column: str = "label"
    id_column: Union[str, Sequence[str], None] = None
    split: Optional[str] = None
    save_png: bool = False
    push_to_hub: Optional[str] = None
    hub_private: Optional[bool] = None
    hub_token: Optional[str] = None
    model_id: Optional[str] = None
    overwrite: bool = False
    keep_chunks: bool = False
    command: Optional[str] = None
    progress: bool = True

    @classmethod
    def from_keywords(cls, options: Optional["GenerationOptions"] = None, **values) -> "GenerationOptions":
        """``options`` (default: the defaults) with the fields in ``values`` replaced; an unknown name is a
        TypeError naming it and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"generate_dataset() got unknown options {unknown}; known: {sorted(known)}")
        return dataclasses.replace(options or cls(), **values)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def _check_options(pipeline, options: GenerationOptions) -> Tuple[int, Optional[Any]]:
    """Refuse bad options and a pipeline that is not label-conditioned, before any work. Returns
    ``(num_classes, augmentation parameters or None)``; ``options.guidance_scale`` is replaced by its checked
    value."""
    from .pipelines.pipeline_utils import check_guidance_scale

    for name in ("images_per_label", "num_inference_steps", "batch_size", "chunk_size"):
        _check_positive_int(name, getattr(options, name))
    seed = options.seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}")
    options.guidance_scale = check_guidance_scale(options.guidance_scale)
    eta = options.eta
    if eta is not None and (
        isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating))
        or not math.isfinite(float(eta)) or eta < 0
    ):
        raise ValueError(f"`eta` must be a finite number >= 0 or None, got {eta!r}")
    hub = options.push_to_hub
    if hub is not None and (not isinstance(hub, str) or not hub.strip()):
        raise ValueError(f"`push_to_hub` must be a Hub dataset repository id 'org/name', got {hub!r}")
    unet = getattr(pipeline, "unet", None)
    num_classes = int(getattr(getattr(unet, "config", None), "num_classes", 0) or 0)
    if unet is None or num_classes < 1:
        raise ValueError(
            f"`pipeline` must be label-conditioned (a SemanticUltrasoundPipeline whose unet has num_classes > 0), "
            f"got {type(pipeline).__name__}"
        )
    if num_classes > 256:
        raise ValueError(f"label maps are stored as 8-bit PNG; the model has {num_classes} > 256 classes")
    aug_params = _augmentation_params(options.augment)
    tissue = options.augment_tissue_label
    if aug_params is not None and tissue is not None and not 0 <= tissue < num_classes:
        raise ValueError(f"`augment_tissue_label` must be a label in [0, {num_classes - 1}] or None, got {tissue}")
    return num_classes, aug_params


def _process_view(accelerator, progress: bool):
    """``(state, rank, world, is_main, show)`` of this process (a warning when WORLD_SIZE and the state disagree)."""
    state = process_state(accelerator)
    rank, world = int(state.process_index), int(state.num_processes)
    is_main = bool(state.is_main_process)
    show = progress and bool(getattr(state, "is_local_main_process", is_main))
    if world == 1 and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        logger.warning("WORLD_SIZE=%s but the accelerator sees one process: every process would do all the work. "
                       "On CPU use ACCELERATE_USE_CPU=true (or Accelerator(cpu=True)).", os.environ["WORLD_SIZE"])
    return state, rank, world, is_main, show


def _run_settings(pipeline, source: LabelSource, labels_digest: str, options: GenerationOptions,
                  size: Tuple[int, int], aug_params) -> GenerationSettings:
    """The fingerprinted settings of the run: the options, the pipeline's components and the label maps."""
    scheduler = pipeline.scheduler
    return GenerationSettings(
        model=options.model_id or str(getattr(pipeline.config, "_name_or_path", None) or "(in-memory pipeline)"),
        pipeline_class=type(pipeline).__name__,
        scheduler_class=type(scheduler).__name__,
        scheduler_config=_config_dict(scheduler),
        model_digest=pipeline_digest(pipeline),
        labels=source.description,
        labels_digest=labels_digest,
        num_labels=len(source),
        height=size[0],
        width=size[1],
        images_per_label=int(options.images_per_label),
        num_inference_steps=int(options.num_inference_steps),
        guidance_scale=float(options.guidance_scale),
        eta=None if options.eta is None else float(options.eta),
        seed=int(options.seed),
        augment=None if aug_params is None else dataclasses.asdict(aug_params),
        augment_tissue_label=None if options.augment_tissue_label is None else int(options.augment_tissue_label),
        resize_labels=bool(options.resize_labels),
        chunk_size=int(options.chunk_size),
    )


def _prepare_run_folder(output_dir: Path, settings: GenerationSettings, overwrite: bool, state, is_main: bool) -> str:
    """Read the run folder's status on every process (``"new"``, ``"resume"``, ``"complete"`` or ``"other"``,
    refused without ``overwrite``), then set it up on the main process (manifest, temporaries cleared)."""
    fingerprint = settings.fingerprint()
    chunks_dir = output_dir / CHUNKS_DIR
    status = _run_status(output_dir, fingerprint)
    if status == "foreign":  # the one output rule: the user's folder only with overwrite (whose own files stay)
        from .utils.io import check_output_dir

        check_output_dir(output_dir, KIND, overwrite=overwrite, own_entries=is_run_entry, argument="`output_dir`")
        status = "other"
    if status == "other" and not overwrite:
        raise ValueError(
            f"`output_dir` {output_dir} holds a generation run with other arguments (or an unknown dataset); "
            "use another folder, or overwrite=True (--overwrite) to discard it"
        )
    state.wait_for_everyone()
    if is_main:
        if status == "other":
            _clear_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if status != "complete":
            _write_manifest(output_dir, settings, "running")
            _remove_temporaries(chunks_dir)
        remove_stale_temporaries(output_dir)  # leftovers of a killed merge (.dataset.tmp-*, .generation.json.*.tmp)
        remove_stale_temporaries(chunks_dir)
    state.wait_for_everyone()
    return status


def _generate_share(pipeline, source: LabelSource, settings: GenerationSettings, output_dir: Path, batch_size: int,
                    aug_params, process) -> None:
    """Generate this process's share of the chunks that are not finished yet (``process`` is
    :func:`_process_view`'s tuple)."""
    from tqdm.auto import tqdm

    state, rank, world, is_main, show = process
    fingerprint, chunks_dir = settings.fingerprint(), output_dir / CHUNKS_DIR
    ranges = chunk_ranges(settings.num_items, settings.chunk_size)
    done = _finished_chunks(chunks_dir, fingerprint, ranges)
    state.wait_for_everyone()  # everyone has listed the finished chunks before anyone writes new ones
    pending = [r for r in ranges if r not in done]
    mine = pending[rank::world]
    if is_main:
        logger.info("%d of %d chunks done; %d to go on %d process(es)", len(done), len(ranges), len(pending), world)
    if mine:
        device = getattr(state, "device", None)
        if device is not None and getattr(pipeline, "device", None) != device:
            pipeline.to(device)
        total = sum(stop - start for start, stop in mine)
        desc = "generating" if world == 1 else f"generating (process {rank + 1}/{world})"
        bar = tqdm(total=total, desc=desc, unit="img", disable=not show, dynamic_ncols=True)
        try:
            with _quiet_pipeline(pipeline):  # one bar: ours, over images
                for start, stop in mine:
                    t0 = time.perf_counter()
                    chunk = _generate_chunk(pipeline, source, settings, start, stop, int(batch_size), aug_params, bar)
                    _write_chunk(chunk, chunks_dir, fingerprint, start, stop, rank, time.perf_counter() - t0)
        finally:
            bar.close()
    state.wait_for_everyone()


def _finish_run(pipeline, settings: GenerationSettings, output_dir: Path, status: str, options: GenerationOptions,
                show: bool) -> None:
    """Main process: merge the chunks into ``dataset/``, write the card, the PNG folders and the Hub copy."""
    import datasets

    from .utils.io import atomic_save_to_disk, atomic_write_text

    fingerprint, chunks_dir = settings.fingerprint(), output_dir / CHUNKS_DIR
    dataset_dir = output_dir / DATASET_DIR
    if status != "complete":
        merged = _merge_chunks(chunks_dir, fingerprint, chunk_ranges(settings.num_items, settings.chunk_size), settings)
        with contextlib.nullcontext() if show else _quiet_datasets():
            atomic_save_to_disk(merged, dataset_dir)
        _write_manifest(output_dir, settings, "complete", num_rows=merged.num_rows)
    if not options.keep_chunks:
        shutil.rmtree(chunks_dir, ignore_errors=True)
    dataset = datasets.load_from_disk(str(dataset_dir))
    label_names = getattr(pipeline.config, "label_names", None)
    card = create_dataset_card(settings, dataset.num_rows, label_names=dict(label_names) if label_names else None,
                               repo_id=options.push_to_hub, command=options.command)
    atomic_write_text(output_dir / CARD_NAME, card)
    if options.save_png:
        export_png_folders(dataset, output_dir / PNG_DIR)
    if options.push_to_hub:
        push_dataset_to_hub(dataset, options.push_to_hub, card, private=options.hub_private, token=options.hub_token)


def generate_dataset(
    pipeline,
    labels,
    output_dir: PathLike,
    options: Optional[GenerationOptions] = None,
    accelerator=None,
    **option_values,
):
    r"""Generate a labelled synthetic dataset from label maps, resumably and across ``accelerate`` processes.

    Args:
        pipeline: a label-conditioned pipeline (``SemanticUltrasoundPipeline``): ``pipeline(segmap=int labels
            [B, H, W], num_inference_steps, guidance_scale, eta, generator=[one torch.Generator per image],
            output_type="pil")``. It is moved to the accelerator's device.
        labels: the label maps, any source of the one input door (see :func:`load_label_source`):
            ``"phantoms:echo:N"``, a saved dataset folder, a folder of label PNGs (or the PNG folders of
            ``--export png``), a ``.npy`` file, a Hub dataset name, a ``datasets.Dataset``, an array [N, H, W]
            or a list of maps. Values must lie in [0, num_classes - 1]; sizes must equal the model's
            ``sample_size`` unless ``resize_labels``.
        output_dir: run folder (chunks, manifest, the merged ``dataset/``, ``README.md``, ``png/``); must be on a
            file system every process sees.
        options: a :class:`GenerationOptions` (sampling, label source and output choices).
        accelerator: an ``accelerate.Accelerator`` / ``PartialState``; default: ``PartialState()`` of the current
            ``accelerate launch`` (CPU processes with ``ACCELERATE_USE_CPU=true``).
        **option_values: fields of :class:`GenerationOptions` given by name (``num_inference_steps=20``,
            ``seed=3``, ...), replacing those of ``options``; an unknown name is a TypeError.

    Returns:
        ``datasets.Dataset`` (on every process) with columns ``image``, ``label`` (PNG images) and the metadata
        of :func:`generation_features`, sorted by ``(label_index, copy_index)``; also saved in
        ``output_dir/dataset``.
    """
    import datasets

    # 1. the options and the pipeline, checked before any work
    options = GenerationOptions.from_keywords(options, **option_values)
    num_classes, aug_params = _check_options(pipeline, options)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` {output_dir} exists and is not a folder")
    process = _process_view(accelerator, options.progress)
    state, _, _, is_main, show = process

    # 2. the label maps (through the one input door) and the run's fingerprinted settings, on every process
    size = _model_size(pipeline)
    source = load_label_source(labels, label_column=options.label_column, id_column=options.id_column,
                               split=options.split, size=size)
    labels_digest = check_label_source(source, num_classes, size, options.resize_labels, progress=show)
    settings = _run_settings(pipeline, source, labels_digest, options, size, aug_params)

    # 3. the run folder: read by all, set up by the main process
    status = _prepare_run_folder(output_dir, settings, options.overwrite, state, is_main)

    # 4. this process's share of the unfinished chunks
    if status != "complete":
        _generate_share(pipeline, source, settings, output_dir, options.batch_size, aug_params, process)

    # 5. merge, card, PNG folders, Hub (main process)
    if is_main:
        _finish_run(pipeline, settings, output_dir, status, options, show)
    state.wait_for_everyone()
    return datasets.load_from_disk(str(output_dir / DATASET_DIR))
