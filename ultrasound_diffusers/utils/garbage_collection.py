"""When Python's cyclic garbage collector runs: paused while the package's heavy imports load, and skipped at the
exit of the console script.

Both are about start-up and shut-down time, not memory. Loading torch, diffusers and (through diffusers)
transformers creates millions of container objects, and the collector walks them again and again while they load;
at interpreter exit it walks them once more to free memory the operating system frees anyway. On the reference
2-core machine that was 0.7 s of a 4 s ``import ultrasound_diffusers`` and 0.8 s after the last line of every
command (``benchmarks/benchmark_demo_time.py`` times the whole demo command; docs/fewstep.md has the figures).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause automatic cyclic garbage collection inside the block and restore the caller's setting after it, also
    when the block raises. Reference counting frees objects as usual; cycles made inside the block are collected
    by the first automatic collection after it. Nested use and a collector the caller disabled are left as found."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def settle_before_exit() -> None:
    """Collect the garbage cycles left now (their finalizers run, e.g. a file object in a cycle is closed), then
    move every surviving object to the collector's permanent generation so that the interpreter's exit does not
    walk them again. Call it only as the last step of a process that is about to exit (the console script does);
    in a process that goes on, objects surviving this call are never collected as cycles again."""
    gc.collect()
    gc.freeze()
