"""The README tells the truth: its Python snippets and its cheap commands run, as written or shrunk as stated here.

How it works (so that a README edit that stops being true fails CI):

* Python: every fenced ``python`` block of README.md runs, in order, in one namespace (later snippets use the
  ``pipe`` and ``labels`` of earlier ones), in a temporary working directory. :data:`PYTHON_SUBSTITUTIONS` lists,
  per snippet, the only text replaced before running: step counts shrunk to 2 (the README's counts take minutes
  on a CPU) and the Hub id replaced by the bundled pipeline (no network here); ``push_to_hub`` talks to a
  recording stand-in of ``huggingface_hub.HfApi``. :data:`PYTHON_CHECKS` then checks what the snippet's comments
  promise (shapes, value ranges, files).
* Commands: every command line of the README's ``bash`` blocks must be named in :data:`COMMANDS`, either run (in
  process, through the CLI's ``main``, with the stated shrinking substitutions, in order, in the same temporary
  folder) or skipped with the reason. A command added to the README without an entry here fails
  :func:`test_every_readme_command_is_run_or_skipped_for_a_stated_reason`; an entry whose command left the README
  fails it too. Setup commands that make the inputs a README command names (``heldout/``, ``train/``, the two
  named sets of the comparison) are in :data:`SETUP` and :data:`COMPARISON_SETUP`.
"""

import re
import shlex
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHRUNK_STEPS = "2"


