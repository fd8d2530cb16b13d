"""The web demo (issue 17): its pure functions, the gradio callbacks, the command, and the page in a real browser.

The pure functions need only numpy / torch and always run. The gradio tests skip without gradio (the optional
``app`` extra, not in the ``test`` extra); the browser test also skips without Playwright and a Chromium
executable (``/usr/bin/chromium``, or ``ULTRASOUND_DIFFUSERS_CHROMIUM``).
"""

import os
import shutil
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from _net import free_tcp_port  # noqa: E402
from PIL import Image  # noqa: E402

from ultrasound_diffusers import app as demo_app  # noqa: E402
from ultrasound_diffusers.data.labels import label_palette  # noqa: E402
from ultrasound_diffusers.samplers import sampler_name, sampler_recipe  # noqa: E402
from ultrasound_diffusers.data.phantoms import phantom_label_maps  # noqa: E402

try:
    import gradio  # noqa: F401

    HAVE_GRADIO = True
except ImportError:
    HAVE_GRADIO = False

needs_gradio = pytest.mark.skipif(
    not HAVE_GRADIO, reason="gradio is not installed (optional app extra: pip install './ultrasound-diffusers[app]')"
)


@pytest.fixture(scope="module")
def pipe():
    return demo_app.load_pipeline()


@pytest.fixture(scope="module")
def state(pipe):
    return demo_app.DemoState(pipe, num_examples=2)


# ------------------------------------------------------------------------------------------ label maps
def test_examples_are_the_echo_phantom_label_maps():
    examples = demo_app.example_label_maps(3, size=64)
    assert list(examples) == ["phantom 0", "phantom 1", "phantom 2"]
    expected = phantom_label_maps(3, anatomy="echo", size=64, seed=demo_app.EXAMPLE_SEED)
    for got, want in zip(examples.values(), expected):
        assert got.dtype == np.int64 and got.shape == (64, 64)
        np.testing.assert_array_equal(got, want)
    assert {int(v) for v in np.unique(np.stack(list(examples.values())))} == {0, 1, 2, 3, 4}


def test_upload_reads_png_and_npy_with_the_package_rule(tmp_path):
    labels = phantom_label_maps(1, size=(48, 40), seed=3)[0]
    Image.fromarray(labels, mode="L").save(tmp_path / "map.png")
    np.save(tmp_path / "map.npy", labels.astype(np.int32))
    for name in ("map.png", "map.npy"):
        got = demo_app.read_uploaded_label_map(tmp_path / name, num_classes=5)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, labels)


