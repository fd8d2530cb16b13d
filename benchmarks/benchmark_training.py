"""Training throughput of ``training/train_semantic.py`` on this machine.

Runs the real training script (built-in echo phantoms, the hybrid loss, B-map scheduler, EMA, AdamW) as a
subprocess, once for ``--warmup`` steps and once for ``--warmup + --steps`` steps, and reports the steady-state
throughput from the difference of the two loop times that the script logs, so start-up, phantom generation,
the first (slow) steps and the final save do not count:

    python benchmarks/benchmark_training.py                                   # small-cpu-64 at 64 and 128 px
    python benchmarks/benchmark_training.py --sizes 64 --steps 10 --launcher accelerate
    python benchmarks/benchmark_training.py --model_config tiny-64 --batch_size 8

No validation grids and no checkpoints are written during the measured steps.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "train_semantic.py"
_LOOP_LINE = re.compile(r"trained (\d+) steps in ([0-9.]+) s")


def loop_seconds(stderr: str) -> tuple[int, float]:
    """Parse ``(steps, seconds)`` from the training script's final timing line."""
    match = _LOOP_LINE.search(stderr)
    if match is None:
        raise RuntimeError("the training script did not log its timing line; last output:\n" + stderr[-2000:])
    return int(match.group(1)), float(match.group(2))


def run_training(size: int, steps: int, args: argparse.Namespace, output_dir: str) -> tuple[int, float]:
    """Run ``steps`` optimisation steps at ``size`` px; return the logged (steps, loop seconds)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("ACCELERATE_USE_CPU", None)
    if args.launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_processes", str(args.num_processes)]
        if args.threads is not None:
            cmd += ["--num_cpu_threads_per_process", str(args.threads)]
        if args.num_processes > 1:
            cmd.append("--multi_gpu")
            env["ACCELERATE_USE_CPU"] = "true"
    else:
        cmd = [sys.executable]
    cmd += [
        str(SCRIPT), "--dataset_name", f"phantoms:{args.anatomy}", "--phantoms", str(args.phantoms),
        "--resolution", str(size), "--model_config", args.model_config, "--learn_sigma", "--vb_weight", "0.001",
        "--drop_rate", "0.2", "--probe_geometry", "convex" if args.anatomy == "echo" else "linear",
        "--train_batch_size", str(args.batch_size), "--max_train_steps", str(steps), "--use_ema",
        "--validation_steps", "0", "--checkpointing_steps", "0", "--seed", "0", "--output_dir", output_dir,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training at {size} px failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return loop_seconds(proc.stderr + proc.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="Training resolutions (px).")
    parser.add_argument("--model_config", default="small-cpu-64",
                        help="Preset name or JSON file; its sample_size is replaced by each --sizes value.")
    parser.add_argument("--anatomy", choices=["echo", "thyroid"], default="echo")
    parser.add_argument("--batch_size", type=int, default=4, help="Per-process batch size.")
    parser.add_argument("--warmup", type=int, default=3, help="Steps of the reference run (subtracted).")
    parser.add_argument("--steps", type=int, default=12, help="Measured steps.")
    parser.add_argument("--phantoms", type=int, default=64, help="Size of the built-in phantom dataset.")
    parser.add_argument("--launcher", choices=["python", "accelerate"], default="python")
    parser.add_argument("--num_processes", type=int, default=1, help="Processes for --launcher accelerate.")
    parser.add_argument("--threads", type=int, default=None,
                        help="--num_cpu_threads_per_process for --launcher accelerate (accelerate's default is 1).")
    args = parser.parse_args(argv)
    for name in ("batch_size", "warmup", "steps", "phantoms", "num_processes", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.launcher == "python" and args.num_processes != 1:
        parser.error("--num_processes > 1 needs --launcher accelerate")

    import torch

    processes = args.num_processes if args.launcher == "accelerate" else 1
    global_batch = args.batch_size * processes
    threads = (args.threads or 1) if args.launcher == "accelerate" else torch.get_num_threads()
    print(f"model {args.model_config}, {args.anatomy} phantoms, global batch {global_batch} "
          f"({processes} process(es) x {args.batch_size}), {threads} torch thread(s) per process, "
          f"launcher {args.launcher}; {args.steps} measured steps after {args.warmup}")
    header = f"{'size':>5} | {'s/step':>7} | {'images/s':>8}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="ud-bench-train-") as tmp:
            n0, t0 = run_training(size, args.warmup, args, os.path.join(tmp, "a"))
            n1, t1 = run_training(size, args.warmup + args.steps, args, os.path.join(tmp, "b"))
        per_step = (t1 - t0) / (n1 - n0)
        print(f"{size:>5} | {per_step:>7.3f} | {global_batch / per_step:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
