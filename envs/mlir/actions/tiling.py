"""Tilings: T (scf.for, remainders peeled), TP (scf.forall: OpenMP threads) and
TF (scf.forall with the producer fused in).  One tile size per loop, 0 = untiled;
all three read the action vector's ``tile`` positions (one per loop) and write
the ``tile`` block of ActionHistory."""
from __future__ import annotations

import math
from typing import ClassVar, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ScheduleError
from ..opstate import Bounds, OpState
from .base import ANY, Action, Head, common_block, only_first


class PerLoop(Action):
    """An action whose parameters are one integer per loop (T, TP, TF, I)."""

    usage: ClassVar[str]

    def __init__(self, values: Sequence[int]):
        self.values = tuple(int(x) for x in values)

    @property
    def params(self):
        return self.values

    @classmethod
    def from_params(cls, params):
        if not params:
            raise ScheduleError(f"{cls.name} needs {cls.usage}")
        return cls(params)


class Tiling(PerLoop):
    """Shared rules of T, TP and TF."""

    usage = "one tile size per loop"
    history_block = "tile"

    @property
    def sizes(self) -> Tuple[int, ...]:
        return self.values

    def is_noop(self) -> bool:
        return not any(self.sizes)

    # --- validity ------------------------------------------------------------------
    def size_ok(self, s: OpState, dim: int, size: int) -> Optional[str]:
        """Validity of one loop's size (the mask of one tile position)."""
        raise NotImplementedError

    @classmethod
    def state_problem(cls, s: OpState, cfg) -> Optional[str]:
        """Why this tiling cannot apply in this state, whatever the sizes."""
        return common_block(s, cfg, cls)

    @classmethod
    def available(cls, s, cfg):
        why = cls.state_problem(s, cfg)
        if why:
            return why
        probe = cls((0,) * s.num_loops)
        if not any(0 < c < b and probe.size_ok(s, d, c) is None
                   for d, b in enumerate(s.bounds) for c in cfg.loop_tile_choices(b)):
            return "no candidate tile size splits a loop"
        return None

    def splits(self, s: OpState) -> bool:
        """Whether some loop is really split. A tiling that splits nothing (all
        sizes 0, or covering their bounds) is a valid no-op: every tile position
        may choose independently within its own mask."""
        return any(0 < t < bd for t, bd in zip(self.sizes, s.bounds))

    def check(self, s, cfg):
        why = self.available(s, cfg)
        if why:
            return why
        if len(self.sizes) != s.num_loops:
            return f"{self.name} needs {s.num_loops} tile sizes (one per loop), got {len(self.sizes)}"
        for d, size in enumerate(self.sizes):
            why = self.size_ok(s, d, size)
            if why:
                return f"loop {d}: {why}"
        return None

    @classmethod
    def size_mask(cls, s: OpState, cfg) -> List[List[bool]]:
        """Per loop of the op, which of its choices (`cfg.loop_tile_choices`, padded to
        `cfg.n_tile_choices` with invalid ones) are valid."""
        probe = cls((0,) * s.num_loops)
        out = []
        for d in range(s.num_loops):
            choices = cfg.loop_tile_choices(s.bounds[d])
            out.append([probe.size_ok(s, d, c) is None for c in choices] + [False] * (cfg.n_tile_choices - len(choices)))
        return out

    # --- heads and history ------------------------------------------------------------
    @classmethod
    def heads(cls, cfg, max_loops):
        return (Head("tile", max_loops, cfg.n_tile_choices),)

    @classmethod
    def head_masks(cls, s, cfg, max_loops, picked=()):
        m = only_first(s.num_loops, max_loops, cfg.n_tile_choices)
        m[:s.num_loops] = cls.size_mask(s, cfg)
        return [m]

    @classmethod
    def build(cls, s, cfg, picks):
        return cls(tuple(cfg.loop_tile_choices(b)[int(c)] for c, b in zip(picks[0][0][:s.num_loops], s.bounds)))

    def picks(self, s, cfg, max_loops):
        v = np.zeros(max_loops, np.int64)
        for d, (x, b) in enumerate(zip(self.sizes, s.bounds)):
            choices = cfg.loop_tile_choices(b)
            if x not in choices:
                raise ValueError(f"{self}: size {x} of loop {d} (bound {b}) is not one of its choices {choices}")
            v[d] = choices.index(x)
        return [[v]]

    @classmethod
    def history_size(cls, max_loops):
        return max_loops

    def history(self, cfg, max_loops):
        v = np.zeros(max_loops, np.float32)
        big = math.log2(cfg.max_tile_size + 1)
        for d, size in enumerate(self.sizes[:max_loops]):
            v[d] = min(1.0, math.log2(size + 1) / big)
        return v


