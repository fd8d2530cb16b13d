import sys

from .cli import main

if __name__ == "__main__":  # only when run as `python -m ultrasound_diffusers`, never on import
    sys.exit(main())
