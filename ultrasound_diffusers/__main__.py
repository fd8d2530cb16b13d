"""``python -m ultrasound_diffusers``: the console script. Importing this module runs nothing."""

import sys

from .cli import console_main

if __name__ == "__main__":  # only when run as `python -m ultrasound_diffusers`, never on import
    sys.exit(console_main())
