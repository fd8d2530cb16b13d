"""One call that evaluates a generated image set against real images and writes a report folder.

``evaluate(real, generated, out_dir, train=...)`` writes, atomically (the folder appears complete or not at all)::

    out_dir/
      metrics.json        every number (strict JSON: NaN -> null)
      report.md           tables and the plots
      sample_grid.png     real and generated samples (and their label maps)
      plots/*.png         depth profile, speckle, class histograms, memorisation histogram and closest pairs

and returns the metrics as a dict. Metrics:

* ``fid``, ``kid``: InceptionV3 features (:mod:`.fid`) of real vs generated images.
* ``memorization``: nearest-neighbour distances of generated images to ``train`` and to ``real`` (held out).
* ``depth``: depth-intensity profiles inside the fan, their distance, and the signal outside the fan.
* ``speckle``: speckle statistics in homogeneous windows.
* ``classes``: per-class intensity statistics and contrasts (needs label maps).
* ``segmentation``: a segmentation network trained on generated pairs and tested on real pairs, and the
  real-trained reference (needs label maps on generated and real images): Dice per class and, for echo label
  maps, the LV endocardium / epicardium / left atrium Dice echo-from-noise reports. ``segmenter`` picks the
  network (:data:`~.segmentation.SEGMENTERS`): ``"tinyunet"`` (default, fast) or ``"monai-unet"`` (MONAI's UNet
  as echo-from-noise trains it; the ``monai`` extra).
* ``realism``: :func:`~.realism.realism_report` of the real and generated sets over the fan (grey-level
  distribution and skew, homogeneous-window std, speckle grain relative to depth, far-field fall-off), checked
  against the real-scan ranges :data:`~.realism.REAL_SCAN_RANGES` when one exists for the image height.

With ``metrics=None`` every cheap metric (:data:`DEFAULT_METRICS`, seconds to a minute on a CPU) whose inputs
are present runs; the expensive ones (:data:`EXPENSIVE_METRICS`: ``segmentation`` trains two networks, minutes
to tens of minutes on a CPU) are opt-in, by name or with ``metrics="all"`` (every metric whose inputs are
present). Metrics that do not run are listed under ``skipped`` with the reason; a metric named explicitly whose
inputs are missing raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..geometry import FanGeometry
from ..utils.io import check_output_dir, replace_directory
from . import physics
from .io import ImageSet, load_image_set
from .options import OPTION_NAMES, EvaluationOptions

ALL_METRICS: Tuple[str, ...] = (
    "fid", "kid", "memorization", "depth", "speckle", "classes", "segmentation", "realism"
)


#: Metrics that train a network: run only when named or with ``metrics="all"`` (``--metrics all``).
EXPENSIVE_METRICS: Tuple[str, ...] = ("segmentation",)
#: What ``metrics=None`` (the command's default) runs: every metric but the expensive ones.
DEFAULT_METRICS: Tuple[str, ...] = tuple(m for m in ALL_METRICS if m not in EXPENSIVE_METRICS)
#: The ``skipped`` reason of an expensive metric left out by default.
OPT_IN_REASON = ("trains a segmentation network (minutes on a CPU), so it runs only when asked: "
                 "`--metrics all` or name it in `--metrics` (Python: metrics=\"all\")")


def select_metrics(metrics: Optional[Union[str, Sequence[str]]]) -> Tuple[List[str], bool, List[str]]:
    """What an ``evaluate`` / ``compare`` call runs.

    Returns:
        ``(wanted, explicit, opted_out)``: the metrics to try; whether they were named (then missing inputs are an
        error, else a ``skipped`` entry); the expensive metrics left out because they were not asked for
        (``metrics=None``). ``"all"`` selects every metric, not explicit.
    """
    if metrics is None:
        return list(DEFAULT_METRICS), False, list(EXPENSIVE_METRICS)
    requested = parse_metrics(metrics)
    if requested is None:  # "all"
        return list(ALL_METRICS), False, []
    return requested, True, []


def parse_metrics(metrics: Optional[Union[str, Sequence[str]]]) -> Optional[List[str]]:
    """``"fid,kid"`` or ``["fid", "kid"]`` -> validated list (``None``/``"all"`` -> None: every applicable one)."""
    if metrics is None:
        return None
    if isinstance(metrics, str):
        if metrics.strip().lower() in ("", "all"):
            return None
        metrics = [m for m in metrics.split(",")]
    names = [m.strip().lower() for m in metrics if m.strip()]
    aliases = {"memorisation": "memorization", "depth_profile": "depth", "class": "classes", "seg": "segmentation"}
    names = [aliases.get(m, m) for m in names]
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"`metrics` has unknown entries {unknown}; choose from {', '.join(ALL_METRICS)}")
    return list(dict.fromkeys(names))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _describe(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, ImageSet):
        return source.source
    return type(source).__name__


def add_train_source(report: Dict[str, Any], train: Any, train_set: ImageSet) -> None:
    """Record the training set (memorisation reference) in a report's sources, counts, sizes and labels."""
    report["sources"]["train"] = _describe(train)
    report["num_images"]["train"] = len(train_set)
    report["image_size"]["train"] = list(train_set.size)
    report["has_labels"]["train"] = train_set.has_labels


