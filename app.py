"""Hugging Face Space entry point: the web demo of ultrasound-diffusers with the bundled demonstration pipeline.

Runs with ``python app.py`` (what a gradio Space does) or ``gradio app.py`` (reload mode, which looks for
``demo``). Everything lives in :mod:`ultrasound_diffusers.app`; ``ultrasound-diffusers app`` serves the same page.
Needs the ``app`` extra: ``pip install './ultrasound-diffusers[app]'``.
"""

from ultrasound_diffusers.app import build_demo

demo = build_demo()

if __name__ == "__main__":
    demo.launch(max_file_size="20mb")
