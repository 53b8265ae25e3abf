"""Schedule text, action validity (masks) and the per-op state model (no compilation)."""
import pytest

from envs.mlir import (I2C, NT, TF, TP, ActionConfig, I, Program, ProgramState, Schedule, ScheduleError, T, U, V,
                       build_script)

from conftest import CONV, MATMUL

ROUND_TRIP = [
    "operation_0: NT; operation_1: TP(64,64,0) T(4,16,1) V",
    "operation_0: I(0,2,1) T(32,32,32) V",
    "operation_1: I2C TP(1,8,0,0) T(1,4,8,8) U(2) V",
    "operation_0: T(6,16,1) U(4) V; operation_1: NT; operation_2: TF(1,16,0,0) T(1,1,8,32)",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text):
    s = Schedule.parse(text)
    assert str(s) == text
    assert Schedule.parse(str(s)) == s


def test_canonical_form():
    s = Schedule.parse("operation_10: V ;operation_2:T( 4,8 ) NT;  operation_1 : NT")
    assert str(s) == "operation_1: NT; operation_2: T(4,8); operation_10: V"
    p = Program.from_text(MATMUL, "mm.mlir")
    assert str(Schedule.parse("operation_1: T(8,8,8) V").for_program(p)) == "operation_0: NT; operation_1: T(8,8,8) V"
    assert str(Schedule.empty(p)) == "operation_0: NT; operation_1: NT"
    assert build_script(p, Schedule.empty(p)) is None


@pytest.mark.parametrize("text,msg", [
    ("operation_0: X(1)", "unknown action 'X'"),
    ("operation_0: T(a,b)", "must be integers"),
    ("operation_0: T", "one tile size per loop"),
    ("operation_0: V; operation_0: NT", "appears twice"),
    ("just text", "expected 'tag: actions'"),
])
def test_parse_errors(text, msg):
    with pytest.raises(ScheduleError, match=msg):
        Schedule.parse(text)


def test_schedule_must_fit_program():
    p = Program.from_text(MATMUL, "mm.mlir")
    with pytest.raises(ScheduleError, match="operation_7"):
        build_script(p, Schedule.parse("operation_7: V"))
    with pytest.raises(ScheduleError, match="needs 3 tile sizes"):
        build_script(p, Schedule.parse("operation_1: T(8,8) V"))
    with pytest.raises(ScheduleError, match="exceeds bound 24"):
        build_script(p, Schedule.parse("operation_1: T(32,8,8) V"))
    with pytest.raises(ScheduleError, match="after the op was finished"):
        build_script(p, Schedule.parse("operation_1: T(8,8,8) V T(8,8,8)"))


def _matmul_state():
    ps = ProgramState(Program.from_text(MATMUL, "mm.mlir"))
    return ps, ps.current


def test_tile_masks():
    cfg = ActionConfig()
    ps, s = _matmul_state()  # loops (24, 40, 32), k is a reduction
    assert cfg.tile_choices == (0, 1, 2, 4, 8, 16, 32, 64)
    assert T.size_mask(s, cfg) == [[True] * 6 + [False] * 2, [True] * 7 + [False], [True] * 7 + [False]]
    # Parallel tiles: parallel loops only, and they must divide (no peeling across threads).
    assert TP.size_mask(s, cfg) == [[True, True, True, True, True, False, False, False],
                                    [True, True, True, True, True, False, False, False],
                                    [True] + [False] * 7]
    assert TP((0, 0, 8)).check(s, cfg) == "loop 2: only parallel loops can be tiled in parallel"
    assert "does not divide" in TP((16, 0, 0)).check(s, cfg)
    # A tiling that splits nothing is a valid no-op (each head may choose alone within its mask),
    # and the canonical text drops it with an interchange that only it followed.
    assert TP((0, 0, 0)).check(s, cfg) is None and T((24, 0, 0)).check(s, cfg) is None
    assert ps.step(T((24, 0, 0))).pieces == s.pieces
    assert str(Schedule.parse("operation_1: I(1,0,2) T(0,0,0) TP(0,0,0) T(8,0,0) V")) == "operation_1: T(8,0,0) V"