def _load(source: Any, name: str, opts: EvaluationOptions) -> ImageSet:
    try:
        return load_image_set(
            source, label_column=opts.label_column, image_column=opts.image_column, split=opts.split,
            max_images=opts.max_images,
        )
    except ValueError as err:
        raise ValueError(f"`{name}`: {err}") from err


def evaluate(
    real: Any,
    generated: Any,
    out_dir: Union[str, Path],
    train: Any = None,
    metrics: Optional[Union[str, Sequence[str]]] = None,
    *,
    options: Optional[EvaluationOptions] = None,
    num_samples_in_grid: int = 8,
    **fields: Any,
) -> Dict[str, Any]:
    """Evaluate ``generated`` images against ``real`` ones and write a report folder.

    Args:
        real: real (held-out) images: a folder, saved dataset, Hub name, ``datasets`` object, array or
            :class:`~ultrasound_diffusers.evaluation.io.ImageSet` (see :func:`load_image_set`).
        generated: generated images, same kinds of source.
        out_dir: report folder, written atomically. An earlier report of ``evaluate`` there is replaced (unless
            ``replace_report=False``); any other non-empty folder needs ``overwrite=True``; a folder holding
            ``real``, ``generated`` or ``train``, the working directory and its parents are always refused.
        train: optional training images (memorisation; with labels also the segmentation reference).
        metrics: subset of :data:`ALL_METRICS` (list or comma string); None runs the cheap ones whose inputs are
            present (:data:`DEFAULT_METRICS`, no ``segmentation``); ``"all"`` every metric whose inputs are present.
        options: the settings shared with :func:`~.comparison.compare` (:class:`~.options.EvaluationOptions`:
            label and image columns, split, feature extractor, probe geometry, class names, KID subsets,
            segmentation training, seed, overwrite, progress, ...); default: all defaults.
        num_samples_in_grid: images per row in ``sample_grid.png``.
        fields: :class:`~.options.EvaluationOptions` fields by name (``seg_steps=50``), replacing those of
            ``options``; any other name is a TypeError.

    Returns:
        The metrics dict that is also written to ``metrics.json``.
    """
    opts = EvaluationOptions.build(options, fields, "evaluate")
    wanted, explicit, opted_out = select_metrics(metrics)
    opts = dataclasses.replace(opts, segmenter=_check_segmenter(opts.segmenter, wanted))
    out_dir = check_output_dir(
        out_dir, "evaluate", inputs=[real, generated, train], overwrite=opts.overwrite,
        replace_own=opts.replace_report, argument="`out_dir`",
    )
    names = opts.names

    real_set = _load(real, "real", opts)
    gen_set = _load(generated, "generated", opts)
    train_set = None if train is None else _load(train, "train", opts)

    report: Dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sources": {"real": _describe(real), "generated": _describe(generated)},
        "num_images": {"real": len(real_set), "generated": len(gen_set)},
        "image_size": {"real": list(real_set.size), "generated": list(gen_set.size)},
        "has_labels": {"real": real_set.has_labels, "generated": gen_set.has_labels},
        "config": {
            "geometry": opts.fan.to_dict(),
            "metrics_requested": wanted,
            "seed": int(opts.seed),
        },
        "skipped": {m: OPT_IN_REASON for m in opted_out},
        "warnings": [],
    }
    if train_set is not None:
        add_train_source(report, train, train_set)
    figures: Dict[str, Any] = {}

    def skip(metric: str, reason: str) -> None:
        if explicit:
            raise ValueError(f"metric {metric!r} cannot run: {reason}")
        report["skipped"][metric] = reason

    _evaluate_metrics(report, figures, real_set, gen_set, train_set, wanted, skip, opts)

    figures["sample_grid"] = plot_sample_grid(
        {"real": real_set, "generated": gen_set}, num_samples_in_grid, num_classes=max(names) + 1 if names else 5,
        class_names=names,
    )
    report = _jsonable(report)
    markdown = render_markdown(report)

    def build(tmp: Path) -> None:
        (tmp / "plots").mkdir()
        for key, fig in figures.items():
            target = tmp / ("sample_grid.png" if key == "sample_grid" else f"plots/{key}.png")
            fig.savefig(target)
        (tmp / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(markdown, encoding="utf-8")

    replace_directory(build, out_dir, kind="evaluate")
    return report



def _evaluate_metrics(
    report: Dict[str, Any], figures: Dict[str, Any], real_set: ImageSet, gen_set: ImageSet,
    train_set: Optional[ImageSet], wanted: Sequence[str], skip, opts: EvaluationOptions,
    cache: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Every metric of ``wanted`` for one generated set against ``real_set``, written into ``report`` (and
    ``figures``); ``skip(metric, reason)`` handles a metric whose inputs are missing.

    ``cache`` (a dict, shared between calls for several generated sets against one real set) keeps what depends
    on the real/train sets only (real features, real realism statistics, the real-trained segmentation
    reference) so that it is computed once. Returns the per-image data the comparison report bootstraps:
    ``real_features``/``generated_features`` ``[N, D]`` and ``memorization`` (the nearest-neighbour stats).
    """
    cache = {} if cache is None else cache
    extras: Dict[str, Any] = {}
    geometry, names = opts.fan, opts.names
    # ---- FID / KID -------------------------------------------------------------------------------------------
    if "fid" in wanted or "kid" in wanted:
        extractor, reason = _make_extractor(opts.feature_extractor, opts.inception_weights, opts.device)
        if extractor is None:
            for m in ("fid", "kid"):
                if m in wanted:
                    skip(m, reason)
        else:
            extras["real_features"], extras["generated_features"] = _run_fid_kid(
                report, real_set, gen_set, extractor, wanted, opts.batch_size, opts.device, opts.kid_subsets,
                opts.kid_subset_size, opts.seed, opts.progress, real_features=cache.get("real_features"),
            )
            cache["real_features"] = extras["real_features"]

    # ---- memorisation ----------------------------------------------------------------------------------------
    if "memorization" in wanted:
        if train_set is None:
            skip("memorization", "no training set given (`train` / --train)")
        else:
            extras["memorization"] = _run_memorization(
                report, figures, real_set, gen_set, train_set, opts.copy_fraction, opts.batch_size, opts.device
            )

    # ---- depth profile + outside fan -------------------------------------------------------------------------
    if "depth" in wanted:
        profiles = {
            "real": physics.depth_intensity_profile(real_set.images, geometry, num_bins=opts.num_depth_bins),
            "generated": physics.depth_intensity_profile(gen_set.images, geometry, num_bins=opts.num_depth_bins),
        }
        report["depth_profile"] = {
            **physics.profile_distance(profiles["real"], profiles["generated"]),
            "slope_real": physics.profile_slope(profiles["real"]),
            "slope_generated": physics.profile_slope(profiles["generated"]),
            "bin_centers": profiles["real"]["bin_centers"],
            "real": profiles["real"]["mean"],
            "generated": profiles["generated"]["mean"],
        }
        figures["depth_profile"] = physics.plot_depth_profiles(profiles)
        report["outside_fan"] = {
            name: physics.outside_fan_signal(s.images, geometry.depth_and_mask(*s.size)[1])
            for name, s in (("real", real_set), ("generated", gen_set))
        }

    # ---- speckle ---------------------------------------------------------------------------------------------
    if "speckle" in wanted:
        stats = {}
        for name, s in (("real", real_set), ("generated", gen_set)):
            regions = s.labels if s.has_labels else geometry.depth_and_mask(*s.size)[1].astype(np.int64)
            stats[name] = physics.speckle_statistics(
                s.images, regions=regions, window=opts.speckle_window, dynamic_range_db=opts.dynamic_range_db
            )
        figures["speckle"] = physics.plot_speckle_histograms(stats)
        report["speckle"] = {
            name: {k: v for k, v in st.items() if k != "snr_values"} for name, st in stats.items()
        }
        report["speckle"]["reference_snr"] = physics.RAYLEIGH_SNR
        if opts.dynamic_range_db is not None:
            report["speckle"]["reference_db_std"] = physics.LOG_RAYLEIGH_STD_DB
        if stats["real"]["snr_median"] is not None and stats["generated"]["snr_median"] is not None:
            report["speckle"]["snr_median_difference"] = stats["generated"]["snr_median"] - stats["real"]["snr_median"]
        for name, st in stats.items():
            if st["num_windows"] == 0:
                w = opts.speckle_window
                report["warnings"].append(f"speckle: no homogeneous {w}x{w} window in {name}")

    # ---- classes ---------------------------------------------------------------------------------------------
    if "classes" in wanted:
        labelled = [(n, s) for n, s in (("real", real_set), ("generated", gen_set)) if s.has_labels]
        if not labelled:
            skip("classes", "neither real nor generated images have label maps (--label_column / labels/ folder)")
        else:
            classes: Dict[str, Any] = {}
            for name, s in labelled:
                st = physics.class_intensity_statistics(s.images, s.labels, names)
                classes[name] = {"statistics": st, "contrast": physics.class_contrasts(st, opts.contrast_pairs)}
            report["classes"] = classes
            figures["class_histograms"] = physics.plot_class_histograms(
                {n: (s.images, s.labels) for n, s in labelled}, names
            )

    # ---- segmentation ----------------------------------------------------------------------------------------
    if "segmentation" in wanted:
        if not gen_set.has_labels or not real_set.has_labels:
            skip("segmentation", "needs label maps on both generated and real images")
        else:
            report["segmentation"] = _run_segmentation(
                real_set, gen_set, train_set, names, opts.seg_steps, opts.seg_batch_size, opts.seg_base_channels,
                opts.seed, opts.device, opts.progress, reference=cache.get("segmentation_reference"),
                segmenter=opts.segmenter,
            )
            if "trained_on_real" in report["segmentation"]:
                cache["segmentation_reference"] = report["segmentation"]["trained_on_real"]

    # ---- realism (issue 19) ----------------------------------------------------------------------------------
    if "realism" in wanted:
        if "realism_real" not in cache:
            cache["realism_real"] = _realism_of(real_set, geometry)
        report["realism"] = realism_section(
            {"real": cache["realism_real"], "generated": _realism_of(gen_set, geometry)}, real_set.size
        )

    return extras


def _realism_of(image_set: ImageSet, geometry: FanGeometry) -> Dict[str, Any]:
    """:func:`~.realism.realism_report` of a set, over the fan of ``geometry``."""
    from .realism import realism_report

    inside = geometry.depth_and_mask(*image_set.size)[1]
    return realism_report(image_set.images, inside)


def realism_section(stats: Mapping[str, Mapping[str, Any]], size: Tuple[int, int]) -> Dict[str, Any]:
    """The ``realism`` report entry: each set's :func:`~.realism.realism_report` and, when
    :data:`~.realism.REAL_SCAN_RANGES` has a range for images of this height (the fan's depth extent, 64 or
    128 px), :func:`~.realism.compare_to_reference` of each set against it."""
    from .realism import METRICS, REAL_SCAN_RANGES, compare_to_reference

    height = int(size[0])
    section: Dict[str, Any] = {"metrics": list(METRICS), "sets": {k: dict(v) for k, v in stats.items()}}
    if height in REAL_SCAN_RANGES:
        ranges = REAL_SCAN_RANGES[height]
        section["reference_resolution"] = height
        section["reference_ranges"] = {k: list(v) for k, v in ranges.items()}
        section["inside_reference"] = {k: compare_to_reference(v, ranges) for k, v in stats.items()}
    else:
        section["reference_resolution"] = None
        section["note"] = (f"no real-scan range for {height} px images (ranges exist for "
                           f"{sorted(k for k in REAL_SCAN_RANGES if k is not None)} px)")
    return section


def _make_extractor(feature_extractor: Any, inception_weights: Any, device: str) -> Tuple[Any, str]:
    import torch

    from .fid import RandomFeatureExtractor, load_inception

    if isinstance(feature_extractor, torch.nn.Module):
        return feature_extractor, ""
    if feature_extractor in (None, "inception"):
        try:
            return load_inception(inception_weights, device=device), ""
        except FileNotFoundError as err:
            if inception_weights is not None:
                raise
            return None, str(err)
    if feature_extractor == "random":
        return RandomFeatureExtractor(), ""
    raise ValueError(
        f"`feature_extractor` must be 'inception', 'random' or a torch.nn.Module, got {feature_extractor!r}"
    )


def _run_fid_kid(report, real_set, gen_set, extractor, wanted, batch_size, device, kid_subsets, kid_subset_size,
                 seed, progress, real_features=None) -> Tuple[np.ndarray, np.ndarray]:
    from .fid import extract_features, fid_kid_from_features

    real_f = real_features
    if real_f is None:
        real_f = extract_features(real_set.images, extractor, batch_size, device, progress, desc="features (real)")
    gen_f = extract_features(gen_set.images, extractor, batch_size, device, progress, desc="features (generated)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # collected in result["warnings"] instead
        res = fid_kid_from_features(
            real_f, gen_f, compute_fid="fid" in wanted, compute_kid="kid" in wanted, kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size, seed=seed,
        )
    name = getattr(extractor, "name", type(extractor).__name__)
    report["warnings"].extend(res.pop("warnings"))
    if "fid" in res:
        report["fid"] = {"value": res["fid"], "feature_extractor": name, "feature_dim": int(real_f.shape[1]),
                         "num_real": int(real_f.shape[0]), "num_generated": int(gen_f.shape[0])}
    if "kid_mean" in res:
        report["kid"] = {"mean": res["kid_mean"], "std": res["kid_std"], "subset_size": res["kid_subset_size"],
                         "num_subsets": res["kid_subsets"], "feature_extractor": name}
    return real_f, gen_f


def _run_memorization(report, figures, real_set, gen_set, train_set, copy_fraction, batch_size,
                      device) -> Dict[str, Any]:
    from .memorization import memorization_statistics, plot_closest_pairs, plot_memorization_histogram

    size = gen_set.size
    train_imgs = train_set.resized(size).images
    held = real_set.resized(size).images
    if train_set.size != size or real_set.size != size:
        report["warnings"].append(f"memorization: train/real images resized to the generated size {size}")
    stats = memorization_statistics(
        gen_set.images, train_imgs, held, copy_fraction=copy_fraction, batch_size=max(batch_size, 64), device=device
    )
    summary = dict(stats["summary"])
    summary["likely_copies"] = [
        {"generated": gen_set.names[i], "train": train_set.names[int(stats["train_indices"][i])],
         "distance": float(stats["train_distances"][i])}
        for i in summary["likely_copies"]
    ]
    report["memorization"] = summary
    figures["memorization_histogram"] = plot_memorization_histogram(stats)
    figures["closest_pairs"] = plot_closest_pairs(gen_set.images, train_imgs, stats, heldout=held)
    return stats


def _check_segmenter(segmenter: str, wanted: Sequence[str]) -> str:
    """The canonical segmenter name; with ``monai-unet`` and segmentation wanted, fail early if MONAI is missing."""
    from .segmentation import _import_monai_unet, get_segmenter

    name = get_segmenter(segmenter).name
    if name == "monai-unet" and "segmentation" in wanted:
        _import_monai_unet()
    return name


def _run_segmentation(real_set, gen_set, train_set, names, steps, batch_size, base_channels, seed, device,
                      progress, reference: Optional[Dict[str, Any]] = None,
                      segmenter: str = "tinyunet") -> Dict[str, Any]:
    """Downstream Dice of a model trained on ``gen_set``; ``reference`` reuses an earlier real-trained result."""
    from .segmentation import downstream_segmentation, get_segmenter

    size = real_set.size
    gen = gen_set.resized(size)
    labelled_train = train_set is not None and train_set.has_labels
    if labelled_train:
        test = real_set
        reference_train = train_set.resized(size)
        protocol = "reference trained on `train`, both models tested on all real images"
    elif len(real_set) >= 4:
        half = len(real_set) // 2
        reference_train, test = real_set.subset(slice(0, half)), real_set.subset(slice(half, None))
        protocol = "no labelled train set: reference trained on the first half of real, both tested on the second half"
    else:
        test, reference_train = real_set, None
        protocol = "too few real images for a reference; generated-trained model tested on all real images"
    num_classes = int(max(gen.labels.max(), real_set.labels.max(),
                          reference_train.labels.max() if reference_train is not None else 0)) + 1
    spec = get_segmenter(segmenter)
    kwargs = dict(num_classes=num_classes, class_names=names, steps=steps, batch_size=batch_size,
                  base_channels=base_channels, seed=seed, device=device, segmenter=spec.name)
    result: Dict[str, Any] = {"protocol": protocol, "steps": int(steps), "batch_size": int(batch_size),
                              "segmenter": spec.name, "segmenter_description": spec.description,
                              "image_size": list(size)}
    result["trained_on_generated"] = downstream_segmentation(
        gen.images, gen.labels, test.images, test.labels,
        progress="segmentation (generated)" if progress else False, **kwargs
    )
    if reference_train is not None and reference is not None:
        result["trained_on_real"] = reference
    elif reference_train is not None:
        result["trained_on_real"] = downstream_segmentation(
            reference_train.images, reference_train.labels, test.images, test.labels,
            progress="segmentation (real)" if progress else False, **kwargs
        )
    return result


def label_map_rgb(label_map, num_classes: int) -> np.ndarray:
    """``[H, W]`` integer label map -> ``[H, W, 3]`` float RGB in [0, 1] in the package's label colours (the echo
    palette of :func:`~ultrasound_diffusers.data.labels.colorize_labels`, as the demo, the app and the phantom
    pictures draw them; maps holding more classes than ``num_classes`` get further colours)."""
    from ..data.labels import colorize_labels

    arr = np.asarray(label_map).astype(np.int64)
    return colorize_labels(arr, num_classes=max(int(num_classes), int(arr.max(initial=0)) + 1)) / 255.0


def add_label_legend(fig, num_classes: int, class_names: Optional[Mapping[int, str]] = None) -> None:
    """A legend below the figure: one patch per class in :func:`label_map_rgb`'s colours, ``"k name"``."""
    from matplotlib.patches import Patch

    from ..data.labels import label_palette

    palette = label_palette(int(num_classes)) / 255.0
    names = dict(class_names or {})
    handles = [Patch(facecolor=palette[k], edgecolor="0.5", label=f"{k} {names.get(k, 'class')}".replace("_", " "))
               for k in range(int(num_classes))]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False,
               title="label map colours", title_fontsize=7)