def test_bad_uploads_are_refused_with_a_message_naming_the_file(tmp_path):
    labels = phantom_label_maps(1, size=32, seed=1)[0]
    colour = label_palette(5)[labels]  # a colour-coded map: refused by the acceptance rule
    Image.fromarray(colour, mode="RGB").save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"colour.png.*colour"):
        demo_app.read_uploaded_label_map(tmp_path / "colour.png", 5)
    Image.fromarray((labels + 3).astype(np.uint8), mode="L").save(tmp_path / "classes.png")  # classes up to 7
    with pytest.raises(ValueError, match=r"classes.png holds class 7 .* 5 classes"):
        demo_app.read_uploaded_label_map(tmp_path / "classes.png", 5)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png is not a readable image"):
        demo_app.read_uploaded_label_map(tmp_path / "broken.png", 5)
    np.save(tmp_path / "neg.npy", -np.ones((8, 8)))
    with pytest.raises(ValueError, match="negative"):
        demo_app.read_uploaded_label_map(tmp_path / "neg.npy", 5)
    (tmp_path / "map.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"expected one of"):
        demo_app.read_uploaded_label_map(tmp_path / "map.jpg", 5)
    with pytest.raises(FileNotFoundError):
        demo_app.read_uploaded_label_map(tmp_path / "missing.png", 5)


def test_drawn_colours_map_back_to_classes():
    labels = phantom_label_maps(1, size=(64, 48), seed=5)[0].astype(np.int64)
    scale = demo_app.editor_scale(labels.shape)
    assert scale == 4
    rgb = demo_app.colorize(labels, 5, scale)
    assert rgb.shape == (256, 192, 3)
    np.testing.assert_array_equal(demo_app.labels_from_colours(rgb, 5, shape=labels.shape), labels)
    # a brush stroke in the myocardium colour, with a blended (anti-aliased) edge and an alpha channel
    drawn = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    drawn[0:16, 0:16, :3] = label_palette(5)[3]
    drawn[16, 0:16, :3] = (0.7 * label_palette(5)[3] + 0.3 * label_palette(5)[0]).astype(np.uint8)
    got = demo_app.labels_from_colours(drawn, 5, shape=labels.shape)
    assert (got[:4, :4] == 3).all()
    np.testing.assert_array_equal(got[5:], labels[5:])
    with pytest.raises(ValueError, match="RGB"):
        demo_app.labels_from_colours(np.zeros((4, 4, 2)), 5)


def test_label_maps_with_unknown_classes_are_refused():
    with pytest.raises(ValueError, match="holds class 5"):
        demo_app.check_label_map(np.full((8, 8), 5), 5)
    with pytest.raises(ValueError, match="2-D"):
        demo_app.check_label_map(np.zeros((2, 8, 8), int), 5)
    with pytest.raises(ValueError, match="up to 2048 pixels"):
        demo_app.check_label_map(np.zeros((8, 4096), int), 5)


# ------------------------------------------------------------------------------------------ generation
def test_generate_image_has_the_model_size_and_the_attenuation_view(pipe):
    labels = demo_app.example_label_maps(1, size=(96, 80))["phantom 0"]  # resized to the model's 64 x 64
    calls = []
    result = demo_app.generate_image(pipe, labels, num_inference_steps=3, seed=1, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    image, attenuation = result["image"], result["attenuation"]
    assert image.shape == demo_app.model_size(pipe) == (64, 64)
    assert image.min() >= 0 and image.max() <= 1 and image.std() > 0
    assert result["steps"] == [500, 750, 999]
    assert attenuation.shape == (3, 64, 64)
    # the image under the cumulative B-map alone: sqrt(Bbar_t) x_0, which falls with t and with depth
    factor = pipe.scheduler.cumulative_bmap(torch.tensor([500, 750, 999]), (3, 1, 64, 64)).sqrt()[:, 0].double().numpy()
    np.testing.assert_allclose(attenuation, factor * image, rtol=1e-6, atol=1e-9)
    energy = [float(a.sum()) for a in attenuation]
    assert image.sum() > energy[0] > energy[1] > energy[2]
    assert factor[-1, 56, 32] < factor[-1, 8, 32] < 1  # deeper in the fan: less signal
    again = demo_app.generate_image(pipe, labels, num_inference_steps=3, seed=1)
    np.testing.assert_array_equal(again["image"], image)


@pytest.mark.parametrize("sampler", demo_app.SAMPLERS)
def test_every_sampler_generates(pipe, sampler):
    base = dict(pipe.scheduler.config)
    labels = demo_app.example_label_maps(1)["phantom 0"]
    result = demo_app.generate_image(pipe, labels, num_inference_steps=2, sampler=sampler, base_config=base)
    assert result["image"].shape == (64, 64) and np.isfinite(result["image"]).all()
    assert type(pipe.scheduler).__name__ == sampler_recipe(sampler)[0]
    assert sampler_name(pipe.scheduler) == sampler


def test_samplers_match_the_generate_command():
    from ultrasound_diffusers.commands.generate import SAMPLER_CHOICES

    assert demo_app.SAMPLERS == SAMPLER_CHOICES and demo_app.SAMPLERS[0] == "ddpm"


def test_bad_generation_settings_are_refused(pipe):
    labels = demo_app.example_label_maps(1)["phantom 0"]
    for kwargs, message in (
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"seed": -1}, "seed"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"sampler": "euler"}, "sampler"),
    ):
        with pytest.raises(ValueError, match=message):
            demo_app.generate_image(pipe, labels, **{"num_inference_steps": 1, **kwargs})


def test_state_generate_returns_display_images(state):
    labels = state.example("phantom 1")
    image, figure, colour, info = state.generate(labels, None, 2, 1.0, 0, "ddim")
    assert image.dtype == np.uint8 and image.shape == (256, 256)  # 64 x 64, pixels shown 4 x 4
    assert colour.shape == (256, 256, 3)
    np.testing.assert_array_equal(colour[::4, ::4], label_palette(5)[labels])
    assert len(figure.axes) == 4 and "t=999" in figure.axes[-1].get_title()
    assert info.startswith("2 steps, ddim")
    # a drawing replaces the picked map
    drawn = {"background": None, "layers": [], "composite": np.zeros((256, 256, 4), np.uint8) + [0, 0, 0, 255]}
    assert (state.current_labels(labels, drawn) == 0).all()
    with pytest.raises(ValueError, match="no label map"):
        state.current_labels(None, None)


# --------------------------------------------------------------------------------------------- command
def test_app_command_names_the_extra_when_gradio_is_missing(monkeypatch, capsys):
    from ultrasound_diffusers.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["app", "--port", "7999"]) == 2
    err = capsys.readouterr().err
    assert "ultrasound-diffusers app: error" in err and "pip install './ultrasound-diffusers[app]'" in err


def test_app_command_options():
    from ultrasound_diffusers.cli import build_parser, main

    args = build_parser().parse_args(["app"])
    assert (args.pipeline, args.host, args.port, args.share) == (None, "127.0.0.1", 7860, False)
    with pytest.raises(SystemExit) as exit_info:  # checked when the command line is read, as argparse does
        main(["app", "--port", "0"])
    assert exit_info.value.code == 2


# ------------------------------------------------------------------------------------------------ gradio
def _callback(demo, name):
    for block_fn in demo.fns.values():
        if getattr(block_fn.fn, "__name__", None) == name:
            return block_fn.fn
    raise AssertionError(f"no callback {name!r}")


