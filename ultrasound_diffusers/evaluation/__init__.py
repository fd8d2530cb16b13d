"""Evaluation of generated ultrasound images.

* :mod:`.fid`: FID and KID on InceptionV3 pool features (TorchScript weights; no torchvision).
* :mod:`.memorization`: nearest-neighbour distances to the training set and a held-out set.
* :mod:`.physics`: depth-intensity profile, speckle statistics, per-class contrast, signal outside the fan.
* :mod:`.segmentation`: downstream segmentation (a tiny UNet, or MONAI's UNet as echo-from-noise trains it, trained on
  generated pairs and tested on real ones).
* :mod:`.io`: loading image sets from folders, ``datasets`` datasets and arrays.
* :mod:`.report`: :func:`evaluate`, which runs everything and writes a report folder.

matplotlib is imported only when a plot is drawn.
"""

from .fid import (
    InceptionFeatureExtractor,
    RandomFeatureExtractor,
    extract_features,
    feature_statistics,
    find_fid_helper_weights,
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    load_inception,
    sqrtm_psd,
    trace_sqrt_product,
)
from .io import ImageSet, load_image_set
from .memorization import memorization_statistics, nearest_neighbours
from .physics import (
    ECHO_CLASS_NAMES,
    ECHO_CONTRAST_PAIRS,
    LOG_RAYLEIGH_STD_DB,
    RAYLEIGH_SNR,
    FanGeometry,
    class_contrasts,
    class_intensity_statistics,
    depth_intensity_profile,
    outside_fan_signal,
    profile_distance,
    profile_slope,
    speckle_statistics,
)
from .report import ALL_METRICS, evaluate, format_summary, summary_rows
from .segmentation import (
    SEGMENTERS,
    MonaiUNetSegmenter,
    TinyUNet,
    build_segmenter,
    dice_per_class,
    downstream_segmentation,
    echo_structure_dice,
    train_segmentation_model,
)

__all__ = [
    "ALL_METRICS",
    "ECHO_CLASS_NAMES",
    "ECHO_CONTRAST_PAIRS",
    "LOG_RAYLEIGH_STD_DB",
    "RAYLEIGH_SNR",
    "SEGMENTERS",
    "FanGeometry",
    "ImageSet",
    "InceptionFeatureExtractor",
    "MonaiUNetSegmenter",
    "RandomFeatureExtractor",
    "TinyUNet",
    "build_segmenter",
    "class_contrasts",
    "class_intensity_statistics",
    "depth_intensity_profile",
    "dice_per_class",
    "downstream_segmentation",
    "echo_structure_dice",
    "evaluate",
    "extract_features",
    "feature_statistics",
    "find_fid_helper_weights",
    "format_summary",
    "frechet_distance",
    "frechet_distance_from_features",
    "kernel_inception_distance",
    "load_image_set",
    "load_inception",
    "memorization_statistics",
    "nearest_neighbours",
    "outside_fan_signal",
    "profile_distance",
    "profile_slope",
    "speckle_statistics",
    "sqrtm_psd",
    "summary_rows",
    "trace_sqrt_product",
    "train_segmentation_model",
]
