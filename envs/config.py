"""`EnvConfig`: every setting of the scheduling environment, validated in one place."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .mlir.config import ActionConfig, FeatureConfig, MeasureConfig
from .mlir.worker import INTERNAL_ERROR, OK, STATUSES

# The penalized statuses: the schedule's failures.  An internal error is a bug of
# the harness, not the agent's doing: it has no penalty.
FAILURES = tuple(s for s in STATUSES if s not in (OK, INTERNAL_ERROR))
REWARDS = ("final", "per_op")
# A wrong result is the worst outcome: it must never look like progress.
_PENALTY = {"crash": -2.0, "wrong_result": -3.0}


def _default_penalties() -> Dict[str, float]:
    return {s: _PENALTY.get(s, -1.0) for s in FAILURES}


@dataclass(frozen=True)
class EnvConfig:
    """Settings of `MlirScheduleEnv` (nested configs may be given as dicts)."""

    suite: str = ""
    """Suite Parquet file; empty: the shipped file of `split`."""
    split: str = "train"
    """Which shipped split to use when `suite` is empty (train / eval)."""
    benchmarks: Tuple[str, ...] = ()
    """Only these benchmarks of the suite (empty: all)."""
    cycle_benchmarks: bool = False
    """A reset without a benchmark option takes the benchmarks in turn (validation runs:
    each once), instead of one at random."""
    reward: str = "final"
    """'final': log speedup at the end of the episode; 'per_op': its increase after each op."""
    penalties: Mapping[str, float] = field(default_factory=_default_penalties)
    """Reward of a measurement that failed, per status."""
    features: FeatureConfig = FeatureConfig()
    """Feature vector sizes."""
    actions: ActionConfig = ActionConfig()
    """Action space: tile sizes, action limit, vector limit, unroll factors."""
    measure: MeasureConfig = MeasureConfig()
    """Timing: repetitions, threads, timeouts, cache folder."""
    feature_clip: float = 1e4
    """Observation values are clipped to +-feature_clip (the Box bounds)."""

    def __post_init__(self):
        for name, cls in (("features", FeatureConfig), ("actions", ActionConfig), ("measure", MeasureConfig)):
            v = getattr(self, name)
            if isinstance(v, Mapping):
                object.__setattr__(self, name, _build(cls, v, f"env.{name}"))
            elif not isinstance(v, cls):
                raise ValueError(f"invalid setting env.{name}: expected {cls.__name__} or a dict, got {type(v).__name__}")
        if self.reward not in REWARDS:
            raise ValueError(f"invalid setting env.reward: {self.reward!r}, expected one of {', '.join(REWARDS)}")
        if not self.suite and self.split not in ("train", "eval"):
            raise ValueError(f"invalid setting env.split: {self.split!r}, expected train or eval")
        pens = dict(_default_penalties())
        unknown = [k for k in self.penalties if k not in FAILURES]
        if unknown:
            raise ValueError(f"invalid setting env.penalties: unknown status {', '.join(unknown)}; "
                             f"statuses: {', '.join(FAILURES)}")
        pens.update({k: float(v) for k, v in self.penalties.items()})
        object.__setattr__(self, "penalties", pens)
        object.__setattr__(self, "benchmarks", tuple(self.benchmarks))
        if self.feature_clip <= 0:
            raise ValueError("invalid setting env.feature_clip: must be > 0")

    @classmethod
    def coerce(cls, cfg: Optional[Any]) -> "EnvConfig":
        """An EnvConfig from None, an EnvConfig, or a (possibly nested) dict."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if isinstance(cfg, Mapping):
            return _build(cls, cfg, "env")
        raise ValueError(f"invalid env config: expected EnvConfig or dict, got {type(cfg).__name__}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, d: Mapping, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in d if k not in names]
    if unknown:
        raise ValueError(f"invalid setting {where}.{unknown[0]}: unknown; known: {', '.join(sorted(names))}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    try:
        return cls(**kw)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg.replace("invalid setting ", f"invalid setting {where}.", 1)
                         if msg.startswith("invalid setting ") and not msg.startswith(f"invalid setting {where}")
                         else msg) from None
