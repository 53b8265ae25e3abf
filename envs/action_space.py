"""The flat action layout the environment exposes, and its masks, derived from
what each transformation declares (`envs.mlir.actions`).

One `MultiDiscrete` vector, hierarchical in meaning: position 0 is the
transformation (`ACTIONS`), then one group of positions per head *slot*, in
order of first use.  With the shipped actions (L = `FeatureConfig.max_loops`):

====================  ======================================  ===============================
index                 slot (heads that read it)               choices
====================  ======================================  ===============================
0                     transformation                          `ACTIONS`: NT T TP TF I U V I2C
1 .. L                tile size of loop d (T, TP, TF)         `ActionConfig.loop_tile_choices`
L + 1                 interchange pointer (I)                 a loop 0 .. L-1
L + 2                 unroll factor (U)                       `ActionConfig.unroll_factors`
====================  ======================================  ===============================

Only the heads of the chosen transformation are read.  A transformation chosen
over several steps (interchange: one loop position a step, as MLIR-RL's level
pointers) is the only one allowed until its last step.

Masks (1 = allowed): ``mask_transformation``, and one per head of each
transformation: ``mask_<name>`` (``mask_<name>_<slot>`` for a transformation
with several heads), positions x choices flattened row-major.  A head whose
transformation is not allowed, and a position past the op's loops, allow only
choice 0.  `ActionLayout.spec` gives all of this to the RL side as plain data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import numpy as np

from .mlir.actions import ACTIONS, NT, Action, Head
from .mlir.config import ActionConfig, FeatureConfig
from .mlir.opstate import OpState
from .mlir.program_state import ProgramState

FEATURE_KEYS = ("op_features", "producer_features", "action_history")
"""The observation's feature entries: OpFeatures, ProducerOpFeatures, ActionHistory."""
TRANSFORMATION_MASK = "mask_transformation"


class InvalidActionError(ValueError):
    """An action outside its mask: a bug in the agent, never silently fixed."""


@dataclass(frozen=True)
class HeadRef:
    """One head of one transformation, placed in the layout."""

    transformation: int  # index in ACTIONS
    cls: Type[Action]
    head: Head
    mask: str  # its observation key
    offset: int  # its first position in the action vector


@dataclass(frozen=True)
class Pending:
    """A transformation chosen over several steps, part-way: the picks so far."""

    cls: Type[Action]
    picks: Tuple[Tuple[np.ndarray, ...], ...]


class _LazyMasks(dict):
    """`ActionLayout.masks(lazy=True)`: a transformation's head masks computed when first read."""

    def __init__(self, masks: Dict[str, np.ndarray], heads: Callable[[str], Dict[str, np.ndarray]]):
        super().__init__(masks)
        self._heads = heads

    def __missing__(self, key: str) -> np.ndarray:
        self.update(self._heads(key))
        return self[key]


