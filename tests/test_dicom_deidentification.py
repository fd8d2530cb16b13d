"""`prepare dicom` must not leak a planted identifier: neither in any written byte nor in the pixels.

The inputs are DICOM files built with pydicom that carry identifiers in their tags (name, ID, birth date,
institution, a Manufacturer string holding a name, UIDs), in their file names, and burned into the pixels:
a report page (a frame with no scan area), a report page inside a cine, and a textured banner touching the
fan next to its apex (inside the convex hull of fan + banner, outside the fan).
"""

import hashlib
import json
import warnings

import numpy as np
import pytest
from _dicom_fixtures import write_ultrasound_dicom

from ultrasound_diffusers.data.converters import ConversionWarning

H, W = 128, 160
NAME, PID, BIRTH, INSTITUTION = "Zyxwvut^Quillon", "PID-98765-ZQ", "19470312", "St Quillon Memorial Hospital"
PLANTED = [
    "Zyxwvut", "Quillon", PID, BIRTH, "1947-03-12", "Memorial Hospital", "QuillonScope", "Dr Quillon",
    "ACC-5550123", "Station-QZ", "SN-0042-QZ",
]
BANNER = (slice(0, 15), slice(88, 156))  # rows, columns of the banner next to the apex (apex at x = 80, y = 6), outside the fan


def _fan():
    from ultrasound_diffusers.geometry import fan_mask

    return fan_mask(H, W, apex=(0.5, 0.05), radii=(0.0, 0.92), half_angle_deg=38.0).numpy().astype(bool)


def _text(canvas, lines, xy, size, fill=255):
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        font = ImageFont.load_default()
    draw.multiline_text(xy, "\n".join(lines), fill=fill, font=font, spacing=4)
    return np.array(img)


def report_page():
    """A report frame: patient data rendered as text, no ultrasound."""
    page = np.zeros((H, W), np.uint8)
    page[:18] = 90  # a header bar
    return _text(page, ["Zyxwvut Quillon", PID, "born 1947-03-12", "St Quillon Memorial", "Hospital"], (6, 4), 15)


def echo_frame(rng, banner=True):
    """A sector of speckle with a textured banner (a label with the patient's name) touching it at the apex."""
    fan = _fan()
    frame = np.where(fan, rng.integers(30, 256, (H, W)), 0).astype(np.uint8)
    if banner:
        rows, cols = BANNER
        frame[rows, cols] = rng.integers(60, 200, (rows.stop - rows.start, cols.stop - cols.start))
        frame[rows, 78:cols.start] = rng.integers(60, 200, (rows.stop - rows.start, cols.start - 78))  # touches the fan
        frame = _text(frame, ["Quillon"], (cols.start + 2, rows.start + 1), 11)
    return frame


def write_us(path, frames, burned_in=None, manufacturer="GE Healthcare - Dr Quillon", patient=(NAME, PID)):
    """A cine or single-frame echo file carrying every kind of identifying attribute the de-identifier must drop."""
    from pydicom.uid import generate_uid

    frames = np.asarray(frames, np.uint8)
    attributes = dict(
        StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), PatientName=patient[0], PatientID=patient[1],
        PatientBirthDate=BIRTH, InstitutionName=INSTITUTION, InstitutionAddress="1 Quillon Road",
        ReferringPhysicianName="Dr Quillon", OperatorsName="Quillon^Tech", AccessionNumber="ACC-5550123",
        StationName="Station-QZ", DeviceSerialNumber="SN-0042-QZ", StudyDescription="Echo for Zyxwvut Quillon",
        StudyDate="20240105", Manufacturer=manufacturer, ManufacturerModelName="QuillonScope 9",
    )
    if burned_in is not None:
        attributes["BurnedInAnnotation"] = burned_in
    if frames.ndim == 3 and frames.shape[0] > 1:
        attributes["FrameTime"] = "33.3"
    return write_ultrasound_dicom(path, frames, **attributes)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Input folder: which file holds what."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("study") / "Zyxwvut_Quillon_PID-98765-ZQ"
    root.mkdir()
    uids = {}
    uids["single"] = write_us(root / "Zyxwvut_Quillon_single.dcm", echo_frame(rng), burned_in="NO").SOPInstanceUID
    cine = np.stack([echo_frame(rng) for _ in range(4)])
    cine[2] = report_page()  # a report page inside a cine
    uids["cine"] = write_us(root / "Quillon_cine.dcm", cine, manufacturer="Philips Medical Systems").SOPInstanceUID
    uids["report"] = write_us(root / "Quillon_report.dcm", report_page()).SOPInstanceUID
    uids["burned"] = write_us(root / "Quillon_burned.dcm", echo_frame(rng), burned_in="YES").SOPInstanceUID
    uids["burned_report"] = write_us(root / "Quillon_burned_report.dcm", report_page(), burned_in="YES").SOPInstanceUID
    return root, uids