class T(Tiling):
    """Tile with `tile_using_for`; remainders of sizes that do not divide are peeled."""

    name = "T"

    def __init__(self, values: Sequence[int], label: str = "", fuse: bool = False):
        super().__init__(values)
        self.label = label  # tells apart the loops of two T's of one action (R's kc block and its kernel)
        # R's kernel with its fill: the parallel loops tiled by `structured.fuse`, which brings the
        # op's producers into the tile (the fill of the output: zeros in registers, no pass over C);
        # then the reductions by `tile_using_for`, innermost.
        self.fuse = fuse

    def size_ok(self, s, d, size):
        if size == 0:
            return None
        if size < 0:
            return "negative tile size"
        if size > s.bounds[d]:
            return f"size {size} exceeds bound {s.bounds[d]}"
        return None

    def order(self, s: OpState) -> Tuple[int, ...]:
        """Loop nesting order of the tiles (the pending interchange, else the op's)."""
        return s.pending_interchange or tuple(range(s.num_loops))

    def piece_tiles(self, piece: Bounds) -> Tuple[int, ...]:
        """Sizes for one piece: a size that covers the piece's bound leaves it untiled."""
        return tuple(t if 0 < t < b else 0 for t, b in zip(self.sizes, piece))

    def split(self, s: OpState, piece: Bounds) -> List[Bounds]:
        """The pieces one piece becomes: main/remainder per peeled loop, outer loop first."""
        out = [piece]
        tiles = self.piece_tiles(piece)
        for d in self.order(s):
            t = tiles[d]
            if not t:
                continue
            nxt = []
            for p in out:
                nxt.append(p[:d] + (t,) + p[d + 1:])
                if p[d] % t:
                    nxt.append(p[:d] + (p[d] % t,) + p[d + 1:])
            out = nxt
        return out

    def apply(self, s, ctx):
        if not self.splits(s):
            return s.replace(pending_interchange=None)
        pieces = tuple(q for p in s.pieces for q in self.split(s, p))
        k = len(s.actions)
        loops = tuple((d, f"{s.op.tag}.a{k}{self.label}.d{d}", -(-s.bounds[d] // self.sizes[d]))
                      for d in self.order(s) if self.sizes[d])
        return s.replace(pieces=pieces, tiled=True, pending_interchange=None, last_tile=loops)

    def emit(self, b, s, ctx):
        if not self.splits(s):
            return
        order = self.order(s)
        peeled = False
        for handle, piece in zip(b.pieces, s.pieces):
            tiles = self.piece_tiles(piece)
            dims = [d for d in order if tiles[d]]
            if not dims:
                continue
            if self.fuse:
                t, loops = self._emit_fused(b, s, handle, tiles, dims)
            else:
                t, loops = b.fresh("t"), [b.fresh("l") for _ in dims]
                inter = f" interchange = [{', '.join(map(str, order))}]" if list(order) != sorted(order) else ""
                b.add(f"{t}, {', '.join(loops)} = transform.structured.tile_using_for {handle} tile_sizes "
                      f"[{', '.join(map(str, tiles))}]{inter} : ({ANY}) -> ({', '.join([ANY] * (1 + len(dims)))})")
            for d, loop in zip(dims, loops):
                if s.iterator_types[d] == "reduction":  # U finds it by this name
                    b.annotate(loop, "rl_loop", f"{s.op.tag}.a{len(s.actions)}{self.label}.d{d}")
            for d, loop in reversed(list(zip(dims, loops))):  # innermost first: outer handles stay valid
                if piece[d] % tiles[d]:
                    c, main, rem = b.fresh("c"), b.fresh("pm"), b.fresh("pr")
                    b.add(f'{c} = transform.cast {loop} : {ANY} to !transform.op<"scf.for">')
                    b.add(f'{main}, {rem} = transform.loop.peel {c} {{fail_if_already_divisible = false}} : '
                          f'(!transform.op<"scf.for">) -> ({ANY}, {ANY})')
                    peeled = True
        if peeled:
            b.canonicalize()  # fold the peeled bounds so every piece has a static shape
        b.pieces = b.split(b.match_tag(s.op.tag), sum(len(self.split(s, p)) for p in s.pieces))

    @staticmethod
    def _emit_fused(b, s: OpState, handle: str, tiles: Tuple[int, ...], dims: List[int]):
        """`structured.fuse` over the parallel tiles, then `tile_using_for` over the reductions;
        (tiled op, loops in `dims` order).  `dims` must be the parallel loops in the op's order,
        then the reductions (R's kernel order), as `fuse` takes no interchange here."""
        par = [d for d in dims if s.iterator_types[d] == "parallel"]
        red = [d for d in dims if s.iterator_types[d] != "parallel"]
        if dims != par + red or par != sorted(par):
            raise AssertionError(f"a fused kernel tiling needs parallel loops in order, then reductions: {dims}")
        t, loops = handle, []
        for group in (par, red):
            if not group:
                continue
            sizes = [tiles[d] if d in group else 0 for d in range(len(tiles))]
            new, ls = b.fresh("t"), [b.fresh("l") for _ in group]
            cmd = "fuse" if group is par else "tile_using_for"
            b.add(f"{new}, {', '.join(ls)} = transform.structured.{cmd} {t} tile_sizes "
                  f"[{', '.join(map(str, sizes))}] : ({ANY}) -> ({', '.join([ANY] * (1 + len(group)))})")
            t, loops = new, loops + ls
        return t, loops


class Forall(Tiling):
    """Shared rules of TP and TF: parallel loops only, sizes that divide, before any other tiling."""

    parallel = True

    def size_ok(self, s, d, size):
        if size == 0:
            return None
        if size < 0:
            return "negative tile size"
        if s.iterator_types[d] != "parallel":
            return "only parallel loops can be tiled in parallel"
        b = s.bounds[d]
        if size > b:
            return f"size {size} exceeds bound {b}"
        if b % size:
            return f"size {size} does not divide bound {b} (parallel tiles are not peeled)"
        return None

    @classmethod
    def state_problem(cls, s, cfg):
        why = common_block(s, cfg, cls)
        if why:
            return why
        if s.parallel:
            return "the op is already inside a parallel loop"
        if s.tiled:
            return f"{cls.name} must come before any other tiling"
        return None

    def apply(self, s, ctx):
        if not self.splits(s):
            return s
        tile = tuple(t or bd for t, bd in zip(self.sizes, s.bounds))
        return s.replace(pieces=(tile,), tiled=True, parallel=True)

    @staticmethod
    def move_in(tag: str, s: OpState, new: OpState, ctx) -> None:
        """The producer `tag` moves into the forall that made `new` of `s`: its bounds become
        the slice it feeds."""
        prod = ctx.states[tag]
        access = (s.loads + s.stores)[s.op.operand_producers.index(tag)]
        extent = [sum(abs(c) * (t - 1) for c, t in zip(row, new.bounds)) + 1 for row in access]
        bounds = list(prod.bounds)
        for row_idx, row in enumerate(prod.stores[0]):
            if sum(row) == 1 and row.count(1) == 1:
                bounds[row.index(1)] = extent[row_idx]
        ctx.states[tag] = prod.replace(pieces=(tuple(bounds),), parallel=True)

    def emit_forall(self, b, fuse: Optional[str]) -> None:
        t, fa = b.fresh("t"), b.fresh("fa")
        b.add(f"{t}, {fa} = transform.structured.tile_using_forall {b.pieces[0]} tile_sizes "
              f"[{', '.join(map(str, self.sizes))}] : ({ANY}) -> ({ANY}, {ANY})")
        if fuse:
            prod = b.match_tag(fuse)
            fused, fa2 = b.fresh("fu"), b.fresh("fa")
            b.add(f"{fused}, {fa2} = transform.structured.fuse_into_containing_op {prod} into {fa} : "
                  f"({ANY}, {ANY}) -> ({ANY}, {ANY})")
        b.pieces = [t]


class TP(Forall):
    """Tiled parallelization: `tile_using_forall` on parallel loops (OpenMP)."""

    name = "TP"

    def emit(self, b, s, ctx):
        if self.splits(s):
            self.emit_forall(b, fuse=None)


class TF(Forall):
    """Tiled fusion: forall-tile this op and fuse its producer into the loop."""

    name = "TF"

    @classmethod
    def state_problem(cls, s, cfg):
        why = super().state_problem(s, cfg)
        if why:
            return why
        if s.name != s.op.name:
            return "the op was rewritten (im2col); its producer no longer feeds it"
        if s.op.producer is None:
            return "the op has no Linalg producer to fuse"
        if not s.producer_fusable:
            return "the producer has other users than this op"
        return None

    def apply(self, s, ctx):
        new = super().apply(s, ctx)
        if new is not s:
            self.move_in(s.op.producer, s, new, ctx)
            if s.op.producer == s.init_fill:
                new = new.replace(fill_inside=True)
        return new

    def emit(self, b, s, ctx):
        if self.splits(s):
            self.emit_forall(b, fuse=s.op.producer)
