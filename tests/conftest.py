"""Test-wide settings: no display, no telemetry, no accidental network access to the Hub."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the subprocesses tests launch

import torch  # noqa: E402

# Tiny test models run several times faster on one thread than on two busy cores.
torch.set_num_threads(1)
