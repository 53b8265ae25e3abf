"""Every action on real ops, really compiled and run, with the result checked."""
import random

import pytest

from envs.mlir import ACTIONS, NT, ActionConfig, I, Program, ProgramState, Schedule, U, build_script
from envs.mlir.schedule import _Tiling

CASES = [
    # (program, schedule) -- together every action on several op families.
    ("matmul", "operation_1: T(8,8,8) V"),
    ("matmul", "operation_1: T(5,7,3) V"),  # remainders peeled on every loop
    ("matmul", "operation_1: TP(12,0,0) I(0,2,1) T(8,40,16) T(4,8,1) U(4) V"),
    ("matmul", "operation_1: TF(8,20,0) T(4,10,4) V; operation_0: T(4,10) V"),
    ("matmul", "operation_1: I(2,1,0) T(6,8,4) NT"),  # tiling without vectorization
    ("conv", "operation_2: TF(1,4,0,0) T(1,1,8,16) V; operation_1: T(1,1,8,16,1,1,8) V; operation_0: T(1,4,0,0) V"),
    ("conv", "operation_1: I2C T(1,8,8,8) U(2) V"),
    ("conv", "operation_2: TF(1,4,0,0) NT; operation_1: I2C T(1,8,16,8) V"),
    ("conv_nchw", "operation_1: T(1,8,1,4,2,1,3) V"),
    ("conv_nchw", "operation_1: I2C TP(1,8,0,0) T(1,4,8,8) V"),
    ("depthwise", "operation_1: TP(1,4,0,0,0,0) T(1,1,8,16,1,3) V"),
    ("pool", "operation_1: T(1,1,4,16,1,3) V; operation_2: T(1,4,4,4) V"),
    ("elementwise", "operation_3: T(4,64) V; operation_2: TF(4,0) T(1,64) V; operation_0: T(1,64) V; "
                    "operation_1: T(2,64) V"),
    ("batch", "operation_1: TP(1,0,0,0) I(0,1,3,2) T(1,8,24,8) T(1,4,8,1) U(8) V; operation_3: T(8,0) T(4,1) U(2) V"),
]


@pytest.mark.parametrize("name,text", CASES, ids=[f"{n}:{t[:40]}" for n, t in CASES])
def test_schedule_runs_and_is_correct(programs, measurer, name, text):
    p = programs[name]
    r = measurer.evaluate(p, Schedule.parse(text))
    m = r.measurement
    assert m.status == "ok", m.message
    assert m.max_error is not None and r.speedup is not None and r.speedup > 0


def test_every_action_is_covered():
    used = {type(a).__name__ for _, t in CASES for _, acts in Schedule.parse(t).ops for a in acts}
    assert used | {"NT"} == {a.__name__ for a in ACTIONS}


def _random_schedule(p: Program, rng: random.Random, cfg: ActionConfig) -> Schedule:
    """Draws every choice uniformly among those the masks allow."""
    ps = ProgramState(p, cfg)
    while not ps.done:
        s = ps.current
        names = [a for a in ACTIONS if a.available(s, cfg) is None]
        cls = rng.choice(names)
        if issubclass(cls, _Tiling):
            mask = cls.size_mask(s, cfg)
            for _ in range(100):
                sizes = tuple(rng.choice([c for c, ok in zip(cfg.tile_choices, m) if ok]) for m in mask)
                if cls(sizes).check(s, cfg) is None:
                    break
            else:
                ps.step(NT())
                continue
            action = cls(sizes)
        elif cls is I:
            perm = []
            while len(perm) < s.num_loops:
                perm.append(rng.choice([d for d, ok in enumerate(I.pointer_mask(s, perm)) if ok]))
            action = I(perm)
        elif cls is U:
            action = U(rng.choice([f for f, ok in zip(cfg.unroll_factors, U.factor_mask(s, cfg)) if ok]))
        else:
            action = cls()
        assert ps.check(action) is None, (action, ps.check(action))
        ps.step(action)
    return ps.schedule()


@pytest.mark.parametrize("name", ["matmul", "conv", "conv_nchw", "depthwise", "pool", "elementwise", "batch"])
def test_random_masked_schedules_compile_and_are_correct(programs, measurer, name):
    """Whatever the masks allow compiles and computes the right result."""
    rng = random.Random(1234)
    cfg = ActionConfig(tile_sizes=(1, 2, 4, 8, 16))  # small tiles keep compile times short
    p = programs[name]
    seen = set()
    for _ in range(6):
        s = _random_schedule(p, rng, cfg)
        if str(s) in seen:
            continue
        seen.add(str(s))
        build_script(p, s, cfg)
        m = measurer.measure(p, s)
        assert m.status == "ok", f"{s}: {m.status}: {m.message}"
