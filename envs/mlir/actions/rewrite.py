"""Actions that rewrite an op: V (vectorize, ends the op) and I2C (im2col)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from ..errors import ScheduleError
from ..opstate import DECOMPOSABLE, IM2COL, WINDOWED_1D, Bounds, OpState
from .base import ANY, Action, Head, common_block


class V(Action):
    """Vectorize every piece (decomposing conv/pooling windows first); ends the op."""

    name = "V"
    ends_op = True

    @classmethod
    def available(cls, s, cfg):
        why = common_block(s, cfg, cls)
        if why:
            return why
        for p in s.pieces:
            why = cls.piece_problem(s, p)
            if why:
                return why
        n = s.vector_elements(s.bounds)
        if n > cfg.vector_max_elements:
            return f"a vector of {n} elements exceeds the limit of {cfg.vector_max_elements}"
        return None

    @classmethod
    def piece_problem(cls, s: OpState, p: Bounds) -> Optional[str]:
        if not s.op.vectorizable_body:
            return "the op's body has an op the vectorizer cannot take (e.g. cf.assert, tensor.extract)"
        if s.name in DECOMPOSABLE:
            if not any(p[a] == 1 and p[w] == 1 for a, w in DECOMPOSABLE[s.name]):
                return ("a 2-D window must first be tiled to one row (or column) of output and window "
                        "(e.g. T with size 1 on both)")
            return None
        if s.name.startswith(("linalg.conv", "linalg.depthwise", "linalg.pooling")) and \
                not s.name.startswith(WINDOWED_1D):
            return f"{s.name} cannot be vectorized"
        for m in s.loads + s.stores:
            for row in m:
                if sum(1 for c in row if c) > 1 or any(c not in (0, 1) for c in row):
                    return "an access is not a plain loop index (a window); it cannot be vectorized"
        return None

    def apply(self, s, ctx):
        return s.replace(ended=True)

    def emit(self, b, s, ctx):
        for h in b.pieces:
            if s.name in DECOMPOSABLE:  # 2-D windows become 1-D ones, which vectorize
                d = b.fresh("d")
                b.add(f"{d} = transform.structured.decompose {h} : ({ANY}) -> {ANY}")
                h = d
            b.add(f"transform.structured.vectorize {h} {{create_named_contraction}} : {ANY}")
        b.early_contractions()
        b.vectorized = True
        b.pieces = []


class I2C(Action):
    """im2col: rewrite a 2-D convolution as a contraction over gathered patches."""

    name = "I2C"

    @classmethod
    def available(cls, s, cfg):
        why = common_block(s, cfg, cls)
        if why:
            return why
        if s.name not in IM2COL or s.name != s.op.name:
            return f"im2col applies to untransformed {', '.join(IM2COL)} only"
        if s.tiled:
            return "im2col must come before any tiling"
        return None

    def apply(self, s, ctx):
        bounds, iters, loads, stores = IM2COL[s.name](s.bounds)
        return s.replace(name="linalg.generic", op_type="matmul", iterator_types=iters, loads=loads,
                         stores=stores, pieces=(bounds,))

    def emit(self, b, s, ctx):
        col, res, g = b.fresh("i"), b.fresh("i"), b.fresh("g")
        b.add(f"{col}, {res} = transform.structured.convert_conv2d_to_img2col {b.pieces[0]} : "
              f"({ANY}) -> ({ANY}, {ANY})")
        # The contraction to schedule is the producer of the trailing expand_shape,
        # which inherited the conv's tag: move the tag to the contraction.
        b.add(f"{g} = transform.get_producer_of_operand {res}[0] : ({ANY}) -> {ANY}")
        b.annotate(res, "tag", f"{s.op.tag}.im2col_reshape")
        b.annotate(g, "tag", s.op.tag)
        b.pieces = [g]


class P(Action):
    """Pack the right-hand operand of a contraction into panels of n columns
    (`structured.pack` on the output's last loop, then `pack_transpose` so that
    each panel is contiguous along the reduction): the inner kernel then reads
    B as IREE's CPU data tiling does.  The op becomes a generic with one more
    loop (the panel column, bound n); the packed loop runs bound / n times."""

    name = "P"
    history_block = "pack"

    def __init__(self, n: int):
        self.n = int(n)

    @property
    def params(self):
        return (self.n,)

    @classmethod
    def from_params(cls, params):
        if len(params) != 1:
            raise ScheduleError(f"P takes one panel width, got {params}")
        return cls(params[0])

    @staticmethod
    def geometry(s: OpState) -> Optional[Tuple[int, int, int]]:
        """(packed loop, index of B among the loads, reduction loop B's panel runs
        along), or None: the output's last dimension is a parallel loop n that
        exactly one load (B) reads, in its last dimension, after a reduction loop;
        every access a plain loop index (no window)."""
        if not s.stores or not s.loads or len(s.stores) != 1:
            return None
        rows = [r for m in s.loads + s.stores for r in m]
        if any(sum(1 for c in r if c) > 1 or any(c not in (0, 1) for c in r) for r in rows):
            return None
        last = s.stores[0][-1]
        if 1 not in last:
            return None
        n = last.index(1)
        users = [i for i, m in enumerate(s.loads) if any(r[n] for r in m)]
        if s.iterator_types[n] != "parallel" or len(users) != 1:
            return None
        b = s.loads[users[0]]
        if len(b) < 2 or not b[-1][n] or 1 not in b[-2] or s.iterator_types[b[-2].index(1)] != "reduction":
            return None
        return n, users[0], b[-2].index(1)

    @classmethod
    def available(cls, s, cfg):
        why = common_block(s, cfg, cls)
        if why:
            return why
        if s.actions or s.name != s.op.name:
            return "P must be the op's first action"
        if cls.geometry(s) is None:
            return ("the op is not a contraction whose output's last loop is read by one operand only, "
                    "last, after a reduction loop")
        if not any(cls(c).check_width(s) is None for c in cfg.tile_sizes):
            return "no candidate panel width divides the packed loop"
        return None

    def check_width(self, s: OpState) -> Optional[str]:
        bound = s.bounds[self.geometry(s)[0]]
        if self.n < 4 or self.n >= bound or bound % self.n:
            return f"panel width {self.n} must be >= 4, below and dividing the packed loop's bound {bound}"
        return None

    def check(self, s, cfg):
        return self.available(s, cfg) or self.check_width(s)

    @classmethod
    def heads(cls, cfg, max_loops):
        return (Head("pack", 1, len(cfg.tile_choices)),)

    @classmethod
    def head_masks(cls, s, cfg, max_loops, picked=()):
        return [np.array([[c > 0 and cls(c).check_width(s) is None for c in cfg.tile_choices]], bool)]

    @classmethod
    def build(cls, s, cfg, picks):
        return cls(cfg.tile_choices[int(picks[0][0][0])])

    def picks(self, s, cfg, max_loops):
        return [[np.array([cfg.tile_choices.index(self.n)], np.int64)]]

    @classmethod
    def history_size(cls, max_loops):
        return 1

    def history(self, cfg, max_loops):
        return np.array([min(1.0, math.log2(self.n + 1) / math.log2(max(cfg.tile_sizes) + 1))], np.float32)

    def apply(self, s, ctx):
        n, b_idx, _ = self.geometry(s)
        inner = tuple(1 if d == s.num_loops else 0 for d in range(s.num_loops + 1))
        widen = lambda m: tuple(tuple(r) + (0,) for r in m)  # noqa: E731  (no operand reads the new loop yet)
        loads = [widen(m) for m in s.loads]
        b = list(loads[b_idx])
        b[-2], b[-1] = b[-1], b[-2]  # pack_transpose: the panel index before the reduction
        loads[b_idx] = tuple(b) + (inner,)
        stores = (widen(s.stores[0]) + (inner,),)
        pieces = tuple(p[:n] + (p[n] // self.n,) + p[n + 1:] + (self.n,) for p in s.pieces)
        return s.replace(name="linalg.generic", iterator_types=s.iterator_types + ("parallel",), loads=tuple(loads),
                         stores=stores, pieces=pieces)

    def emit(self, b, s, ctx):
        n, b_idx, _ = self.geometry(s)
        sizes = [self.n if d == n else 0 for d in range(s.num_loops)]
        perm = list(range(len(s.loads[b_idx])))
        perm[-2], perm[-1] = perm[-1], perm[-2]
        pk, bp, pk2, bp2, un = (b.fresh(x) for x in ("pk", "bp", "pk", "bp", "un"))
        b.add(f"{pk} = transform.structured.pack {b.pieces[0]} packed_sizes = [{', '.join(map(str, sizes))}] : "
              f"({ANY}) -> ({ANY})")
        b.add(f"{bp} = transform.get_producer_of_operand {pk}[{b_idx}] : ({ANY}) -> ({ANY})")
        b.add(f"{pk2}, {bp2}, {un} = transform.structured.pack_transpose {bp} with_compute_op({pk}) "
              f"outer_perm = [{', '.join(map(str, perm))}] : ({ANY}, {ANY}) -> ({ANY}, {ANY}, {ANY})")
        b.annotate(pk2, "tag", s.op.tag)  # packing makes a new op: keep it ours
        # The packs of B and of the output, and the unpack, are copies: vectorize them in rows of panels.
        cp = b.fresh("cp")
        b.add(f"{cp} = transform.get_producer_of_operand {pk2}[{len(s.loads)}] : ({ANY}) -> ({ANY})")
        unpack = b.fresh("up")
        b.add(f"{unpack} = transform.get_consumers_of_result {pk2}[0] : ({ANY}) -> ({ANY})")
        rank_b, rank_c = len(s.loads[b_idx]), len(s.stores[0])
        # Packs tile over their outer dims (one panel row a tile), the unpack over the output's dims.
        for h, rank, last in ((bp2, rank_b, 1), (cp, rank_c, 1), (unpack, rank_c, self.n)):
            tiles = [1] * (rank - 1) + [last]
            t, loops = b.fresh("t"), [b.fresh("l") for _ in tiles]
            b.add(f"{t}, {', '.join(loops)} = transform.structured.tile_using_for {h} tile_sizes "
                  f"[{', '.join(map(str, tiles))}] : ({ANY}) -> ({', '.join([ANY] * (1 + len(tiles)))})")
            b.add(f"transform.structured.vectorize {t} : {ANY}")
        b.pieces = [b.split(b.match_tag(s.op.tag), 1)[0]]