def readme_blocks(language):
    """``[(snippet_id, code)]`` of the README's fenced blocks in ``language``; the id is the heading the block
    sits under and its number there (``"Generate labelled images (Python)#1"``)."""
    blocks, heading, counts = [], "", {}
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.strip() == f"```{language}":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            counts[heading] = counts.get(heading, 0) + 1
            blocks.append((f"{heading}#{counts[heading]}", "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return blocks


def readme_commands():
    """Every command of the README's bash blocks: continuation lines joined, comments dropped, ``&&`` chains
    split into their commands."""
    commands = []
    for _, code in readme_blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [" ".join(part.split()) for part in line.split("&&")]
    return commands


# --------------------------------------------------------------------------------------------------- Python snippets

DEMO = "ultrasound_diffusers/assets/bmap-echo-phantom-64"
FEWSTEP = "ultrasound_diffusers/assets/bmap-echo-phantom-64-fewstep"
PYTHON_SUBSTITUTIONS = {
    "B-maps: noise that follows sound#1": [],
    "Generate labelled images (Python)#1": [
        (f'DiffusionPipeline.from_pretrained("{DEMO}")', "DiffusionPipeline.from_pretrained(DEMO_PIPELINE_PATH)"),
        ("num_inference_steps=50", f"num_inference_steps={SHRUNK_STEPS}"),
    ],
    "Which sampler: `ddim-clipped`, or SDE-DPM-Solver++ for fewer steps#1": [("num_inference_steps=20", f"num_inference_steps={SHRUNK_STEPS}")],
    "Few-step sampling: 4 network calls under B-maps#1": [],
    "Loading and sharing on the Hub#1": [('from_pretrained("org/echo-sdm")', "from_pretrained(DEMO_PIPELINE_PATH)")],
}


def _check_bmaps(ns, cwd):
    assert tuple(ns["x_t"].shape) == (4, 1, 128, 128) and tuple(ns["a_t"].shape) == (4, 1, 128, 128)
    a_t = ns["a_t"].numpy()
    assert (a_t[0] > a_t[-1]).all()  # signal falls with the step
    assert (cwd / "bmaps.png").is_file()


def _check_generate(ns, cwd):
    assert tuple(ns["labels"].shape) == (4, 64, 64) and ns["labels"].dtype == np.uint8 and ns["labels"].max() <= 4
    images = np.asarray(ns["out"].images)
    assert images.shape == (4, 64, 64, 1) and images.min() >= 0 and images.max() <= 1  # "[4, 64, 64, 1] in [0, 1]"
    assert len(ns["out"].segmaps) == 4


def _check_sampler(ns, cwd):
    assert type(ns["pipe"].scheduler).__name__ == "BMapDPMSolverMultistepScheduler"
    assert ns["pipe"].scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert len(ns["out"].images) == 4


def _check_fewstep(ns, cwd):
    """The snippet's student runs 4 calls of the labelled batch alone (guidance distilled in) and gives images."""
    calls = []
    handle = ns["student"].unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        again = ns["student"](list(ns["labels"]), num_inference_steps=4, guidance_scale=1.0).images
    finally:
        handle.remove()
    assert calls == [len(ns["labels"])] * 4 and len(again) == len(ns["out"].images) == len(ns["labels"])


def _check_hub(ns, cwd):
    assert (cwd / "echo-sdm" / "model_index.json").is_file()
    assert ns["_uploads"] and ns["_uploads"][-1]["repo_id"] == "org/echo-sdm"
    card = ns["_uploads"][-1]["card"]
    assert "license: cc-by-nc-sa-4.0" in card and "- camus" in card


PYTHON_CHECKS = {
    "B-maps: noise that follows sound#1": _check_bmaps,
    "Generate labelled images (Python)#1": _check_generate,
    "Which sampler: `ddim-clipped`, or SDE-DPM-Solver++ for fewer steps#1": _check_sampler,
    "Few-step sampling: 4 network calls under B-maps#1": _check_fewstep,
    "Loading and sharing on the Hub#1": _check_hub,
}


class _RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records the upload (and the card it carries) instead of sending it."""

    uploads = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        card = (Path(folder_path) / "README.md").read_text(encoding="utf-8")
        self.uploads.append({"repo_id": repo_id, "card": card})
        return f"https://huggingface.co/{repo_id}/commit/0"


def test_readme_python_snippets_run_and_keep_their_promises(tmp_path, monkeypatch):
    import huggingface_hub

    from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH

    snippets = readme_blocks("python")
    assert [name for name, _ in snippets] == list(PYTHON_SUBSTITUTIONS), (
        "README.md's Python snippets changed: list each one in PYTHON_SUBSTITUTIONS and PYTHON_CHECKS")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    _RecordingHfApi.uploads = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingHfApi)
    namespace = {"DEMO_PIPELINE_PATH": DEMO_PIPELINE_PATH, "_uploads": _RecordingHfApi.uploads}
    for name, code in snippets:
        for old, new in PYTHON_SUBSTITUTIONS[name]:
            assert old in code, f"README snippet {name!r} no longer contains {old!r}: update PYTHON_SUBSTITUTIONS"
            code = code.replace(old, new)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # the README must not teach a deprecated spelling
            exec(compile(code, f"README.md[{name}]", "exec"), namespace)
        PYTHON_CHECKS[name](namespace, tmp_path)


# ---------------------------------------------------------------------------------------------------------- commands

#: Each README command (its exact text, after joining lines) -> ("run", [(old, new), ...]) or ("skip", reason).
COMMANDS = {
    'python -m pip install torch==2.13.0 -e .': ("skip", "installs the package: CI's fresh environment runs the "
                                                 "README's install line (.ci/run)"),
    'python -m ultrasound_diffusers demo': ("run", [("demo", f"demo --num_images 1 --num_inference_steps {SHRUNK_STEPS}")]),
    'python -m pip install torch==2.13.0 -e ".[test]"': ("skip", "the test extras: .ci/run runs this line"),
    'python -m pytest -n auto --dist loadfile tests': ("skip", "the test suite itself (.ci/run runs it)"),
    'ultrasound-diffusers convert --checkpoint camus_ema_0.9999.pt --output_dir camus-sdm --num_head_channels 64':
        ("skip", "needs the authors' CAMUS checkpoint (not redistributable); tests/test_conversion.py converts "
                 "checkpoints of the same layout"),
    'python -m pip install torch==2.13.0 -e ".[app]"': ("skip", "installs gradio (the app extra)"),
    'ultrasound-diffusers app': ("skip", "serves a web page until stopped (tests/test_app.py drives it)"),
    'ultrasound-diffusers app --pipeline ./my-sdm-pipeline --port 8080 --share':
        ("skip", "serves a web page with a public link (needs network); tests/test_app.py covers the flags"),
    'ultrasound-diffusers phantoms --num_images 1000 --anatomy echo --size 128 --output_dir phantoms-echo':
        ("run", [("--num_images 1000", "--num_images 4")]),
    'ultrasound-diffusers prepare camus --input CAMUS/database_nifti --output_dir camus-hf':
        ("skip", "needs the CAMUS download (tests/test_converters.py converts a fake release)"),
    'ultrasound-diffusers prepare thyroid --input SegThy --output_dir thyroid-hf':
        ("skip", "needs the SegThy download (tests/test_converters.py converts a fake release)"),
    'ultrasound-diffusers prepare lung --input lung_maps --output_dir lung-hf':
        ("skip", "needs the lung maps (tests/test_converters.py converts fake ones)"),
    'ultrasound-diffusers prepare dicom --input dicoms/ --output_dir dicom-hf':
        ("skip", "needs DICOM files (tests/test_dicom_deidentification.py writes and converts some)"),
    'accelerate launch training/train_semantic.py --dataset_name phantoms:echo --resolution 64 --model_config tiny-64 '
    '--learn_sigma --drop_rate 0.2 --bmap_schedule cosine --bmap_min 0.97 --probe_geometry convex --train_batch_size 8 '
    '--max_train_steps 2400 --use_ema --output_dir echo-phantom-64':
        ("skip", "trains for about an hour on a CPU; tests/test_training.py runs the script with these flags for a "
                 "few steps under accelerate"),
    'ultrasound-diffusers generate --pipeline echo-phantom-64 --labels phantoms:echo:500 --images_per_label 5 '
    '--augment --num_inference_steps 50 --guidance_scale 1.5 --batch_size 16 --seed 0 --output_dir synthetic-echo':
        ("run", [("--pipeline echo-phantom-64", f"--pipeline {ROOT / DEMO}"), ("phantoms:echo:500", "phantoms:echo:3"),
                 ("--images_per_label 5", "--images_per_label 1"),
                 ("--num_inference_steps 50", f"--num_inference_steps {SHRUNK_STEPS}")]),
    'FEWSTEP=$(python -c "from ultrasound_diffusers.demo import FEWSTEP_PIPELINE_PATH as p; print(p)")':
        ("skip", "sets a shell variable; the next entry puts FEWSTEP_PIPELINE_PATH, the value it prints, in its place "
                 "(test_readme_fewstep_variable_names_the_bundled_student checks the expression)"),
    'ultrasound-diffusers generate --pipeline "$FEWSTEP" --labels phantoms:echo:500 --num_inference_steps 4 '
    '--guidance_scale 1 --batch_size 16 --seed 0 --output_dir synthetic-echo-fast':
        ("run", [('"$FEWSTEP"', str(ROOT / FEWSTEP)), ("phantoms:echo:500", "phantoms:echo:2"),
                 ("--batch_size 16", "--batch_size 2")]),
    'ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m ultrasound_diffusers generate ...':
        ("skip", "the line above under two processes ('...' stands for its flags); tests/test_generation.py runs "
                 "generation under accelerate with two processes"),
    'ultrasound-diffusers evaluate --real heldout/ --generated synthetic-echo/dataset --train train/ --output_dir report/':
        ("run", [("--output_dir", "--feature_extractor random --output_dir")]),
    'ultrasound-diffusers evaluate --real heldout/ --generated bmap=samples_bmap/dataset plain=samples_plain/dataset '
    '--train train/ --paired --output_dir ablation-report/':
        ("run", [("--paired", "--paired --feature_extractor random --bootstrap 20 --bootstrap_fid 10")]),
    'ultrasound-diffusers reconstruct --image phantoms:echo:1:4242 --operator missing_lines:4 --method dps '
    '--num_samples 4 --output_dir recon':
        ("run", [("--num_samples 4", f"--num_samples 1 --num_inference_steps {SHRUNK_STEPS}")]),
}

#: Inputs that README commands name but no README command makes (run first, in order).
SETUP = [
    "ultrasound-diffusers phantoms --num_images 3 --anatomy echo --size 64 --output_dir heldout",
    "ultrasound-diffusers phantoms --num_images 3 --anatomy echo --size 64 --seed 1 --output_dir train",
]
#: Before the comparison example: its two named sets, generated from the held-out label maps (``--paired`` pairs
#: each image with the real one of the same label map) by the bundled pipeline in 2 steps.
COMPARISON_SETUP = [
    f"ultrasound-diffusers generate --pipeline {ROOT / DEMO} --labels heldout --num_inference_steps {SHRUNK_STEPS} "
    f"--seed {seed} --no_progress --output_dir {name}" for seed, name in ((0, "samples_bmap"), (1, "samples_plain"))
]

#: What each run command must leave behind (relative to the working folder).
OUTPUTS = {
    'python -m ultrasound_diffusers demo': ["demo_output/demo.png"],
    'ultrasound-diffusers phantoms': ["phantoms-echo"],
    'ultrasound-diffusers generate --pipeline "$FEWSTEP"': ["synthetic-echo-fast/dataset"],
    'ultrasound-diffusers generate': ["synthetic-echo/dataset"],
    'ultrasound-diffusers evaluate --real heldout/ --generated synthetic-echo': ["report/metrics.json", "report/report.md"],
    'ultrasound-diffusers evaluate --real heldout/ --generated bmap=': ["ablation-report/metrics.json"],
    'ultrasound-diffusers reconstruct': ["recon"],
}


def test_every_readme_command_is_run_or_skipped_for_a_stated_reason():
    commands = readme_commands()
    unknown = [c for c in commands if c not in COMMANDS]
    assert not unknown, f"README commands with no entry in tests/test_readme.py COMMANDS: {unknown}"
    gone = [c for c in COMMANDS if c not in commands]
    assert not gone, f"COMMANDS entries that are no longer in README.md: {gone}"
    for command, (kind, detail) in COMMANDS.items():
        assert kind in ("run", "skip") and detail is not None, command
        if kind == "skip":
            assert isinstance(detail, str) and len(detail) > 20, f"skipping {command!r} needs a reason"
        for old, _ in detail if kind == "run" else []:
            assert old in command, (command, old)


def _argv(command):
    words = shlex.split(command)
    if words[:3] == ["python", "-m", "ultrasound_diffusers"]:
        return words[3:]
    assert words[0] == "ultrasound-diffusers", command
    return words[1:]


def test_readme_commands_run(tmp_path, monkeypatch):
    from ultrasound_diffusers.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for command in SETUP:
        assert main(_argv(command)) == 0, command
    ran = []
    for command in readme_commands():
        kind, detail = COMMANDS[command]
        if kind == "skip":
            continue
        if command.startswith("ultrasound-diffusers evaluate") and "bmap=" in command:
            for setup in COMPARISON_SETUP:
                assert main(_argv(setup)) == 0, setup
        shrunk = command
        for old, new in detail:
            shrunk = shrunk.replace(old, new, 1)
        assert main(_argv(shrunk) + (["--no_progress"] if " evaluate " in f" {shrunk} " else [])) == 0, shrunk
        outputs = next(v for k, v in OUTPUTS.items() if command.startswith(k))
        for rel in outputs:
            assert (tmp_path / rel).exists(), f"{shrunk} did not write {rel}"
        ran.append(command)
    assert len(ran) == sum(kind == "run" for kind, _ in COMMANDS.values())
    # the README's reading of its own outputs: the evaluate report of the quick default has no segmentation
    import json

    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert "segmentation" in report["skipped"] and "fid" in report and "depth_profile" in report


def test_readme_fewstep_variable_names_the_bundled_student():
    """The README's FEWSTEP=$(python -c ...) line prints the bundled few-step pipeline folder."""
    import subprocess
    import sys

    line = next(c for c in readme_commands() if c.startswith("FEWSTEP="))
    code = re.search(r'python -c "(.*)"\)$', line).group(1)
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout.strip()
    assert Path(printed) == ROOT / FEWSTEP and (Path(printed) / "model_index.json").is_file()
