"""Actions, the per-op state they act on, and the Schedule value object.

Each transformation is one class here: it parses and prints its text form,
decides its own validity from the op's current state (`check`, and the masks
built on it), updates that state (`apply`) and writes its part of the
transform script (`emit`, through `transform.ScriptBuilder`).

An op's state is a list of *pieces*: the op as the next action will see it.
Tiling with a size that does not divide a bound peels the remainder loop, so
one op becomes a main piece (``pieces[0]``, bounds = the tile) and remainder
pieces; later actions apply to every piece, with tile sizes clamped to each
piece's bounds.  OpFeatures describe ``pieces[0]``.

Schedule text (the cache key): ops in program order, ``tag: actions`` joined
by ``; ``, e.g. ``operation_0: NT; operation_1: TP(64,64,0) T(4,16,1) V``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

from .config import ActionConfig
from .errors import ScheduleError
from .program import AccessMatrix, LinalgOp, Program

Bounds = Tuple[int, ...]

# Named windowed ops that `structured.decompose` rewrites to 1-D (then vectorizable):
# loop positions of (output row, window row) and (output col, window col); one
# pair must be 1 in the piece.
_DECOMPOSABLE = {
    "linalg.conv_2d_nhwc_hwcf": ((1, 4), (2, 5)),
    "linalg.conv_2d_nhwc_fhwc": ((1, 4), (2, 5)),
    "linalg.conv_2d_nchw_fchw": ((2, 5), (3, 6)),
    "linalg.depthwise_conv_2d_nhwc_hwc": ((1, 4), (2, 5)),
    "linalg.pooling_nhwc_max": ((1, 4), (2, 5)),
    "linalg.pooling_nhwc_sum": ((1, 4), (2, 5)),
    "linalg.pooling_nchw_max": ((2, 4), (3, 5)),
    "linalg.pooling_nchw_sum": ((2, 4), (3, 5)),
}
_WINDOWED_1D = ("linalg.conv_1d", "linalg.depthwise_conv_1d", "linalg.pooling_nwc", "linalg.pooling_ncw")


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


_IM2COL = {
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
    unroll: Optional[int] = None
    ended: bool = False

    @classmethod
    def initial(cls, op: LinalgOp, producer_fusable: bool = False) -> "OpState":
        return cls(op=op, name=op.name, op_type=op.op_type, iterator_types=op.iterator_types,
                   loads=op.loads, stores=op.stores, pieces=(op.bounds,), producer_fusable=producer_fusable)

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
        return dataclasses.replace(self, **kw)


class Action:
    """One transformation.  Subclasses set `name` and implement the hooks."""

    name: ClassVar[str]
    ends_op: ClassVar[bool] = False
    registry: ClassVar[Dict[str, Type["Action"]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:  # abstract helpers (_Tiling) have no name
            Action.registry[cls.name] = cls

    # --- text form -----------------------------------------------------------------
    @property
    def params(self) -> Tuple[int, ...]:
        return ()

    def __str__(self) -> str:
        return self.name + (f"({','.join(map(str, self.params))})" if self.params else "")

    def __repr__(self) -> str:
        return str(self)

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.params == other.params

    def __hash__(self) -> int:
        return hash((self.name, self.params))

    @classmethod
    def from_params(cls, params: Tuple[int, ...]) -> "Action":
        if params:
            raise ScheduleError(f"{cls.name} takes no parameters, got {params}")
        return cls()

    # --- semantics -----------------------------------------------------------------
    @classmethod
    def available(cls, s: OpState, cfg: ActionConfig) -> Optional[str]:
        """Why this transformation cannot apply at all now (None if it can)."""
        return None

    def check(self, s: OpState, cfg: ActionConfig) -> Optional[str]:
        """Why these parameters are invalid in this state (None if valid)."""
        return self.available(s, cfg)

    def apply(self, s: OpState, ctx: "ProgramState") -> OpState:
        return s

    def emit(self, b, s: OpState, ctx: "ProgramState") -> None:
        """Write this action's transform ops for state `s` (the state before it)."""


