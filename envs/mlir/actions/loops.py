"""Loop actions: I (interchange of the next tiling's loops, chosen one loop a
step by a pointer, as MLIR-RL's level pointers) and U (unroll)."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ScheduleError
from ..opstate import OpState
from .base import Action, Head, common_block
from .tiling import PerLoop, T


class I(PerLoop):  # noqa: E742 (the design's name)
    """Interchange: the loop order of the tiles the next T creates."""

    name = "I"
    usage = "a loop permutation, e.g. I(0,2,1)"
    followers = ("T",)
    follow_rule = "an interchange (I) must be followed by a tiling (T)"
    history_block = "interchange"

    @property
    def perm(self) -> Tuple[int, ...]:
        return self.values

    @classmethod
    def available(cls, s, cfg):
        why = common_block(s, cfg, cls)
        if why:
            return why
        if s.num_loops < 2:
            return "fewer than two loops"
        if len(s.actions) >= cfg.max_actions_per_op - 2:
            return "no slot left for the T that must follow"
        return T.available(s, cfg)

    def check(self, s, cfg):
        why = self.available(s, cfg)
        if why:
            return why
        if sorted(self.perm) != list(range(s.num_loops)):
            return f"I needs a permutation of 0..{s.num_loops - 1}, got {self.perm}"
        return None

    @staticmethod
    def pointer_mask(s: OpState, chosen: Sequence[int]) -> List[bool]:
        """Level pointer: which loop may take the next position, given those chosen."""
        return [d not in chosen for d in range(s.num_loops)]

    @classmethod
    def heads(cls, cfg, max_loops):
        return (Head("pointer", 1, max_loops),)

    @classmethod
    def steps(cls, s):
        return s.num_loops

    @classmethod
    def head_masks(cls, s, cfg, max_loops, picked=()):
        m = np.zeros((1, max_loops), bool)
        m[0, :s.num_loops] = cls.pointer_mask(s, [int(p[0][0]) for p in picked])
        return [m]

    @classmethod
    def build(cls, s, cfg, picks):
        return cls(tuple(int(p[0][0]) for p in picks))

    def picks(self, s, cfg, max_loops):
        return [[np.array([d], np.int64)] for d in self.perm]

    @classmethod
    def history_size(cls, max_loops):
        return max_loops

    def history(self, cfg, max_loops):
        v = np.zeros(max_loops, np.float32)
        for pos, d in enumerate(self.perm[:max_loops]):
            v[d] = (pos + 1) / max_loops
        return v

    def apply(self, s, ctx):
        return s.replace(pending_interchange=self.perm)


class U(Action):
    """Unroll the innermost reduction loop of the last T (after vectorization)."""

    name = "U"
    followers = ("V", "NT")
    follow_rule = "an unroll (U) may only be followed by V or NT"
    history_block = "unroll"

    def __init__(self, factor: int):
        self.factor = int(factor)

    @property
    def params(self):
        return (self.factor,)

    @classmethod
    def from_params(cls, params):
        if len(params) != 1:
            raise ScheduleError(f"U takes one unroll factor, got {params}")
        return cls(params[0])

    @staticmethod
    def target(s: OpState) -> Optional[Tuple[int, str, int]]:
        """(dim, loop id, trip count) of the innermost reduction loop the last T created."""
        for d, loop_id, trips in reversed(s.last_tile or ()):
            if s.iterator_types[d] == "reduction":
                return d, loop_id, trips
        return None

    @classmethod
    def available(cls, s, cfg):
        why = common_block(s, cfg, cls)
        if why:
            return why
        if s.unroll is not None:
            return "already unrolled"
        target = cls.target(s)
        if target is None:
            return "the last tiling made no reduction loop"
        if target[2] < min(cfg.unroll_factors):
            return f"the loop runs {target[2]} times, too few to unroll"
        return None

    def check(self, s, cfg):
        why = self.available(s, cfg)
        if why:
            return why
        if self.factor < 2:
            return f"unroll factor {self.factor} < 2"
        trips = self.target(s)[2]
        if trips < self.factor:
            return f"the loop runs {trips} times, fewer than {self.factor}"
        return None

    @classmethod
    def factor_mask(cls, s: OpState, cfg) -> List[bool]:
        return [cls(f).check(s, cfg) is None for f in cfg.unroll_factors]

    @classmethod
    def heads(cls, cfg, max_loops):
        return (Head("unroll", 1, len(cfg.unroll_factors)),)

    @classmethod
    def head_masks(cls, s, cfg, max_loops, picked=()):
        return [np.array([cls.factor_mask(s, cfg)], bool)]

    @classmethod
    def build(cls, s, cfg, picks):
        return cls(cfg.unroll_factors[int(picks[0][0][0])])

    def picks(self, s, cfg, max_loops):
        return [[np.array([cfg.unroll_factors.index(self.factor)], np.int64)]]

    @classmethod
    def history_size(cls, max_loops):
        return 1

    def history(self, cfg, max_loops):
        return np.array([min(1.0, math.log2(self.factor) / math.log2(max(cfg.unroll_factors)))], np.float32)

    def apply(self, s, ctx):
        return s.replace(unroll=self.factor)

    def emit(self, b, s, ctx):
        b.unroll_later(self.target(s)[1], self.factor)
