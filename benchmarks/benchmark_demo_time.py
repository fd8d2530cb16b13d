"""Benchmark of the whole ``ultrasound-diffusers demo`` command: the few-step default against the 50-step model.

Run: ``python benchmarks/benchmark_demo_time.py [--pairs 3] [--threads 2]`` (prints a table; nothing is asserted).

Each command is timed from outside, as a user meets it: a fresh ``python -m ultrasound_diffusers demo`` process from
start to exit (interpreter start, imports, loading, sampling, the picture, the exit). The two commands run in turn,
A B A B ..., after one unmeasured warm-up of each (file caches), and the ratio is taken pair by pair so that a drift
in the machine's speed moves both. A third row times ``import ultrasound_diffusers`` alone in a fresh process: the
floor that no sampler can go under. The ``in process`` column is what the demo prints itself (loading to picture).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple


def timed(command: Sequence[str], env: dict) -> Tuple[float, Optional[float]]:
    """(wall seconds of ``command`` from start to exit, the in-process seconds it printed or None)."""
    start = time.perf_counter()
    done = subprocess.run(list(command), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = re.search(r"generated \d+ images in ([0-9.]+) s", done.stdout)
    return wall, float(found.group(1)) if found else None


def spread(values: List[float]) -> str:
    return f"{statistics.median(values):6.2f} s  ({min(values):.2f} - {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="measured A/B pairs (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the children (default: as this process has it, else torch's own)")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be >= 1")
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        demo = [sys.executable, "-m", "ultrasound_diffusers", "demo", "--overwrite", "--output_dir"]
        commands = {
            "few-step (default, 4 calls)": demo + [str(Path(tmp) / "fewstep")],
            "50-step (--no-fewstep, 50 guided calls)": demo + [str(Path(tmp) / "full"), "--no-fewstep"],
        }
        floor = [sys.executable, "-c", "import ultrasound_diffusers"]
        for command in (*commands.values(), floor):  # warm-up: file caches, compiled bytecode
            timed(command, env)
        walls = {name: [] for name in commands}
        inside = {name: [] for name in commands}
        imports: List[float] = []
        for _ in range(args.pairs):
            for name, command in commands.items():
                wall, own = timed(command, env)
                walls[name].append(wall)
                if own is not None:
                    inside[name].append(own)
            imports.append(timed(floor, env)[0])
    names = list(commands)
    ratios = [a / b for a, b in zip(walls[names[0]], walls[names[1]])]
    print(f"whole command, median (min - max) of {args.pairs}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'':42s} {'whole command':28s} in process")
    for name in names:
        own = spread(inside[name]) if inside[name] else "-"
        print(f"{name:42s} {spread(walls[name]):28s} {own}")
    print(f"{'import ultrasound_diffusers (the floor)':42s} {spread(imports)}")
    print(f"ratio few-step / 50-step, pair by pair: median {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f} - {max(ratios):.3f})")


if __name__ == "__main__":
    main()
