"""What one transformation declares, in one place.

A transformation is one `Action` subclass.  It declares

- its text form: ``name``, ``params`` and ``from_params`` (``T(8,16,1)``);
- its parameter heads (`heads`): each a `Head`, some positions that each pick
  one of some choices (one tile size per loop, a loop pointer, an unroll
  factor).  Heads of different transformations with the same ``slot`` read the
  same positions of the action vector;
- the masks of those heads in an op state (`head_masks`) and its own validity
  (`available`, `check`);
- how head picks make the action (`build`) and back (`picks`); a
  transformation chosen over several steps (interchange: one loop a step) says
  how many (`steps`);
- its ActionHistory block (``history_block``, `history_size`, `history`);
- what it does to the op state (`apply`) and what it writes into the
  transform script (`emit`).

The transformation head's order (`ACTIONS`), the action layout, the
observation's masks, the features' history, the searches and the RL
distribution are all derived from these declarations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np

from ..config import ActionConfig
from ..errors import ScheduleError
from ..opstate import OpState

if TYPE_CHECKING:
    from ..program_state import ProgramState

ANY = "!transform.any_op"

Picks = Sequence[Sequence[np.ndarray]]
"""Per step of a transformation, per head, the choice index of each position."""


@dataclass(frozen=True)
class Head:
    """A parameter head: `positions` independent picks among `choices`."""

    slot: str
    """Positions of the action vector it reads; heads of the same slot share them (same shape)."""
    positions: int
    choices: int


class Action:
    """One transformation.  Subclasses set `name` and override what they need."""

    name: ClassVar[str]
    ends_op: ClassVar[bool] = False
    """NT and V finish the op: the next action goes to the next op."""
    parallel: ClassVar[bool] = False
    """It makes parallel loops (the schedule then needs the OpenMP pipeline)."""
    followers: ClassVar[Optional[Tuple[str, ...]]] = None
    """Only these transformations may come right after it (None: any)."""
    follow_rule: ClassVar[str] = ""
    """The reason given when another one is tried after it."""
    history_block: ClassVar[Optional[str]] = None
    """Its part of an ActionHistory step; shared by name (same size) with other transformations."""
    registry: ClassVar[Dict[str, Type["Action"]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:  # abstract helpers (Tiling) have no name
            if cls.name in Action.registry:
                raise TypeError(f"two transformations named {cls.name}")
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

    def is_noop(self) -> bool:
        """An action that changes nothing (dropped from the canonical text)."""
        return False

    # --- heads ---------------------------------------------------------------------
    @classmethod
    def heads(cls, cfg: ActionConfig, max_loops: int) -> Tuple[Head, ...]:
        return ()

    @classmethod
    def steps(cls, s: OpState) -> int:
        """Env steps that choose this transformation (its heads picked once per step)."""
        return 1

    @classmethod
    def head_masks(cls, s: OpState, cfg: ActionConfig, max_loops: int,
                   picked: Picks = ()) -> List[np.ndarray]:
        """Per head, (positions, choices) booleans of what may be picked now, given
        the earlier steps' picks. Only called when `available` says yes."""
        return []

    @classmethod
    def build(cls, s: OpState, cfg: ActionConfig, picks: Picks) -> "Action":
        """The action that the picks of all its steps make."""
        return cls()

    def picks(self, s: OpState, cfg: ActionConfig, max_loops: int) -> List[List[np.ndarray]]:
        """The inverse of `build`: per step, per head, the choice of each position."""
        return [[]]

    # --- ActionHistory -------------------------------------------------------------
    @classmethod
    def history_size(cls, max_loops: int) -> int:
        return 0

    def history(self, cfg: ActionConfig, max_loops: int) -> np.ndarray:
        """Its values in its history block (in [0, 1])."""
        return np.zeros(0, np.float32)

    # --- semantics -----------------------------------------------------------------
    @classmethod
    def available(cls, s: OpState, cfg: ActionConfig) -> Optional[str]:
        """Why this transformation cannot apply at all now (None if it can)."""
        return common_block(s, cfg, cls)

    def check(self, s: OpState, cfg: ActionConfig) -> Optional[str]:
        """Why these parameters are invalid in this state (None if valid)."""
        return self.available(s, cfg)

    def apply(self, s: OpState, ctx: "ProgramState") -> OpState:
        return s

    def emit(self, b, s: OpState, ctx: "ProgramState") -> None:
        """Write this action's transform ops for state `s` (the state before it),
        through `transform.ScriptBuilder`."""


class NT(Action):
    """No transformation: ends the op."""

    name = "NT"
    ends_op = True

    def apply(self, s, ctx):
        return s.replace(ended=True)


def common_block(s: OpState, cfg: ActionConfig, cls: Type[Action]) -> Optional[str]:
    """Rules shared by every action: op not ended, the per-op limit, followers."""
    if s.ended:
        return "the op is already finished (NT or V)"
    if len(s.actions) >= cfg.max_actions_per_op - 1 and not cls.ends_op:
        return f"only NT or V may take the last of {cfg.max_actions_per_op} action slots"
    last = s.actions[-1] if s.actions else None
    if last is not None and last.followers is not None and cls.name not in last.followers:
        return last.follow_rule
    return None


def only_first(rows: int, positions: int, choices: int) -> np.ndarray:
    """A (positions, choices) mask whose rows from `rows` on allow only choice 0."""
    m = np.zeros((positions, choices), bool)
    m[rows:, 0] = True
    return m
