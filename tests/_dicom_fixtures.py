"""Small ultrasound DICOM files written with pydicom, for the DICOM converter and de-identification tests."""

from __future__ import annotations

import numpy as np


def write_ultrasound_dicom(path, pixels, photometric: str = "MONOCHROME2", bits_stored: int = 8, **attributes):
    """Write ``pixels`` ([H, W] or [T, H, W] integers) as an Ultrasound (Multi-frame) Image Storage file.

    ``attributes`` are set on the dataset as DICOM keywords (``PatientName="Doe^Jane"``, ``FrameTime="33.3"``);
    a multi-frame file gets ``NumberOfFrames``. Returns the written ``pydicom.Dataset``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
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
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype(np.uint8 if bits_stored <= 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds
