"""Every action on real ops, really compiled and run, with the result checked."""
import re

import numpy as np
import pytest

from envs import ActionLayout
from envs.mlir import (ACTIONS, NT, TF, TP, ActionConfig, T, FeatureConfig, FeatureLayout, MeasureConfig, Measurer,
                       Program, ProgramState, Schedule, build_script, write_transformed)
from envs.mlir.actions.rewrite import P
from envs.mlir.errors import ScheduleError
from conftest import MATMUL
from envs.mlir.actions.register import R

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
    ("matmul", "operation_1: P(8) T(6,1,4,0) V; operation_0: T(1,8) V"),
    ("batch", "operation_1: P(8) TP(1,4,0,0,0) T(1,4,1,8,0) U(2) V"),
    ("matmul", "operation_1: T(0,20,0) R(6,16,4); operation_0: R(4,16,1)"),  # register tile, remainder peeled
    ("conv", "operation_1: R(4,16,2)"),  # the fill computed in R's kernels (zeros in registers)
    ("conv_nchw", "operation_1: TP(1,4,0,0,0,0,0) R(4,4,2)"),
    ("depthwise", "operation_1: R(6,16,1)"),
    ("batch", "operation_1: P(8) R(4,8,2)"),
    ("matmul", "operation_1: R(6,16,4,16); operation_0: R(4,16,1)"),  # k in blocks of 16 outside the kernels
    ("conv", "operation_1: R(4,16,2,4); operation_0: V"),  # input channels in blocks of 4; the fill in R's forall
    ("matmul", "operation_1: TF(12,0,0) R(6,16,4)"),  # the fill TF fused, then in R's kernels
]


# What each action leaves in the transformed IR (before lowering).
LEAVES = {"T": "scf.for", "R": "scf.for", "TP": "scf.forall", "TF": "scf.forall", "V": "vector.contract|vector.fma|vector.transfer_read",
          "I2C": "tensor.collapse_shape|tensor.expand_shape"}


@pytest.mark.parametrize("name,text", CASES, ids=[f"{n}:{t[:40]}" for n, t in CASES])
def test_schedule_runs_and_is_correct(programs, measurer, name, text, tmp_path):
    p = programs[name]
    schedule = Schedule.parse(text)
    r = measurer.evaluate(p, schedule)
    m = r.measurement
    assert m.status == "ok", m.message
    assert m.max_error is not None and not m.cache_hit and r.speedup is not None
    # The script really transformed the program: each action left its mark.
    out = tmp_path / "t.mlir"
    write_transformed(p, build_script(p, schedule), str(out))
    ir = out.read_text()
    for a in {a.name for _, acts in schedule.ops for a in acts}:
        if a in LEAVES:
            assert re.search(LEAVES[a], ir), f"{a} left no {LEAVES[a]} in the transformed IR"


def test_every_action_is_covered():
    used = {type(a).__name__ for _, t in CASES for _, acts in Schedule.parse(t).ops for a in acts}
    assert used | {"NT"} == {a.__name__ for a in ACTIONS}


def _random_schedule(p: Program, rng: np.random.Generator, layout: ActionLayout) -> Schedule:
    """Draws every choice uniformly among those the masks allow (the env's sampler)."""
    ps = ProgramState(p, layout.ac)
    while not ps.done:
        for action in layout.sample_actions(ps, rng):
            assert ps.check(action) is None, (action, ps.check(action))
            ps.step(action)
    return ps.schedule()


def test_random_schedules_replay_as_they_were_stepped(programs):
    """The schedule text of any sampled episode replays to the same op states (what the
    measurement compiles is what the episode chose): no-op actions dropped from the text,
    fills R fused skipped."""
    layout = ActionLayout(FeatureConfig(), ActionConfig())
    rng = np.random.default_rng(3)
    fused = 0
    for name, p in programs.items():
        for _ in range(150):
            ps = ProgramState(p, layout.ac)
            while not ps.done:
                for action in layout.sample_actions(ps, rng):
                    ps.step(action)
            again = ProgramState.replay(p, Schedule.parse(str(ps.schedule())), layout.ac)
            for tag, s in ps.states.items():
                r = again.states[tag]
                assert (r.fused_into, r.pieces, r.parallel) == (s.fused_into, s.pieces, s.parallel), (name, str(ps.schedule()))
            fused += sum(1 for s in ps.states.values() if s.fused_into)
    assert fused > 0  # the sampler does reach R's fill fusion


