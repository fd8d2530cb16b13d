"""The spellings of a source text: what :func:`ultrasound_diffusers.data.sources.open_source` tells apart.

* :func:`is_saved_dataset`: a folder written by ``datasets``' ``save_to_disk`` (Dataset or DatasetDict).
* :func:`looks_like_hub_id`: ``name`` or ``org/name`` that is not a local path.
* :func:`load_hub_dataset`: ``datasets.load_dataset`` for a Hub id, from the local ``datasets`` cache
  (``org___name``) or a Hub-cache snapshot (``datasets--org--name``) when offline (``HF_HUB_OFFLINE=1``), with a
  one-line error when it is in neither or the Hub cannot be reached.
* :func:`parse_phantoms_spec`: the one spelling of the built-in phantoms, ``phantoms:ANATOMY[:N[:SEED]]``
  (``phantoms:echo``, ``phantoms:echo:200``, ``phantoms:echo:200:4242``), read by training (``--dataset_name``),
  generation (``--labels``), evaluation (``--real`` / ``--generated`` / ``--train``) and reconstruction
  (``--image``). A text that starts with ``phantoms:`` is always this spelling, whatever folders exist (a folder
  of that name is written ``./phantoms:...``); a folder merely *named* ``phantoms_thyroid`` is a folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Optional, Union

__all__ = [
    "MAX_PHANTOMS",
    "PHANTOMS_PREFIX",
    "PHANTOMS_USAGE",
    "PhantomsSpec",
    "SAVED_DATASET_FILES",
    "hub_snapshot",
    "is_phantoms_spec",
    "is_saved_dataset",
    "load_hub_dataset",
    "looks_like_hub_id",
    "parse_phantoms_spec",
]

PathLike = Union[str, os.PathLike]

#: The largest N of a phantoms spelling: a bound checked before anything is generated (a million 64 px phantoms
#: are about 8 GB of PNG).
MAX_PHANTOMS = 1_000_000

#: Files that mark a ``save_to_disk`` folder.
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_saved_dataset(path: PathLike) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET_FILES)


def looks_like_hub_id(spec: str) -> bool:
    """Whether ``spec`` can be a Hub repository id (``name`` or ``org/name``) rather than a local path."""
    spec = str(spec)
    if not spec or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        return False
    return not (os.sep != "/" and os.sep in spec)


def hub_snapshot(name: str) -> Optional[str]:
    """The folder of the newest snapshot of the Hub dataset ``name`` in the local Hub cache
    (``HF_HUB_CACHE/datasets--org--name/snapshots/REV``, as ``huggingface-cli download --repo-type dataset``
    leaves it), or None; never goes online. ``datasets`` reads such a snapshot offline only as a local folder."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, repo_type="dataset", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or a malformed id): the caller reports it
        return None


def load_hub_dataset(
    name: str,
    config_name: Optional[str] = None,
    split: Optional[str] = None,
    cache_dir: Optional[str] = None,
    argument: str = "dataset",
) -> Any:
    """``datasets.load_dataset(name, config_name, split=split, cache_dir=cache_dir)`` with clear errors.

    Raises:
        ValueError: naming ``argument`` when the Hub cannot be reached (offline mode without a cached copy, no
            network) or the dataset does not exist, with what to do instead.
    """
    import datasets

    try:
        return datasets.load_dataset(name, config_name, split=split, cache_dir=cache_dir)
    except ConnectionError as err:
        snapshot = hub_snapshot(name)
        if snapshot is not None:  # downloaded into the Hub cache (datasets--org--name), never prepared
            return datasets.load_dataset(snapshot, config_name, split=split, cache_dir=cache_dir)
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or os.environ.get(
            "HF_DATASETS_OFFLINE", ""
        ).strip().lower() in ("1", "true", "yes", "on")
        if offline:
            raise ValueError(
                f"{argument} {name!r}: the Hub dataset is not in the local cache and offline mode is on "
                "(HF_HUB_OFFLINE=1); download it once with network access, or pass a local folder or saved dataset"
            ) from err
        raise ValueError(
            f"{argument} {name!r}: the Hub could not be reached ({err}); check the network or pass a local folder"
        ) from err
    except datasets.exceptions.DatasetNotFoundError as err:
        raise ValueError(f"{argument} {name!r} is neither a local path nor a dataset on the Hub: {err}") from err


