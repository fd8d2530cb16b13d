"""Datasets for ultrasound diffusion: physics phantoms, label codings, augmentation and converters.

* :mod:`.phantoms` - :func:`generate_phantoms`, :func:`phantom_label_maps`, :func:`make_phantom`.
* :mod:`.labels` - label codings (echo, CAMUS, thyroid), re-coding with the fan, :func:`colorize_labels`.
* :mod:`.augment` - the echo-from-noise label augmentation.
* converters: :func:`convert_camus` (:mod:`.camus`), :func:`convert_thyroid` (:mod:`.thyroid`),
  :func:`convert_lung` (:mod:`.lung`), :func:`convert_dicom` (:mod:`.dicom`); shared helpers and
  :func:`save_dataset` in :mod:`.converters`.

The converters (and their heavy readers) are imported on first use.
"""

from ..utils.lazy import lazy_module_getattr
from .augment import LabelAugmentation, augment_label_map, augment_label_maps
from .converters import ConversionWarning, detect_scan_area, get_converter, save_dataset
from .labels import (
    CAMUS_LABELS,
    ECHO_LABELS,
    NUM_CAMUS_CLASSES,
    NUM_ECHO_CLASSES,
    NUM_THYROID_CLASSES,
    THYROID_LABELS,
    apply_fan,
    colorize_labels,
    echo_to_camus,
    label_grid,
    label_palette,
    overlay_labels,
    recode_camus_with_fan,
)
from .phantoms import (
    ANATOMIES,
    PhysicsParameters,
    ProbeGeometry,
    generate_phantoms,
    iter_phantom_batches,
    make_phantom,
    phantom_envelope,
    phantom_label_maps,
)

#: module -> the converters it provides, imported on first use (with their heavy readers)
_LAZY = {
    ".camus": ("convert_camus",), ".thyroid": ("convert_thyroid",), ".lung": ("convert_lung",),
    ".dicom": ("DeidentificationPolicy", "convert_dicom"),
}

__getattr__ = lazy_module_getattr(__name__, _LAZY)


__all__ = [
    "ANATOMIES", "CAMUS_LABELS", "ConversionWarning", "ECHO_LABELS", "LabelAugmentation", "NUM_CAMUS_CLASSES",
    "NUM_ECHO_CLASSES", "NUM_THYROID_CLASSES", "PhysicsParameters", "ProbeGeometry", "THYROID_LABELS",
    "apply_fan", "augment_label_map", "augment_label_maps", "colorize_labels", "convert_camus", "convert_dicom",
    "convert_lung", "convert_thyroid", "detect_scan_area", "echo_to_camus", "generate_phantoms", "get_converter",
    "iter_phantom_batches", "label_grid", "label_palette", "make_phantom", "overlay_labels", "phantom_envelope", "phantom_label_maps",
    "recode_camus_with_fan", "save_dataset",
]
