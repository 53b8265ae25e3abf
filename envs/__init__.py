"""The scheduling environment (`MlirScheduleEnv`, registered as ``MlirSchedule-v0``),
its benchmark suites (`envs.suites`) and the MLIR layer under it (`envs.mlir`).
Knows nothing of RLlib."""
from gymnasium.envs.registration import register, registry

from .action_space import ActionLayout, InvalidActionError
from .config import EnvConfig
from .env import MlirScheduleEnv
from .search import (RECHECK, SearchResult, greedy_search, random_search, ranked_search, remeasured_best,
                     sample_schedules)

ENV_ID = "MlirSchedule-v0"

if ENV_ID not in registry:
    # Rewards are measured run times: the same seed and actions give different rewards.
    register(id=ENV_ID, entry_point="envs.env:MlirScheduleEnv", nondeterministic=True)

__all__ = ["ENV_ID", "RECHECK", "ActionLayout", "EnvConfig", "InvalidActionError", "MlirScheduleEnv", "SearchResult",
           "greedy_search", "random_search", "ranked_search", "remeasured_best", "sample_schedules"]
