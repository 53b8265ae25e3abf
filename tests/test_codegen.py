"""Code generation details of the lowering: aligned buffers, software prefetch of strided kernel reads."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from envs.mlir import MeasureConfig, Measurer, Program, Schedule
from envs.mlir import compile as C
from envs.mlir.program import TensorType

from conftest import MATMUL

KERNEL = """
func.func @k(%a: memref<8x768xf32>, %b: memref<768xNxf32>, %c: memref<8x32xf32>) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c768 = arith.constant 768 : index
  %z = arith.constant 0.0 : f32
  %init = arith.constant dense<0.0> : vector<32xf32>
  %r = scf.for %k = %c0 to %c768 step %c1 iter_args(%acc = %init) -> (vector<32xf32>) {
    %sb = memref.subview %b[%k, 0] [1, 32] [1, 1] : memref<768xNxf32> to memref<1x32xf32, strided<[N, 1], offset: ?>>
    %vb = vector.transfer_read %sb[%c0, %c0], %z {in_bounds = [true]} : memref<1x32xf32, strided<[N, 1], offset: ?>>, vector<32xf32>
    %x = memref.load %a[%c0, %k] : memref<8x768xf32>
    %bx = vector.broadcast %x : f32 to vector<32xf32>
    %n = vector.fma %bx, %vb, %acc : vector<32xf32>
    scf.yield %n : vector<32xf32>
  }
  vector.transfer_write %r, %c[%c0, %c0] {in_bounds = [true]} : vector<32xf32>, memref<8x32xf32>
  return
}
"""


def _prefetches(row_floats: int) -> list:
    from torch_mlir import ir
    with ir.Context(), ir.Location.unknown():
        m = ir.Module.parse(KERNEL.replace("768xN", f"768x{row_floats}").replace("[N,", f"[{row_floats},"))
        C._prefetch_strided_reads(m, 16)
        assert m.operation.verify()
        return [line.strip() for line in str(m).splitlines() if "memref.prefetch" in line]


def test_kernel_reads_that_jump_rows_are_prefetched_one_per_cache_line():
    lines = _prefetches(768)  # B's rows 3 KB apart: beyond the hardware stride prefetcher
    assert len(lines) == 2 and all("read, locality<3>, data" in p for p in lines)  # 32 floats = 2 lines
    assert _prefetches(256) == []  # 1 KB apart: the hardware follows it, no prefetch


def test_prefetched_kernel_is_correct_and_ahead_stays_in_bounds():
    # a skinny matmul whose kernels read B 3 KB a row; the last 16 iterations prefetch the
    # clamped last row, so nothing is read outside B (the result is checked by the Measurer)
    text = """
