"""The per-op state actions act on, and the window geometry of convolutions.

An op's state is a list of *pieces*: the op as the next action will see it.
Tiling with a size that does not divide a bound peels the remainder loop, so
one op becomes a main piece (``pieces[0]``, bounds = the tile) and remainder
pieces; later actions apply to every piece, with tile sizes clamped to each
piece's bounds.  OpFeatures describe ``pieces[0]``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

from .program import AccessMatrix, LinalgOp

if TYPE_CHECKING:
    from .actions import Action

Bounds = Tuple[int, ...]

# Named windowed ops that `structured.decompose` rewrites to 1-D (then vectorizable):
# loop positions of (output row, window row) and (output col, window col); one
# pair must be 1 in the piece.
DECOMPOSABLE = {
    "linalg.conv_2d_nhwc_hwcf": ((1, 4), (2, 5)),
    "linalg.conv_2d_nhwc_fhwc": ((1, 4), (2, 5)),
    "linalg.conv_2d_nchw_fchw": ((2, 5), (3, 6)),
    "linalg.depthwise_conv_2d_nhwc_hwc": ((1, 4), (2, 5)),
    "linalg.pooling_nhwc_max": ((1, 4), (2, 5)),
    "linalg.pooling_nhwc_sum": ((1, 4), (2, 5)),
    "linalg.pooling_nchw_max": ((2, 4), (3, 5)),
    "linalg.pooling_nchw_sum": ((2, 4), (3, 5)),
}
WINDOWED_1D = ("linalg.conv_1d", "linalg.depthwise_conv_1d", "linalg.pooling_nwc", "linalg.pooling_ncw")


def _unit(n: int, i: int) -> Tuple[int, ...]:
    return tuple(1 if j == i else 0 for j in range(n))


# im2col (`structured.convert_conv2d_to_img2col`) turns a 2-D conv into a
# contraction; its loops and access matrices, from the conv's bounds
# (n, oh, ow, f, kh, kw, c) or (n, f, oh, ow, c, kh, kw).
def _im2col_nhwc_hwcf(b: Bounds):
    n, oh, ow, f, kh, kw, c = b
    bounds = (n, oh * ow, f, kh * kw * c)
    u = lambda i: _unit(4, i)  # noqa: E731
    return bounds, ("parallel",) * 3 + ("reduction",), ((u(0), u(1), u(3)), (u(3), u(2))), ((u(0), u(1), u(2)),)


def _im2col_nhwc_fhwc(b: Bounds):
    bounds, iters, _, stores = _im2col_nhwc_hwcf(b)
    u = lambda i: _unit(4, i)  # noqa: E731
    return bounds, iters, ((u(0), u(1), u(3)), (u(2), u(3))), stores


def _im2col_nchw_fchw(b: Bounds):
    n, f, oh, ow, c, kh, kw = b
    bounds = (n, f, oh * ow, c * kh * kw)
    u = lambda i: _unit(4, i)  # noqa: E731
    return bounds, ("parallel",) * 3 + ("reduction",), ((u(1), u(3)), (u(0), u(3), u(2))), ((u(0), u(1), u(2)),)


IM2COL = {
    "linalg.conv_2d_nhwc_hwcf": _im2col_nhwc_hwcf,
    "linalg.conv_2d_nhwc_fhwc": _im2col_nhwc_fhwc,
    "linalg.conv_2d_nchw_fchw": _im2col_nchw_fchw,
}


@dataclass(frozen=True)
class OpState:
    """One op as the next action sees it (immutable; actions return a new one)."""

    op: LinalgOp
    name: str  # current op name (linalg.generic after im2col)
    op_type: str
    iterator_types: Tuple[str, ...]
    loads: Tuple[AccessMatrix, ...]
    stores: Tuple[AccessMatrix, ...]
    pieces: Tuple[Bounds, ...]
    actions: Tuple["Action", ...] = ()
    parallel: bool = False  # inside a forall already (TP, TF, or fused into a consumer's TF)
    tiled: bool = False  # a T/TP/TF happened
    pending_interchange: Optional[Tuple[int, ...]] = None
    last_tile: Optional[Tuple[Tuple[int, str, int], ...]] = None  # (dim, loop id, trips) of the last T
    producer_fusable: bool = False  # a Linalg producer that feeds only this op
    init_fill: Optional[str] = None  # tag of the linalg.fill that is this op's init and feeds only it
    fused_into: Optional[str] = None  # the consumer whose register tile (R) took this op in: no actions
    fill_inside: bool = False  # init_fill is in this op's own forall (its TF fused it)
    unroll: Optional[int] = None
    ended: bool = False

    @classmethod
    def initial(cls, op: LinalgOp, producer_fusable: bool = False, init_fill: Optional[str] = None) -> "OpState":
        return cls(op=op, name=op.name, op_type=op.op_type, iterator_types=op.iterator_types,
                   loads=op.loads, stores=op.stores, pieces=(op.bounds,), producer_fusable=producer_fusable,
                   init_fill=init_fill)

    @property
    def bounds(self) -> Bounds:
        """Bounds of the main piece: what OpFeatures describe."""
        return self.pieces[0]

    @property
    def num_loops(self) -> int:
        return len(self.iterator_types)

    def vector_elements(self, bounds: Bounds) -> int:
        """Largest operand vector (elements) that vectorizing a piece makes."""
        best = 1
        for m in self.loads + self.stores:
            n = 1
            for row in m:
                n *= sum(abs(c) * (b - 1) for c, b in zip(row, bounds)) + 1
            best = max(best, n)
        return best

    def replace(self, **kw) -> "OpState":
        # dataclasses.replace, without its per-call introspection (the masks make tens of
        # thousands of states per sampled schedule): the fields copied, the given ones set.
        bad = kw.keys() - _FIELDS
        if bad:
            raise TypeError(f"OpState has no field(s) {', '.join(sorted(bad))}")
        new = object.__new__(OpState)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(kw)
        return new


_FIELDS = frozenset(f.name for f in dataclasses.fields(OpState))
