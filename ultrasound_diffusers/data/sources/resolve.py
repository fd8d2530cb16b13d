# Copyright 2026 The ultrasound-diffusers authors. Apache-2.0.
"""The one door for inputs: :func:`open_source` decides what a source names and which split it reads.

Kinds (:data:`SOURCE_KINDS`), decided in this order:

1. ``"phantoms"``: a text ``phantoms:ANATOMY[:N[:SEED]]`` (always; see
   :func:`~ultrasound_diffusers.data.sources.spelling.parse_phantoms_spec`);
2. ``"saved_dataset"``: a folder written by ``save_to_disk`` (whatever its name, ``phantoms_thyroid`` included);
3. ``"folder"``: any other existing folder (image / label files; the PNG dialect ``images/`` + ``labels/`` that
   ``generate --export png`` and ``phantoms --png_dir`` write; an ``imagefolder`` with a metadata file);
4. ``"file"``: an existing file (a ``.npy`` array, or one image / label map file);
5. ``"hub"``: a text that can be a Hub dataset id (``name`` or ``org/name``) and is no local path, read with
   ``datasets.load_dataset`` (from the local cache when ``HF_HUB_OFFLINE=1``);
6. ``"dataset"``: a ``datasets.Dataset`` / ``DatasetDict`` object;
7. ``"array"``: a numpy array, torch tensor, or a list / tuple (of maps, images or files).

The split rule (:func:`pick_split`), the same for every kind with splits: the requested ``split`` (an error
listing the splits when it is not one of them), else ``"train"``, else the only split, else an error listing the
splits. Sources without splits (phantoms, folders, files, arrays, a ``Dataset``) read as the one split
``"train"``: asking them for another split is an error.

The views the entry points need are built on a :class:`Source`: the image sets of ``evaluate``, ``reconstruct``
and the nnU-Net test cases (:func:`ultrasound_diffusers.data.sources.images.load_image_set`), the label maps of
``generate`` (:func:`ultrasound_diffusers.data.label_sources.load_label_source`) and the (image, label) pairs of
training (:func:`ultrasound_diffusers.data.paired.load_paired_splits`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Tuple

from .spelling import (
    PHANTOMS_PREFIX,
    PHANTOMS_USAGE,
    PhantomsSpec,
    is_phantoms_spec,
    is_saved_dataset,
    load_hub_dataset,
    looks_like_hub_id,
    parse_phantoms_spec,
)

__all__ = ["NO_SPLITS", "SOURCE_KINDS", "Source", "open_source", "pick_split", "source_kind"]

SOURCE_KINDS = ("phantoms", "saved_dataset", "folder", "file", "hub", "dataset", "array")
#: The split a source without splits reads as.
NO_SPLITS = ("train",)


@dataclass
class Source:
    """An opened source: what it is and what it holds.

    Attributes:
        kind: one of :data:`SOURCE_KINDS`.
        spec: the source as given.
        description: a short text for reports and errors (the path, the Hub id, the phantoms text, ...).
        split: the split read (``"train"`` for sources without splits).
        splits: every split of the source.
        dataset: the ``datasets.Dataset`` of ``split`` (kinds ``saved_dataset``, ``hub``, ``dataset``).
        all_splits: ``{split: Dataset}`` of the source (kinds with a dataset), e.g. for a validation split.
        phantoms: the parsed phantoms text (kind ``phantoms``).
        path: the folder or file (kinds ``folder``, ``file``, ``saved_dataset``).
        value: the object itself (kind ``array``).
    """

    kind: str
    spec: Any
    description: str
    split: Optional[str] = "train"
    splits: Tuple[str, ...] = NO_SPLITS
    dataset: Any = None
    all_splits: dict = field(default_factory=dict)
    phantoms: Optional[PhantomsSpec] = None
    path: Optional[Path] = None
    value: Any = None

    def other_split(self, name: str) -> Any:
        """The ``datasets.Dataset`` of split ``name`` of this source, or None where it has none."""
        return self.all_splits.get(name)


def pick_split(splits: Any, split: Optional[str], what: str, argument: str = "split"):
    """The package's one split rule: ``split`` if given, else ``"train"``, else the only split.

    Args:
        splits: the split names (or a mapping of them).
        split: the requested split or None.
        what: how errors name the source.
        argument: how errors name the split argument (e.g. ``"--split"``).

    Returns:
        The chosen split name.

    Raises:
        ValueError: listing the splits, for a requested split that is not one of them, or no request where the
            source has several splits and none is ``train``.
    """
    names = list(splits)
    if split is not None:
        if split not in names:
            raise ValueError(f"{argument} {split!r} is not a split of {what}; its splits are {names}")
        return split
    if "train" in names:
        return "train"
    if len(names) == 1:
        return names[0]
    raise ValueError(f"{what} has the splits {names} and none is 'train'; choose one with {argument}")


def source_kind(spec: Any) -> str:
    """The kind (:data:`SOURCE_KINDS`) :func:`open_source` gives ``spec``, without opening anything (a text that is
    neither a path nor a possible Hub id is ``"hub"`` here and an error in :func:`open_source`)."""
    if isinstance(spec, Source):
        return spec.kind
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if is_phantoms_spec(text):
            return "phantoms"
        path = Path(text)
        if path.is_dir():
            return "saved_dataset" if is_saved_dataset(path) else "folder"
        return "file" if path.exists() else "hub"
    if _is_datasets_object(spec):
        return "dataset"
    return "array"


def _is_datasets_object(value: Any) -> bool:
    import datasets

    return isinstance(value, (datasets.Dataset, datasets.DatasetDict))


def _with_splits(kind: str, spec: Any, description: str, loaded: Any, split: Optional[str], argument: str,
                 path: Optional[Path] = None) -> Source:
    """A Source over a ``Dataset`` or ``DatasetDict``, with the split rule applied."""
    import datasets

    if isinstance(loaded, (datasets.DatasetDict, dict)):
        chosen = pick_split(loaded, split, description, argument)
        all_splits = dict(loaded)
    else:
        chosen = pick_split(NO_SPLITS, split, description, argument)
        all_splits = {chosen: loaded}
    return Source(kind, spec, description, chosen, tuple(all_splits), all_splits[chosen], all_splits, path=path)


def open_source(
    spec: Any,
    split: Optional[str] = None,
    *,
    argument: str = "source",
    split_argument: str = "split",
    config_name: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> Source:
    """Decide what ``spec`` names (see the module docstring), open it and pick its split.

    Args:
        spec: a text (phantoms spelling, path, Hub id), a ``datasets`` object, an array / tensor / list, or a
            :class:`Source` (returned as it is when ``split`` agrees).
        split: the split to read (the split rule: else ``train``, else the only split).
        argument: how errors name ``spec`` (e.g. ``"--labels"``).
        split_argument: how errors name ``split`` (e.g. ``"--split"``).
        config_name, cache_dir: passed to ``datasets.load_dataset`` for Hub ids.

    Returns:
        A :class:`Source`. Nothing is read yet for folders, files and phantoms (the views read them).

    Raises:
        ValueError / FileNotFoundError: naming ``argument``: a bad phantoms text, the bare word ``phantoms``, a
            path that does not exist and cannot be a Hub id, a Hub dataset that cannot be loaded, a split that the
            source does not have.
    """
    if isinstance(spec, Source):
        if split is not None and split != spec.split:
            raise ValueError(f"{argument} {spec.description} is open at split {spec.split!r}, not {split!r}")
        return spec
    if spec is None:
        raise ValueError(f"{argument} is missing; expected a folder, a saved dataset, a Hub id or {PHANTOMS_USAGE}")
    if isinstance(spec, (str, os.PathLike)):
        return _open_text(os.fspath(spec), split, argument, split_argument, config_name, cache_dir)
    if _is_datasets_object(spec):
        return _with_splits("dataset", spec, type(spec).__name__, spec, split, split_argument)
    chosen = pick_split(NO_SPLITS, split, "an array", split_argument)
    return Source("array", spec, "array", chosen, value=spec)


def _open_text(text: str, split, argument, split_argument, config_name, cache_dir) -> Source:
    if not text:
        raise ValueError(f"{argument} is empty; expected a folder, a saved dataset, a Hub id or {PHANTOMS_USAGE}")
    if is_phantoms_spec(text):
        spec = parse_phantoms_spec(text, argument=argument.strip("`"))
        chosen = pick_split(NO_SPLITS, split, text, split_argument)
        return Source("phantoms", text, text, chosen, phantoms=spec)
    path = Path(text)
    if path.is_dir():
        if is_saved_dataset(path):
            import datasets

            return _with_splits("saved_dataset", text, str(path), datasets.load_from_disk(str(path)), split,
                                split_argument, path=path)
        return Source("folder", text, str(path), pick_split(NO_SPLITS, split, str(path), split_argument), path=path)
    if path.exists():
        return Source("file", text, str(path), pick_split(NO_SPLITS, split, str(path), split_argument), path=path)
    if text == PHANTOMS_PREFIX:
        raise ValueError(f"{argument} {text!r}: the built-in phantoms are written {PHANTOMS_USAGE}")
    if not looks_like_hub_id(text) or "\\" in text:
        raise FileNotFoundError(f"{argument} {text!r} does not exist (and is not a Hub dataset id 'org/name')")
    loaded = load_hub_dataset(text, config_name, cache_dir=cache_dir, argument=argument)
    return _with_splits("hub", text, f"Hub dataset {text}", loaded, split, split_argument)
