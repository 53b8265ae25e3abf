"""Feature vectors, MLIR-RL's layout: OpFeatures, ProducerOpFeatures, ActionHistory.

OpFeatures of an op (float32, fixed length; zeros pad missing loops/operands):

=====================  ===========================================  ========================
part                   content                                      length (defaults)
=====================  ===========================================  ========================
op_type                one-hot over `program.OP_TYPES`              7
upper_bounds           log2(bound) / log2(max_bound), clipped to 1  max_loops (12)
iterator_types         1 = reduction, 0 = parallel                  max_loops (12)
load_access            per load, rows = dims, cols = loops          max_loads*dims*loops (1008)
store_access           the (first) output's access matrix           dims*loops (144)
arith                  counts per `program.ARITH_KINDS`             7
=====================  ===========================================  ========================

Unlike MLIR-RL, the bounds are those of the op *as it stands*: after a tiling
they are the tile the next action will see (the main piece).
ProducerOpFeatures are the OpFeatures of the op's producer (zeros if none).
ActionHistory has, per action slot of the op (max_actions_per_op): the
transformation one-hot (`ACTIONS` order), then the history blocks the
transformations declare, in order of first use (with the shipped actions: per
loop the tile size as log2(size+1)/log2(max+1) for T/TP/TF, per loop its
interchange position (pos+1)/max_loops for I, the unroll factor as
log2(f)/log2(max f) for U).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict

import numpy as np

from .config import ActionConfig, FeatureConfig
from .program import ARITH_KINDS, OP_TYPES
from .actions import ACTIONS
from .opstate import OpState
from .program_state import ProgramState


class FeatureLayout:
    """Sizes and offsets of the three vectors, from one FeatureConfig + ActionConfig."""

    def __init__(self, features: FeatureConfig = FeatureConfig(), actions: ActionConfig = ActionConfig()):
        self.fc, self.ac = features, actions
        L, D, N = features.max_loops, features.max_access_dims, features.max_loads
        self.parts: "OrderedDict[str, int]" = OrderedDict([
            ("op_type", len(OP_TYPES)), ("upper_bounds", L), ("iterator_types", L),
            ("load_access", N * D * L), ("store_access", D * L), ("arith", len(ARITH_KINDS))])
        self.slices: Dict[str, slice] = {}
        off = 0
        for name, n in self.parts.items():
            self.slices[name] = slice(off, off + n)
            off += n
        self.op_size = off
        # History blocks: one per name the actions declare, in order of first use.
        self.history_blocks: Dict[str, slice] = {}
        off = len(ACTIONS)
        for cls in ACTIONS:
            name, n = cls.history_block, cls.history_size(L)
            if name is None:
                continue
            if name not in self.history_blocks:
                self.history_blocks[name] = slice(off, off + n)
                off += n
            elif self.history_blocks[name].stop - self.history_blocks[name].start != n:
                raise ValueError(f"{cls.name}'s history block {name!r} has {n} values; another action's has "
                                 f"{self.history_blocks[name].stop - self.history_blocks[name].start}")
        self.step_size = off
        self.history_size = actions.max_actions_per_op * self.step_size

    def check_fits(self, s: OpState) -> None:
        """A clear error for an op larger than the layout (names the setting to raise)."""
        fc = self.fc
        where = f"{s.op.tag} ({s.op.name})"
        if s.num_loops > fc.max_loops:
            raise ValueError(f"{where} has {s.num_loops} loops; raise max_loops (now {fc.max_loops})")
        if len(s.loads) > fc.max_loads:
            raise ValueError(f"{where} has {len(s.loads)} inputs; raise max_loads (now {fc.max_loads})")
        rank = max((len(m) for m in s.loads + s.stores), default=0)
        if rank > fc.max_access_dims:
            raise ValueError(f"{where} accesses a rank-{rank} tensor; raise max_access_dims "
                             f"(now {fc.max_access_dims})")

    def op_features(self, s: OpState) -> np.ndarray:
        """OpFeatures of an op in its current state."""
        self.check_fits(s)
        fc = self.fc
        L, D = fc.max_loops, fc.max_access_dims
        v = np.zeros(self.op_size, np.float32)
        v[self.slices["op_type"].start + OP_TYPES.index(s.op_type)] = 1.0
        top = math.log2(fc.max_bound)
        for i, b in enumerate(s.bounds):
            v[self.slices["upper_bounds"].start + i] = min(1.0, math.log2(b) / top) if b > 1 else 0.0
            v[self.slices["iterator_types"].start + i] = 1.0 if s.iterator_types[i] == "reduction" else 0.0
        loads = np.zeros((fc.max_loads, D, L), np.float32)
        for k, m in enumerate(s.loads):
            for r, row in enumerate(m):
                loads[k, r, :len(row)] = row
        v[self.slices["load_access"]] = loads.ravel()
        store = np.zeros((D, L), np.float32)
        if s.stores:
            for r, row in enumerate(s.stores[0]):
                store[r, :len(row)] = row
        v[self.slices["store_access"]] = store.ravel()
        v[self.slices["arith"]] = np.asarray(s.op.arith, np.float32)
        return v

    def producer_features(self, ps: ProgramState, s: OpState) -> np.ndarray:
        """ProducerOpFeatures: the producer's OpFeatures (zeros if it has none)."""
        prod = s.op.producer
        if prod is None:
            return np.zeros(self.op_size, np.float32)
        return self.op_features(ps.states[prod])

    def action_history(self, s: OpState) -> np.ndarray:
        """ActionHistory of the op: one block per action slot, zeros for unused slots."""
        L = self.fc.max_loops
        v = np.zeros(self.history_size, np.float32)
        for k, a in enumerate(s.actions[:self.ac.max_actions_per_op]):
            base = k * self.step_size
            v[base + ACTIONS.index(type(a))] = 1.0
            if a.history_block is not None:
                block = self.history_blocks[a.history_block]
                v[base + block.start:base + block.stop] = a.history(self.ac, L)
        return v