def plot_sample_grid(sets: Mapping[str, ImageSet], num: int = 8, num_classes: int = 5,
                     class_names: Optional[Mapping[int, str]] = None):
    """Figure: one row of images per set (and one row of label maps for sets that have them, in the package's
    label colours with a legend of ``class_names``)."""
    from matplotlib.figure import Figure

    rows = []
    for name, s in sets.items():
        rows.append((name, s.images[:num], "gray", 0.0, 1.0))
        if s.has_labels:
            rows.append((f"{name} labels", s.labels[:num], "labels", 0, max(num_classes - 1, 1)))
    has_labels = any(r[2] == "labels" for r in rows)
    cols = max(len(r[1]) for r in rows)
    legend_height = 0.5 if has_labels else 0.0
    fig = Figure(figsize=(1.3 * cols + 0.6, 1.4 * len(rows) + legend_height), dpi=100)
    for r, (title, arrays, cmap, vmin, vmax) in enumerate(rows):
        for c, arr in enumerate(arrays):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            if cmap == "labels":
                ax.imshow(label_map_rgb(arr, num_classes), interpolation="nearest")
            else:
                ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    if has_labels:
        add_label_legend(fig, num_classes, class_names)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    return fig


# --------------------------------------------------------------------------------------------------------------
# Text output
# --------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def summary_rows(report: Mapping[str, Any]) -> List[Tuple[str, str, str]]:
    """``(metric, real / reference, generated)`` rows summarising a report."""
    rows: List[Tuple[str, str, str]] = []
    if "fid" in report:
        rows.append(("FID", "", _fmt(report["fid"]["value"])))
    if "kid" in report:
        rows.append(("KID (mean +- std)", "", f"{_fmt(report['kid']['mean'])} +- {_fmt(report['kid']['std'])}"))
    if "memorization" in report:
        m = report["memorization"]
        rows.append(("nearest-train L2, median", _fmt(m["baseline_distance"]["median"]),
                     _fmt(m["distance_to_train"]["median"])))
        if "distance_to_heldout" in m:
            rows.append(("nearest-held-out L2, median", "", _fmt(m["distance_to_heldout"]["median"])))
        rows.append(("likely copies of train images", "", f"{m['num_likely_copies']} / {m['num_generated']}"))
    if "depth_profile" in report:
        d = report["depth_profile"]
        rows.append(("depth profile distance (L1 / Linf)", "", f"{_fmt(d['l1'])} / {_fmt(d['linf'])}"))
        rows.append(("depth profile slope", _fmt(d["slope_real"]), _fmt(d["slope_generated"])))
    if "outside_fan" in report:
        o = report["outside_fan"]
        rows.append(("mean intensity outside fan", _fmt(o["real"]["mean_outside"]),
                     _fmt(o["generated"]["mean_outside"])))
    if "speckle" in report:
        s = report["speckle"]
        rows.append(("speckle mean/std, median (Rayleigh 1.91)", _fmt(s["real"]["snr_median"]),
                     _fmt(s["generated"]["snr_median"])))
        if "reference_db_std" in s:
            rows.append(("speckle dB std, median (5.57)", _fmt(s["real"].get("db_std_median")),
                         _fmt(s["generated"].get("db_std_median"))))
    if "classes" in report:
        c = report["classes"]
        pairs = sorted(set().union(*[set(v["contrast"]) for v in c.values()]))

        def difference(name: str, pair: str) -> Any:
            return c.get(name, {}).get("contrast", {}).get(pair, {}).get("difference")

        for pair in pairs:
            rows.append((f"contrast {pair}", _fmt(difference("real", pair)), _fmt(difference("generated", pair))))
    if "realism" in report and "inside_reference" in report["realism"]:
        inside = report["realism"]["inside_reference"]

        def count(name: str) -> str:
            flags = [v["inside"] for v in inside.get(name, {}).values()]
            return f"{sum(flags)} / {len(flags)}" if flags else "n/a"

        rows.append(("realism: properties inside real-scan range", count("real"), count("generated")))
    if "segmentation" in report:
        s = report["segmentation"]
        ref = s.get("trained_on_real", {}).get("mean_dice")
        which = "" if s.get("segmenter", "tinyunet") == "tinyunet" else f", {s['segmenter']}"
        rows.append((f"downstream mean Dice{which} (trained on real / generated)", _fmt(ref),
                     _fmt(s["trained_on_generated"]["mean_dice"])))
    return rows


