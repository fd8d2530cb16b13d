"""README picture of the built-in echo phantoms: images (rows 1 and 3) over their label maps (rows 2 and 4).

    OMP_NUM_THREADS=1 python benchmarks/phantoms_figure.py [--out docs/images/phantoms_echo.png]

The phantoms are ``generate_phantoms(16, anatomy="echo", size=128, seed=0)`` (what
``ultrasound-diffusers phantoms --num_images 16 --anatomy echo --size 128`` writes); the label maps are drawn in
the package's label colours (``data.labels.colorize_labels``) with a legend of the echo coding.
"""

import argparse
import os

import numpy as np

from ultrasound_diffusers.data.labels import ECHO_LABELS, colorize_labels
from ultrasound_diffusers.data.phantoms import generate_phantoms
from ultrasound_diffusers.evaluation.report import add_label_legend
from ultrasound_diffusers.visualization import new_figure, save_figure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "images", "phantoms_echo.png"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--columns", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    n = 2 * args.columns
    ds = generate_phantoms(n, anatomy="echo", size=args.size, seed=args.seed)
    images = [np.asarray(im, np.float64) / 255.0 for im in ds["image"]]
    labels = [np.asarray(lab) for lab in ds["label"]]
    fig = new_figure(figsize=(1.3 * args.columns, 5.9))
    for half in range(2):
        for c in range(args.columns):
            i = half * args.columns + c
            for row, (array, is_label) in enumerate(((images[i], False), (labels[i], True))):
                ax = fig.add_subplot(4, args.columns, (2 * half + row) * args.columns + c + 1)
                if is_label:
                    ax.imshow(colorize_labels(array, num_classes=len(ECHO_LABELS)), interpolation="nearest")
                else:
                    ax.imshow(array, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel("label map" if is_label else "phantom", fontsize=8)
    fig.suptitle(f"Built-in echo phantoms, {args.size} x {args.size} "
                 f"(generate_phantoms({n}, anatomy=\"echo\", size={args.size}, seed={args.seed}))", fontsize=9)
    add_label_legend(fig, len(ECHO_LABELS), ECHO_LABELS)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97), h_pad=0.3, w_pad=0.3)
    print("wrote", save_figure(fig, args.out, dpi=110))


if __name__ == "__main__":
    main()
