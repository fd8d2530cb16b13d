"""``ultrasound-diffusers app``: serve the web demo (gradio, the ``app`` extra) of a label-conditioned pipeline."""

from __future__ import annotations

from ._common import device_type, int_range, pipeline_source

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app", help="serve the web demo: pick or upload a label map, generate, see the B-map attenuation (needs the app extra)",
        description="Serve a gradio page that generates images from label maps with a label-conditioned pipeline "
        "(default: the bundled demo pipeline). Needs gradio: pip install './ultrasound-diffusers[app]'.",
    )
    p.add_argument("--pipeline", default=None, type=pipeline_source(), help="pipeline folder or Hub repo id (default: the bundled demo pipeline)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int_range("--port", 1, 65535), default=7860, help="port (default: 7860)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link (off by default)")
    p.add_argument("--device", default="cpu", type=device_type())
    p.add_argument("--export_space", default=None, metavar="DIR",
                   help="instead of serving, write a folder that runs as a Hugging Face gradio Space (app.py, README.md "
                   "with the Space metadata, requirements.txt, the package wheel, the pipeline); needs no gradio")
    p.add_argument("--title", default="ultrasound-diffusers demo", help="the Space's title (with --export_space)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --export_space folder another command wrote")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.export_space is not None:
        from ..app import export_space

        folder = export_space(args.export_space, args.pipeline, title=args.title, overwrite=args.overwrite)
        print(f"Space folder written to {folder.resolve()}; upload it with "
              f"huggingface_hub.HfApi().upload_folder(repo_id='ORG/NAME', repo_type='space', folder_path='{folder}')")
        return 0
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
