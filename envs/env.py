"""`MlirScheduleEnv`: a gymnasium environment that schedules real Linalg programs.

An episode is one benchmark.  Its ops are scheduled last op first; each step
applies one action to the current op (see `envs.action_space` for the flat
MultiDiscrete layout and the masks).  When every op is finished the schedule
is really compiled, run, checked and timed (through `envs.mlir.Measurer`,
with its Parquet cache), and the reward is the log speedup over the
untransformed program; a failed measurement gets its configured penalty and
its status in ``info``.  With ``reward="per_op"`` the partial schedule is
measured whenever an op is finished, and the reward is the increase of the log
speedup (the rewards of an episode still sum to its final log speedup).

Observation (a gymnasium Dict): ``op_features`` (OpFeatures of the current
op as it stands), ``producer_features`` (ProducerOpFeatures), ``action_history``
(ActionHistory), and the masks of `ActionLayout` (``mask_transformation`` and
one per head of each transformation: ``mask_T``, ``mask_I``, ...).
``action_layout_spec()`` is the layout as plain data for the RL side.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Dict, List, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .action_space import FEATURE_KEYS, ActionLayout, InvalidActionError, Pending
from .config import EnvConfig
from .mlir import FeatureLayout, Measurer, MlirInputError, Program, ProgramState, ScheduleError
from .suites import load_suite, suite_path


class MaskedMultiDiscrete(spaces.MultiDiscrete):
    """A MultiDiscrete whose plain ``sample()`` draws an action valid in the
    environment's current state (uniform at each level among unmasked choices),
    so that random agents and gymnasium's checker never send a masked action.
    Pickled or copied, it is a plain MultiDiscrete."""

    def __init__(self, nvec, sampler=None, seed=None):
        super().__init__(nvec, seed=seed)
        self._sampler = weakref.WeakMethod(sampler) if sampler is not None else None

    def sample(self, mask=None, probability=None):
        fn = self._sampler() if self._sampler is not None else None
        if mask is None and probability is None and fn is not None:
            return fn(self.np_random)
        return super().sample(mask=mask, probability=probability)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_sampler"] = None
        return d


class MlirScheduleEnv(gym.Env):
    """Schedules the benchmarks of a suite; rewards are measured speedups."""

    metadata = {"render_modes": []}

    def __init__(self, config: Any = None):
        self.cfg = EnvConfig.coerce(config)
        path = self.cfg.suite or suite_path(self.cfg.split)
        self.suite = {b.name: b for b in load_suite(path, self.cfg.benchmarks or None)}
        self.names: List[str] = sorted(self.suite)
        self.features = FeatureLayout(self.cfg.features, self.cfg.actions)
        self.layout = ActionLayout(self.cfg.features, self.cfg.actions)
        self.measurer = Measurer(self.cfg.measure, self.cfg.actions)
        clip = float(self.cfg.feature_clip)
        op, hist = self.features.op_size, self.features.history_size
        obs = dict(zip(FEATURE_KEYS, (spaces.Box(-clip, clip, (op,), np.float32),
                                      spaces.Box(-clip, clip, (op,), np.float32),
                                      spaces.Box(0.0, 1.0, (hist,), np.float32))))
        for k, n in self.layout.mask_sizes().items():
            obs[k] = spaces.Box(0.0, 1.0, (n,), np.float32)
        self.observation_space = spaces.Dict(obs)
        self.action_space = MaskedMultiDiscrete(self.layout.nvec, sampler=self._sample_current)
        self._programs: Dict[str, Program] = {}
        self.program: Optional[Program] = None
        self.ps: Optional[ProgramState] = None
        self._pending: Optional[Pending] = None
        self._turn = 0  # the next benchmark with cycle_benchmarks
        self._baseline = None
        self._log_speedup = 0.0
        self._dry = False

    # --- gymnasium API ----------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict] = None):
        super().reset(seed=seed)
        name = (options or {}).get("benchmark")
        if name is None and self.cfg.cycle_benchmarks:
            name = self.names[self._turn % len(self.names)]
            self._turn += 1
        elif name is None:
            name = self.names[int(self.np_random.integers(len(self.names)))]
        self.program = self.load(name)
        self.ps = ProgramState(self.program, self.cfg.actions)
        self._pending = None
        self._log_speedup = 0.0
        self._dry = not (options or {}).get("measure", True)
        self._baseline = self.measurer.baseline(self.program)
        if not self._baseline.ok:
            raise MlirInputError(name, f"the untransformed benchmark does not run: {self._baseline.status}: "
                                       f"{self._baseline.message}")
        return self._observation(), self._info()

    def step(self, action):
        if self.ps is None or self.ps.done:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        s = self.ps.current
        decoded = self.layout.decode(action, self.layout.masks(s, self._pending), s, self._pending)
        ended_op = False
        if isinstance(decoded, Pending):  # a transformation of several steps (I): one more step chosen
            self._pending = decoded
        else:
            self._pending = None
            before = self.ps.position
            self._apply(decoded)
            ended_op = self.ps.position != before
        terminated = self.ps.done
        reward, info = 0.0, self._info()
        if self._dry:  # reset(options={"measure": False}): the schedule is the result
            if terminated:
                info["status"] = "unmeasured"
        elif terminated or (ended_op and self.cfg.reward == "per_op"):
            reward, info = self._measure()
            terminated = terminated or info["status"] != "ok"
            if terminated and not self.ps.done:  # a failure ends a per-op episode early
                while not self.ps.done:
                    self.ps.finish_op()
        return self._observation(), float(reward), bool(terminated), False, info

    def close(self):
        self.measurer.close()

    # --- helpers ----------------------------------------------------------------------
    def load(self, name: str) -> Program:
        """The parsed program of a benchmark (parsed once, checked against the feature sizes)."""
        if name not in self.suite:
            raise ValueError(f"unknown benchmark {name!r}; the suite has {len(self.names)}: "
                             f"{', '.join(self.names[:8])}{', ...' if len(self.names) > 8 else ''}")
        if name not in self._programs:
            p = Program.from_text(self.suite[name].mlir, name)
            ps = ProgramState(p, self.cfg.actions)
            for op in p.ops:
                self.features.check_fits(ps.states[op.tag])
            self._programs[name] = p
        return self._programs[name]

    def action_layout_spec(self) -> Dict[str, Any]:
        """The action layout as plain data: what the RL module needs (its model_config's ``action_layout``)."""
        return self.layout.spec()

    def sample_valid_action(self, observation: Dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Uniform among the unmasked choices at each level of `observation`'s masks."""
        return self.layout.sample(observation, rng)

    def _sample_current(self, rng: np.random.Generator) -> np.ndarray:
        if self.ps is None:
            return np.zeros(len(self.layout.nvec), np.int64)  # NT: before any reset
        return self.layout.sample(self.layout.masks(self.ps.current, self._pending), rng)

    def _apply(self, action) -> None:
        try:
            self.ps.step(action)
        except ScheduleError as e:  # masks allowed what the action's own check refuses
            raise InvalidActionError(f"{self.program.name}: {e}") from None

    def _observation(self) -> Dict[str, np.ndarray]:
        s = None if self.ps is None or self.ps.done else self.ps.current
        clip = self.cfg.feature_clip
        if s is None:
            op = np.zeros(self.features.op_size, np.float32)
            prod, hist = op.copy(), np.zeros(self.features.history_size, np.float32)
        else:
            op = np.clip(self.features.op_features(s), -clip, clip)
            prod = np.clip(self.features.producer_features(self.ps, s), -clip, clip)
            hist = self.features.action_history(s)
        obs = dict(zip(FEATURE_KEYS, (op, prod, hist)))
        obs.update(self.layout.masks(s, self._pending))
        return obs

    def _info(self) -> Dict[str, Any]:
        s = None if self.ps is None or self.ps.done else self.ps.current
        return {"benchmark": self.program.name if self.program else None, "op": s.op.tag if s else None,
                "schedule": str(self.ps.schedule()) if self.ps else "", "status": "pending", "time_s": None,
                "baseline_s": self._baseline.time_s if self._baseline else None, "speedup": None,
                "cache_hit": None, "message": "", "compile_s": 0.0, "run_s": 0.0}

    def _measure(self):
        """Measure the schedule so far; (reward, info)."""
        schedule = self.ps.schedule()
        before = dict(self.measurer.counts)
        m = self.measurer.measure(self.program, schedule)
        spent = {k: self.measurer.counts[k] - before[k] for k in ("transform_s", "compile_s", "run_s")}
        info = self._info()
        info.update(schedule=str(schedule), status=m.status, time_s=m.time_s, cache_hit=m.cache_hit,
                    message=m.message, compile_s=spent["transform_s"] + spent["compile_s"], run_s=spent["run_s"])
        if not m.ok:  # a harness error (internal_error) is not the agent's doing: no penalty
            return self.cfg.penalties.get(m.status, 0.0), info
        speedup = self._baseline.time_s / m.time_s
        info["speedup"] = speedup
        log_s = math.log(speedup)
        reward = log_s - self._log_speedup  # per_op: the increase; final: the whole log speedup
        self._log_speedup = log_s
        return reward, info