def test_lazy_masks_equal_the_eager_ones_along_sampled_episodes(programs):
    """The samplers read masks lazily (a transformation's heads when first read); every mask,
    read that way, must be the eager one, pending multi-step picks (I then T) included."""
    layout = ActionLayout(FeatureConfig(), ActionConfig())
    rng = np.random.default_rng(11)
    compared = 0
    for p in programs.values():
        for _ in range(20):
            ps = ProgramState(p, layout.ac)
            while not ps.done:
                trial, pending = ps.copy(), None
                while True:  # sample_actions' loop, comparing the masks at each step
                    eager = layout.masks(trial.current, pending)
                    lazy = layout.masks(trial.current, pending, lazy=True)
                    assert set(eager) == set(layout.mask_sizes())
                    for key in reversed(list(eager)):  # heads before the transformation mask
                        np.testing.assert_array_equal(lazy[key], eager[key], err_msg=key)
                        compared += 1
                    got = layout.decode(layout.sample(eager, rng), eager, trial.current, pending)
                    if type(got).__name__ == "Pending":
                        pending = got
                        continue
                    pending = None
                    trial.step(got)
                    ps.step(got)
                    if got.followers is None or len(got.followers) != 1:
                        break
    assert compared > 1000
    with pytest.raises(KeyError):
        layout.masks(None, lazy=True)["mask_nonexistent"]


def test_op_state_replace_sets_fields_and_refuses_unknown_ones(programs):
    s = ProgramState(programs["matmul"], ActionConfig()).current
    t = s.replace(tiled=True, unroll=4)
    assert (t.tiled, t.unroll, s.tiled, s.unroll) == (True, 4, False, None)  # s untouched
    assert t.replace(tiled=False, unroll=None) == s and hash(t.replace(tiled=False, unroll=None)) == hash(s)
    with pytest.raises(TypeError, match="no field"):
        s.replace(tile=True)


@pytest.mark.parametrize("name", ["matmul", "conv", "conv_nchw", "depthwise", "pool", "elementwise", "batch"])
def test_random_masked_schedules_compile_and_are_correct(programs, measurer, name):
    """Whatever the masks allow compiles and computes the right result."""
    rng = np.random.default_rng(1234)
    cfg = ActionConfig(tile_sizes=(1, 2, 4, 8, 16))  # small tiles keep compile times short
    layout = ActionLayout(FeatureConfig(), cfg)
    p = programs[name]
    seen = set()
    for _ in range(6):
        s = _random_schedule(p, rng, layout)
        if str(s) in seen:
            continue
        seen.add(str(s))
        build_script(p, s, cfg)
        m = measurer.measure(p, s)
        assert m.status == "ok", f"{s}: {m.status}: {m.message}"


def test_pack_makes_panels_of_b_and_a_loop_for_them(programs, measurer, tmp_path):
    """P(n): B of a contraction in panels of n columns; the op gains the panel loop."""
    cfg = ActionConfig()
    mm = ProgramState(programs["matmul"], cfg)  # C 24x40 = A 24x32 . B 32x40
    s = mm.current
    assert P.available(s, cfg) is None
    assert P.head_masks(s, cfg, 12)[0].tolist() == [[c in (4, 8) for c in cfg.tile_choices]]  # divide 40
    assert "dividing the packed loop's bound 40" in P(16).check(s, cfg)
    s2 = mm.step(P(8))
    assert s2.bounds == (24, 5, 32, 8) and s2.iterator_types == ("parallel", "parallel", "reduction", "parallel")
    assert s2.loads == (((1, 0, 0, 0), (0, 0, 1, 0)), ((0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)))  # B[j, k, jj]
    assert s2.stores == (((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 1)),)  # C[i, j, jj]
    assert "first action" in P.available(s2, cfg) and TF.available(s2, cfg) is not None
    # Only contractions whose output's last loop B reads last, after a reduction.
    for name, steps in (("conv", 1), ("elementwise", 0), ("pool", 0)):
        ps = ProgramState(programs[name], cfg)
        for _ in range(steps):
            ps.step(NT())
        assert "not a contraction" in P.available(ps.current, cfg)
    bm = ProgramState(programs["batch"], cfg)
    assert bm.current.op.name == "linalg.matvec" and "not a contraction" in P.available(bm.current, cfg)
    bm.step(NT())
    bm.step(NT())  # its fill
    assert bm.current.op.name == "linalg.batch_matmul" and bm.step(P(8)).bounds == (2, 16, 3, 32, 8)
    # Compiled and run: correct, and B really lives in panels.
    schedule = Schedule.parse("operation_1: P(8) T(6,1,4,0) V")
    r = measurer.evaluate(programs["matmul"], schedule)
    assert r.measurement.status == "ok", r.measurement.message
    write_transformed(programs["matmul"], build_script(programs["matmul"], schedule), str(tmp_path / "p.mlir"))
    assert "tensor<5x32x8xf32>" in (tmp_path / "p.mlir").read_text()
    # The agent can choose it: the env's layout has its head and its history block.
    lay = ActionLayout(FeatureConfig(), cfg)
    (vec,) = lay.encode(P(8), s)
    assert lay.decode(vec, lay.masks(s), s) == P(8)
    assert FeatureLayout(FeatureConfig(), cfg).action_history(s2)[ACTIONS.index(P)] == 1


