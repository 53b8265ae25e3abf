"""Actions that rewrite an op: V (vectorize, ends the op) and I2C (im2col)."""
from __future__ import annotations

from typing import Optional

from ..opstate import DECOMPOSABLE, IM2COL, WINDOWED_1D, Bounds, OpState
from .base import ANY, Action, common_block


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
