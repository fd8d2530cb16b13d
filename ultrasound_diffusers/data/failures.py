"""Counting the files a converter skipped, so that "everything failed" is an error and not an empty dataset.

Every converter skips a corrupt or unexpected file with a :class:`~.converters.ConversionWarning` (or raises
with ``strict``). :class:`FailureLog` does that through :func:`~.converters.report_bad_file` and also counts
the skipped files per reason; :meth:`FailureLog.refuse_empty` turns a conversion that produced nothing into
a ValueError naming the input folder, how many files failed and why.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Dict, List, Tuple, Union

from .converters import report_bad_file


class FailureLog:
    """Skipped files of one conversion, by reason.

    Example::

        failures = FailureLog(strict)
        failures.add(path, "unreadable", f"unreadable ({err})")   # warns (or raises with strict)
        ...
        failures.refuse_empty(rows, input_dir, what="CAMUS images")
    """

    def __init__(self, strict: bool = False):
        self.strict = bool(strict)
        self.by_reason: Counter = Counter()
        self.examples: List[Tuple[str, str]] = []

    def add(self, path: Union[str, os.PathLike], reason: str, message: str) -> None:
        """Skip ``path`` (warning, or ValueError with ``strict``) and count it under the short ``reason``."""
        report_bad_file(path, message, self.strict)
        self.by_reason[reason] += 1
        if len(self.examples) < 3:
            self.examples.append((str(path), message))

    @property
    def total(self) -> int:
        return int(sum(self.by_reason.values()))

    def counts(self) -> Dict[str, int]:
        return dict(sorted(self.by_reason.items()))

    def summary(self) -> str:
        """``"3 unreadable, 1 label shape mismatch"``."""
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0])))

    def refuse_empty(self, rows, input_dir, what: str, hint: str = "") -> None:
        """Raise ValueError when ``rows`` is empty: name ``input_dir``, the failure counts and an example."""
        if len(rows):
            return
        if self.total:
            example = "; ".join(f"{p}: {m}" for p, m in self.examples[:1])
            raise ValueError(
                f"no {what} could be converted from {input_dir}: {self.total} file(s) failed ({self.summary()}); "
                f"for example {example}"
            )
        raise ValueError(f"no {what} could be converted from {input_dir}: nothing was left to convert" + (f" ({hint})" if hint else ""))