def _common_block(s: OpState, cfg: ActionConfig, name: str) -> Optional[str]:
    """Rules shared by every action: op not ended, the per-op limit, U and I followers."""
    if s.ended:
        return "the op is already finished (NT or V)"
    last_slot = len(s.actions) >= cfg.max_actions_per_op - 1
    if last_slot and not Action.registry[name].ends_op:
        return f"only NT or V may take the last of {cfg.max_actions_per_op} action slots"
    if s.pending_interchange is not None and name != "T":
        return "an interchange (I) must be followed by a tiling (T)"
    if s.unroll is not None and name not in ("V", "NT"):
        return "an unroll (U) may only be followed by V or NT"
    return None


class NT(Action):
    """No transformation: ends the op."""

    name = "NT"
    ends_op = True

    @classmethod
    def available(cls, s, cfg):
        return _common_block(s, cfg, cls.name)

    def apply(self, s, ctx):
        return s.replace(ended=True)


class _PerLoop(Action):
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


class _Tiling(_PerLoop):
    """Shared rules of T, TP and TF: one size per loop, 0 = untiled."""

    usage = "one tile size per loop"

    @property
    def sizes(self) -> Tuple[int, ...]:
        return self.values

    def size_ok(self, s: OpState, dim: int, size: int) -> Optional[str]:
        """Validity of one loop's size (the mask of one tile head)."""
        raise NotImplementedError

    @classmethod
    def state_problem(cls, s: OpState, cfg: ActionConfig) -> Optional[str]:
        """Why this tiling cannot apply in this state, whatever the sizes."""
        raise NotImplementedError

    @classmethod
    def available(cls, s, cfg):
        why = cls.state_problem(s, cfg)
        if why:
            return why
        probe = cls((0,) * s.num_loops)
        if not any(0 < c < b and probe.size_ok(s, d, c) is None
                   for d, b in enumerate(s.bounds) for c in cfg.tile_sizes):
            return "no candidate tile size splits a loop"
        return None

    def splits(self, s: OpState) -> bool:
        """Whether some loop is really split. A tiling that splits nothing (all
        sizes 0, or covering their bounds) is a valid no-op: every tile head may
        choose independently within its own mask."""
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
    def size_mask(cls, s: OpState, cfg: ActionConfig) -> List[List[bool]]:
        """Per loop (up to the op's loops), which `cfg.tile_choices` are valid."""
        probe = cls((0,) * s.num_loops)
        return [[probe.size_ok(s, d, c) is None for c in cfg.tile_choices] for d in range(s.num_loops)]


def _forall_size_ok(s: OpState, d: int, size: int) -> Optional[str]:
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


def _forall_available(s: OpState, cfg: ActionConfig, name: str) -> Optional[str]:
    why = _common_block(s, cfg, name)
    if why:
        return why
    if s.parallel:
        return "the op is already inside a parallel loop"
    if s.tiled:
        return f"{name} must come before any other tiling"
    return None


