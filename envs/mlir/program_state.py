"""`ProgramState`: a program's ops as actions leave them, replayed op by op."""
from __future__ import annotations

from typing import Dict, List, Optional

from .actions import NT, Action
from .config import ActionConfig
from .errors import ScheduleError
from .opstate import OpState
from .program import Program
from .schedule import Schedule


def _init_fill(program: Program, op) -> Optional[str]:
    """The tag of the linalg.fill that initializes `op`'s output and feeds nothing else, else None."""
    if len(op.stores) != 1:
        return None
    tag = op.operand_producers[len(op.loads)]
    if tag is None:
        return None
    fill = program.op(tag)
    return tag if fill.name == "linalg.fill" and fill.result_uses == 1 else None


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
            op.tag: OpState.initial(op, op.producer is not None and program.op(op.producer).result_uses == 1,
                                    _init_fill(program, op))
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
            while not self.done and self.states[self.order[self.position]].ended:
                self.position += 1  # a fill R fused into its consumer's kernel: nothing left to choose
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
        for tag, s in ps.states.items():
            if s.fused_into and schedule.actions(tag):
                raise ScheduleError(f"{tag}: {schedule.actions(tag)[0]} is invalid: the fill is fused into the register "
                                    f"tile (R) of {s.fused_into}, which computes it; it takes no actions (NT)")
        return ps

    def schedule(self) -> Schedule:
        return Schedule(tuple((t, self.states[t].actions) for t in self.program.tags))
