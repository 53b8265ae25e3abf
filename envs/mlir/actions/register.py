"""R: the register tile of a BLAS micro-kernel, then vectorize (ends the op).

Every fast CPU matmul has the same inner kernel: a tile of `rows` x `cols` of
the output held in vector registers (rows x cols/width accumulators), and a
reduction loop that, each step, loads one row of B as cols/width vectors and
broadcasts `rows` elements of A into FMAs.  R builds that kernel in one
action: it tiles the output's last loop (the *vector loop*) to `cols`, one
other output loop (the *row loop*) to `rows`, every other loop to 1 with the
reductions innermost (the accumulators are then invariant in the reduction
loops and are hoisted into registers), unrolls the innermost reduction loop by
`unroll` (1: not at all) and vectorizes.  Its choices are the shapes that fit
the host's vector registers, so that even a uniform sample is a reasonable
kernel; cache tiles (T), threads (TP/TF) and packing (P) come before it.
R's own cache tile is `kc` (BLIS's KC): the reduction loop with the largest
bound (a matmul's k, a conv's input channels) split into blocks of kc,
outside the kernels, so that the slice of B a block reads stays in L2 while
every kernel of the thread reuses it; without it each row of kernels streams
all of B from memory (a 3x3 conv with 9 MB of weights measured 4x slower, a
skinny matmul 1.6x).  As
the op's first tiling, R also spreads its kernels over threads (a forall over
a parallel loop of enough chunks, in chunks of whole kernels, `R.parallel`), as a
BLAS does: a schedule of one R is then a parallel micro-kernel, not a
single-threaded one waiting for a TP that a sampled episode rarely puts first.

The row loop is an output loop absent from an operand that reads the vector
loop (A's row in C += A x B; a conv's output column, whose filter lacks it; a
NCHW conv's output channel), the innermost such in the output.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ScheduleError
from ..opstate import OpState
from .base import ANY, Action, Head, common_block
from .loops import U
from .rewrite import V
from .tiling import TP, Forall, T, Tiling


CHUNKS = 16
"""Most chunks of R's forall: enough for the threads of one CPU socket, few remainders."""

FORALL_RULE = "least_data"
"""How `R.parallel` picks its loop among those of enough chunks: "least_data" (the chunk that
reads and writes the fewest elements) or "outermost" (before codegen version 12)."""

NATIVE_SPLIT = True
"""Whether R splits kernels of 3, 5, 6... vectors into native vectors (`R.emit_native_split`);
bench/register_tiles.py turns it off to measure what the split gains."""


def _plain(row) -> Optional[int]:
    """The loop a plain access row reads (one coefficient 1), else None."""
    nz = [i for i, c in enumerate(row) if c]
    return nz[0] if len(nz) == 1 and row[nz[0]] == 1 else None