@pytest.mark.parametrize("candidates", ["fixed", "per_loop"])
def test_hand_schedules_are_samplable(candidates):
    """bench/schedules.py's best hand schedules (threads, then R's register tiles) go through
    the env's masks, head by head, in the default action space and with per-loop tile
    candidates (a tile size that covers its loop reads as 0)."""
    from bench.schedules import CASES
    from envs.action_space import Pending
    from envs.mlir.actions import Tiling
    cfg = ActionConfig(tile_candidates=candidates, vector_width=16)
    lay = ActionLayout(FeatureConfig(), cfg)
    for name, (text, _, sched) in CASES.items():
        p = Program.from_text(text, f"{name}.mlir")
        schedule = Schedule.parse(sched).for_program(p)
        ps = ProgramState(p, cfg)
        while not ps.done:
            tag = ps.order[ps.position]
            for a in schedule.actions(tag) or (NT(),):
                s = ps.current
                if isinstance(a, Tiling):
                    a = type(a)(tuple(0 if x >= b else x for x, b in zip(a.sizes, s.bounds)))
                pending = None
                for vec in lay.encode(a, s):
                    got = lay.decode(vec, lay.masks(s, pending), s, pending)  # InvalidActionError if masked
                    pending = got if isinstance(got, Pending) else None
                assert got == a, (name, tag, got, a)
                ps.step(a)
            if not ps.done and ps.order[ps.position] == tag:
                ps.step(NT())


def test_register_tile_geometry_and_masks(programs):
    """R finds each family's micro-kernel loops (vector loop, row loop), masks the tiles that
    exceed the vector registers or the bounds, and makes the loops it says."""
    cfg = ActionConfig(vector_width=16)
    want = {"matmul": ("linalg.matmul", (1, 0)), "conv": ("linalg.conv_2d_nhwc_hwcf", (3, 2)),
            "conv_nchw": ("linalg.conv_2d_nchw_fchw", (3, 1)), "depthwise": ("linalg.depthwise_conv_2d_nhwc_hwc", (3, 2)),
            "batch": ("linalg.matvec", (0, None))}
    for name, (op, geometry) in want.items():
        ps = ProgramState(programs[name], cfg)
        while ps.current.op.name != op:
            ps.step(NT())
        s = ps.current
        assert R.geometry(s) == geometry, name
        shapes, unroll, kc = R.head_masks(s, cfg, 12)
        assert kc[0][0] and all(not ok or R.kc_problem(s, k) is None for k, ok in zip(cfg.register_kc, kc[0]))
        allowed = {t for t, ok in zip(cfg.register_tiles, shapes[0]) if ok}
        n, m = geometry
        for rows, vectors in allowed:
            assert rows == 1 or (m is not None and rows <= s.bounds[m]), (name, rows)
            assert vectors == 1 or vectors * 16 <= s.bounds[n], (name, vectors)
            assert rows * vectors + vectors + 1 <= 32
        if m is None:
            assert allowed == {(1, 1)}
    # matmul 24x40x32: 6 rows x 16 columns, k innermost; the unroll factor may not exceed k's 32 trips.
    # As the op's first tiling, R spreads its kernels over threads: a forall over the rows in
    # chunks of 6 (the smallest divisor of 24 holding a kernel), each chunk one kernel row.
    ps = ProgramState(programs["matmul"], cfg)
    s = ps.current
    assert s.op.name == "linalg.matmul"
    a = R(6, 16, 4)
    assert a.check(s, cfg) is None
    assert a.parallel(s).sizes == (6, 0, 0)
    after = ps.step(a)
    assert after.ended and after.parallel and after.unroll == 4 and after.pieces[0] == (6, 16, 1)
    assert [(d, trips) for d, _, trips in after.last_tile] == [(0, 1), (1, 3), (2, 32)]
    # After a forall of its own (TP) or another tiling, R adds none.
    tp = ProgramState(programs["matmul"], cfg)
    assert a.parallel(tp.step(TP((12, 0, 0)))) is None
    assert "exceed" in R(6, 48, 1).check(s, cfg)  # more columns than the loop has
    assert "whole vectors" in R(2, 24, 1).check(s, cfg)
    assert "unroll" in R(6, 16, 64).check(s, cfg)
    # With AVX2's 16 registers, 8 rows of 2 vectors (16 accumulators) no longer fit; 6 x 2 does.
    avx2 = ActionConfig(vector_width=8)
    assert "vector registers" in R(8, 16, 1).check(s, avx2) and R(6, 16, 1).check(s, avx2) is None
    # The agent can choose it: encode/decode through the env's masks, and its history block.
    lay = ActionLayout(FeatureConfig(), cfg)
    (vec,) = lay.encode(a, s)
    assert lay.decode(vec, lay.masks(s), s) == a
    hist = FeatureLayout(FeatureConfig(), cfg).action_history(after)
    assert hist[ACTIONS.index(R)] == 1


