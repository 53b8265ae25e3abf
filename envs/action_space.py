"""The flat action layout the environment exposes, and its masks (one place).

One `MultiDiscrete` vector, hierarchical in meaning:

====================  ======================================  ===============================
index                 head                                    choices
====================  ======================================  ===============================
0                     transformation                          `ACTIONS`: NT T TP TF I U V I2C
1 .. L                tile size of loop d (T, TP, TF)         `ActionConfig.tile_choices`
L + 1                 interchange pointer (I)                 a loop 0 .. L-1
L + 2                 unroll factor (U)                       `ActionConfig.unroll_factors`
====================  ======================================  ===============================

(L = `FeatureConfig.max_loops`.)  The transformation comes first; only the
heads it uses are read (tile heads for T/TP/TF, the pointer for I, the factor
for U), the others are ignored.  Interchange is chosen one loop position per
step, as MLIR-RL's level pointers: while a permutation is incomplete only I is
allowed and the pointer mask offers the loops not yet placed.

Masks (1 = allowed), for the transformation and, per transformation, for the
heads it uses: ``mask_transformation`` (8), ``mask_T``/``mask_TP``/``mask_TF``
(L x C, flattened row-major: loop d, choice c; loops the op does not have
allow only choice 0), ``mask_I`` (L), ``mask_U`` (number of unroll factors).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .mlir.config import ActionConfig, FeatureConfig
from .mlir.schedule import ACTIONS, NT, TF, TP, Action, I, OpState, T, U

TILINGS = (T, TP, TF)
MASK_KEYS = ("mask_transformation", "mask_T", "mask_TP", "mask_TF", "mask_I", "mask_U")
TRANSFORMATIONS = tuple(a.name for a in ACTIONS)
"""Names of the transformation head's choices, in order."""
TILING_IDS = tuple(ACTIONS.index(c) for c in TILINGS)
"""Transformations that read the tile heads (their masks: mask_T, mask_TP, mask_TF, in this order)."""
POINTER_ID = ACTIONS.index(I)
"""The transformation that reads the interchange pointer head."""
UNROLL_ID = ACTIONS.index(U)
"""The transformation that reads the unroll head."""


class InvalidActionError(ValueError):
    """An action outside its mask: a bug in the agent, never silently fixed."""