# ----------------------------------------------------------------------------------------------------------------
# The built-in phantoms
# ----------------------------------------------------------------------------------------------------------------

PHANTOMS_PREFIX = "phantoms"
PHANTOMS_USAGE = "phantoms:ANATOMY[:N[:SEED]] (e.g. phantoms:echo, phantoms:echo:200, phantoms:echo:200:4242)"


@dataclass(frozen=True)
class PhantomsSpec:
    """A parsed ``phantoms:ANATOMY[:N[:SEED]]``: ``num`` and ``seed`` are None where the text leaves them to the
    caller (:meth:`seed_or` gives the seed with the caller's default; 0 is the spelling's own)."""

    anatomy: str
    num: Optional[int] = None
    seed: Optional[int] = None

    def seed_or(self, default: int = 0) -> int:
        """The seed of the text, else ``default``."""
        return int(default) if self.seed is None else self.seed

    def __str__(self) -> str:
        tail = [] if self.num is None else [str(self.num)] + ([] if self.seed is None else [str(self.seed)])
        return ":".join([PHANTOMS_PREFIX, self.anatomy] + tail)


def is_phantoms_spec(spec: Any) -> bool:
    """Whether ``spec`` is a text naming the built-in phantoms (``phantoms:...``)."""
    return isinstance(spec, str) and spec.split(":", 1)[0] == PHANTOMS_PREFIX and ":" in spec


def parse_phantoms_spec(spec: str, argument: str = "source", require_num: bool = False) -> PhantomsSpec:
    """Parse ``phantoms:ANATOMY[:N[:SEED]]``.

    Args:
        spec: the text.
        argument: the argument name for error messages (e.g. ``"--labels"``).
        require_num: refuse a text without N (where the caller has no default count).

    Raises:
        ValueError: naming ``argument`` and the expected spelling, for an unknown anatomy, a non-integer or
            non-positive N, or a negative SEED.
    """
    from ..phantoms import ANATOMIES

    parts = str(spec).split(":")
    if parts[0] != PHANTOMS_PREFIX or not 2 <= len(parts) <= 4:
        raise ValueError(f"`{argument}` {spec!r} is not a phantom source; expected {PHANTOMS_USAGE}")
    anatomy = parts[1]
    if anatomy not in ANATOMIES:
        raise ValueError(f"`{argument}` {spec!r}: anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    try:
        num = int(parts[2]) if len(parts) >= 3 else None
        seed = int(parts[3]) if len(parts) == 4 else None
    except ValueError:
        raise ValueError(f"`{argument}` {spec!r}: N and SEED must be integers; expected {PHANTOMS_USAGE}") from None
    if num is None and require_num:
        raise ValueError(f"`{argument}` {spec!r} needs the number of phantoms N; expected phantoms:ANATOMY:N[:SEED] "
                         "(e.g. phantoms:echo:100)")
    if (num is not None and num < 1) or (seed is not None and seed < 0):
        raise ValueError(f"`{argument}` {spec!r}: N must be positive and SEED non-negative")
    if num is not None and num > MAX_PHANTOMS:
        raise ValueError(f"`{argument}` {spec!r}: N is at most {MAX_PHANTOMS:,} phantoms per source (got {num:,}); "
                         "write larger sets in parts with `ultrasound-diffusers phantoms --seed`")
    if seed is not None and seed >= 2**32:
        raise ValueError(f"`{argument}` {spec!r}: SEED must be below 2**32, got {seed}")
    return PhantomsSpec(anatomy=anatomy, num=num, seed=seed)
