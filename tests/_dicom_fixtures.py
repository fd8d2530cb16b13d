"""Small ultrasound DICOM files written with pydicom, for the DICOM converter and de-identification tests."""

from __future__ import annotations

import numpy as np


def _ultrasound_dataset(frames: int, attributes: dict):
    """The header every test file shares: Ultrasound (Multi-frame) Image Storage, explicit little endian, new
    UIDs, modality US, then ``attributes`` (DICOM keywords)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1" if frames > 1 else "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def write_ultrasound_dicom(path, pixels, photometric: str = "MONOCHROME2", bits_stored: int = 8, **attributes):
    """Write ``pixels`` ([H, W] or [T, H, W] integers) as an Ultrasound (Multi-frame) Image Storage file.

    ``attributes`` are set on the dataset as DICOM keywords (``PatientName="Doe^Jane"``, ``FrameTime="33.3"``);
    a multi-frame file gets ``NumberOfFrames``. Returns the written ``pydicom.Dataset``."""
    pixels = np.asarray(pixels)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds = _ultrasound_dataset(frames, attributes)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype(np.uint8 if bits_stored <= 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_rgb_ultrasound_dicom(path, pixels, **attributes):
    """Write RGB ``pixels`` ([H, W, 3] or [T, H, W, 3] uint8, colour-by-pixel) as an Ultrasound Image Storage file."""
    pixels = np.asarray(pixels, np.uint8)
    frames = pixels.shape[0] if pixels.ndim == 4 else 1
    ds = _ultrasound_dataset(frames, attributes)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = pixels.shape[-3:-1]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def sector(height: int, width: int, half_angle_deg: float = 38.0) -> np.ndarray:
    """bool [H, W]: a sector with its apex at the top centre, reaching 93 % of the height."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    ax, ay = 0.5 * width, 0.04 * height
    radius = np.hypot(xx - ax, yy - ay)
    angle = np.degrees(np.arctan2(xx - ax, yy - ay))
    return (np.abs(angle) <= half_angle_deg) & (radius <= 0.93 * height) & (radius > 0.03 * height)


def speckle_frame(rng, height: int = 192, width: int = 256, reflector: bool = False) -> np.ndarray:
    """A B-mode-like frame (uint8 [H, W]): fully developed speckle (a complex Gaussian field smoothed by an
    anisotropic point spread, its envelope log-compressed over 40 dB, mean grey about 90, over a noise floor of 4-16) inside a
    sector, zero outside. ``reflector`` adds a bright curved specular line (a pericardium-like boundary, saturating in places)."""
    from scipy import ndimage as ndi

    field = rng.normal(size=(2, height, width))
    field = np.stack([ndi.gaussian_filter(f, (1.0, 2.0)) for f in field])
    texture = ndi.gaussian_filter(rng.normal(size=(height, width)), 12)
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-9)
    envelope = np.hypot(field[0], field[1]) * (0.5 + texture)
    db = 20 * np.log10(envelope / np.percentile(envelope, 99.5) + 1e-6)
    image = (db + 40.0) / 40.0 * 255.0 - 100.0
    if reflector:
        yy, xx = np.mgrid[0:height, 0:width]
        centre = 0.7 * height + 0.08 * height * np.sin(xx / width * 3.0)
        line = 255.0 * np.exp(-((yy - centre) ** 2) / (2 * 2.0**2)) * (0.9 + 0.3 * rng.random((height, width)))
        image = np.maximum(image, line)
    image = np.maximum(image, rng.uniform(4.0, 16.0, (height, width)))  # the scanner's noise floor
    return np.where(sector(height, width), np.clip(image, 0, 255), 0).astype(np.uint8)


def draw_text(image, text: str, xy, size: int, fill):
    """``text`` drawn with Pillow's default font at ``size`` px (anti-aliased) onto a copy of ``image`` (uint8 [H, W] or
    [H, W, 3]; ``fill`` a grey level or an RGB tuple)."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(np.asarray(image, np.uint8))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        font = ImageFont.load_default()
    ImageDraw.Draw(canvas).text(xy, text, fill=fill, font=font)
    return np.array(canvas)