def _convert(path, **kwargs):
    from ultrasound_diffusers.data.dicom import convert_dicom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dd, report = convert_dicom(path, crop=False, return_report=True, **kwargs)
    return dd["train"], report, [str(w.message) for w in caught if issubclass(w.category, ConversionWarning)]


def _planted_in(data: bytes, uids):
    low = data.lower()
    found = [s for s in PLANTED if s.lower().encode() in low]
    for uid in uids.values():
        for token in (uid, hashlib.sha256(uid.encode()).hexdigest()[:16]):  # the UID and the old unsalted pseudonym
            if token.lower().encode() in low:
                found.append(token)
    return found


def test_fails_closed_and_reports(study):
    root, uids = study
    rows, report, messages = _convert(root)
    # single (1 frame) + cine (3 of 4 frames: the report page is dropped); report page and BurnedInAnnotation files dropped
    assert len(rows) == 1 + 3
    assert sorted(rows["frame"]) == [0, 0, 1, 3]
    assert report["files_seen"] == 5 and report["files_converted"] == 2 and report["frames_kept"] == 4
    dropped = report["files_dropped"]
    assert sum(n for r, n in dropped.items() if r.startswith("BurnedInAnnotation=YES")) == 2
    assert sum(n for r, n in dropped.items() if r.startswith("no scan area")) == 1
    assert sum(report["frames_dropped"].values()) == 2  # the report file's frame + the cine's report frame
    assert any("frame does not fill" in r for r in report["frames_dropped"])
    assert report["burned_in_annotation_tag"] == {"NO": 1, "YES": 2, "absent": 2}
    assert report["files_with_content_masked_inside_hull"] >= 1
    assert any("BurnedInAnnotation=YES" in m for m in messages) and any("no ultrasound scan area" in m for m in messages)
    assert json.loads(rows.info.description.split("report: ", 1)[1]) == report
    # metadata: a Manufacturer holding a name is dropped, a known vendor is replaced by its canonical name
    by_frames = {r["num_frames"]: r for r in rows}
    assert by_frames[1]["manufacturer"] == "" and by_frames[4]["manufacturer"] == "Philips"
    assert set(rows["scan_area_shape"]) == {"sector"}


def test_no_identifier_in_pixels(study):
    root, uids = study
    rows, _, _ = _convert(root, accept_burned_in_annotation=True)
    assert len(rows) == 1 + 3 + 1  # + the BurnedInAnnotation=YES echo frame (masked); its report page never
    near_fan = __import__("scipy.ndimage", fromlist=["x"]).binary_dilation(_fan(), iterations=2)
    rows_b, cols_b = BANNER
    assert not _fan()[rows_b, cols_b].any()
    for row in rows:
        img = np.asarray(row["image"])
        assert img.shape == (H, W)
        assert not img[rows_b, cols_b].any(), "the banner next to the apex is masked"
        assert not img[~near_fan].any(), "nothing outside the fan survives"
        assert img[_fan()].mean() > 60, "the tissue is kept"
        assert np.asarray(row["scan_area"])[_fan()].mean() > 0.85
    page = report_page()
    for row in rows:  # no report page in the output (not even masked)
        img = np.asarray(row["image"]).astype(int)
        assert np.abs(img - page).mean() > 40