class T(_Tiling):
    """Tile with `tile_using_for`; remainders of sizes that do not divide are peeled."""

    name = "T"

    @classmethod
    def state_problem(cls, s, cfg):
        return _common_block(s, cfg, cls.name)

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

    def piece_tiles(self, s: OpState, piece: Bounds) -> Tuple[int, ...]:
        """Sizes for one piece: a size that covers the piece's bound leaves it untiled."""
        return tuple(t if 0 < t < b else 0 for t, b in zip(self.sizes, piece))

    def split(self, s: OpState, piece: Bounds) -> List[Bounds]:
        """The pieces one piece becomes: main/remainder per peeled loop, outer loop first."""
        out = [piece]
        tiles = self.piece_tiles(s, piece)
        for d in self.order(s):
            t = tiles[d]
            if not t:
                continue
            nxt = []
            for p in out:
                main = p[:d] + (t,) + p[d + 1:]
                nxt.append(main)
                if p[d] % t:
                    nxt.append(p[:d] + (p[d] % t,) + p[d + 1:])
            out = nxt
        return out

    def apply(self, s, ctx):
        if not self.splits(s):
            return s.replace(pending_interchange=None)
        pieces = tuple(q for p in s.pieces for q in self.split(s, p))
        k = len(s.actions)
        loops = tuple((d, f"{s.op.tag}.a{k}.d{d}", -(-s.bounds[d] // self.sizes[d]))
                      for d in self.order(s) if self.sizes[d])
        return s.replace(pieces=pieces, tiled=True, pending_interchange=None, last_tile=loops)

    def emit(self, b, s, ctx):
        if self.splits(s):
            b.tile_for(s, self)


class TP(_Tiling):
    """Tiled parallelization: `tile_using_forall` on parallel loops (OpenMP)."""

    name = "TP"

    @classmethod
    def state_problem(cls, s, cfg):
        return _forall_available(s, cfg, cls.name)

    def size_ok(self, s, d, size):
        return _forall_size_ok(s, d, size)

    def apply(self, s, ctx):
        return _forall_apply(self, s) if self.splits(s) else s

    def emit(self, b, s, ctx):
        if self.splits(s):
            b.tile_forall(s, self.sizes, fuse=None)


def _forall_apply(a: _Tiling, s: OpState) -> OpState:
    tile = tuple(t or bd for t, bd in zip(a.sizes, s.bounds))
    return s.replace(pieces=(tile,), tiled=True, parallel=True)


class TF(_Tiling):
    """Tiled fusion: forall-tile this op and fuse its producer into the loop."""

    name = "TF"

    @classmethod
    def state_problem(cls, s, cfg):
        why = _forall_available(s, cfg, cls.name)
        if why:
            return why
        if s.name != s.op.name:
            return "the op was rewritten (im2col); its producer no longer feeds it"
        if s.op.producer is None:
            return "the op has no Linalg producer to fuse"
        if not s.producer_fusable:
            return "the producer has other users than this op"
        return None

    def size_ok(self, s, d, size):
        return _forall_size_ok(s, d, size)

    def apply(self, s, ctx):
        if not self.splits(s):
            return s
        new = _forall_apply(self, s)
        ctx.fuse_producer(s, new.bounds)
        return new

    def emit(self, b, s, ctx):
        if self.splits(s):
            b.tile_forall(s, self.sizes, fuse=s.op.producer)


class I(_PerLoop):  # noqa: E742 (the design's name)
    """Interchange: the loop order of the tiles the next T creates (level pointers)."""

    name = "I"
    usage = "a loop permutation, e.g. I(0,2,1)"

    @property
    def perm(self) -> Tuple[int, ...]:
        return self.values

    @classmethod
    def available(cls, s, cfg):
        why = _common_block(s, cfg, cls.name)
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

    def apply(self, s, ctx):
        return s.replace(pending_interchange=self.perm)


class U(Action):
    """Unroll the innermost reduction loop of the last T (after vectorization)."""

    name = "U"

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
        why = _common_block(s, cfg, cls.name)
        if why:
            return why
        if s.unroll is not None:
            return "already unrolled"
        if cls.target(s) is None:
            return "the last tiling made no reduction loop"
        if cls.target(s)[2] < min(cfg.unroll_factors):
            return f"the loop runs {cls.target(s)[2]} times, too few to unroll"
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
    def factor_mask(cls, s: OpState, cfg: ActionConfig) -> List[bool]:
        return [cls(f).check(s, cfg) is None for f in cfg.unroll_factors]

    def apply(self, s, ctx):
        return s.replace(unroll=self.factor)

    def emit(self, b, s, ctx):
        b.unroll_later(self.target(s)[1], self.factor)


class V(Action):
    """Vectorize every piece (decomposing conv/pooling windows first); ends the op."""

    name = "V"
    ends_op = True

    @classmethod
    def available(cls, s, cfg):
        why = _common_block(s, cfg, cls.name)
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

    @staticmethod
    def needs_decompose(s: OpState) -> bool:
        return s.name in _DECOMPOSABLE

    @classmethod
    def piece_problem(cls, s: OpState, p: Bounds) -> Optional[str]:
        if not s.op.vectorizable_body:
            return "the op's body has an op the vectorizer cannot take (e.g. cf.assert, tensor.extract)"
        if s.name in _DECOMPOSABLE:
            pairs = _DECOMPOSABLE[s.name]
            if not any(p[a] == 1 and p[w] == 1 for a, w in pairs):
                return ("a 2-D window must first be tiled to one row (or column) of output and window "
                        "(e.g. T with size 1 on both)")
            return None
        if s.name.startswith(("linalg.conv", "linalg.depthwise", "linalg.pooling")) and \
                not s.name.startswith(_WINDOWED_1D):
            return f"{s.name} cannot be vectorized"
        for m in s.loads + s.stores:
            for row in m:
                if sum(1 for c in row if c) > 1 or any(c not in (0, 1) for c in row):
                    return "an access is not a plain loop index (a window); it cannot be vectorized"
        return None

    def apply(self, s, ctx):
        return s.replace(ended=True)

    def emit(self, b, s, ctx):
        b.vectorize(s)


class I2C(Action):
    """im2col: rewrite a 2-D convolution as a contraction over gathered patches."""

    name = "I2C"

    @classmethod
    def available(cls, s, cfg):
        why = _common_block(s, cfg, cls.name)
        if why:
            return why
        if s.name not in _IM2COL or s.name != s.op.name:
            return f"im2col applies to untransformed {', '.join(_IM2COL)} only"
        if s.tiled:
            return "im2col must come before any tiling"
        return None

    def apply(self, s, ctx):
        bounds, iters, loads, stores = _IM2COL[s.name](s.bounds)
        return s.replace(name="linalg.generic", op_type="matmul", iterator_types=iters, loads=loads,
                         stores=stores, pieces=(bounds,))

    def emit(self, b, s, ctx):
        b.im2col(s)


ACTIONS: Tuple[Type[Action], ...] = (NT, T, TP, TF, I, U, V, I2C)
"""Every transformation, in the order of the transformation head."""

_ACTION_RE = re.compile(r"\s*([A-Z][A-Z0-9]*)\s*(?:\(([^)]*)\))?")


def parse_actions(text: str, where: str = "") -> Tuple[Action, ...]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _ACTION_RE.match(text, pos)
        if not m or m.end() == pos:
            raise ScheduleError(f"{where}cannot read an action at {text[pos:]!r}")
        name, args = m.group(1), m.group(2)
        cls = Action.registry.get(name)
        if cls is None:
            raise ScheduleError(f"{where}unknown action {name!r} (known: {', '.join(Action.registry)})")
        try:
            params = tuple(int(x) for x in args.split(",")) if args and args.strip() else ()
        except ValueError:
            raise ScheduleError(f"{where}{name} parameters must be integers, got ({args})") from None
        out.append(cls.from_params(params))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tuple(out)


@dataclass(frozen=True)
class Schedule:
    """Actions per op tag.  Canonical: an op with no actions (or only NT) is NT; a
    trailing NT after other actions is dropped; ops print in program order."""

    ops: Tuple[Tuple[str, Tuple[Action, ...]], ...]

    def __post_init__(self):
        canon = []
        seen = set()
        for tag, acts in self.ops:
            if tag in seen:
                raise ScheduleError(f"op {tag} appears twice in the schedule")
            seen.add(tag)
            acts = _drop_noop_tilings(tuple(acts))
            if acts and isinstance(acts[-1], NT):
                acts = acts[:-1]
            canon.append((tag, acts))
        canon.sort(key=lambda ta: _tag_key(ta[0]))
        object.__setattr__(self, "ops", tuple(canon))

    @classmethod
    def of(cls, mapping: Mapping[str, Iterable[Action]]) -> "Schedule":
        return cls(tuple((t, tuple(a)) for t, a in mapping.items()))

    @classmethod
    def empty(cls, program: Program) -> "Schedule":
        """The untransformed program: every op NT."""
        return cls(tuple((t, ()) for t in program.tags))

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        ops = []
        for part in text.split(";"):
            if not part.strip():
                continue
            if ":" not in part:
                raise ScheduleError(f"expected 'tag: actions', got {part.strip()!r}")
            tag, acts = part.split(":", 1)
            tag = tag.strip()
            if not re.fullmatch(r"[A-Za-z_][\w.]*", tag):
                raise ScheduleError(f"bad op tag {tag!r}")
            ops.append((tag, parse_actions(acts, f"{tag}: ")))
        return cls(tuple(ops))

    def __str__(self) -> str:
        return "; ".join(f"{t}: {' '.join(map(str, a)) if a else 'NT'}" for t, a in self.ops)

    def actions(self, tag: str) -> Tuple[Action, ...]:
        return dict(self.ops).get(tag, ())

    @property
    def is_empty(self) -> bool:
        return all(not a for _, a in self.ops)

    @property
    def parallel(self) -> bool:
        """Whether the schedule makes parallel loops (needs the OpenMP pipeline)."""
        return any(isinstance(a, (TP, TF)) for _, acts in self.ops for a in acts)

    def for_program(self, program: Program) -> "Schedule":
        """This schedule with every op of `program` present (missing ops NT)."""
        unknown = [t for t, _ in self.ops if t not in program.tags]
        if unknown:
            raise ScheduleError(f"schedule names {', '.join(unknown)}, not in {program.source} "
                                f"(ops: {', '.join(program.tags)})")
        have = dict(self.ops)
        return Schedule(tuple((t, have.get(t, ())) for t in program.tags))


def _drop_noop_tilings(acts: Tuple[Action, ...]) -> Tuple[Action, ...]:
    """Drop all-zero tilings (no-ops), and an interchange that only such a tiling followed."""
    out: List[Action] = []
    for a in acts:
        if isinstance(a, _Tiling) and not any(a.sizes):
            if out and isinstance(out[-1], I):
                out.pop()
            continue
        out.append(a)
    return tuple(out)


def _tag_key(tag: str):
    m = re.fullmatch(r"(.*?)(\d+)", tag)
    return (m.group(1), int(m.group(2))) if m else (tag, -1)


class ProgramState:
    """Replays actions over a program, op by op, last op first.

    This is what an environment steps: `current` is the op the next action
    applies to; `step(action)` validates it (a `ScheduleError` names the op and
    the reason) and advances to the next op when the action ends this one.
    """

    def __init__(self, program: Program, cfg: ActionConfig = ActionConfig()):
        self.program = program
        self.cfg = cfg
        self.order = [op.tag for op in program.schedule_order()]
        self.states: Dict[str, OpState] = {
            op.tag: OpState.initial(op, op.producer is not None and program.op(op.producer).result_uses == 1)
            for op in program.ops}
        self.history: Dict[str, List[OpState]] = {t: [] for t in self.order}  # states before each action
        self.position = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.order)

    @property
    def current(self) -> Optional[OpState]:
        return None if self.done else self.states[self.order[self.position]]

    def check(self, action: Action) -> Optional[str]:
        s = self.current
        if s is None:
            return "every op is already scheduled"
        return action.check(s, self.cfg)

    def step(self, action: Action) -> OpState:
        s = self.current
        why = self.check(action)
        if why:
            tag = s.op.tag if s else "-"
            raise ScheduleError(f"{tag}: {action} is invalid: {why}")
        self.history[s.op.tag].append(s)
        new = action.apply(s, self).replace(actions=s.actions + (action,))
        self.states[s.op.tag] = new
        if new.ended:
            self.position += 1
        return new

    def copy(self) -> "ProgramState":
        """An independent copy (op states are immutable; the maps are copied)."""
        c = ProgramState.__new__(ProgramState)
        c.program, c.cfg, c.order, c.position = self.program, self.cfg, self.order, self.position
        c.states = dict(self.states)
        c.history = {t: list(h) for t, h in self.history.items()}
        return c

    def finish_op(self) -> None:
        """End the current op with NT (the action limit reached, or no action wanted)."""
        self.step(NT())

    def fuse_producer(self, consumer: OpState, tile: Bounds) -> None:
        """TF moved the producer into the consumer's forall: its bounds become the slice it feeds."""
        tag = consumer.op.producer
        prod = self.states[tag]
        k = consumer.op.operand_producers.index(tag)
        access = (consumer.loads + consumer.stores)[k]
        extent = [sum(abs(c) * (t - 1) for c, t in zip(row, tile)) + 1 for row in access]
        bounds = list(prod.bounds)
        for row_idx, row in enumerate(prod.stores[0]):
            if sum(row) == 1 and row.count(1) == 1:
                bounds[row.index(1)] = extent[row_idx]
        self.states[tag] = prod.replace(pieces=(tuple(bounds),), parallel=True)

    @classmethod
    def replay(cls, program: Program, schedule: Schedule, cfg: ActionConfig = ActionConfig()) -> "ProgramState":
        """Validate a whole schedule against the program; ops it omits get NT."""
        schedule = schedule.for_program(program)
        ps = cls(program, cfg)
        while not ps.done:
            tag = ps.order[ps.position]
            for a in schedule.actions(tag):
                if ps.position >= len(ps.order) or ps.order[ps.position] != tag:
                    raise ScheduleError(f"{tag}: actions after the op was finished ({a})")
                ps.step(a)
            if not ps.done and ps.order[ps.position] == tag:
                ps.finish_op()
        return ps

    def schedule(self) -> Schedule:
        return Schedule(tuple((t, self.states[t].actions) for t in self.program.tags))