def test_register_tile_of_three_vectors_is_split_into_native_vectors(programs, tmp_path):
    """A kernel whose vector count is not a power of two (3: LLVM widens a 24-lane vector and
    takes it apart every step) is tiled into native vectors inside the reduction loop, and that
    loop is unrolled before the hoisting: the reduction loop carries three rows x 8 accumulators
    and no 24-lane vector; a 2-vector remainder is left whole; the result is right."""
    avx2 = ActionConfig(vector_width=8)
    p = programs["matmul"]  # 24x40, k = 32: a 24-column kernel and a 16-column remainder
    schedule = Schedule.parse("operation_1: R(4,24,2)")
    script = build_script(p, schedule, avx2)
    assert script.text.count("tile_sizes [0, 8, 0]") == 1  # the 3-vector piece only
    assert 'rl_loop = "operation_1.a0.v3"' in script.text and "{factor = 3}" in script.text
    out = tmp_path / "t.mlir"
    write_transformed(p, script, str(out))
    ir = out.read_text()
    k_loops = [line for line in ir.splitlines() if "scf.for" in line and "iter_args" in line]
    assert any(line.split("->")[-1].count("vector<4x8xf32>") == 3 for line in k_loops), k_loops
    assert any(line.split("->")[-1].count("vector<4x16xf32>") == 1 for line in k_loops)  # the remainder
    assert "vector<24xf32>" not in ir
    with Measurer(MeasureConfig(threads=2, repetitions=1, cache_dir="", compile_timeout_s=60,
                                run_timeout_s=30), avx2) as m:
        r = m.evaluate(p, schedule)
    assert r.measurement.status == "ok", r.measurement.message
    assert r.measurement.max_error is not None


def _matmul(m: int, k: int, n: int) -> Program:
    a, b, c = f"tensor<{m}x{k}xf32>", f"tensor<{k}x{n}xf32>", f"tensor<{m}x{n}xf32>"
    return Program.from_text(f"""func.func @mm(%a: {a}, %b: {b}) -> {c} {{
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : {c}
  %f = linalg.fill ins(%z : f32) outs(%e : {c}) -> {c}
  %r = linalg.matmul ins(%a, %b : {a}, {b}) outs(%f : {c}) -> {c}
  return %r : {c}
}}""", f"mm_{m}x{k}x{n}.mlir")


