"""Benchmark of the whole ``ultrasound-diffusers demo`` command: the few-step default against the 50-step model.

Run: ``python benchmarks/benchmark_demo_time.py [--pairs 3] [--threads 2] [--baseline_rev 0bbada0]`` (prints a
table; nothing is asserted).

Each command is timed from outside, as a user meets it: a fresh ``python -m ultrasound_diffusers demo`` process from
start to exit (interpreter start, imports, loading, sampling, the picture, the exit). The two commands run in turn,
A B A B ..., after one unmeasured warm-up of each (file caches), and the ratios are taken run by run so that a drift
in the machine's speed moves both. A third row times ``import ultrasound_diffusers`` alone in a fresh process: the
floor that no sampler can go under. The ``in process`` column is what the demo prints itself (loading to picture).

``--baseline_rev`` adds the demo as it was at an earlier commit of this repository (default ``0bbada0``, the last
commit before the few-step work of issue 30: the 50-step demo of that day), run from a copy of that commit's package
(``git archive``; its ``pipelines/`` folder placed as ``setup.cfg`` maps it) in turn with the others. Give ``none``
to leave it out.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple


def timed(command: Sequence[str], env: dict, cwd: str) -> Tuple[float, float, Optional[float]]:
    """(wall seconds of ``command`` from start to exit, its CPU seconds (user + system, the operating system's
    accounting of the finished child), the in-process seconds it printed or None). ``cwd`` must not hold a package
    of the same name (``python -m`` puts the working directory first on the import path)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(list(command), env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = re.search(r"generated \d+ images in ([0-9.]+) s", done.stdout)
    return wall, cpu, float(found.group(1)) if found else None


def spread(values: List[float]) -> str:
    return f"{statistics.median(values):6.2f} s  ({min(values):.2f} - {max(values):.2f})"


#: The last commit before the few-step work of issue 30: "today's" demo when the issue was filed.
FILING_REV = "0bbada0"


def package_at(rev: str, folder: Path) -> Path:
    """The package ``ultrasound_diffusers`` as it was at git revision ``rev``, importable from ``folder``
    (put on PYTHONPATH): the commit's ``ultrasound_diffusers/`` with its top-level ``pipelines/`` inside it."""
    root = Path(__file__).resolve().parents[1]
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "ultrasound_diffusers", "pipelines"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {rev} failed: {archive.stderr.decode(errors='replace')[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    (folder / "pipelines").rename(folder / "ultrasound_diffusers" / "pipelines")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="measured A/B pairs (default 3)")
    parser.add_argument("--baseline_rev", default=FILING_REV,
                        help=f"git revision whose demo is also timed (default {FILING_REV}: the demo when issue 30 was "
                        "filed); 'none' to skip")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the children (default: as this process has it, else torch's own)")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be >= 1")
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**6))

        def demo(*extra):  # a new output folder for every run: no run depends on another's folder or flags
            return lambda: [sys.executable, "-m", "ultrasound_diffusers", "demo", *extra, "--output_dir",
                            str(Path(tmp) / f"run-{next(runs)}")]

        commands = {
            "few-step (default, 4 calls)": demo(),
            "50-step (--no-fewstep, 50 guided calls)": demo("--no-fewstep"),
        }
        envs = {name: env for name in commands}
        if args.baseline_rev.lower() != "none":
            old = package_at(args.baseline_rev, Path(tmp) / "baseline")
            name = f"demo at {args.baseline_rev} (when filed)"
            commands[name] = demo()
            envs[name] = {**env, "PYTHONPATH": os.pathsep.join([str(old), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
            where = subprocess.run([sys.executable, "-c", "import ultrasound_diffusers as u; print(u.__file__)"],
                                   env=envs[name], cwd=tmp, capture_output=True, text=True).stdout.strip()
            if not where.startswith(str(old)):
                raise SystemExit(f"the baseline imports {where!r}, not the copy of {args.baseline_rev} in {old}")
        floor = [sys.executable, "-m", "ultrasound_diffusers", "--version"]
        for name, command in commands.items():  # warm-up: file caches, compiled bytecode
            timed(command(), envs[name], tmp)
        timed(floor, env, tmp)
        walls = {name: [] for name in commands}
        cpus = {name: [] for name in commands}
        inside = {name: [] for name in commands}
        imports: List[float] = []
        import_cpus: List[float] = []
        for _ in range(args.pairs):
            for name, command in commands.items():
                wall, cpu, own = timed(command(), envs[name], tmp)
                walls[name].append(wall)
                cpus[name].append(cpu)
                if own is not None:
                    inside[name].append(own)
            wall, cpu, _ = timed(floor, env, tmp)
            imports.append(wall)
            import_cpus.append(cpu)
    names = list(commands)
    print(f"median (min - max) of {args.pairs}, python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'':42s} {'whole command, wall':28s} {'whole command, CPU':28s} in process (wall)")
    for name in names:
        own = spread(inside[name]) if inside[name] else "-"
        print(f"{name:42s} {spread(walls[name]):28s} {spread(cpus[name]):28s} {own}")
    print(f"{'ultrasound-diffusers --version (the floor)':42s} {spread(imports):28s} {spread(import_cpus)}")
    for other in names[1:]:
        for what, values in (("wall", walls), ("CPU", cpus)):
            ratios = [a / b for a, b in zip(values[names[0]], values[other])]
            print(f"ratio few-step / {other}, {what}, run by run: median {statistics.median(ratios):.3f} "
                  f"({min(ratios):.3f} - {max(ratios):.3f})")


if __name__ == "__main__":
    main()
