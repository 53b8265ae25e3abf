"""Every transformation, one class each (see `base` for what a class declares).

`ACTIONS`, the order of the transformation head, is the order in which the
classes are defined: NT (in `base`), then `tiling`, `loops` and `rewrite`,
imported in that order.  A new transformation is one new class (appended to
`rewrite`, or to a new module imported last here) and one test.
"""
from typing import Tuple, Type

from .base import ANY, NT, Action, Head, Picks
from .tiling import TF, TP, T, Tiling
from .loops import I, U
from .rewrite import I2C, V
from .register import R

ACTIONS: Tuple[Type[Action], ...] = tuple(Action.registry.values())
"""Every transformation, in the order of the transformation head."""

__all__ = ["ACTIONS", "ANY", "Action", "Head", "I", "I2C", "NT", "Picks", "R", "T", "TF", "TP", "Tiling", "U", "V"]