def format_summary(report: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`summary_rows`, plus skipped metrics and warnings."""
    rows = [("metric", "real / reference", "generated")] + summary_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for metric, reason in report.get("skipped", {}).items():
        lines.append(f"skipped {metric}: {reason}")
    for message in report.get("warnings", []):
        lines.append(f"warning: {message}")
    return "\n".join(lines)


def realism_markdown(section: Mapping[str, Any]) -> List[str]:
    """``## Realism`` lines: one row per property with the real-scan range, each set's value and whether it
    lies inside the range (``in`` / ``OUT``; ``n/a`` without a range for this image size)."""
    sets = list(section["sets"])
    inside = section.get("inside_reference", {})
    ranges = section.get("reference_ranges", {})
    res = section.get("reference_resolution")
    out = ["## Realism", ""]
    if res is not None:
        out.append(f"Real-scan ranges: `REAL_SCAN_RANGES[{res}]` of `ultrasound_diffusers.evaluation.realism` "
                   "(pydicom-data B-mode scans resampled to this depth, 10 % margin); measured over the fan.")
    else:
        out.append(section.get("note", "no real-scan range for this image size") + "; values only.")
    out += ["", "| property | real-scan range | " + " | ".join(sets) + " | " +
            " | ".join(f"{n} inside" for n in sets) + " |", "|---|---|" + "---|" * (2 * len(sets))]
    for key in section["metrics"]:
        rng = ranges.get(key)
        rng_text = f"{_fmt(rng[0], 3)} to {_fmt(rng[1], 3)}" if rng else "n/a"
        values = " | ".join(_fmt(section["sets"][n].get(key)) for n in sets)
        flags = " | ".join(
            ("in" if inside[n][key]["inside"] else "OUT") if n in inside and key in inside[n] else "n/a" for n in sets
        )
        out.append(f"| {key} | {rng_text} | {values} | {flags} |")
    out.append("")
    return out


def structure_markdown(section: Mapping[str, Any]) -> List[str]:
    """Lines of the echo-from-noise structure table of a ``segmentation`` report entry (empty without
    ``structures``): Dice in % over the test set, and the per-image mean +- std echo-from-noise reports."""
    from .segmentation import ECHO_FROM_NOISE_DICE

    runs = [(k.replace("trained_on_", ""), section[k]) for k in ("trained_on_real", "trained_on_generated")
            if k in section and "structures" in section[k]]
    if not runs:
        return []

    def pct(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    out = ["Dice (%) of the structures echo-from-noise reports (LV endocardium = LV cavity, LV epicardium = LV "
           "cavity + myocardium), over all test pixels and as mean +- std over test images:", "",
           "| trained on | structure | Dice | per image mean +- std | echo-from-noise (synthetic-trained, real CAMUS) |",
           "|---|---|---|---|---|"]
    for name, run in runs:
        for structure, st in run["structures"].items():
            published = ECHO_FROM_NOISE_DICE.get(structure, "n/a") if name == "generated" else ""
            out.append(f"| {name} | {structure} | {pct(st['dice'])} | {pct(st['mean_per_image'])} +- "
                       f"{pct(st['std_per_image'])} | {published} |")
    out.append("")
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: summary table, per-metric tables and the plots (relative paths)."""
    out = ["# Evaluation report", ""]
    out.append(f"Created {report['created']}.")
    out.append("")
    out.append("| set | source | images | size | labels |")
    out.append("|---|---|---|---|---|")
    for name in report["num_images"]:
        size = "x".join(str(v) for v in report["image_size"][name])
        out.append(f"| {name} | `{report['sources'][name]}` | {report['num_images'][name]} | {size} | "
                   f"{report['has_labels'][name]} |")
    out += ["", "## Summary", "", "| metric | real / reference | generated |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(report)]
    out += ["", "![samples](sample_grid.png)", ""]
    if "fid" in report or "kid" in report:
        out += ["## FID / KID", ""]
        if "fid" in report:
            f = report["fid"]
            out.append(f"FID = {_fmt(f['value'])} from {f['num_real']} real and {f['num_generated']} generated images, "
                       f"{f['feature_dim']}-d features of {f['feature_extractor']}.")
        if "kid" in report:
            k = report["kid"]
            out.append(
                f"KID = {_fmt(k['mean'])} +- {_fmt(k['std'])} ({k['num_subsets']} subsets of {k['subset_size']})."
            )
        out.append("")
    if "memorization" in report:
        m = report["memorization"]
        out += ["## Memorisation", "", "| distance (L2, pixels in [0, 1]) | min | median | max |", "|---|---|---|---|"]
        rows_mem = (
            ("distance_to_train", "generated -> train"),
            ("distance_to_heldout", "generated -> held-out"),
            ("baseline_distance", f"baseline ({m['baseline']})"),
        )
        for key, label in rows_mem:
            if key in m:
                out.append(f"| {label} | {_fmt(m[key]['min'])} | {_fmt(m[key]['median'])} | {_fmt(m[key]['max'])} |")
        out += ["", f"Likely copies (closer than {_fmt(m['copy_threshold'])} to a training image): "
                    f"{m['num_likely_copies']} of {m['num_generated']}.", ""]
        out += ["![memorisation](plots/memorization_histogram.png)", ""]
        out += ["![closest pairs](plots/closest_pairs.png)", ""]
    if "depth_profile" in report:
        d = report["depth_profile"]
        out += ["## Depth-intensity profile", "",
                f"Mean |difference| {_fmt(d['l1'])}, max {_fmt(d['linf'])}; slope real {_fmt(d['slope_real'])}, "
                f"generated {_fmt(d['slope_generated'])} (intensity per unit normalised depth).", "",
                "![depth profile](plots/depth_profile.png)", ""]
        if "outside_fan" in report:
            out += ["| set | mean outside fan | mean inside fan | share of intensity outside |", "|---|---|---|---|"]
            for name, o in report["outside_fan"].items():
                out.append(f"| {name} | {_fmt(o['mean_outside'])} | {_fmt(o['mean_inside'])} | "
                           f"{_fmt(o['energy_fraction_outside'])} |")
            out.append("")
    if "speckle" in report:
        s = report["speckle"]
        out += ["## Speckle", "", "| set | windows | mean/std median | IQR | dB std median |", "|---|---|---|---|---|"]
        for name in ("real", "generated"):
            st = s[name]
            out.append(f"| {name} | {st['num_windows']} | {_fmt(st['snr_median'])} | {_fmt(st['snr_iqr'])} | "
                       f"{_fmt(st.get('db_std_median'))} |")
        out += ["", f"Fully developed speckle: mean/std {physics.RAYLEIGH_SNR:.3f}, dB std {physics.LOG_RAYLEIGH_STD_DB:.2f}.", "",
                "![speckle](plots/speckle.png)", ""]
    if "classes" in report:
        out += ["## Classes", "", "| set | class | mean | std | median | pixel share |", "|---|---|---|---|---|---|"]
        for name, c in report["classes"].items():
            for cls, st in c["statistics"].items():
                out.append(f"| {name} | {cls} | {_fmt(st['mean'])} | {_fmt(st['std'])} | {_fmt(st['median'])} | "
                           f"{_fmt(st['pixel_fraction'])} |")
        out += ["", "| set | pair | difference | ratio (dB) | CNR |", "|---|---|---|---|---|"]
        for name, c in report["classes"].items():
            for pair, st in c["contrast"].items():
                out.append(
                    f"| {name} | {pair} | {_fmt(st['difference'])} | {_fmt(st['ratio_db'])} | {_fmt(st['cnr'])} |"
                )
        out += ["", "![classes](plots/class_histograms.png)", ""]
    if "segmentation" in report:
        s = report["segmentation"]
        runs = [(k, s[k]) for k in ("trained_on_generated", "trained_on_real") if k in s]
        classes = list(runs[0][1]["dice"])
        network = f" Network: `{s['segmenter']}`, {s['segmenter_description']}." if "segmenter" in s else ""
        out += ["## Downstream segmentation", "", f"{s['protocol']}; {s['steps']} training steps.{network}", "",
                "| trained on | " + " | ".join(classes) + " | mean (foreground) |",
                "|---|" + "---|" * (len(classes) + 1)]
        for key, run in runs:
            out.append(f"| {key.replace('trained_on_', '')} | " + " | ".join(_fmt(run["dice"][c]) for c in classes)
                       + f" | {_fmt(run['mean_dice'])} |")
        out.append("")
        out += structure_markdown(s)
    out += closing_sections_markdown(report)
    return "\n".join(out)


def closing_sections_markdown(report: Mapping[str, Any]) -> List[str]:
    """The report's last sections, shared by the single-set and comparison reports: realism, what was skipped, and
    the warnings (markdown lines)."""
    out: List[str] = []
    if "realism" in report:
        out += realism_markdown(report["realism"])
    if report.get("skipped"):
        out += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in report["skipped"].items()] + [""]
    if report.get("warnings"):
        out += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return out


#: The keyword options that :func:`evaluate` and :func:`~.comparison.compare` share: the fields of
#: :class:`~.options.EvaluationOptions`.
SHARED_OPTIONS = OPTION_NAMES