def test_source_id_is_salted_per_run(study):
    root, uids = study
    first, _, _ = _convert(root)
    second, _, _ = _convert(root)
    ids = set(first["source_id"])
    assert len(ids) == 2 and all(len(i) == 16 for i in ids)  # rows of one file share one id
    assert ids.isdisjoint(second["source_id"]), "ids cannot be linked across conversions"
    assert not ids & {hashlib.sha256(u.encode()).hexdigest()[:16] for u in uids.values()}


def test_one_patient_never_spans_two_splits(study, tmp_path):
    root, _ = study
    from ultrasound_diffusers.data.dicom import convert_dicom

    with pytest.warns(ConversionWarning):
        dd = convert_dicom(root, fractions=(1, 1, 1))  # all files share one Patient ID (read in memory only)
    assert sorted(len(s) for s in dd.values()) == [0, 0, 4]
    other = tmp_path / "two_patients"
    other.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        write_us(other / f"p{i}.dcm", echo_frame(rng), patient=(f"P^{i}", f"ID{i}"))
    assert sorted(len(s) for s in convert_dicom(other, fractions=(1, 1, 0)).values()) == [0, 1, 1]


def test_flags_keep_frames_but_never_burned_in_report_pages(study):
    root, _ = study
    rows, report, _ = _convert(root, keep_frames_without_scan_area=True, accept_burned_in_annotation=True)
    # + the report file (whole, unmasked, as asked); the cine's report frame passes the fill flag but its text
    # inside the fan is found and drops it; the BurnedInAnnotation=YES report page stays dropped
    assert len(rows) == 1 + 3 + 1 + 1
    assert sorted(set(rows["scan_area_shape"])) == ["none", "sector"]
    assert report["frames_kept_by_flag"] == {"no scan area found: kept whole": 1}
    assert report["text_inside_scan_area"]["text"] == 1
    assert sum(n for r, n in report["files_dropped"].items() if "BurnedInAnnotation=YES" in r) == 1


def test_policy_object_or_keywords(study):
    """``policy=`` and the same fields as keywords convert alike; a keyword replaces the policy's field."""
    from ultrasound_diffusers.data.dicom import DeidentificationPolicy

    root, _ = study
    policy = DeidentificationPolicy(accept_burned_in_annotation=True)
    rows, report, _ = _convert(root, policy=policy)
    rows_kw, report_kw, _ = _convert(root, accept_burned_in_annotation=True)
    assert len(rows) == len(rows_kw) == 1 + 3 + 1
    assert report["options"] == report_kw["options"] and report["files_dropped"] == report_kw["files_dropped"]
    rows_over, report_over, _ = _convert(root, policy=policy, accept_burned_in_annotation=False)
    assert len(rows_over) == 1 + 3 and report_over["options"]["accept_burned_in_annotation"] is False
    assert policy.accept_burned_in_annotation is True  # frozen: the keyword made a new policy


def test_policy_errors_name_the_field(tmp_path):
    import dataclasses

    from ultrasound_diffusers.data.dicom import POLICY_FIELDS, DeidentificationPolicy, convert_dicom

    with pytest.raises(ValueError, match=r"`min_frame_fill` must be in \[0, 1\], got 1.5"):
        DeidentificationPolicy(min_frame_fill=1.5)
    with pytest.raises(TypeError, match="`min_frame_fill` must be a number"):
        DeidentificationPolicy(min_frame_fill="0.5")
    with pytest.raises(TypeError, match="`keep_uncertain_frames` must be True or False, got 'no'"):
        DeidentificationPolicy(keep_uncertain_frames="no")  # a truthy string would keep the frames
    with pytest.raises(dataclasses.FrozenInstanceError):
        DeidentificationPolicy().strict = True
    assert DeidentificationPolicy(strict=np.bool_(True), keep_uncertain_frames=1).strict
    assert POLICY_FIELDS[0] == "require_ultrasound" and "mask_text_inside_scan_area" in POLICY_FIELDS
    # through convert_dicom field by field: the same errors, before any file is looked for (tmp_path is empty)
    with pytest.raises(ValueError, match=r"`min_frame_fill` must be in \[0, 1\], got -0.1"):
        convert_dicom(tmp_path, min_frame_fill=-0.1)
    with pytest.raises(TypeError, match=r"convert_dicom\(\) got unexpected keyword argument\(s\) 'keep_uncertain_frame'; .*'keep_uncertain_frames'"):
        convert_dicom(tmp_path, keep_uncertain_frame=True)
    with pytest.raises(TypeError, match="`policy` must be a DeidentificationPolicy"):
        convert_dicom(tmp_path, policy={"strict": True})
    with pytest.raises(TypeError, match="positional"):  # what followed frame_step is keyword-only
        convert_dicom(tmp_path, None, True, None, 1, False)