func.func @mm(%a: tensor<16x768xf32>, %b: tensor<768x768xf32>) -> tensor<16x768xf32> {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<16x768xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<16x768xf32>) -> tensor<16x768xf32>
  %r = linalg.matmul ins(%a, %b : tensor<16x768xf32>, tensor<768x768xf32>) outs(%f : tensor<16x768xf32>) -> tensor<16x768xf32>
  return %r : tensor<16x768xf32>
}
"""
    p = Program.from_text(text)
    with Measurer(MeasureConfig(threads=2, repetitions=1)) as m:
        # 4 rows of 16 columns: a kernel that fits the registers with AVX2 (16) as with AVX-512 (32)
        for s in ("operation_1: R(4,16,4)", "operation_1: R(4,16,2,128)"):
            assert m.evaluate(p, Schedule.parse(s)).measurement.status == "ok", s


@pytest.mark.parametrize("shape", [(3, 5), (1000,), (7, 9, 11)])
def test_buffers_start_on_a_cache_line(shape):
    arrays = C.make_inputs([TensorType(tuple(shape), "f32")], seed=0)
    assert arrays[0].ctypes.data % C.ALIGN == 0 and arrays[0].shape == tuple(shape)
    assert arrays[0].flags.c_contiguous and np.isfinite(arrays[0]).all() and arrays[0].std() > 0.1
    out = C.aligned_empty(shape, np.float32)
    assert out.ctypes.data % C.ALIGN == 0 and out.dtype == np.float32


def test_interleave_bench_times_variants_and_checks_them(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mlir = tmp_path / "mm.mlir"
    mlir.write_text(MATMUL)
    out = tmp_path / "il.json"
    r = subprocess.run([sys.executable, "bench/interleave.py", str(mlir), "NT", "operation_1: R(8,8,1)@prefetch=0",
                        "operation_1: R(8,8,1)@offset=16", "--rounds", "2", "--threads", "1", "--out", str(out)],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [x["variant"] for x in rows] == ["NT", "operation_1: R(8,8,1)@prefetch=0", "operation_1: R(8,8,1)@offset=16"]
    assert all(x["correct"] and x["median_s"] > 0 for x in rows)
    bad = subprocess.run([sys.executable, "bench/interleave.py", str(mlir), "NT@fast=1"], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "bad setting 'fast=1'" in bad.stderr


def test_fma_peak_loop_keeps_its_chains_in_the_vector_registers():
    # 16 chains + the two constants spilled with AVX2's 16 registers: the "peak" came out at half
    # the machine's (our own kernels then measured 120% of it)
    from envs.mlir.peak import chains, fma_peak, vector_width
    for width, registers in ((16, 32), (8, 16), (4, 16)):
        assert 8 <= chains(width) and chains(width) + 2 <= registers, width
    r = fma_peak(1, seconds=0.05, rounds=1)
    assert r["vector_width"] == vector_width() and r["gflops"] > 0


def test_operand_layout_bench_prepacked_program_is_the_same_matmul(tmp_path):
    # bench/operand_layout.py's pre-packed program must compute A x B for B given in panels,
    # or its ceiling would be of another computation
    from bench.operand_layout import plain_matmul, prepacked_matmul
    m, k, n, w = 4, 24, 32, 8
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    outs = {}
    for name, text, args in (("plain", plain_matmul(m, k, n), [a, b]),
                             ("packed", prepacked_matmul(m, k, n, w),
                              [a, np.ascontiguousarray(b.reshape(k, n // w, w).transpose(1, 0, 2))])):
        p = Program.from_text(text)
        eng, ctx, _, _ = C.compile_program(p.text, p.func_name, p.inputs, p.outputs, None, False)
        ins = C.make_inputs(p.inputs, 0)
        for dst, src in zip(ins, args):
            dst[...] = src
        r = C.Runner(eng, ins, p.outputs)
        r.run()
        outs[name] = r.outs[0].reshape(m, n)
    np.testing.assert_allclose(outs["plain"], a @ b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outs["packed"], a @ b, rtol=1e-4, atol=1e-4)
    # and the bench runs end to end: the four layouts measured, each result checked by the worker;
    # N two panels of the 4x2 kernel wide at this machine's vector width (P packs a loop it splits)
    from envs.mlir import ActionConfig
    cols = 2 * ActionConfig().register_width
    shape = f"8x64x{2 * cols}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "ol.json"
    r = subprocess.run([sys.executable, "bench/operand_layout.py", "--only", "--shape", shape, "--tiles", "4x2",
                        "--kc", "0", "32", "--rounds", "1", "--threads", "1", "--out", str(out)],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    entry = json.loads(out.read_text())["matmuls"][shape]
    assert set(entry["best"]) == {"row-major", "packed", "packed-once", "pre-packed"}, r.stdout
    for layout in ("packed", "packed-once"):
        assert entry["layouts"][layout]["4x2 kc32"]["schedule"].endswith(f"P({cols}) R(4,{cols},4,32)")
    assert all(v["time_s"] > 0 for lay in entry["layouts"].values() for v in lay.values())


@pytest.mark.parametrize("marked", [True, False])
def test_a_weights_pack_runs_once_before_the_timed_calls(marked):
    """B marked {rl.weight}: P's pack of it leaves the timed call (envs/mlir/hoist.py) and runs
    once, when the Runner is made. Shown by behaviour: B's buffer overwritten after that leaves
    the results of later calls as they were (they read the packed copy); unmarked, or with no
    pack of B in the schedule, every call reads B again."""
    from bench.operand_layout import plain_matmul
    from envs.mlir import ActionConfig
    from envs.mlir.transform import build_script
    w = ActionConfig().register_width
    m, k, n = 4, 16, 4 * w
    p = Program.from_text(plain_matmul(m, k, n, weight=marked), "matmul")
    op = next(o.tag for o in p.ops if o.name != "linalg.fill")
    for sched, hoisted in ((f"P({w}) R(4,{w},2,0)", marked), (f"R(4,{w},2,0)", False), ("", False)):
        script = build_script(p, Schedule.parse(f"{op}: {sched}" if sched else ""))
        eng, ctx, _, _ = C.compile_program(p.text, p.func_name, p.inputs, p.outputs, script and script.text, False)
        a, b = C.make_inputs(p.inputs, 0)
        r = C.Runner(eng, [a, b], p.outputs)
        r.run()
        np.testing.assert_allclose(r.outs[0], a @ b, rtol=1e-4, atol=1e-4)
        before = a @ b
        b[...] = 0
        r.run()
        expected = before if hoisted else np.zeros_like(before)
        np.testing.assert_allclose(r.outs[0], expected, rtol=1e-4, atol=1e-4, err_msg=f"{sched!r} marked={marked}")


def test_only_what_reads_weights_alone_is_hoisted():
    """An op on a weight and a non-weight input stays in the timed call; one on the weight alone
    (the transpose torch-mlir writes before a Linear's matmul) is prepared once; a fill of
    constants stays a fill."""
    from torch_mlir import ir
    from envs.mlir.hoist import PREPARE_FUNC, hoist_weight_layouts
    text = """func.func @f(%x: tensor<8x4xf32>, %w: tensor<4x8xf32> {rl.weight}) -> tensor<8x4xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x4xf32>
  %wt = linalg.transpose ins(%w : tensor<4x8xf32>) outs(%e : tensor<8x4xf32>) permutation = [1, 0]
  %e2 = tensor.empty() : tensor<8x4xf32>
  %z = linalg.fill ins(%zero : f32) outs(%e2 : tensor<8x4xf32>) -> tensor<8x4xf32>
  %s = linalg.add ins(%x, %wt : tensor<8x4xf32>, tensor<8x4xf32>) outs(%z : tensor<8x4xf32>) -> tensor<8x4xf32>
  return %s : tensor<8x4xf32>
}"""
    with ir.Context(), ir.Location.unknown():
        mod = ir.Module.parse(text)
        func = mod.body.operations[0]
        assert [str(t) for t in hoist_weight_layouts(mod, func)] == ["tensor<8x4xf32>"]
        assert mod.operation.verify()
        main, prep = (str(op) for op in mod.body.operations)
    assert PREPARE_FUNC in prep and "linalg.transpose" in prep and "linalg.add" not in prep
    assert "linalg.transpose" not in main and "linalg.fill" in main and "linalg.add" in main
    assert "%arg2: tensor<8x4xf32>" in main  # the prepared transpose, read by the add
    # compiled and run: the same sums as numpy's
    p = Program.from_text(text, "t")
    eng, ctx, _, _ = C.compile_program(p.text, p.func_name, p.inputs, p.outputs, None, False)
    x, wt = C.make_inputs(p.inputs, 1)
    r = C.Runner(eng, [x, wt], p.outputs)
    r.run()
    np.testing.assert_allclose(r.outs[0], x + wt.T, rtol=1e-6)