class R(Action):
    """Register tile `rows` x `cols` of the output, reductions innermost, unroll, vectorize."""

    name = "R"
    ends_op = True
    history_block = "register"

    def __init__(self, rows: int, cols: int, unroll: int = 1, kc: int = 0):
        self.rows, self.cols, self.unroll, self.kc = int(rows), int(cols), int(unroll), int(kc)

    @property
    def params(self):  # no kc written when none: schedules written before kc still parse
        return (self.rows, self.cols, self.unroll) + ((self.kc,) if self.kc else ())

    @classmethod
    def from_params(cls, params):
        if len(params) not in (3, 4):
            raise ScheduleError(f"R takes rows, columns, an unroll factor (1: none) and optionally a reduction "
                                f"block kc, e.g. R(6,64,2) or R(6,64,2,128); got {params}")
        return cls(*params)

    # --- geometry ---------------------------------------------------------------------
    @staticmethod
    def geometry(s: OpState) -> Optional[Tuple[int, Optional[int]]]:
        """(vector loop, row loop or None), or None when the output's last dimension is
        not a plain parallel loop."""
        return _geometry(s.stores, s.loads, s.iterator_types)

    def sizes(self, s: OpState) -> Tuple[int, ...]:
        n, m = self.geometry(s)
        return tuple(self.cols if d == n else self.rows if d == m else 1 for d in range(s.num_loops))

    def parallel(self, s: OpState) -> Optional[TP]:
        """The forall R puts around its kernels when it is the op's first tiling: over one
        parallel loop, in at most CHUNKS chunks (each the smallest divisor of the bound that holds
        a kernel: >= rows on the row loop, >= cols on the vector loop, and a whole number of
        kernels where one is, so that no chunk ends in a narrow remainder kernel: 768 columns of
        32-wide kernels in chunks of 48 ran every third kernel one vector wide).  Among the loops
        that make at least CHUNKS / 2 chunks (threads share evenly: 3 chunks on 2 threads left a
        3x3 conv 15% slower than 8), the one whose chunk reads and writes the fewest elements
        (`_chunk_elements`: a matmul's rows when A is the larger operand, its columns when B is);
        without one, the loop that makes the most chunks."""
        if s.parallel or s.tiled:
            return None
        n, m = self.geometry(s)
        it = s.iterator_types
        cands = []  # (chunks, loop, size)
        for d in [d for d in range(s.num_loops) if it[d] == "parallel" and d != n] + [n]:
            b = s.bounds[d]
            kernel = self.rows if d == m else self.cols if d == n else 1
            fits = [k for k in range(max(1, kernel, -(-b // CHUNKS)), b + 1) if b % k == 0]
            size = next((k for k in fits if k % kernel == 0), fits[0] if fits else b)
            if b // size > 1:
                cands.append((b // size, d, size))
        if not cands:
            return None
        enough = [c for c in cands if c[0] >= CHUNKS // 2]
        if FORALL_RULE == "outermost":
            best = enough[0] if enough else max(cands, key=lambda c: c[0])
        elif enough:
            best = min(enough, key=lambda c: _chunk_elements(s, c[1], c[2]))
        else:
            best = max(cands, key=lambda c: c[0])
        _, d, size = best
        return TP(tuple(size if e == d else 0 for e in range(s.num_loops)))

    @staticmethod
    def order(s: OpState) -> Tuple[int, ...]:
        """Parallel loops outside, reductions innermost (each in the op's order)."""
        it = s.iterator_types
        return tuple([d for d in range(len(it)) if it[d] == "parallel"] +
                     [d for d in range(len(it)) if it[d] != "parallel"])

    @staticmethod
    def block_loop(s: OpState) -> Optional[int]:
        """The reduction loop kc blocks: the longest (the innermost of equals), None without one."""
        red = [d for d, it in enumerate(s.iterator_types) if it == "reduction"]
        return max(red, key=lambda d: (s.bounds[d], d)) if red else None

    def blocking(self, s: OpState) -> Optional[T]:
        """The T of kc (None without kc, or when the block covers the loop)."""
        d = self.block_loop(s) if self.kc else None
        if d is None or self.kc >= s.bounds[d]:
            return None
        return T(tuple(self.kc if e == d else 0 for e in range(s.num_loops)), label="kc")

    def fill_fusion(self, s: OpState) -> Tuple[bool, bool]:
        """Where R takes in the fill that initializes the output (`s.init_fill`): (into its
        forall, into its kernels).  Into the kernels when the fill is beside the op (nothing
        tiled yet, or only a TF that fused it) and no kc block splits the reduction: the
        accumulators then start as zeros in registers and the output is written once, not
        filled, read and written again (a 64-deep batch matmul 10% faster).  Into R's own forall
        whenever R makes one, so that a thread's slice of the output stays in its cache."""
        out = self.stages(s)
        forall = any(isinstance(t, TP) for t, _ in out)
        return self._fill_beside(s) and forall, out[-1][0].fuse

    @staticmethod
    def _fill_beside(s: OpState) -> bool:
        """Whether the init fill is beside the op, judged on the state, not on the actions' names
        (a tiling that splits nothing is dropped from the schedule's text, and the replay must
        decide as the episode did)."""
        if s.init_fill is None or s.name != s.op.name:  # none, or rewritten (im2col, pack)
            return False
        if s.parallel:  # only in a forall of its own TF that fused the fill, nothing tiled since
            return s.fill_inside and s.last_tile is None and len(s.pieces) == 1
        return not s.tiled  # cache tiles (T) before R: the fill stays outside their loops

    def stages(self, s: OpState) -> List[Tuple[Tiling, OpState]]:
        """R's tilings in order, each with the state it applies to: its forall (when the op's
        first tiling), kc's block loop, the kernel's T (reductions innermost; `fuse` when the
        fill goes into the kernels, see `fill_fusion`)."""
        out: List[Tuple[Tiling, OpState]] = []
        beside, in_forall = self._fill_beside(s), s.parallel
        for make in (self.parallel, self.blocking):  # kc's loop is found inside the forall
            tiling = make(s)
            if tiling is not None:
                out.append((tiling, s))
                s = tiling.apply(s, None)
        # Without any forall `structured.fuse` would take in every producer of the op's inputs
        # too (inside a forall their slices stop it), recomputing them in each kernel.
        in_forall = in_forall or any(isinstance(t, TP) for t, _ in out)
        kernel_fill = beside and in_forall and not any(getattr(t, "label", "") == "kc" for t, _ in out)
        s = s.replace(pending_interchange=self.order(s))
        return out + [(T(self.sizes(s), fuse=kernel_fill), s)]

    def tiled(self, s: OpState) -> OpState:
        t, s2 = self.stages(s)[-1]
        if not t.splits(s2):  # the op already is one kernel: no loop of its own to unroll
            return s2.replace(pending_interchange=None, last_tile=None)
        return t.apply(s2, None)

    # --- validity ---------------------------------------------------------------------
    @staticmethod
    def registers(cfg) -> int:
        """Vector registers of the host: 32 with AVX-512, else 16."""
        return 32 if cfg.register_width >= 16 else 16

    @classmethod
    def kernel(cls, cfg, rows: int, vectors: int, s: OpState) -> "R":
        """The R of one (rows, vectors) choice for this op (columns clamped to a short vector loop)."""
        n, _ = cls.geometry(s)
        return cls(rows, min(vectors * cfg.register_width, s.bounds[n]), 1)

    @classmethod
    def shape_ok(cls, cfg, rows: int, vectors: int, s: OpState) -> bool:
        """Whether a (rows, vectors) choice is valid here; more vectors than the vector loop
        holds are masked rather than clamped (no two choices mean the same kernel)."""
        n, _ = cls.geometry(s)
        if vectors > 1 and vectors * cfg.register_width > s.bounds[n]:
            return False
        return cls.kernel(cfg, rows, vectors, s).check(s, cfg, shape_only=True) is None

    @classmethod
    def shape_mask(cls, s: OpState, cfg) -> Tuple[bool, ...]:
        """`shape_ok` of every choice (the masks and `available` both ask, at every env step)."""
        return _shape_mask(cls, s, cfg)

    @classmethod
    def available(cls, s, cfg):
        why = common_block(s, cfg, cls)
        if why:
            return why
        if cls.geometry(s) is None:
            return "the output's last dimension is not a plain parallel loop to vectorize"
        if not any(cls.shape_mask(s, cfg)):
            return "no register tile fits this op"
        return None

    def check(self, s, cfg, shape_only: bool = False):
        why = common_block(s, cfg, type(self))
        if why:
            return why
        g = self.geometry(s)
        if g is None:
            return "the output's last dimension is not a plain parallel loop to vectorize"
        n, m = g
        w = cfg.register_width
        if self.rows < 1 or self.cols < 1:
            return f"rows and columns must be >= 1, got {self.rows}x{self.cols}"
        if self.cols > s.bounds[n]:
            return f"{self.cols} columns exceed the vector loop's bound {s.bounds[n]}"
        if self.cols > w and self.cols % w:
            return f"{self.cols} columns are not whole vectors of {w}"
        if m is None and self.rows > 1:
            return "the op has no row loop: rows must be 1"
        if m is not None and self.rows > s.bounds[m]:
            return f"{self.rows} rows exceed the row loop's bound {s.bounds[m]}"
        why = self.kc_problem(s, self.kc)
        if why:
            return why
        vectors = -(-self.cols // w)
        if self.rows * vectors + vectors + 1 > self.registers(cfg):
            return (f"{self.rows}x{vectors} accumulators, {vectors} row vectors and a broadcast exceed "
                    f"{self.registers(cfg)} vector registers")
        tiled = self.tiled(s)
        why = V.available(tiled, cfg)
        if why:
            return f"the register tile cannot be vectorized: {why}"
        if shape_only:
            return None
        if self.unroll != 1:
            target = U.target(tiled)
            if target is None:
                return "no reduction loop to unroll"
            if self.unroll < 1 or self.unroll > target[2]:
                return f"unroll {self.unroll} is not in 1..{target[2]} (the reduction loop's trips)"
        return None

    @classmethod
    def kc_problem(cls, s: OpState, kc: int) -> Optional[str]:
        """Why a reduction block kc is invalid here (0, none, always is valid)."""
        if kc == 0:
            return None
        d = cls.block_loop(s)
        if d is None:
            return "the op has no reduction loop to block: kc must be 0"
        b = s.bounds[d]
        if kc < 0 or kc >= b or b % kc:
            return f"kc {kc} must be below and divide the blocked reduction loop's bound {b} (loop {d})"
        return None

    # --- heads ------------------------------------------------------------------------
    @classmethod
    def heads(cls, cfg, max_loops):
        return (Head("register_tile", 1, len(cfg.register_tiles)),
                Head("register_unroll", 1, 1 + len(cfg.unroll_factors)),
                Head("register_kc", 1, len(cfg.register_kc)))

    @classmethod
    def unroll_choices(cls, cfg) -> Tuple[int, ...]:
        return (1,) + tuple(cfg.unroll_factors)

    @classmethod
    def head_masks(cls, s, cfg, max_loops, picked=()):
        shapes = np.array([cls.shape_mask(s, cfg)], bool)
        # Unroll factors the innermost reduction loop allows (its trips do not depend on the shape).
        target = U.target(cls.kernel(cfg, 1, 1, s).tiled(s))
        # (kc blocks are >= the largest unroll factor, so a block never forbids an unroll allowed here.)
        unroll = np.array([[u == 1 or (target is not None and u <= target[2]) for u in cls.unroll_choices(cfg)]], bool)
        kc = np.array([[cls.kc_problem(s, k) is None for k in cfg.register_kc]], bool)
        return [shapes, unroll, kc]

    @classmethod
    def build(cls, s, cfg, picks):
        r, v = cfg.register_tiles[int(picks[0][0][0])]
        k = cls.kernel(cfg, r, v, s)
        return cls(k.rows, k.cols, cls.unroll_choices(cfg)[int(picks[0][1][0])], cfg.register_kc[int(picks[0][2][0])])

    def picks(self, s, cfg, max_loops):
        w = cfg.register_width
        shape = (self.rows, -(-self.cols // w))
        if shape not in cfg.register_tiles:
            raise ValueError(f"{self}: register tile {shape[0]}x{shape[1]} vectors is not one of {cfg.register_tiles}")
        if self.unroll not in self.unroll_choices(cfg):
            raise ValueError(f"{self}: unroll {self.unroll} is not one of {self.unroll_choices(cfg)}")
        if self.kc not in cfg.register_kc:
            raise ValueError(f"{self}: kc {self.kc} is not one of {cfg.register_kc}")
        return [[np.array([cfg.register_tiles.index(shape)], np.int64),
                 np.array([self.unroll_choices(cfg).index(self.unroll)], np.int64),
                 np.array([cfg.register_kc.index(self.kc)], np.int64)]]

    @classmethod
    def emit_native_split(cls, b, tiled: OpState, w: int) -> None:
        """Split each kernel piece whose vector loop holds a number of vectors that is not a power
        of two (3, 5, 6...) into native vectors of `w` lanes: a loop inside the reduction loops,
        which the epilogue unrolls fully before it hoists the accumulators, so that each is a
        rows x w vector.  Left whole, a 3-vector row is LLVM's <24 x float>, which it widens to
        <32 x float> and takes apart into scalars on every step of the reduction (a 4x3-vector
        kernel ran 2.3x slower than split, on vgg_16_fc7_batch_8); powers of two split cleanly
        in LLVM already (6x2 ran the same either way)."""
        if not NATIVE_SPLIT:
            return
        n, _ = cls.geometry(tiled)
        for i, (handle, piece) in enumerate(zip(b.pieces, tiled.pieces)):
            cols = piece[n]
            v = cols // w
            if cols % w or not split_vectors(v):  # a partial vector is left whole
                continue
            t, loop = b.fresh("t"), b.fresh("l")
            sizes = ", ".join(str(w if d == n else 0) for d in range(tiled.num_loops))
            b.add(f"{t}, {loop} = transform.structured.tile_using_for {handle} tile_sizes [{sizes}] : "
                  f"({ANY}) -> ({ANY}, {ANY})")
            loop_id = f"{tiled.op.tag}.a{len(tiled.actions)}.v{v}"
            b.annotate(loop, "rl_loop", loop_id)
            b.unroll_fully(loop_id, v)
            b.pieces[i] = t

    # --- ActionHistory ----------------------------------------------------------------
    @classmethod
    def history_size(cls, max_loops):
        return 4

    def history(self, cfg, max_loops):
        big = math.log2(max(max(r for r, _ in cfg.register_tiles), 2) + 1)
        wide = math.log2(max(v for _, v in cfg.register_tiles) * cfg.register_width + 1)
        deep = math.log2(max(max(cfg.register_kc), 1) + 1)
        return np.array([min(1.0, math.log2(self.rows + 1) / big), min(1.0, math.log2(self.cols + 1) / wide),
                         min(1.0, math.log2(self.unroll) / math.log2(max(cfg.unroll_factors))),
                         min(1.0, math.log2(self.kc + 1) / deep)], np.float32)

    # --- semantics --------------------------------------------------------------------
    def apply(self, s, ctx):
        tiled = self.tiled(s)
        forall_fill, kernel_fill = self.fill_fusion(s)
        if forall_fill:
            forall, before = self.stages(s)[0]
            Forall.move_in(s.init_fill, before, forall.apply(before, None), ctx)
        if kernel_fill:  # R computes the fill: the op is done, with no actions of its own
            ctx.states[s.init_fill] = ctx.states[s.init_fill].replace(ended=True, fused_into=s.op.tag, tiled=True)
        return tiled.replace(ended=True, unroll=self.unroll if self.unroll > 1 else None)

    def emit(self, b, s, ctx):
        forall_fill, kernel_fill = self.fill_fusion(s)
        for i, (tiling, before) in enumerate(self.stages(s)):
            if i == 0 and forall_fill:
                tiling.emit_forall(b, fuse=s.init_fill)
            else:
                tiling.emit(b, before, ctx)
        tiled = self.tiled(s)
        if kernel_fill:  # before the op's own vectorize, whose contraction patterns then see both
            b.add(f"transform.structured.vectorize {b.match_tag(s.init_fill)} : {ANY}")
        self.emit_native_split(b, tiled, ctx.cfg.register_width)
        V().emit(b, tiled, ctx)
        if self.unroll > 1:
            b.unroll_later(U.target(tiled)[1], self.unroll)


def split_vectors(vectors: int) -> bool:
    """Whether `R.emit_native_split` splits a kernel row of this many vectors: not a power of two."""
    return vectors & (vectors - 1) != 0


def _chunk_elements(s: OpState, d: int, size: int) -> int:
    """Elements of every operand that one chunk of `size` iterations of loop `d` touches (each
    tensor dimension's extent over the loop ranges, a window's overlap included)."""
    total = 0
    for m in s.loads + s.stores:
        n = 1
        for row in m:
            n *= 1 + sum(abs(c) * ((size if e == d else s.bounds[e]) - 1) for e, c in enumerate(row[:s.num_loops]))
        total += n
    return total


# Memoized: the masks ask for an op's geometry dozens of times per env step (a sampled
# schedule of a 7-op block spent a quarter of its time here), and it depends on the
# access matrices and iterator types alone.
@functools.lru_cache(maxsize=4096)
def _geometry(stores, loads, iterator_types) -> Optional[Tuple[int, Optional[int]]]:
    if len(stores) != 1 or not stores[0]:
        return None
    out = stores[0]
    n = _plain(out[-1])
    if n is None or iterator_types[n] != "parallel":
        return None
    cands = [d for d in (_plain(r) for r in out[:-1]) if d is not None and d != n
             and iterator_types[d] == "parallel"]
    readers = [m for m in loads if any(r[n] for r in m)]
    outer = [d for d in cands if any(not any(r[d] for r in m) for m in readers)]
    pick = outer or cands
    return n, (pick[-1] if pick else None)


@functools.lru_cache(maxsize=256)
def _shape_mask(cls, s: OpState, cfg) -> Tuple[bool, ...]:
    return tuple(cls.shape_ok(cfg, r, v, s) for r, v in cfg.register_tiles)
