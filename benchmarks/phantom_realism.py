"""Phantom realism against real scans (issue 19): the realism table and the generation time.

    OMP_NUM_THREADS=1 python benchmarks/phantom_realism.py [--num 32] [--time 1000] [--old 15c20db]

Prints, for 64 and 128 px echo phantoms, each metric of :mod:`ultrasound_diffusers.evaluation.realism`:
the real-scan range (``REAL_SCAN_RANGES``), the phantoms of the generator at commit ``--old`` (loaded
from ``git show`` into a temporary module, if git and the commit are available) and the current phantoms,
then the time to generate ``--time`` pairs at 128 px (``iter_phantom_batches``, images and labels as arrays).
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from ultrasound_diffusers.data import phantoms as P
from ultrasound_diffusers.evaluation import realism as R


def load_old_generator(commit: str):
    """The phantom module as of ``commit`` (its relative imports resolved against the installed package)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        src = subprocess.run(["git", "-C", root, "show", f"{commit}:ultrasound_diffusers/data/phantoms.py"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    src = src.replace("from ..schedulers", "from ultrasound_diffusers.schedulers").replace("from .labels", "from ultrasound_diffusers.data.labels")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(f"old_phantoms_{commit}", f.name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    except ImportError as err:  # the old module names package internals that have moved since
        print(f"(the generator of commit {commit} does not import against this package: {err}; its column stays empty)")
        return None
    finally:
        os.unlink(f.name)
    return mod


def phantom_set(module, num: int, size: int, anatomy: str = "echo", seed: int = 0):
    imgs, labs = [], []
    for im, lab, _ in module.iter_phantom_batches(num, anatomy, size, seed=seed):
        imgs.append(im)
        labs.append(lab)
    im, lab = np.concatenate(imgs), np.concatenate(labs)
    mask = lab > 0 if anatomy != "thyroid" else np.ones(lab.shape, bool)
    return im, lab, mask


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=32, help="phantoms per set")
    ap.add_argument("--time", type=int, default=1000, help="pairs at 128 px to time (0: skip)")
    ap.add_argument("--old", default="15c20db", help="commit of the pre-calibration generator")
    args = ap.parse_args(argv)
    old = load_old_generator(args.old)
    for anatomy in ("echo", "thyroid"):
        for size in (64, 128):
            ref = R.REAL_SCAN_RANGES[size]
            new = R.realism_report(*phantom_set(P, args.num, size, anatomy)[::2])
            old_rep = R.realism_report(*phantom_set(old, args.num, size, anatomy)[::2]) if old is not None else {}
            inside = R.compare_to_reference(new, ref)
            print(f"\n{anatomy} phantoms, {size} px ({args.num} images); real range at {size} px")
            print(f"{'metric':26s} {'real':>17s} {'old':>8s} {'new':>8s}")
            for k in R.METRICS:
                o = old_rep.get(k, float("nan"))
                print(f"{k:26s} {ref[k][0]:8.4f}-{ref[k][1]:<8.4f} {o:8.4f} {new[k]:8.4f}  {'inside' if inside[k]['inside'] else 'OUTSIDE'}")
    if args.time > 0:
        t0 = time.perf_counter()
        n = 0
        for im, lab, _ in P.iter_phantom_batches(args.time, "echo", 128, seed=0):
            n += len(im)
        dt = time.perf_counter() - t0
        print(f"\n{n} echo pairs at 128 px: {dt:.1f} s ({1000 * dt / n:.1f} ms per pair, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")


if __name__ == "__main__":
    sys.exit(main())