def test_register_forall_splits_the_operand_that_is_larger(measurer):
    """R's own forall goes over the loop, among those of enough chunks, whose chunk touches the
    fewest elements: a wide B is split by columns (each chunk reads a slice of B and all of the
    small A), a tall A by rows.  The older rule (the outermost loop of enough chunks) took the
    rows of the wide one, every chunk reading all of B.  The column forall runs correctly."""
    from envs.mlir.actions import register
    cfg = ActionConfig(vector_width=8)
    wide, tall = _matmul(32, 64, 512), _matmul(512, 64, 128)
    kernel = R(4, 16, 1)
    s = ProgramState(wide, cfg).current
    assert s.op.name == "linalg.matmul"
    # rows: 8 chunks of 4 rows, each touching 4x64 + 64x512 + 4x512; columns: 16 of 32 columns
    assert register._chunk_elements(s, 0, 4) == 256 + 32768 + 2048
    assert register._chunk_elements(s, 1, 32) == 2048 + 2048 + 1024
    assert kernel.parallel(s).sizes == (0, 32, 0)
    assert kernel.parallel(ProgramState(tall, cfg).current).sizes == (32, 0, 0)
    register.FORALL_RULE = "outermost"
    try:
        assert kernel.parallel(s).sizes == (4, 0, 0)
    finally:
        register.FORALL_RULE = "least_data"
    r = measurer.evaluate(wide, Schedule.parse("operation_1: R(4,16,1)"))
    assert r.measurement.status == "ok", r.measurement.message


def test_register_tile_reduction_block(programs):
    """R's kc splits the longest reduction loop into blocks outside the kernels (inside R's
    forall); the kernel's reduction then runs kc times; only blocks dividing the loop are
    allowed; the text of R without kc is unchanged (cached times stay valid)."""
    cfg = ActionConfig(vector_width=16, register_kc=(0, 8, 16, 32))
    s = ProgramState(programs["matmul"], cfg).current  # 24x40, k = 32
    assert R.block_loop(s) == 2
    _, _, kc = R.head_masks(s, cfg, 12)
    assert kc[0].tolist() == [True, True, True, False]  # 32 does not split k
    assert "divide" in R(6, 16, 1, 12).check(s, cfg) and "divide" in R(6, 16, 1, 32).check(s, cfg)
    a = R(6, 16, 4, 8)
    assert a.check(s, cfg) is None and str(a) == "R(6,16,4,8)" and str(R(6, 16, 4)) == "R(6,16,4)"
    after = ProgramState(programs["matmul"], cfg).step(a)
    assert after.pieces[0] == (6, 16, 1) and after.unroll == 4
    assert [(d, trips) for d, _, trips in after.last_tile] == [(0, 1), (1, 3), (2, 8)]  # k: 8 per block
    lay = ActionLayout(FeatureConfig(), cfg)
    (vec,) = lay.encode(a, s)
    assert lay.decode(vec, lay.masks(s), s) == a
    # The block loop comes between R's forall and the kernel loops; U unrolls the kernel's, not it.
    script = build_script(programs["matmul"], Schedule.parse("operation_1: R(6,16,4,8)")).text
    assert script.index("tile_using_forall") < script.index("tile_sizes [0, 0, 8]") < script.index("tile_sizes [0, 16, 1]")  # rows: one chunk of the forall
    assert '"operation_1.a0kc.d2"' in script and 'rl_loop = "operation_1.a0.d2"' in script
    # A conv blocks its input channels (the longest reduction), not a 3-wide window loop.
    ps = ProgramState(programs["conv_nchw"], cfg)
    while ps.current.op.name != "linalg.conv_2d_nchw_fchw":
        ps.step(NT())
    conv = ps.current
    assert R.block_loop(conv) == 4