def test_static_text_inside_the_fan_of_a_cine_is_masked(tmp_path):
    rng = np.random.default_rng(2)
    cine = np.stack([echo_frame(rng, banner=False) for _ in range(5)])
    marks = _text(np.zeros((H, W), np.uint8), ["Quillon"], (60, 70), 13) > 0  # text overlaid on the tissue
    assert (marks & _fan()).sum() == marks.sum() > 30
    cine[:, marks] = 255
    write_us(tmp_path / "cine.dcm", cine)
    rows, report, _ = _convert(tmp_path)
    assert len(rows) == 5 and report["files_with_static_marks_masked_inside_scan_area"] == 1
    for row in rows:
        img = np.asarray(row["image"])
        assert not img[marks].any()
        assert (img[_fan() & ~__import__("scipy.ndimage", fromlist=["x"]).binary_dilation(marks, iterations=2)] > 0).mean() > 0.95


def test_everything_dropped_is_an_error(tmp_path):
    from ultrasound_diffusers.data.dicom import convert_dicom

    write_us(tmp_path / "report.dcm", report_page())
    write_us(tmp_path / "burned.dcm", echo_frame(np.random.default_rng(1)), burned_in="YES")
    with pytest.warns(ConversionWarning), pytest.raises(ValueError, match=r"all 2 file\(s\) were dropped.*BurnedInAnnotation=YES.*no scan area"):
        convert_dicom(tmp_path)


def test_canonical_vendor():
    from ultrasound_diffusers.data.dicom import canonical_vendor

    assert canonical_vendor("G.E. Medical Systems") == "GE" and canonical_vendor("SonoSite, Inc.") == "FUJIFILM SonoSite"
    assert canonical_vendor("Philips Medical Systems") == "Philips" and canonical_vendor("SIEMENS") == "Siemens"
    for free_text in ("GE Healthcare - Dr Quillon", "Quillon", "", None, "Philips Quillon Clinic"):
        assert canonical_vendor(free_text) == ""


def test_cli_prepare_dicom_writes_no_identifier(study, tmp_path, capsys):
    import datasets

    from ultrasound_diffusers.cli import main

    root, uids = study
    for flags in ([], ["--accept_burned_in_annotation"]):
        out = tmp_path / ("out" + "".join(flags))
        with pytest.warns(ConversionWarning):
            assert main(["prepare", "dicom", "--input", str(root), "--output_dir", str(out), *flags]) == 0
        printed = capsys.readouterr().out
        assert "de-identification:" in printed and "files dropped" in printed and "BurnedInAnnotation=YES" in printed
        report = json.loads((out / "deidentification_report.json").read_text())
        assert report["files_converted"] == (3 if flags else 2)
        assert len(datasets.load_from_disk(str(out))["train"]) == report["frames_kept"]
        files = [p for p in out.rglob("*") if p.is_file()]
        assert len(files) >= 5
        for p in files:
            leaked = _planted_in(p.read_bytes(), uids)
            assert not leaked, f"{p.relative_to(out)} holds {leaked}"
        for p in out.rglob("*"):
            assert not _planted_in(str(p.relative_to(out)).encode(), uids)


# --- burned-in text inside the scan area, on files that carry no BurnedInAnnotation tag ------------------------------
# (the benchmark draws other words, fonts and sizes: benchmarks/benchmark_dicom_deidentification.py)

TH, TW = 192, 256
WORDS, WORDS_XY = "Quillon Clinic", (70, 80)


def _text_file(tmp_path, name, frames, rgb=False):
    from _dicom_fixtures import write_rgb_ultrasound_dicom

    folder = tmp_path / name
    folder.mkdir()
    writer = write_rgb_ultrasound_dicom if rgb else write_ultrasound_dicom
    extra = {"FrameTime": "33.3"} if np.ndim(frames) == (4 if rgb else 3) else {}
    writer(folder / "a.dcm", frames, PatientName=NAME, PatientID=PID, **extra)
    return folder


