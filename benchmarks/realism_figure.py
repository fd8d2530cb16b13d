"""README picture for issue 19: a real scan, the old phantom and the new phantom, with grey-level histograms.

    OMP_NUM_THREADS=1 python benchmarks/realism_figure.py [--out docs/images/realism.png] [--old 15c20db]

Needs matplotlib, pydicom and pydicom-data (the real scan: gdcm-US-ALOKA-16.dcm, curvilinear, 15 cm) and git
(the old generator is loaded from ``git show OLD:ultrasound_diffusers/data/phantoms.py``). The histograms
are over the scan area (real: the scan-area mask; phantoms: inside the fan) of the shown image set:
the real scan, and 16 echo phantoms at 128 px each.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from phantom_realism import load_old_generator, phantom_set  # noqa: E402

from ultrasound_diffusers.data import phantoms as P  # noqa: E402
from ultrasound_diffusers.evaluation import realism as R  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images", "realism.png"))
    ap.add_argument("--old", default="15c20db")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--num", type=int, default=16)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real, real_mask = R.load_real_scan("gdcm-US-ALOKA-16.dcm")
    old = load_old_generator(args.old)
    if old is None:
        raise SystemExit(f"cannot load the generator at commit {args.old} (git needed)")
    sets = [("real scan (gdcm-US-ALOKA-16.dcm)", real[None], real_mask[None])]
    for name, mod in ((f"old phantom ({args.old})", old), ("new phantom (calibrated)", P)):
        im, _, mask = phantom_set(mod, args.num, args.size)
        sets.append((name, im, mask))
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.6), gridspec_kw={"height_ratios": [3, 1.3]})
    bins = np.linspace(0, 1, 65)
    for j, (name, im, mask) in enumerate(sets):
        rep = R.realism_report(im, mask)
        ax = axes[0, j]
        ax.imshow(im[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
        h = axes[1, j]
        h.hist(im[mask], bins=bins, density=True, color="0.3")
        h.set_xlim(0, 1)
        h.set_yticks([])
        h.set_xlabel("grey level")
        h.set_title(f"mean {rep['grey_mean']:.2f}, skew {rep['grey_skew']:+.1f}, window std {rep['homogeneous_std']:.3f},\n"
                    f"deep / mid-depth tissue {rep['far_field_ratio']:.2f} (fades below 1)", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