class ActionLayout:
    """Sizes of the heads, the masks of a state, decoding and uniform sampling."""

    def __init__(self, features: FeatureConfig = FeatureConfig(), actions: ActionConfig = ActionConfig()):
        self.fc, self.ac = features, actions
        self.L = features.max_loops
        self.C = len(actions.tile_choices)
        self.nvec = np.array([len(ACTIONS)] + [self.C] * self.L + [self.L, len(actions.unroll_factors)], np.int64)
        self.tile_slice = slice(1, 1 + self.L)
        self.pointer_index = 1 + self.L
        self.unroll_index = 2 + self.L

    def mask_sizes(self) -> Dict[str, int]:
        return {"mask_transformation": len(ACTIONS), "mask_T": self.L * self.C, "mask_TP": self.L * self.C,
                "mask_TF": self.L * self.C, "mask_I": self.L, "mask_U": len(self.ac.unroll_factors)}

    def masks(self, s: Optional[OpState], partial_perm: Sequence[int] = ()) -> Dict[str, np.ndarray]:
        """All masks for the op state `s` (None: the episode is over: only NT)."""
        m = {k: np.zeros(n, np.float32) for k, n in self.mask_sizes().items()}
        if s is None:
            m["mask_transformation"][ACTIONS.index(NT)] = 1
            return m
        if partial_perm:  # in the middle of an interchange: place the next loop
            m["mask_transformation"][ACTIONS.index(I)] = 1
            m["mask_I"][:s.num_loops] = I.pointer_mask(s, partial_perm)
            return m
        for k, cls in enumerate(ACTIONS):
            m["mask_transformation"][k] = cls.available(s, self.ac) is None
        for cls in TILINGS:
            tm = np.zeros((self.L, self.C), np.float32)
            tm[:, 0] = 1  # loops the op does not have: untiled only
            if m["mask_transformation"][ACTIONS.index(cls)]:
                tm[:s.num_loops] = np.asarray(cls.size_mask(s, self.ac), np.float32)
            m[f"mask_{cls.name}"] = tm.ravel()
        if m["mask_transformation"][ACTIONS.index(I)]:
            m["mask_I"][:s.num_loops] = 1
        if m["mask_transformation"][ACTIONS.index(U)]:
            m["mask_U"][:] = U.factor_mask(s, self.ac)
        return m

    def decode(self, vec: Sequence[int], masks: Dict[str, np.ndarray], s: OpState):
        """The Action a vector means (or, for I, the loop the pointer places).

        Raises InvalidActionError naming the head when a used head is masked."""
        vec = np.asarray(vec).astype(np.int64).ravel()
        if vec.shape != self.nvec.shape or np.any(vec < 0) or np.any(vec >= self.nvec):
            raise InvalidActionError(f"action {vec.tolist()} is not in MultiDiscrete({self.nvec.tolist()})")
        k = int(vec[0])
        if not masks["mask_transformation"][k]:
            allowed = [ACTIONS[i].name for i in np.flatnonzero(masks["mask_transformation"])]
            raise InvalidActionError(f"transformation {ACTIONS[k].name} is masked for {s.op.tag} "
                                     f"(allowed: {', '.join(allowed)})")
        cls = ACTIONS[k]
        if cls in TILINGS:
            tm = masks[f"mask_{cls.name}"].reshape(self.L, self.C)
            choice = vec[self.tile_slice]
            for d, c in enumerate(choice):
                if not tm[d, c]:
                    raise InvalidActionError(f"{cls.name} tile head {d}: size {self.ac.tile_choices[c]} is masked "
                                             f"for {s.op.tag} (bounds {s.bounds})")
            return cls(tuple(self.ac.tile_choices[c] for c in choice[:s.num_loops]))
        if cls is I:
            p = int(vec[self.pointer_index])
            if not masks["mask_I"][p]:
                raise InvalidActionError(f"interchange pointer to loop {p} is masked for {s.op.tag}")
            return p
        if cls is U:
            f = int(vec[self.unroll_index])
            if not masks["mask_U"][f]:
                raise InvalidActionError(f"unroll factor {self.ac.unroll_factors[f]} is masked for {s.op.tag}")
            return U(self.ac.unroll_factors[f])
        return cls()

    def sample(self, masks: Dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Uniform among the allowed choices at each level; unused heads are 0."""
        vec = np.zeros(len(self.nvec), np.int64)
        k = int(rng.choice(np.flatnonzero(masks["mask_transformation"])))
        vec[0] = k
        cls = ACTIONS[k]
        if cls in TILINGS:
            tm = masks[f"mask_{cls.name}"].reshape(self.L, self.C)
            for d in range(self.L):
                vec[1 + d] = int(rng.choice(np.flatnonzero(tm[d])))
        elif cls is I:
            vec[self.pointer_index] = int(rng.choice(np.flatnonzero(masks["mask_I"])))
        elif cls is U:
            vec[self.unroll_index] = int(rng.choice(np.flatnonzero(masks["mask_U"])))
        return vec

    def encode(self, action: Action) -> List[np.ndarray]:
        """The vector(s) that make `action` (an interchange takes one vector per loop)."""
        if isinstance(action, I):
            vecs = []
            for p in action.perm:
                v = np.zeros(len(self.nvec), np.int64)
                v[0], v[self.pointer_index] = ACTIONS.index(I), p
                vecs.append(v)
            return vecs
        v = np.zeros(len(self.nvec), np.int64)
        v[0] = ACTIONS.index(type(action))
        if isinstance(action, TILINGS):
            for d, size in enumerate(action.sizes):
                v[1 + d] = self.ac.tile_choices.index(size)
        elif isinstance(action, U):
            v[self.unroll_index] = self.ac.unroll_factors.index(action.factor)
        return [v]