class ActionLayout:
    """Heads, masks of a state, decoding, encoding and the one uniform sampler."""

    def __init__(self, features: FeatureConfig = FeatureConfig(), actions: ActionConfig = ActionConfig()):
        self.fc, self.ac = features, actions
        self.L = features.max_loops
        slots: Dict[str, Tuple[int, Head]] = {}
        self.heads: List[HeadRef] = []
        self.by_class: Dict[Type[Action], List[HeadRef]] = {}
        offset = 1
        for k, cls in enumerate(ACTIONS):
            hs = cls.heads(actions, self.L)
            for h in hs:
                if h.slot not in slots:
                    slots[h.slot] = (offset, h)
                    offset += h.positions
                elif (slots[h.slot][1].positions, slots[h.slot][1].choices) != (h.positions, h.choices):
                    raise ValueError(f"{cls.name}'s head {h.slot!r} has shape {h.positions}x{h.choices}; another "
                                     f"transformation's has {slots[h.slot][1].positions}x{slots[h.slot][1].choices}")
                key = f"mask_{cls.name}" if len(hs) == 1 else f"mask_{cls.name}_{h.slot}"
                ref = HeadRef(k, cls, h, key, slots[h.slot][0])
                self.heads.append(ref)
                self.by_class.setdefault(cls, []).append(ref)
        self.slots = {name: slice(off, off + h.positions) for name, (off, h) in slots.items()}
        self.mask_owner = {r.mask: r.transformation for r in self.heads}
        nvec = [len(ACTIONS)]
        for off, h in slots.values():
            nvec += [h.choices] * h.positions
        self.nvec = np.array(nvec, np.int64)

    def mask_sizes(self) -> Dict[str, int]:
        out = {TRANSFORMATION_MASK: len(ACTIONS)}
        out.update((r.mask, r.head.positions * r.head.choices) for r in self.heads)
        return out

    def spec(self) -> Dict:
        """The layout as plain data, all the RL side knows of it (through model_config)."""
        return {"transformations": [c.name for c in ACTIONS], "nvec": [int(x) for x in self.nvec],
                "features": list(FEATURE_KEYS), "transformation_mask": TRANSFORMATION_MASK,
                "heads": [{"transformation": r.transformation, "mask": r.mask, "offset": r.offset,
                           "positions": r.head.positions, "choices": r.head.choices} for r in self.heads]}

    # --- masks --------------------------------------------------------------------------
    def masks(self, s: Optional[OpState], pending: Optional[Pending] = None,
              lazy: bool = False) -> Dict[str, np.ndarray]:
        """All masks for the op state `s` (None: the episode is over: only NT). `lazy`: the
        transformation mask now, a transformation's head masks when first read (a sampler reads
        one transformation's: `sample_actions` then skips the others', most of a step's time)."""
        m = {TRANSFORMATION_MASK: np.zeros(len(ACTIONS), np.float32)}
        if s is None:
            allowed = [NT]
        elif pending is not None:
            allowed = [pending.cls]
        else:
            allowed = [c for c in ACTIONS if c.available(s, self.ac) is None]
        for cls in allowed:
            m[TRANSFORMATION_MASK][ACTIONS.index(cls)] = 1

        def heads(key: str) -> Dict[str, np.ndarray]:  # the head masks of the transformation that reads `key`
            cls = ACTIONS[self.mask_owner[key]]
            refs = self.by_class.get(cls, [])
            if s is None or cls not in allowed:  # unused heads: choice 0 only
                hms = [np.eye(1, r.head.choices, dtype=np.float32).repeat(r.head.positions, 0) for r in refs]
            else:
                hms = cls.head_masks(s, self.ac, self.L, pending.picks if pending is not None else ())
            return {r.mask: np.asarray(hm, np.float32).ravel() for r, hm in zip(refs, hms)}

        if lazy:
            return _LazyMasks(m, heads)
        for r in self.heads:
            if r.mask not in m:
                m.update(heads(r.mask))
        return m

    # --- vectors <-> actions -----------------------------------------------------------------
    def decode(self, vec: Sequence[int], masks: Dict[str, np.ndarray], s: OpState,
               pending: Optional[Pending] = None) -> Union[Action, Pending]:
        """The Action a vector means, or, for a transformation of several steps not
        yet complete, its `Pending` picks. Raises InvalidActionError naming the
        head when a choice it reads is masked."""
        vec = np.asarray(vec).astype(np.int64).ravel()
        if vec.shape != self.nvec.shape or np.any(vec < 0) or np.any(vec >= self.nvec):
            raise InvalidActionError(f"action {vec.tolist()} is not in MultiDiscrete({self.nvec.tolist()})")
        k = int(vec[0])
        if not masks[TRANSFORMATION_MASK][k]:
            allowed = [ACTIONS[i].name for i in np.flatnonzero(masks[TRANSFORMATION_MASK])]
            raise InvalidActionError(f"transformation {ACTIONS[k].name} is masked for {s.op.tag} "
                                     f"(allowed: {', '.join(allowed)})")
        cls = ACTIONS[k]
        step = []
        for r in self.by_class.get(cls, []):
            h = r.head
            chosen = vec[r.offset:r.offset + h.positions]
            hm = masks[r.mask].reshape(h.positions, h.choices)
            for p, c in enumerate(chosen):
                if not hm[p, c]:
                    raise InvalidActionError(f"{cls.name} {h.slot} head {p}: choice {c} is masked for {s.op.tag} "
                                             f"(bounds {s.bounds})")
            step.append(chosen.copy())
        picks = (pending.picks if pending is not None else ()) + (tuple(step),)
        if len(picks) < cls.steps(s):
            return Pending(cls, picks)
        return cls.build(s, self.ac, picks)

    def encode(self, action: Action, s: OpState) -> List[np.ndarray]:
        """The vector(s) that make `action` in op state `s`, one per step."""
        out = []
        for step in action.picks(s, self.ac, self.L):
            v = np.zeros(len(self.nvec), np.int64)
            v[0] = ACTIONS.index(type(action))
            for r, chosen in zip(self.by_class.get(type(action), []), step):
                v[r.offset:r.offset + r.head.positions] = chosen
            out.append(v)
        return out

    # --- sampling ------------------------------------------------------------------------------
    def sample(self, masks: Dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Uniform among the allowed choices at each level; heads not read are 0.
        The one valid-action sampler: the env's, the searches' and the tests'."""
        vec = np.zeros(len(self.nvec), np.int64)
        # a[rng.integers(len(a))] draws what rng.choice(a) draws, at a fraction of its cost.
        allowed = np.flatnonzero(masks[TRANSFORMATION_MASK])
        k = int(allowed[rng.integers(len(allowed))])
        vec[0] = k
        for r in self.by_class.get(ACTIONS[k], []):
            hm = masks[r.mask].reshape(r.head.positions, r.head.choices)
            for p in range(r.head.positions):
                row = np.flatnonzero(hm[p])
                vec[r.offset + p] = int(row[rng.integers(len(row))])
        return vec

    def sample_actions(self, ps: ProgramState, rng: np.random.Generator) -> Tuple[Action, ...]:
        """Whole actions sampled through `sample` at the current op of `ps` (left
        unchanged): one, or one and those it must be followed by (an I and its T)."""
        trial = ps.copy()
        out: List[Action] = []
        pending = None
        while True:
            s = trial.current
            masks = self.masks(s, pending, lazy=True)
            got = self.decode(self.sample(masks, rng), masks, s, pending)
            if isinstance(got, Pending):
                pending = got
                continue
            pending = None
            trial.step(got)
            out.append(got)
            if got.followers is None or len(got.followers) != 1:  # not an action that exists for its follower
                return tuple(out)

    def describe(self) -> str:
        """The layout as a table: each position of the action vector and each mask."""
        rows = [("0", "transformation", ", ".join(c.name for c in ACTIONS), TRANSFORMATION_MASK)]
        for name, sl in self.slots.items():
            refs = [r for r in self.heads if r.offset == sl.start]
            rows.append((f"{sl.start}" if sl.stop - sl.start == 1 else f"{sl.start}..{sl.stop - 1}",
                         f"{name} ({', '.join(r.cls.name for r in refs)})",
                         f"{refs[0].head.choices} choices", ", ".join(r.mask for r in refs)))
        w = [max(len(r[i]) for r in rows + [("index", "slot (read by)", "choices", "masks")]) for i in range(4)]
        lines = [" | ".join(h.ljust(n) for h, n in zip(("index", "slot (read by)", "choices", "masks"), w))]
        lines += [" | ".join(c.ljust(n) for c, n in zip(r, w)) for r in rows]
        return "\n".join(lines) + f"\nMultiDiscrete({self.nvec.tolist()})"
