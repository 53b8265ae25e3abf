"""The project's error types for the MLIR layer.

`MlirInputError` is the one exception a user sees for a program that cannot be
scheduled; its text is one line: ``FILE:LINE: reason`` (the line where MLIR
reports one).  `ScheduleError` is a schedule that does not fit its program
(an unknown op tag, an action outside its validity mask): a bug in the caller.
"""
from __future__ import annotations

import re
from typing import Optional

_LOC_RE = re.compile(r'loc\("(?P<file>[^"]*)":(?P<line>\d+):(?P<col>\d+)\)')


class MlirInputError(Exception):
    """A program the layer cannot accept, named by file and line."""

    def __init__(self, source: str, reason: str, line: Optional[int] = None):
        self.source = source
        self.reason = " ".join(reason.split())  # one line, always
        self.line = line
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {self.reason}")


class ScheduleError(ValueError):
    """A schedule that is invalid for its program (text or action masks)."""


def line_of(location) -> Optional[int]:
    """The line number in an MLIR location (``loc("f.mlir":12:3)``), if any."""
    m = _LOC_RE.search(str(location))
    return int(m.group("line")) if m else None
