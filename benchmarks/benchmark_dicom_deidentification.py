"""What ``convert_dicom``'s fail-closed de-identification keeps and drops on real ultrasound DICOM files.

Run: ``python benchmarks/benchmark_dicom_deidentification.py [--max_frames 10] [FOLDER ...]`` (prints; nothing
is asserted). Without folders it uses the ultrasound files of pydicom's test data and, when the optional
``pydicom-data`` package is installed, its ultrasound files too. Per file: the fitted scan-area shape (or why
none was found), the fraction of the frame it covers and the seconds spent finding it; then the whole
conversion's de-identification report.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile
import time
import warnings


def ultrasound_files():
    import pydicom
    from pydicom.data import get_testdata_file

    paths = [get_testdata_file(n) for n in ("examples_rgb_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm", "ExplVR_BigEnd.dcm", "examples_ybr_color.dcm")]
    try:
        import data_store  # the pydicom-data package

        for path in sorted(glob.glob(os.path.join(os.path.dirname(data_store.__file__), "data", "*"))):
            try:
                if pydicom.dcmread(path, stop_before_pixels=True).get("Modality") == "US":
                    paths.append(path)
            except Exception:
                continue
    except ImportError:
        pass
    return paths


def main() -> None:
    import pydicom

    from ultrasound_diffusers.data.dicom import convert_dicom, deidentification_report, dicom_frames_to_gray, find_scan_area, ultrasound_region

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*")
    parser.add_argument("--max_frames", type=int, default=10)
    args = parser.parse_args()
    paths = [p for f in args.folders for p in sorted(glob.glob(os.path.join(f, "**", "*"), recursive=True)) if os.path.isfile(p)] or ultrasound_files()
    print(f"{'file':34s} {'frames':>6s} {'shape':>10s} {'area':>6s} {'s':>6s}  reason")
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
            frames = dicom_frames_to_gray(ds)
        except Exception as err:
            print(f"{os.path.basename(path)[:34]:34s} {'-':>6s} {'unreadable':>10s} {'':>6s} {'':>6s}  {type(err).__name__}")
            continue
        box = ultrasound_region(ds, *frames.shape[1:])[0]
        start = time.perf_counter()
        mask, info = find_scan_area(frames, region_box=box)
        seconds = time.perf_counter() - start
        shape = info.get("shape", "none") if mask is not None else "dropped"
        area = f"{mask.mean():.3f}" if mask is not None else "-"
        print(f"{os.path.basename(path)[:34]:34s} {frames.shape[0]:6d} {shape:>10s} {area:>6s} {seconds:6.2f}  {info.get('reason', '')}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(paths):
            shutil.copy(path, os.path.join(tmp, f"{i:03d}.dcm"))
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, report = convert_dicom(tmp, max_frames=args.max_frames, return_report=True)
        print(f"\nconvert_dicom on {len(paths)} files (max_frames={args.max_frames}): {time.perf_counter() - start:.1f} s")
    print(deidentification_report(report))


if __name__ == "__main__":
    main()
