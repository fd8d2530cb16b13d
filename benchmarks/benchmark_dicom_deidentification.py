"""What ``convert_dicom``'s fail-closed de-identification keeps and drops on real ultrasound DICOM files.

Run: ``python benchmarks/benchmark_dicom_deidentification.py [--max_frames 10] [FOLDER ...]`` (prints; nothing
is asserted). Without folders it uses the ultrasound files of pydicom's test data and, when the optional
``pydicom-data`` package is installed, its ultrasound files too. Per file: the fitted scan-area shape (or why
none was found), the fraction of the frame it covers and the seconds spent finding it; then the whole
conversion's de-identification report.

Then burned-in text *inside* the scan area, on files that carry no ``BurnedInAnnotation`` tag (``--text_cases N``
per kind, 0 to skip): synthetic speckle frames (the test fixtures' generator, other seeds) with words drawn in
white, yellow on an RGB frame and a mid grey inside the speckle range (Pillow's default font and the OpenCV Hershey
fonts at random sizes, positions and thickness; other words than the tests use), cines with text in only some
frames, and caliper marks ("+" crosses with a number or a short measurement). Each case is one DICOM file converted
on its own at default settings; an identifier is *kept* when a kept frame shows at least half of its text's ink
unchanged. Beside it, the clean frames falsely dropped: synthetic speckle (plain, with a saturating specular
reflector, with a needle and its reverberations), the package's echo and thyroid phantoms, and the real files
above (their frames with no text inside the fitted scan area, judged by eye: see ``REAL_TEXT_INSIDE``).
``--learned_text_detector`` runs every conversion with the learned ink detector on (opt-in, see the README).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from typing import Dict

import numpy as np
import scipy.ndimage as ndi

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))  # _dicom_fixtures


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


#: real files whose fitted scan area holds burned-in text (looked at by eye): the "PWR" labels of the power
#: Doppler bars lie inside the fitted rectangle; their frames are not counted as clean
REAL_TEXT_INSIDE = ("US1_J2KI.dcm", "US1_J2KR.dcm", "US1_UNCI.dcm", "US1_UNCR.dcm", "examples_jpeg2k.dcm", "examples_rgb_color.dcm")

BENCH_WORDS = ["M. GARCIA", "ID 4471902", "14/02/1975", "ST LUKES", "Dr Okafor", "NHS 9434765919", "ACC 20231107",
               "Ward 7B", "HOLMES^ANNA", "Oakfield Hosp"]
CALIPER_LABELS = ["1", "2", "D1 3.4cm", "A 12.1", "3", "L 2.2"]


def _hershey_fonts():
    import cv2

    return [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
            cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
            cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC]


def _coverage(rng, text, shape, font_kind, inside):
    """Anti-aliased coverage (float [H, W] in 0-1) of ``text`` at a random place where it lies inside ``inside``."""
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    H, W = shape
    for _ in range(200):
        x, y = int(rng.integers(0.15 * W, 0.65 * W)), int(rng.integers(0.3 * H, 0.85 * H))
        if font_kind == "pil":
            canvas = Image.new("L", (W, H), 0)
            size = int(rng.integers(11, 22))
            try:
                font = ImageFont.load_default(size=size)
            except TypeError:
                font = ImageFont.load_default()
            ImageDraw.Draw(canvas).text((x, y), text, fill=255, font=font)
            cover = np.asarray(canvas, np.float32) / 255.0
        else:
            canvas = np.zeros((H, W), np.uint8)
            fonts = _hershey_fonts()
            cv2.putText(canvas, text, (x, y), fonts[int(rng.integers(len(fonts)))], float(rng.uniform(0.4, 0.8)), 255,
                        int(rng.integers(1, 3)), cv2.LINE_AA if rng.random() < 0.5 else cv2.LINE_8)
            cover = canvas.astype(np.float32) / 255.0
        if cover.any() and inside[cover > 0].all():
            return cover
    raise RuntimeError(f"no place for {text!r} inside the fan")


def _blend(image, cover, ink):
    """``ink`` (grey level or RGB) drawn over ``image`` (uint8 [H, W] or [H, W, 3]) with coverage ``cover`` [H, W]."""
    alpha = cover[..., None] if np.ndim(image) == 3 else cover
    return np.rint(np.asarray(image, np.float32) * (1 - alpha) + np.asarray(ink, np.float32) * alpha).astype(np.uint8)


def text_cases(n, seed=2024):
    """[(kind, frames uint8 [T, H, W] or [T, H, W, 3], rgb, ink masks bool [T, H, W] of the frames with text)]."""
    from _dicom_fixtures import sector, speckle_frame

    rng = np.random.default_rng(seed)
    H, W = 240, 320
    inside = ndi.binary_erosion(sector(H, W), iterations=6)
    cases = []
    for i in range(n):
        for kind in ("white", "yellow on RGB", "mid grey", "cine, text in some frames", "caliper marks"):
            font_kind = "pil" if i % 2 == 0 else "cv"
            word = BENCH_WORDS[int(rng.integers(len(BENCH_WORDS)))]
            frame = speckle_frame(rng, H, W)
            median = float(np.median(frame[sector(H, W)]))
            if kind == "cine, text in some frames":
                T = 6
                frames = np.stack([frame] + [speckle_frame(rng, H, W) for _ in range(T - 1)])
                cover = _coverage(rng, word, (H, W), font_kind, inside)
                ink = 255 if rng.random() < 0.5 else median + rng.uniform(-15, 15)
                shown = sorted(rng.choice(T, size=int(rng.integers(1, 4)), replace=False).tolist())
                masks = np.zeros((T, H, W), bool)
                for t in shown:
                    frames[t] = _blend(frames[t], cover, ink)
                    masks[t] = cover > 0.5
                cases.append((f"{kind} ({font_kind})", frames, False, masks))
                continue
            if kind == "caliper marks":
                image = frame.copy()
                masks = np.zeros((1, H, W), bool)
                for _ in range(2):
                    cy, cx = int(rng.integers(0.35 * H, 0.8 * H)), int(rng.integers(0.35 * W, 0.65 * W))
                    arm = int(rng.integers(3, 7))
                    image[cy, cx - arm : cx + arm + 1] = 255
                    image[cy - arm : cy + arm + 1, cx] = 255
                    masks[0, cy - arm : cy + arm + 1, cx - arm : cx + arm + 1] |= image[cy - arm : cy + arm + 1, cx - arm : cx + arm + 1] == 255
                cover = _coverage(rng, CALIPER_LABELS[int(rng.integers(len(CALIPER_LABELS)))], (H, W), font_kind, inside)
                image = _blend(image, cover, 255)
                masks[0] |= cover > 0.5
                cases.append((f"{kind} ({font_kind})", image[None], False, masks))
                continue
            cover = _coverage(rng, word, (H, W), font_kind, inside)
            if kind == "yellow on RGB":
                image = _blend(np.repeat(frame[..., None], 3, -1), cover, (255, 255, 0))
            else:
                image = _blend(frame, cover, 255 if kind == "white" else median + rng.uniform(-10, 10))
            cases.append((f"{kind} ({font_kind})", image[None], kind == "yellow on RGB", (cover > 0.5)[None]))
    return cases


def clean_cases(n, seed=7):
    """[(kind, frame uint8 [H, W])]: speckle, speckle with a saturating reflector, with a needle, phantoms."""
    import cv2
    from _dicom_fixtures import sector, speckle_frame

    from ultrasound_diffusers.data.phantoms import make_phantom

    rng = np.random.default_rng(seed)
    H, W = 240, 320
    out = []
    for i in range(n):
        out.append(("speckle", speckle_frame(rng, H, W)))
        out.append(("speckle + specular reflector", speckle_frame(rng, H, W, reflector=True)))
        frame = speckle_frame(rng, H, W)
        line = np.zeros((H, W), np.uint8)
        x0, y0 = int(rng.integers(0.3 * W, 0.5 * W)), int(rng.integers(0.15 * H, 0.3 * H))
        dx, dy = int(rng.integers(40, 100)), int(rng.integers(60, 120))
        for k in range(4):  # a needle and its reverberations, fading
            cv2.line(line, (x0, y0 + 8 * k), (x0 + dx, y0 + dy + 8 * k), 255 - 45 * k, 2)
        line = ndi.gaussian_filter(line.astype(np.float32), 0.7) * (0.75 + 0.5 * rng.random((H, W)))
        out.append(("speckle + needle", np.where(sector(H, W), np.maximum(frame, np.clip(line, 0, 255)), 0).astype(np.uint8)))
        for anatomy in ("echo", "thyroid"):
            image = make_phantom(anatomy, size=256, seed=seed, index=i)[0]
            out.append((f"{anatomy} phantom", np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)))
    return out


VERDICTS_ONLY = dict(keep_uncertain_frames=True, mask_text_inside_scan_area=True)
#: policy fields every conversion of this run gets (--learned_text_detector)
EXTRA: Dict[str, bool] = {}


def _convert_one(folder, **kwargs):
    from ultrasound_diffusers.data.dicom import convert_dicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dd, report = convert_dicom(folder, crop=False, return_report=True, **EXTRA, **kwargs)
        except ValueError as err:
            return [], str(err)
    return [(row["frame"], np.asarray(row["image"])) for row in dd["train"]], report


def text_benchmark(n_cases: int) -> None:
    from _dicom_fixtures import write_rgb_ultrasound_dicom, write_ultrasound_dicom

    from ultrasound_diffusers.data.dicom import dicom_frames_to_gray

    cases = text_cases(n_cases)
    per_kind: Dict[str, Counter] = {}
    kept_ids = kept_frames_with_text = frames_with_text = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, frames, rgb, masks) in enumerate(cases):
            folder = os.path.join(tmp, f"case{i}")
            os.makedirs(folder)
            path = os.path.join(folder, "a.dcm")
            extra = {"FrameTime": "33.3"} if frames.shape[0] > 1 else {}
            data = frames if frames.shape[0] > 1 else frames[0]
            (write_rgb_ultrasound_dicom if rgb else write_ultrasound_dicom)(path, data, **extra)
            import pydicom

            grey = dicom_frames_to_gray(pydicom.dcmread(path))
            rows, _ = _convert_one(folder)
            kept = dict(rows)
            leaked = False
            counter = per_kind.setdefault(kind, Counter())
            for t in range(frames.shape[0]):
                if not masks[t].any():
                    continue
                frames_with_text += 1
                if t in kept:
                    original = np.rint(grey[t]).astype(np.uint8)
                    shown = (kept[t][masks[t]] == original[masks[t]]).mean()
                    kept_frames_with_text += 1
                    if shown >= 0.5:
                        leaked = True
            counter["cases"] += 1
            counter["identifier kept"] += int(leaked)
            kept_ids += int(leaked)
    total = len(cases)
    print(f"\nburned-in text inside the scan area, no BurnedInAnnotation tag, default settings ({total} files, {frames_with_text} frames with text):")
    print(f"{'case':40s} {'files':>6s} {'identifier kept':>16s}")
    for kind in sorted(per_kind):
        c = per_kind[kind]
        print(f"{kind:40s} {c['cases']:6d} {c['identifier kept']:16d}")
    print(f"identifiers kept: {kept_ids} of {total} files ({kept_frames_with_text} of {frames_with_text} frames with text kept at all)")


def clean_benchmark(n_cases: int, real_paths) -> None:
    from _dicom_fixtures import write_ultrasound_dicom


    per_kind: Dict[str, Counter] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, frame) in enumerate(clean_cases(n_cases)):
            folder = os.path.join(tmp, f"clean{i}")
            os.makedirs(folder)
            write_ultrasound_dicom(os.path.join(folder, "a.dcm"), frame)
            # the verdicts do not depend on the flags; with them no frame is dropped for text, so the report
            # names every verdict (at default settings "text" and "uncertain" frames are dropped)
            rows, report = _convert_one(folder, **VERDICTS_ONLY)
            c = per_kind.setdefault(kind, Counter())
            c["frames"] += 1
            text = report["text_inside_scan_area"] if isinstance(report, dict) else None
            if text and (text["text"] or text["uncertain"]):
                c["dropped as text or uncertain"] += 1
            elif rows:
                c["kept"] += 1
            else:
                c["dropped, other reason"] += 1
        for path in real_paths:
            name = os.path.basename(path)
            if name in REAL_TEXT_INSIDE:
                continue
            folder = os.path.join(tmp, f"real_{name}")
            os.makedirs(folder)
            shutil.copy(path, os.path.join(folder, "a.dcm"))
            rows, report = _convert_one(folder, max_frames=10, **VERDICTS_ONLY)
            if not isinstance(report, dict) or report["text_inside_scan_area"]["frames_checked"] == 0:
                continue  # no scan area found (dropped before the text check: the table above)
            text = report["text_inside_scan_area"]
            c = per_kind.setdefault("real files (no text inside the fitted area)", Counter())
            c["frames"] += text["frames_checked"]
            c["kept"] += text["clean"]
            c["dropped as text or uncertain"] += text["text"] + text["uncertain"]
            for entry in text["frames"]:
                c[f"  {name}: {entry['verdict']}" + (" (too flat to tell)" if entry["too_flat_to_tell"] else "")] += 1
    print("\nclean frames (no text inside the scan area), default settings:")
    print(f"{'case':45s} {'frames':>6s} {'kept':>6s} {'dropped as text/uncertain':>26s} {'dropped, other':>15s}")
    frames = dropped = 0
    for kind in sorted(per_kind):
        c = per_kind[kind]
        frames += c["frames"]
        dropped += c["dropped as text or uncertain"]
        print(f"{kind:45s} {c['frames']:6d} {c['kept']:6d} {c['dropped as text or uncertain']:26d} {c['dropped, other reason']:15d}")
        for key in sorted(k for k in c if k.startswith("  ")):
            print(f"{key} x {c[key]}")
    print(f"false drops of clean frames (as text or uncertain): {dropped} of {frames} ({dropped / max(frames, 1):.1%})")


def main() -> None:
    import pydicom

    from ultrasound_diffusers.data.dicom import convert_dicom, deidentification_report, dicom_frames_to_gray, find_scan_area, ultrasound_region

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*")
    parser.add_argument("--max_frames", type=int, default=10)
    parser.add_argument("--text_cases", type=int, default=20, help="cases per kind of text inside the scan area (0: skip)")
    parser.add_argument("--learned_text_detector", action="store_true", help="convert with the learned text detector on")
    args = parser.parse_args()
    EXTRA.update(learned_text_detector=args.learned_text_detector)
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
            try:
                _, report = convert_dicom(tmp, max_frames=args.max_frames, return_report=True, **EXTRA)
            except ValueError as err:  # every file dropped
                report = None
                print(f"convert_dicom: {err}")
        print(f"\nconvert_dicom on {len(paths)} files (max_frames={args.max_frames}): {time.perf_counter() - start:.1f} s")
    if report is not None:
        print(deidentification_report(report))
    if args.text_cases > 0:
        start = time.perf_counter()
        text_benchmark(args.text_cases)
        clean_benchmark(args.text_cases, paths)
        print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
