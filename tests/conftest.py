"""Test-wide settings (no display, no telemetry, no accidental network access to the Hub, one torch thread) and
the shared fixtures: tiny random pipelines and saved copies of them (helpers in tests/_pipeline_fixtures.py)."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the subprocesses tests launch

import pytest  # noqa: E402
import torch  # noqa: E402
from _pipeline_fixtures import tiny_semantic_pipeline, tiny_unconditional_pipeline  # noqa: E402

# Tiny test models run several times faster on one thread than on two busy cores.
torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Every test module runs torch on one thread, whatever a previous module set, and restores the setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _saved(pipeline, tmp_path_factory, name: str):
    folder = tmp_path_factory.mktemp("saved") / name
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipe():
    """A tiny random SemanticUltrasoundPipeline (16 px, B-map scheduler, learned range), one per test module."""
    return tiny_semantic_pipeline()


@pytest.fixture(scope="module")
def unconditional():
    """A tiny random UltrasoundPipeline for 8 x 32 images (linear probe), one per test module."""
    return tiny_unconditional_pipeline()


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    """The module's ``pipe`` saved with ``save_pretrained`` to a folder named ``tiny-echo``."""
    return _saved(pipe, tmp_path_factory, "tiny-echo")


@pytest.fixture(scope="module")
def saved_unconditional(unconditional, tmp_path_factory):
    """The module's ``unconditional`` pipeline saved to a folder named ``tiny-lung``."""
    return _saved(unconditional, tmp_path_factory, "tiny-lung")
