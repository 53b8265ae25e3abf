"""Schedule -> one transform-dialect script, and applying it to a module.

`build_script` replays a schedule (validating every action) and writes one
``transform.named_sequence @__transform_main``.  Each action writes its part
(its `emit`) through `ScriptBuilder`'s primitives, and every transform op it
writes carries a name location ``loc("operation_1: T(8,8,8)")``, so that an error MLIR reports on a
transform op names the action that caused it.
Ops are matched by their ``tag`` attribute, which tiling and peeling keep on
every piece of an op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from .actions import ANY, Action
from .config import ActionConfig
from .opstate import OpState
from .program import Program
from .program_state import ProgramState
from .schedule import Schedule


CLEANUP = "vector lowering / cleanup"


@dataclass(frozen=True)
class Script:
    """A transform script; `parallel` when it makes parallel loops (OpenMP pipeline)."""

    text: str
    parallel: bool


class ScriptBuilder:
    """Writes transform ops; one handle list (`pieces`) per op being scheduled."""

    def __init__(self):
        self.who = CLEANUP  # the action whose ops are being written (their location)
        self.lines: List[str] = []
        self.n = 0
        self.pieces: List[str] = []
        self.vectorized = False
        self.unrolls: List[Tuple[str, int]] = []
        self.full_unrolls: List[Tuple[str, int]] = []

    def fresh(self, stem: str = "h") -> str:
        self.n += 1
        return f"%{stem}{self.n}"

    def add(self, line: str) -> None:
        # Every line that completes an op gets the writer's name as its location.
        if not line.endswith("{") and not line.startswith("^bb"):
            line += f' loc("{self.who}")'
        self.lines.append("    " + line)

    def match_tag(self, tag: str) -> str:
        h = self.fresh("m")
        self.add(f'{h} = transform.structured.match attributes {{tag = "{tag}"}} in %root : ({ANY}) -> {ANY}')
        return h

    def split(self, handle: str, n: int) -> List[str]:
        if n == 1:
            return [handle]
        names = [self.fresh("p") for _ in range(n)]
        self.add(f"{', '.join(names)} = transform.split_handle {handle} : ({ANY}) -> ({', '.join([ANY] * n)})")
        return names

    def start_op(self, s: OpState) -> None:
        self.pieces = self.split(self.match_tag(s.op.tag), len(s.pieces))

    def match_func(self) -> str:
        """A handle to the program's function (what whole-function pattern groups apply to)."""
        f = self.fresh("f")
        self.add(f'{f} = transform.structured.match ops{{["func.func"]}} in %root : ({ANY}) -> {ANY}')
        return f

    def canonicalize(self) -> None:
        f = self.match_func()
        self.add(f"transform.apply_patterns to {f} {{ transform.apply_patterns.canonicalization }} : {ANY}")

    def early_contractions(self) -> None:
        """Right after a vectorize: a generic contraction (im2col, P) vectorizes to a
        multi_reduction of a product, which the next canonicalization would fold into
        a form that no longer becomes a vector.contract; make the contract now."""
        f = self.match_func()
        self.add(f"transform.apply_patterns to {f} {{")
        self.add("  transform.apply_patterns.vector.transfer_permutation_patterns")
        self.add("  transform.apply_patterns.vector.reduction_to_contract")
        self.add(f"}} : {ANY}")

    def annotate(self, handle: str, attr: str, value: str) -> None:
        p = self.fresh("s")
        self.add(f'{p} = transform.param.constant "{value}" -> !transform.any_param')
        self.add(f'transform.annotate {handle} "{attr}" = {p} : {ANY}, !transform.any_param')

    def unroll_later(self, loop_id: str, factor: int) -> None:
        self.unrolls.append((loop_id, factor))

    def unroll_fully(self, loop_id: str, trips: int) -> None:
        """Unroll a loop of `trips` iterations completely, before the epilogue hoists loop-invariant
        reads and writes (the pieces it makes are then each a subset of their own to hoist)."""
        if (loop_id, trips) not in self.full_unrolls:
            self.full_unrolls.append((loop_id, trips))

    def _unroll(self, loop_id: str, factor: int) -> None:
        u = self.fresh("u")
        self.add(f'{u} = transform.structured.match ops{{["scf.for"]}} attributes {{rl_loop = "{loop_id}"}} '
                 f"in %root : ({ANY}) -> {ANY}")
        self.add(f"transform.foreach {u} : {ANY} {{")
        self.add(f"^bb0(%loop: {ANY}):")
        self.add(f"  transform.loop.unroll %loop {{factor = {factor}}} : {ANY}")
        self.add("}")

    def epilogue(self) -> None:
        self.canonicalize()
        if self.vectorized:
            f = self.match_func()
            # Pattern groups that must stay apart: canonicalization with shape-cast lowering,
            # and dropping leading unit dims with contraction rewrites, never terminate.
            # Outer products are what make FMAs.
            self.add(f"transform.apply_patterns to {f} {{")
            self.add("  transform.apply_patterns.vector.reduction_to_contract")
            self.add(f"}} : {ANY}")
            self.add(f"transform.apply_patterns to {f} {{")
            self.add("  transform.apply_patterns.vector.cast_away_vector_leading_one_dim")
            self.add(f"}} : {ANY}")
            self.add(f"transform.apply_patterns to {f} {{")
            self.add('  transform.apply_patterns.vector.lower_contraction lowering_strategy = "outerproduct"')
            self.add("  transform.apply_patterns.vector.lower_outerproduct")
            self.add("  transform.apply_patterns.vector.transfer_permutation_patterns")
            self.add(f"}} : {ANY}")
            # Multi-dimensional reductions (not contractions) become 1-D reductions.
            self.add(f"transform.apply_patterns to {f} {{")
            for p in ("reorder_multi_reduction_dims", "multi_reduction_flattening", "multi_reduction_unrolling"):
                self.add(f'  transform.apply_patterns.vector.{p} lowering_strategy = "innerreduction"')
            self.add(f"}} : {ANY}")
            # n-D vectors that LLVM cannot take: break them into 1-D ones.
            self.add(f"transform.apply_patterns to {f} {{")
            self.add("  transform.apply_patterns.vector.lower_broadcast")
            self.add("  transform.apply_patterns.vector.lower_transpose")
            self.add("  transform.apply_patterns.vector.lower_shape_cast")
            self.add("  transform.apply_patterns.vector.lower_transfer max_transfer_rank = 1")
            self.add(f"}} : {ANY}")
            for loop_id, trips in self.full_unrolls:
                self._unroll(loop_id, trips)
            self.canonicalize()
            loops = self.fresh("k")
            self.add(f'{loops} = transform.structured.match ops{{["scf.for"]}} in %root : ({ANY}) -> {ANY}')
            self.add(f"transform.foreach {loops} : {ANY} {{")
            self.add(f"^bb0(%loop: {ANY}):")
            self.add(f"  transform.loop.hoist_loop_invariant_subsets %loop : {ANY}")
            self.add("}")
        for loop_id, factor in self.unrolls:
            self._unroll(loop_id, factor)