def _ink(text_image, clean):
    """Pixels the text changed, grown by 1 px."""
    from scipy import ndimage as ndi

    return ndi.binary_dilation(np.any(np.asarray(text_image) != np.asarray(clean), axis=-1) if np.ndim(clean) == 3 else text_image != clean, iterations=1)


def _dropped_for_text(tmp_path, name, frame, rgb=False):
    """A single-frame file with text inside the fan is dropped, the error and the report say why; beside a clean
    file, only the clean file's frame is kept. Returns the report's entry for the frame."""
    from _dicom_fixtures import speckle_frame, write_rgb_ultrasound_dicom

    from ultrasound_diffusers.data.dicom import convert_dicom

    folder = _text_file(tmp_path, name, frame, rgb)
    with pytest.warns(ConversionWarning), pytest.raises(ValueError, match=r"every frame dropped \(not filling the scan area, or burned-in text"):
        convert_dicom(folder)
    clean = speckle_frame(np.random.default_rng(99), TH, TW)
    if rgb:
        write_rgb_ultrasound_dicom(folder / "b.dcm", np.repeat(clean[..., None], 3, -1), PatientID="other")
    else:
        write_ultrasound_dicom(folder / "b.dcm", clean, PatientID="other")
    rows, report, messages = _convert(folder)
    text = report["text_inside_scan_area"]
    (img,) = [np.asarray(r["image"]) for r in rows]
    inside = np.asarray(rows[0]["scan_area"]) > 0
    assert inside.sum() > 0.8 * (clean > 0).sum() and np.array_equal(img[inside], clean[inside]), "only the clean frame is kept"
    assert text["text"] == 1 and text["clean"] == 1 and text["actions"] == {"text: dropped": 1}
    (entry,) = text["frames"]
    assert entry["frame"] == 0 and entry["verdict"] == "text" and entry["action"] == "dropped"
    assert entry["marks"] >= 3 and entry["pixels"] > 20 and entry["longest_row"] >= 3
    assert entry["source_id"] not in rows["source_id"]
    assert report["frames_dropped"] == {_reason("text"): 1}
    assert any("burned-in text inside" in m for m in messages)
    return entry


def _reason(verdict):
    from ultrasound_diffusers.data.dicom import _TEXT_REASONS

    return _TEXT_REASONS[verdict]


def test_white_text_inside_the_fan_is_dropped_and_reported(tmp_path):
    from _dicom_fixtures import draw_text, speckle_frame

    clean = speckle_frame(np.random.default_rng(0), TH, TW)
    _dropped_for_text(tmp_path, "white", draw_text(clean, WORDS, WORDS_XY, 16, 255))


def test_mid_grey_text_inside_the_speckle_range_is_dropped(tmp_path):
    from _dicom_fixtures import draw_text, sector, speckle_frame

    clean = speckle_frame(np.random.default_rng(1), TH, TW)
    ink = int(np.median(clean[sector(TH, TW)]))  # the speckle's own median grey
    entry = _dropped_for_text(tmp_path, "grey", draw_text(clean, WORDS, WORDS_XY, 16, ink))
    assert entry["cues"].get("uniform ink", 0) >= 3


def test_yellow_text_on_an_rgb_frame_is_dropped(tmp_path):
    from _dicom_fixtures import draw_text, speckle_frame

    clean = np.repeat(speckle_frame(np.random.default_rng(2), TH, TW)[..., None], 3, axis=-1)
    entry = _dropped_for_text(tmp_path, "yellow", draw_text(clean, WORDS, WORDS_XY, 16, (255, 255, 0)), rgb=True)
    assert entry["cues"].get("colour", 0) >= 1