def test_peeling_makes_pieces_and_features_see_the_main_one():
    ps, s = _matmul_state()
    s2 = ps.step(T((5, 0, 8)))
    assert s2.pieces == ((5, 40, 8), (4, 40, 8))  # 24 = 4 * 5 + 4
    s3 = ps.step(T((2, 16, 0)))
    # Each piece is tiled again, sizes clamped to its bounds, remainders peeled.
    assert s3.pieces == ((2, 16, 8), (2, 8, 8), (1, 16, 8), (1, 8, 8), (2, 16, 8), (2, 8, 8))
    assert s3.bounds == (2, 16, 8)


def test_vectorize_availability_and_size_limit():
    cfg = ActionConfig()
    ps, s = _matmul_state()
    assert "exceeds the limit of 512" in V.available(s, cfg)
    assert V.available(ps.step(T((16, 16, 0))), cfg) is None  # A 16x32, B 32x16, C 16x16: <= 512
    ps2, _ = _matmul_state()
    assert "exceeds" in V.available(ps2.step(T((16, 32, 0))), cfg)  # B 32x32

    pc = ProgramState(Program.from_text(CONV, "conv.mlir"))
    pc.step(NT())
    conv = pc.current
    assert "window" in V.available(conv, cfg)
    assert V.available(pc.step(T((1, 1, 8, 16, 1, 1, 8))), cfg) is None


def test_interchange_pointer_and_followers():
    cfg = ActionConfig()
    ps, s = _matmul_state()
    assert I.pointer_mask(s, [2]) == [True, True, False]
    assert I((0, 2, 1)).check(s, cfg) is None
    assert "permutation" in I((0, 0, 1)).check(s, cfg)
    s2 = ps.step(I((0, 2, 1)))
    assert V.available(s2, cfg) == "an interchange (I) must be followed by a tiling (T)"
    assert T((8, 8, 8)).order(s2) == (0, 2, 1)


def test_unroll_needs_a_reduction_loop_of_the_last_tiling():
    cfg = ActionConfig()
    ps, s = _matmul_state()
    assert U.available(s, cfg) == "the last tiling made no reduction loop"
    s2 = ps.step(T((8, 8, 0)))
    assert U.available(s2, cfg) == "the last tiling made no reduction loop"
    s3 = ps.step(T((4, 8, 4)))  # k: 32 / 4 = 8 trips
    assert U.factor_mask(s3, cfg) == [True, True, True]
    assert U(16).check(s3, cfg) == "the loop runs 8 times, fewer than 16"
    s4 = ps.step(U(4))
    assert s4.unroll == 4
    assert T.available(s4, cfg) == "an unroll (U) may only be followed by V or NT"


def test_action_limit_leaves_the_last_slot_to_an_ending_action():
    cfg = ActionConfig(max_actions_per_op=3)
    ps = ProgramState(Program.from_text(MATMUL, "mm.mlir"), cfg)
    ps.step(T((12, 20, 16)))
    ps.step(T((6, 10, 8)))
    s = ps.current
    assert "last of 3 action slots" in T.available(s, cfg)
    assert NT.available(s, cfg) is None


def test_parallel_and_fusion_rules():
    cfg = ActionConfig()
    pc = ProgramState(Program.from_text(CONV, "conv.mlir"))
    relu = pc.current
    assert TF.available(relu, cfg) is None  # the conv feeds only the relu
    pc.step(TF((1, 4, 0, 0)))
    pc.step(T((1, 1, 8, 16)))
    pc.step(V())
    conv = pc.current
    # The conv was fused into the relu's parallel loop: its bounds are the slice it feeds.
    assert conv.parallel and conv.bounds == (1, 4, 8, 16, 3, 3, 8)
    assert "already inside a parallel loop" in TP.available(conv, cfg)
    assert I2C.available(conv, cfg) is None
    s = pc.step(I2C())
    assert s.name == "linalg.generic" and s.bounds == (1, 32, 16, 72)
    assert s.iterator_types == ("parallel", "parallel", "parallel", "reduction")
    assert "im2col" in TF.available(s, cfg) or "parallel" in TF.available(s, cfg)


def test_replay_gives_ops_without_actions_nt():
    p = Program.from_text(CONV, "conv.mlir")
    ps = ProgramState.replay(p, Schedule.parse("operation_1: T(1,1,8,16,1,1,8) V"))
    assert ps.done
    assert str(ps.schedule()) == "operation_0: NT; operation_1: T(1,1,8,16,1,1,8) V; operation_2: NT"
