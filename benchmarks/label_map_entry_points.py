"""Which label maps each entry point accepts, and how each resizes a 96 x 96 map to 40 x 40 (issue 15's table).

    python benchmarks/label_map_entry_points.py

Prints a markdown table: one row per input, one column per entry point (generate, train, evaluate, the
pipelines, demo / reconstruct --labels files, the model's own prepare_segmap); "ok" or "refused". The last row
counts the pixels in which each entry point's 96 -> 40 nearest resize differs from the pipeline's.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

INPUTS = {
    "uint8 map": np.array([[0, 1], [2, 3]], np.uint8),
    "float map with whole values": np.array([[0.0, 1.0], [2.0, 3.0]]),
    "negative integers": np.array([[0, -1], [2, 3]]),
    "fractional values": np.array([[0.5, 1.0], [2.0, 3.0]]),
    "RGB PIL, equal channels": Image.fromarray(np.stack([np.array([[0, 1], [2, 3]], np.uint8)] * 3, -1)),
    "RGB PIL, colour coded": Image.fromarray(np.dstack([np.eye(2, dtype=np.uint8) * 200, np.zeros((2, 2, 2), np.uint8)])),
}


def _as_file(value, folder: Path, name: str) -> Path:
    """The input as the file a user would pass on the command line (.npy for arrays, PNG for PIL images)."""
    if isinstance(value, Image.Image):
        path = folder / f"{name}.png"
        value.save(path)
    else:
        path = folder / f"{name}.npy"
        np.save(path, np.asarray(value))
    return path


def entry_points(folder: Path):
    from ultrasound_diffusers.demo import load_label_maps
    from ultrasound_diffusers.evaluation.io import label_to_array
    from ultrasound_diffusers.image_processor import to_label_array as generation_reader
    from ultrasound_diffusers.models.unet_semantic_2d import prepare_segmap as model_prepare
    from ultrasound_diffusers.pipelines.pipeline_utils import prepare_segmap

    sys.path.insert(0, str(REPO / "training"))
    try:
        train_semantic = importlib.import_module("train_semantic")
    finally:
        sys.path.remove(str(REPO / "training"))

    def files(value):
        return load_label_maps([_as_file(value, folder, f"map{len(list(folder.iterdir()))}")])[0]

    def model(value):
        labels = generation_reader(value) if isinstance(value, Image.Image) else np.asarray(value)
        return model_prepare(torch.as_tensor(labels)[None], 8)

    return {
        "generate": generation_reader,
        "train": train_semantic.label_array,
        "evaluate": label_to_array,
        "pipelines": lambda v: prepare_segmap(v, 8, (2, 2)),
        "demo / reconstruct files": files,
        "model": model,
    }


def resize_differences():
    from ultrasound_diffusers.data.phantoms import phantom_label_maps

    sys.path.insert(0, str(REPO / "tests"))
    try:
        from test_image_processor import every_entry_point_resize
    finally:
        sys.path.remove(str(REPO / "tests"))
    labels = phantom_label_maps(1, anatomy="echo", size=96, seed=1)[0].astype(np.int64)
    results = every_entry_point_resize(labels, (40, 40))
    return {name: int((result != results["pipeline"]).sum()) for name, result in results.items()}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        readers = entry_points(Path(tmp))
        print("| input | " + " | ".join(readers) + " |")
        print("|---" * (len(readers) + 1) + "|")
        for name, value in INPUTS.items():
            cells = []
            for reader in readers.values():
                try:
                    reader(value)
                    cells.append("ok")
                except (ValueError, TypeError):
                    cells.append("refused")
            print(f"| {name} | " + " | ".join(cells) + " |")
    diffs = resize_differences()
    print()
    print("96 x 96 -> 40 x 40 nearest resize, pixels that differ from the pipelines': "
          + ", ".join(f"{name} {count}" for name, count in diffs.items()))


if __name__ == "__main__":
    main()