def test_cine_with_text_in_some_frames(tmp_path):
    from _dicom_fixtures import draw_text, speckle_frame

    rng = np.random.default_rng(3)
    cine = np.stack([speckle_frame(rng, TH, TW) for _ in range(6)])  # speckle decorrelates from frame to frame
    for t in (2, 3):
        cine[t] = draw_text(cine[t], "Dr Quillon 12", (60, 100), 15, 230)
    rows, report, _ = _convert(_text_file(tmp_path, "cine", cine))
    assert sorted(rows["frame"]) == [0, 1, 4, 5]
    text = report["text_inside_scan_area"]
    assert [(f["frame"], f["verdict"], f["action"]) for f in text["frames"]] == [(2, "text", "dropped"), (3, "text", "dropped")]
    assert text["frames_checked"] == 6 and text["clean"] == 4
    assert report["files_with_static_marks_masked_inside_scan_area"] == 0  # not in every frame: not a static mark


def test_mid_grey_text_in_two_frames_of_a_cine_is_found_by_its_still_grey(tmp_path):
    """Text in the speckle's own grey, shown in two consecutive frames only: its full-ink pixels are identical in
    both frames and all hold one grey, which no level of moving speckle does (the "still across frames" cue)."""
    import cv2
    from _dicom_fixtures import sector, speckle_frame

    rng = np.random.default_rng(11)
    cine = np.stack([speckle_frame(rng, TH, TW) for _ in range(6)])
    ink = int(np.median(cine[2][sector(TH, TW)]))
    for t in (2, 3):
        cv2.putText(cine[t], "HOLMES 4471", (70, 130), cv2.FONT_HERSHEY_SIMPLEX, 0.6, ink, 2, cv2.LINE_AA)
    rows, report, _ = _convert(_text_file(tmp_path, "grey_cine", cine))
    assert sorted(rows["frame"]) == [0, 1, 4, 5]
    text = report["text_inside_scan_area"]
    assert [(f["frame"], f["verdict"]) for f in text["frames"]] == [(2, "text"), (3, "text")]
    assert all(f["cues"].get("still across frames", 0) >= 1 for f in text["frames"])


def test_clean_speckle_with_a_bright_reflector_is_kept(tmp_path):
    from _dicom_fixtures import sector, speckle_frame

    rng = np.random.default_rng(4)
    frames = speckle_frame(rng, TH, TW, reflector=True)[None]
    assert (frames[0][sector(TH, TW)] >= 250).sum() > 30, "the reflector saturates in places"
    rows, report, _ = _convert(_text_file(tmp_path, "reflector", frames[0]))
    assert len(rows) == 1
    assert report["text_inside_scan_area"]["clean"] == 1 and report["text_inside_scan_area"]["frames"] == []
    img, inside = np.asarray(rows[0]["image"]), np.asarray(rows[0]["scan_area"]) > 0
    assert inside.sum() > 0.8 * sector(TH, TW).sum() and np.array_equal(img[inside], frames[0][inside]), "kept, unmasked inside the fan"


def test_lone_caliper_cross_is_uncertain_and_the_flag_keeps_it(tmp_path):
    from _dicom_fixtures import speckle_frame

    rng = np.random.default_rng(5)
    cine = np.stack([speckle_frame(rng, TH, TW) for _ in range(3)])
    cine[0, 100, 123:134], cine[0, 95:106, 128] = 255, 255  # a "+" caliper mark, 11 px, in the first frame
    folder = _text_file(tmp_path, "cross", cine)
    rows, report, _ = _convert(folder)
    assert sorted(rows["frame"]) == [1, 2]
    assert report["text_inside_scan_area"]["actions"] == {"uncertain: dropped": 1}
    assert any("--keep_uncertain_frames" in r for r in report["frames_dropped"])
    rows, report, _ = _convert(folder, keep_uncertain_frames=True)
    assert sorted(rows["frame"]) == [0, 1, 2]
    assert report["frames_kept_by_flag"] == {"possible burned-in text inside the scan area: kept unmasked": 1}
    assert report["text_inside_scan_area"]["frames"][0]["action"] == "kept (--keep_uncertain_frames)"


