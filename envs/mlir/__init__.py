"""The MLIR layer: parse Linalg programs, apply schedules through the Transform
dialect, lower, JIT, run, time, check and cache.  Knows nothing of RL.

Typical use::

    from envs.mlir import Program, Schedule, Measurer, MeasureConfig
    prog = Program.from_file("examples/matmul.mlir")
    with Measurer(MeasureConfig(cache_dir=".mlir_rl_cache")) as m:
        r = m.evaluate(prog, Schedule.parse("operation_1: T(8,16,1) V"))
        print(r.measurement.status, r.speedup)
"""
from .actions import ACTIONS, I2C, NT, TF, TP, Action, Head, I, R, T, U, V
from .cache import Measurement, TimeCache, machine_fingerprint
from .config import ActionConfig, FeatureConfig, MeasureConfig
from .errors import MlirInputError, ScheduleError
from .features import FeatureLayout
from .measure import Measurer, Result
from .opstate import OpState
from .program import ARITH_KINDS, OP_TYPES, LinalgOp, Program
from .program_state import ProgramState
from .schedule import Schedule
from .transform import Script, build_script, write_transformed
from .worker import STATUSES, WorkerPool

__all__ = [
    "ACTIONS", "ARITH_KINDS", "Action", "ActionConfig", "FeatureConfig", "FeatureLayout", "Head", "I", "I2C",
    "LinalgOp", "MeasureConfig", "Measurement", "Measurer", "MlirInputError", "NT", "OP_TYPES", "OpState",
    "Program", "ProgramState", "Result", "STATUSES", "Schedule", "ScheduleError", "Script", "T", "TF", "TP",
    "R", "TimeCache", "U", "V", "WorkerPool", "build_script", "machine_fingerprint", "write_transformed",
]