@needs_gradio
def test_build_demo_and_its_callbacks(pipe, tmp_path):
    import gradio as gr

    demo = demo_app.build_demo(pipe, num_examples=2)
    assert isinstance(demo, gr.Blocks)
    labels, editor_value, _ = _callback(demo, "pick_example")("phantom 1")
    np.testing.assert_array_equal(labels, demo_app.example_label_maps(2)["phantom 1"])
    assert editor_value["background"].shape == (256, 256, 3)
    with pytest.raises(gr.Error):
        _callback(demo, "pick_example")("phantom 9")

    np.save(tmp_path / "ok.npy", labels)
    got, _ = _callback(demo, "upload")(str(tmp_path / "ok.npy"))
    np.testing.assert_array_equal(got, labels)
    Image.fromarray(label_palette(5)[labels], mode="RGB").save(tmp_path / "colour.png")
    with pytest.raises(gr.Error, match="colour"):
        _callback(demo, "upload")(str(tmp_path / "colour.png"))

    generate = _callback(demo, "generate")
    progress = []
    image, _, _, info = generate(labels, None, 2, 1.5, 3, "ddpm", progress=lambda p, desc=None: progress.append(p))
    assert image.shape == (256, 256) and progress == [(1, 2), (2, 2)]
    with pytest.raises(gr.Error, match="num_inference_steps"):
        generate(labels, None, 0, 1.5, 3, "ddpm", progress=lambda p, desc=None: None)
    demo.close()


# ----------------------------------------------------------------------------------------------- browser
def _chromium() -> str:
    for candidate in (os.environ.get("ULTRASOUND_DIFFUSERS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return ""


@pytest.mark.slow
@needs_gradio
def test_page_generates_an_image_in_a_real_browser(pipe):
    """Serve the page on 127.0.0.1, open it in headless Chromium, set 2 steps, click Generate and wait for the
    generated image, the colour label map and the attenuation plot to appear."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    executable = _chromium()
    if not executable:
        pytest.skip("no Chromium executable (apt-get install chromium, or set ULTRASOUND_DIFFUSERS_CHROMIUM)")
    demo = demo_app.build_demo(pipe, num_examples=2)
    port = free_tcp_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
                page.wait_for_selector("#generate", timeout=120_000)
                assert page.locator("#generated img").count() == 0
                steps = page.locator("#steps input[type=number]")
                steps.fill("2")
                steps.press("Enter")
                page.click("#generate")
                loaded = "sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; }"
                page.wait_for_function(loaded, arg="#generated img", timeout=300_000)
                page.wait_for_function(loaded, arg="#labels-colour img", timeout=30_000)
                page.wait_for_function(loaded, arg="#attenuation img", timeout=30_000)
                page.wait_for_function("() => document.querySelector('#info').innerText.includes('steps')", timeout=30_000)
                assert page.locator("#info").inner_text().startswith("2 steps, ddpm")
                size = page.eval_on_selector("#generated img", "img => [img.naturalWidth, img.naturalHeight]")
                assert size == [256, 256]  # the 64 x 64 image, pixels shown 4 x 4
                assert page.locator(".toast-body.error").count() == 0
            finally:
                browser.close()
    finally:
        demo.close()


@pytest.mark.slow
def test_export_space_writes_a_folder_a_gradio_space_runs(tmp_path, capsys):
    """`app --export_space`: Space metadata, requirements with the wheel built into the folder, an app.py that
    serves ./pipeline, the pipeline itself (same weights), under the output-folder rule; no gradio needed."""
    import zipfile

    from safetensors.torch import load_file

    from ultrasound_diffusers.cli import main
    from ultrasound_diffusers.demo import DEMO_PIPELINE_PATH
    from ultrasound_diffusers.hub_utils import read_card_metadata

    out = tmp_path / "space"
    assert main(["app", "--export_space", str(out), "--title", "Echo phantoms"]) == 0
    assert "upload_folder" in capsys.readouterr().out
    meta = read_card_metadata(out / "README.md")
    assert (meta["sdk"], meta["app_file"], meta["title"]) == ("gradio", "app.py", "Echo phantoms")
    assert meta["sdk_version"].count(".") == 2 and "ultrasound" in meta["tags"]
    assert meta["license"] == read_card_metadata(DEMO_PIPELINE_PATH / "README.md")["license"]  # the model's
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert requirements[0] == f"--extra-index-url {demo_app.SPACE_TORCH_INDEX}"
    wheel = out / requirements[1].removeprefix("./")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"ultrasound_diffusers/app.py", "ultrasound_diffusers/pipelines/pipeline_utils.py"} <= names
    assert not any("__pycache__" in n for n in names)
    app_text = (out / "app.py").read_text()
    compile(app_text, "app.py", "exec")
    assert 'build_demo(str(Path(__file__).resolve().parent / "pipeline"))' in app_text
    exported = demo_app.load_pipeline(out / "pipeline")
    assert exported.num_classes == 5 and (out / "pipeline" / "README.md").is_file()
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(out / "pipeline" / weights)), load_file(str(DEMO_PIPELINE_PATH / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a folder of the user's is never replaced without --overwrite (checked before any work)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="--export_space"):
        demo_app.export_space(mine)
    assert (mine / "notes.txt").read_text() == "keep"