def test_mask_flag_zeroes_boxes_around_the_text(tmp_path):
    from _dicom_fixtures import draw_text, sector, speckle_frame

    clean = speckle_frame(np.random.default_rng(6), TH, TW)
    frame = draw_text(clean, WORDS, WORDS_XY, 16, 255)
    ink = _ink(frame, clean)
    rows, report, _ = _convert(_text_file(tmp_path, "mask", frame), mask_text_inside_scan_area=True)
    (row,) = rows
    img = np.asarray(row["image"])
    assert not img[ink].any(), "no pixel of the text survives"
    ys, xs = np.nonzero(ink)
    box = np.zeros_like(ink)
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    assert (img[box] == 0).all(), "the letters are not left as readable holes: the row of text is zeroed"
    kept = sector(TH, TW) & ~box & (np.asarray(row["scan_area"]) > 0)
    assert (img[kept] == clean[kept]).mean() > 0.8, "the rest of the fan is kept"
    assert report["frames_kept_by_flag"] == {"burned-in text inside the scan area: kept, rows of text zeroed": 1}


def test_find_text_marks_shapes():
    from ultrasound_diffusers.data.dicom import mark_shape, text_rows

    o = np.zeros((9, 7), bool)
    o[0, 1:6] = o[-1, 1:6] = o[1:-1, 0] = o[1:-1, -1] = True  # an "O"
    assert mark_shape(o, 20) == "glyph"
    assert mark_shape(np.ones((9, 7), bool), 20) is None  # a solid block
    assert mark_shape(np.eye(9, dtype=bool), 20) == "stroke"  # one straight stroke
    assert mark_shape(np.ones((30, 3), bool), 20) is None  # taller than a glyph
    band = np.zeros((6, 60), bool)
    for x in range(60):
        band[int(2.5 + 2.5 * np.sin(x / 10.0)), x] = True
    assert mark_shape(band, 20) is None  # a thin curved band (a reflector)
    rows = text_rows([(0, 0, 6, 9), (8, 1, 14, 10), (16, 0, 22, 9), (0, 40, 6, 49)], [1, 1, 1, 1])
    assert rows[0] == ([0, 1, 2], 3) and rows[1] == ([3], 1)


def test_cli_text_flags(tmp_path, capsys):
    from _dicom_fixtures import speckle_frame

    from ultrasound_diffusers.cli import main

    rng = np.random.default_rng(7)
    cine = np.stack([speckle_frame(rng, TH, TW) for _ in range(3)])
    cine[0, 100, 123:134], cine[0, 95:106, 128] = 255, 255
    folder = _text_file(tmp_path, "cli", cine)
    assert main(["prepare", "dicom", "--input", str(folder), "--output_dir", str(tmp_path / "out"), "--keep_uncertain_frames"]) == 0
    printed = capsys.readouterr().out
    assert "text inside the scan area: 3 frame(s) checked, 0 with text, 1 uncertain (1 uncertain: kept (--keep_uncertain_frames))" in printed
    report = json.loads((tmp_path / "out" / "deidentification_report.json").read_text())
    assert report["options"]["keep_uncertain_frames"] is True and report["frames_kept"] == 3


def test_upright_strokes_of_one_grey_find_thin_mid_grey_text():
    """Thin anti-aliased text in the speckle's own grey keeps full ink mostly in its vertical stems, too short to be
    marks of their own (5 px here, under the 6-pixel minimum of the other cues): a row of them is text. Speckle
    alone gives no such row."""
    from _dicom_fixtures import sector, speckle_frame

    from ultrasound_diffusers.data.dicom import find_text_marks, upright_strokes

    region = sector(TH, TW)
    for seed in range(5):
        clean = speckle_frame(np.random.default_rng(40 + seed), TH, TW).astype(np.float32)
        q = np.rint(clean).astype(np.int16)
        assert upright_strokes(q, region & (clean >= 16)).sum() < 3 * 4, "speckle repeats one grey 4 px down rarely"
        assert find_text_marks(clean, region)[1]["verdict"] == "clean"
        ink = float(np.median(clean[region]))
        text = clean.copy()
        y0, x0 = TH // 2, TW // 2 - 20
        for k in range(8):  # eight stems, 5 px tall, 5 px apart: "lIlI lIlI" in a thin font
            text[y0 : y0 + 5, x0 + 5 * k + (5 if k >= 4 else 0)] = ink
        mask, info = find_text_marks(text, region)
        assert info["verdict"] == "text", info
        assert info["cues"].get("upright strokes of one grey", 0) >= 3
        assert mask[y0 : y0 + 5, x0 : x0 + 50].sum() >= 8 * 5