_HEADER = ("module attributes {transform.with_named_sequence} {\n"
           "  transform.named_sequence @__transform_main(%root: !transform.any_op {transform.readonly}) {")
_FOOTER = "    transform.yield\n  }\n}\n"


def build_script(program: Program, schedule: Schedule, cfg: ActionConfig = ActionConfig()) -> Optional[Script]:
    """The transform script of a schedule (None for the untransformed program).

    Raises `ScheduleError` for a schedule that does not fit the program."""
    ps = ProgramState.replay(program, schedule, cfg)
    if ps.schedule().is_empty:
        return None
    b = ScriptBuilder()
    for tag in ps.order:
        states: List[OpState] = ps.history[tag]
        actions: Tuple[Action, ...] = ps.states[tag].actions
        if not actions or all(a.name == "NT" for a in actions):
            continue
        b.who = f"{tag}: {actions[0]}"
        b.start_op(states[0])  # its lines belong to the op's first action
        for s, a in zip(states, actions):
            b.who = f"{tag}: {a}"
            a.emit(b, s, ps)
    b.who = CLEANUP
    b.epilogue()
    text = _HEADER + "\n" + "\n".join(b.lines) + "\n" + _FOOTER
    return Script(text, ps.schedule().parallel)


def write_transformed(program: Program, script: Script, path: str) -> None:
    """Write the transformed module (before lowering) to `path` and its script to `path`.transform.mlir."""
    from torch_mlir import ir
    from torch_mlir.dialects.transform import interpreter
    with ir.Context(), ir.Location.unknown():
        mod = ir.Module.parse(program.text)
        tmod = ir.Module.parse(script.text)
        interpreter.apply_named_sequence(mod.operation, tmod.body.operations[0], tmod)
        with open(path, "w") as f:
            f.write(str(mod))
    with open(path + ".transform.mlir", "w") as f:
        f.write(script.text)