def test_register_tile_fuses_the_fill(programs):
    """R computes the fill of its output inside its kernels (the accumulators start as zeros)
    when the fill is beside the op; the fill is then done, takes no actions, and the env skips
    it.  With a kc block the fill moves only into R's forall and is scheduled as usual; after
    a TP or a T it stays where it is."""
    cfg = ActionConfig(vector_width=16, register_kc=(0, 8, 16, 32))
    p = programs["matmul"]  # operation_0: the fill of the 24x40 output; operation_1: the matmul
    ps = ProgramState(p, cfg)
    assert ps.current.init_fill == "operation_0"
    assert R(6, 16, 4).fill_fusion(ps.current) == (True, True)
    ps.step(R(6, 16, 4))
    fill = ps.states["operation_0"]
    assert ps.done and fill.ended and fill.fused_into == "operation_1" and not fill.actions
    assert str(ps.schedule()) == "operation_0: NT; operation_1: R(6,16,4)"
    script = build_script(p, ps.schedule()).text
    assert "fuse_into_containing_op" in script and "transform.structured.fuse %" in script
    with pytest.raises(ScheduleError, match="fused into the register tile"):
        ProgramState.replay(p, Schedule.parse("operation_1: R(6,16,4); operation_0: V"), cfg)
    # With kc the fill must be done before the first block: only into the forall (6 of 24 rows).
    ps = ProgramState(p, cfg)
    assert R(6, 16, 4, 8).fill_fusion(ps.current) == (True, False)
    ps.step(R(6, 16, 4, 8))
    fill = ps.states["operation_0"]
    assert not ps.done and ps.current is fill and fill.parallel and fill.pieces == ((6, 40),)
    # A TF that fused the fill keeps it beside the op; a TP or a T leaves it outside.
    for first, fused in ((TF((12, 0, 0)), (False, True)), (TP((12, 0, 0)), (False, False)),
                         (T((0, 20, 0)), (False, False))):
        ps = ProgramState(p, cfg)
        ps.step(first)
        assert R(6, 16, 4).fill_fusion(ps.current) == fused, first
    # Judged on the state: a tiling that splits nothing (dropped from the schedule's text) changes
    # nothing; a TF that fused nothing before a TP does not bring the fill in.
    ps = ProgramState(p, cfg)
    ps.step(T((0, 0, 0)))
    assert R(6, 16, 4).fill_fusion(ps.current) == (True, True)
    ps = ProgramState(p, cfg)
    ps.step(TF((24, 0, 0)))
    ps.step(TP((12, 0, 0)))
    assert R(6, 16, 4).fill_fusion(ps.current) == (False, False)
    # Without a forall (no loop makes two chunks) `structured.fuse` would take in the producers
    # of the inputs as well: no fusion.
    tiny = ProgramState(Program.from_text(MATMUL.replace("24x", "4x").replace("x40", "x16"), "tiny.mlir"), cfg)
    assert R(4, 16, 1).parallel(tiny.current) is None and R(4, 16, 1).fill_fusion(tiny.current) == (False, False)
    # An op a consumer's TF fused into its forall leaves its fill outside: scheduled as usual.
    ps = ProgramState(programs["conv"], cfg)
    ps.step(TF((1, 4, 0, 0)))
    ps.step(NT())
    assert ps.current.parallel and R(4, 16, 1).fill_fusion(ps.current) == (False, False)


def test_register_tile_threads_share_evenly():
    """R's forall takes the outermost parallel loop of at least 8 chunks, not a 3-row one that
    leaves a thread of two idle a third of the time (a conv with a 3x3 output, 128 filters)."""
    t_in, t_w, t_out = "tensor<1x5x5x32xf32>", "tensor<3x3x32x128xf32>", "tensor<1x3x3x128xf32>"
    p = Program.from_text(f"""func.func @c(%i: {t_in}, %w: {t_w}) -> {t_out} {{
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : {t_out}
  %f = linalg.fill ins(%z : f32) outs(%e : {t_out}) -> {t_out}
  %r = linalg.conv_2d_nhwc_hwcf {{dilations = dense<1> : tensor<2xi64>, strides = dense<1> : tensor<2xi64>}}
         ins(%i, %w : {t_in}, {t_w}) outs(%f : {t_out}) -> {t_out}
  return %r : {t_out}
}}""", "small_conv.mlir")
    cfg = ActionConfig(vector_width=16)
    ps = ProgramState(p, cfg)
    while ps.current.op.name != "linalg.conv_2d_nhwc_hwcf":
        ps.step(NT())
    s = ps.current  # loops (n, oh, ow, f, kh, kw, c) = (1, 3, 3, 128, 3, 3, 32)
    assert R(2, 16, 1).parallel(s).sizes == (0, 0, 0, 16, 0, 0, 0)  # f in 8 chunks, not oh in 3
    # With 64 columns no loop makes 8 chunks (f: 2, oh: 3, ow: 1 of 2 rows): the most chunks wins.
    assert R(2, 64, 1).parallel(s).sizes == (0, 1, 0, 0, 0, 0, 0)
    # Chunks hold whole kernels: 768 columns of 32-wide kernels in 12 chunks of 64, not 16 of
    # 48 (one kernel and a 16-wide remainder each); rows of 6 cannot divide 32: 4 chunks of 8.
    mm = ProgramState(Program.from_text(MATMUL.replace("24x", "32x").replace("x40", "x768"), "skinny.mlir"),
                      cfg).current  # 32 x 768, k = 32
    assert R(8, 32, 1).parallel(mm).sizes == (0, 64, 0) and R(8, 48, 1).parallel(mm).sizes == (0, 48, 0)
    assert R(6, 32, 1).parallel(mm).sizes == (0, 64, 0)
