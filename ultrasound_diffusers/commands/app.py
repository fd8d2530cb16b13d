"""``ultrasound-diffusers app``: serve the web demo (gradio, the ``app`` extra) of a label-conditioned pipeline."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app", help="serve the web demo: pick or upload a label map, generate, see the B-map attenuation (needs the app extra)",
        description="Serve a gradio page that generates images from label maps with a label-conditioned pipeline "
        "(default: the bundled demo pipeline). Needs gradio: pip install './ultrasound-diffusers[app]'.",
    )
    p.add_argument("--pipeline", default=None, help="pipeline folder or Hub repo id (default: the bundled demo pipeline)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link (off by default)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"`--port` must be from 1 to 65535, got {args.port}")
    from ..app import require_gradio

    try:
        require_gradio()
    except ImportError as err:
        print(f"ultrasound-diffusers app: error: {err}", file=sys.stderr)
        return 2
    from ..app import launch

    launch(args.pipeline, host=args.host, port=args.port, share=args.share, device=args.device)
    return 0
