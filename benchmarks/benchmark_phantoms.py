"""Time the phantom generator: ``python benchmarks/benchmark_phantoms.py [--num_images 1000] [--size 128]``.

Prints the wall time of rendering the images alone and of building the full ``datasets.Dataset``
(PNG encoding included). Target: 1,000 echo images at 128 x 128 in well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--anatomy", default="echo", choices=["echo", "thyroid", "homogeneous"])
    parser.add_argument("--threads", type=int, default=2, help="BLAS / FFT threads (the target machine has 2 cores)")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    from ultrasound_diffusers.data.phantoms import generate_phantoms, iter_phantom_batches

    list(iter_phantom_batches(2, args.anatomy, args.size, seed=123))  # warm-up (geometry cache, imports)
    t0 = time.perf_counter()
    n = sum(len(meta) for _, _, meta in iter_phantom_batches(args.num_images, args.anatomy, args.size, seed=0, fft_workers=args.threads))
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = generate_phantoms(args.num_images, args.anatomy, args.size, seed=0, fft_workers=args.threads)
    t_dataset = time.perf_counter() - t0
    assert n == len(ds) == args.num_images
    print(f"{args.num_images} {args.anatomy} phantoms at {args.size}x{args.size}:")
    print(f"  render only:            {t_render:6.1f} s  ({1000 * t_render / n:.1f} ms / image)")
    print(f"  datasets.Dataset total: {t_dataset:6.1f} s  ({1000 * t_dataset / n:.1f} ms / image)")


if __name__ == "__main__":
    main()
