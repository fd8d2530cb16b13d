"""The learned text-ink detector of the DICOM de-identification: its inputs, its cue in find_text_marks, the policy
switch, and the bundled weights on text the hand-made cues miss (mid-grey, inside the speckle range)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from _dicom_fixtures import draw_text, sector, speckle_frame, write_ultrasound_dicom
from ultrasound_diffusers.data.dicom import DeidentificationPolicy, convert_dicom, find_text_marks
from ultrasound_diffusers.models.text_ink_detector import (
    BUNDLED_TEXT_DETECTOR,
    TextInkDetector,
    detector_inputs,
    ink_probability,
    load_text_detector,
)


def test_inputs_grey_deviation_and_repeated_values():
    frame = np.full((6, 7), 100.0)
    frame[3, 3] = 164.0
    x = detector_inputs(frame)
    assert x.shape == (1, 3, 6, 7) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0, 0, 0], torch.tensor(100 / 255))
    assert float(x[0, 1, 3, 3]) > 0.9 and abs(float(x[0, 1, 0, 6])) < 1e-6  # the odd pixel deviates, a flat corner not
    assert float(x[0, 2, 1, 1]) == 1.0 and float(x[0, 2, 3, 3]) == 0.0  # all 8 neighbours equal / none
    assert float(x[0, 2, 0, 0]) == pytest.approx(3 / 8)  # the border counts as different
    noise = np.random.default_rng(0).permutation(np.arange(64)).reshape(8, 8).astype(np.float32)
    assert float(detector_inputs(noise)[0, 2].max()) == 0.0  # no value repeats
    with pytest.raises(ValueError, match="frames"):
        detector_inputs(np.zeros((1, 2, 3, 4)))


def _word_probability(shape, row=40, x0=30, glyphs=4):
    probability = np.zeros(shape, np.float32)
    for k in range(glyphs):  # letters "H": two stems and a bar, 9 px tall, 6 px wide, 3 px apart
        left = x0 + 9 * k
        probability[row : row + 9, left] = probability[row : row + 9, left + 5] = 0.95
        probability[row + 4, left : left + 6] = 0.95
    return probability


def test_detector_cue_needs_a_row_and_names_itself():
    rng = np.random.default_rng(3)
    frame = speckle_frame(rng, 240, 320).astype(np.float32)
    region = ndi.binary_erosion(sector(240, 320), iterations=4)
    _, plain = find_text_marks(frame, region)
    _, found = find_text_marks(frame, region, ink_probability=_word_probability(frame.shape, row=120, x0=140))
    assert found["verdict"] == "text" and found["cues"].get("text detector", 0) >= 3
    assert found["longest_row"] > plain["longest_row"]
    # one piece alone is no evidence (a bright reflector fragment can look like a glyph)
    _, one = find_text_marks(frame, region, ink_probability=_word_probability(frame.shape, row=120, x0=140, glyphs=1))
    assert one["verdict"] == plain["verdict"]
    # faint evidence spread along a line (no pixel above 0.5): the band cue, a 5 x 41 window at 240 px
    faint = np.zeros(frame.shape, np.float32)
    faint[150:156, 120:200] = 0.3
    _, band = find_text_marks(frame, region, ink_probability=faint)
    assert band["verdict"] == "text" and band["cues"].get("text detector (band)") == 1
    assert band["cues"].get("text detector", 0) == 0 and any(x0 <= 120 and x1 >= 200 for x0, _, x1, _ in band["rows"])
    with pytest.raises(ValueError, match="ink_probability"):
        find_text_marks(frame, region, ink_probability=np.zeros((3, 3)))


def test_bundled_detector_finds_mid_grey_text_and_leaves_speckle():
    assert (BUNDLED_TEXT_DETECTOR / "config.json").is_file()
    detector = load_text_detector()
    assert isinstance(detector, TextInkDetector) and not detector.training
    rng = np.random.default_rng(11)
    region = ndi.binary_erosion(sector(240, 320), iterations=8)
    found_text = flagged_clean = 0
    words = ["P. NOVAK", "DOB 1961", "RM 12", "Hosp 33"]  # not the benchmark's words
    for k, word in enumerate(words):
        frame = speckle_frame(rng, 240, 320)
        median = float(np.median(frame[sector(240, 320)]))
        text = draw_text(frame, word, (110 + 5 * k, 120 + 20 * k), 14, int(median + 6))
        _, marks = find_text_marks(text.astype(np.float32), region, ink_probability=ink_probability(detector, text))
        found_text += marks["verdict"] == "text"
        _, clean = find_text_marks(frame.astype(np.float32), region, ink_probability=ink_probability(detector, frame))
        flagged_clean += clean["verdict"] == "text"
    assert found_text >= 3 and flagged_clean == 0


def test_policy_switch_reaches_the_conversion(tmp_path, monkeypatch):
    """learned_text_detector=True runs the detector on every checked frame (a stub that marks a row of glyphs
    drops the frame); False (the default: trained on synthetic frames only, it drops clean real frames) never
    loads it; the report's options say which."""
    import ultrasound_diffusers.models.text_ink_detector as module

    rng = np.random.default_rng(5)
    write_ultrasound_dicom(tmp_path / "a.dcm", speckle_frame(rng, 192, 256))
    calls = []

    def stub(detector, frame):
        calls.append(frame.shape)
        return _word_probability(frame.shape, row=110, x0=100)

    monkeypatch.setattr(module, "ink_probability", stub)
    monkeypatch.setattr(module, "load_text_detector", lambda path=None: object())
    with pytest.raises(ValueError, match="dropped"):
        convert_dicom(tmp_path, return_report=True, learned_text_detector=True)
    assert calls == [(192, 256)]
    dd, report = convert_dicom(tmp_path, return_report=True)
    assert len(calls) == 1 and len(dd["train"]) == 1
    assert report["options"]["learned_text_detector"] is False
    assert DeidentificationPolicy().learned_text_detector is False
