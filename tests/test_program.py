"""The program model, bad input, and exact feature vectors."""
import math
import subprocess
import sys

import numpy as np
import pytest

from envs.mlir import ACTIONS, NT, FeatureLayout, MlirInputError, Program, ProgramState, Schedule, T
from envs.mlir.program import OP_TYPES

from conftest import CONV, MATMUL

BAD_INPUTS = {
    "syntax": (b"func.func @f(%a: tensor<4xf32>) -> tensor<4xf32> {\n  %x = linalg.foo %a\n"
               b"  return %a : tensor<4xf32>\n}\n", 2, "syntax error"),
    "dynamic": (b"func.func @f(%a: tensor<?xf32>) -> tensor<?xf32> {\n  return %a : tensor<?xf32>\n}\n",
                1, "dynamic shape"),
    "two_public": (b"func.func @f(%a: tensor<4xf32>) -> tensor<4xf32> {\n  return %a : tensor<4xf32>\n}\n"
                   b"func.func @g(%a: tensor<4xf32>) -> tensor<4xf32> {\n  return %a : tensor<4xf32>\n}\n",
                   4, "exactly one public function"),
    "no_linalg": (b"func.func @f(%a: tensor<4xf32>) -> tensor<4xf32> {\n  return %a : tensor<4xf32>\n}\n",
                  1, "no Linalg op"),
    "binary": (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00", None, "binary file"),
    "unsupported": (b"func.func @f(%a: tensor<4xf32>) -> tensor<4xf32> {\n  %c = arith.constant 1 : index\n"
                    b"  %b = scf.for %i = %c to %c step %c iter_args(%x = %a) -> tensor<4xf32> {\n"
                    b"    scf.yield %x : tensor<4xf32>\n  }\n  return %b : tensor<4xf32>\n}\n",
                    3, "unsupported op scf.for"),
}


def test_ops_tagged_in_order_with_loops_and_edges():
    p = Program.from_text(CONV, "conv.mlir")
    assert p.tags == ("operation_0", "operation_1", "operation_2")
    fill, conv, relu = p.ops
    assert (fill.name, fill.op_type, fill.bounds) == ("linalg.fill", "fill", (1, 8, 8, 16))
    assert conv.op_type == "conv" and conv.bounds == (1, 8, 8, 16, 3, 3, 8)
    assert conv.iterator_types == ("parallel",) * 4 + ("reduction",) * 3
    assert relu.op_type == "elementwise" and relu.producers == ("operation_1",)
    assert conv.producers == ("operation_0",) and fill.consumers == ("operation_1",)
    assert conv.operand_producers == (None, None, "operation_0")
    # + - * / exp max other
    assert conv.arith == (1, 0, 1, 0, 0, 0, 0) and relu.arith == (1, 0, 0, 0, 0, 1, 0)
    assert [o.tag for o in p.schedule_order()] == ["operation_2", "operation_1", "operation_0"]
    assert 'tag = "operation_1"' in p.text
    # The hash names the program text: same text, same hash; another program, another.
    assert Program.from_text(CONV, "x").hash == p.hash != Program.from_text(MATMUL, "x").hash


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_file_line_and_reason(case):
    data, line, reason = BAD_INPUTS[case]
    with pytest.raises(MlirInputError) as e:
        Program.from_bytes(data, f"{case}.mlir")
    msg = str(e.value)
    assert "\n" not in msg and reason in msg
    assert msg.startswith(f"{case}.mlir:{line}: " if line else f"{case}.mlir: ")
    assert e.value.line == line


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    f = tmp_path / "broken.mlir"
    f.write_bytes(BAD_INPUTS["syntax"][0])
    r = subprocess.run([sys.executable, "-m", "envs.mlir", str(f), "--no-cache"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {f}:2: MLIR syntax error: custom op 'linalg.foo' is unknown"]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MlirInputError, match="cannot read"):
        Program.from_file(str(tmp_path / "nope.mlir"))


def _expected_op_features(layout, op_type, bounds, iters, loads, store, arith):
    v = np.zeros(layout.op_size, np.float32)
    fc = layout.fc
    v[layout.slices["op_type"].start + OP_TYPES.index(op_type)] = 1
    for i, (b, t) in enumerate(zip(bounds, iters)):
        v[layout.slices["upper_bounds"].start + i] = math.log2(b) / math.log2(fc.max_bound)
        v[layout.slices["iterator_types"].start + i] = t
    L, D = fc.max_loops, fc.max_access_dims
    for k, m in enumerate(loads):
        for r, row in enumerate(m):
            for d, c in enumerate(row):
                v[layout.slices["load_access"].start + (k * D + r) * L + d] = c
    for r, row in enumerate(store):
        for d, c in enumerate(row):
            v[layout.slices["store_access"].start + r * L + d] = c
    v[layout.slices["arith"]] = arith
    return v


def test_exact_op_features_matmul_and_producer():
    p = Program.from_text(MATMUL, "mm.mlir")
    lay = FeatureLayout()
    assert lay.op_size == 7 + 12 + 12 + 7 * 12 * 12 + 12 * 12 + 7
    ps = ProgramState(p)
    s = ps.current  # the matmul (last op first)
    assert s.op.tag == "operation_1"
    # loops (i, j, k) = (24, 40, 32); A[i,k], B[k,j] -> C[i,j]; one + and one *.
    want = _expected_op_features(lay, "matmul", (24, 40, 32), (0, 0, 1),
                                 [((1, 0, 0), (0, 0, 1)), ((0, 0, 1), (0, 1, 0))], ((1, 0, 0), (0, 1, 0)),
                                 (1, 0, 1, 0, 0, 0, 0))
    np.testing.assert_array_equal(lay.op_features(s), want)
    fill = _expected_op_features(lay, "fill", (24, 40), (0, 0), [], ((1, 0), (0, 1)), (0,) * 7)
    np.testing.assert_array_equal(lay.producer_features(ps, s), fill)
    # After a tiling, the features describe the tile the next action will see.
    ps.step(T((8, 0, 16)))
    tiled = _expected_op_features(lay, "matmul", (8, 40, 16), (0, 0, 1),
                                  [((1, 0, 0), (0, 0, 1)), ((0, 0, 1), (0, 1, 0))], ((1, 0, 0), (0, 1, 0)),
                                  (1, 0, 1, 0, 0, 0, 0))
    np.testing.assert_array_equal(lay.op_features(ps.current), tiled)
    h = lay.action_history(ps.current)
    blocks = lay.history_blocks  # tile sizes (12), interchange positions (12), unroll factor (1), ...
    assert blocks["tile"] == slice(len(ACTIONS), len(ACTIONS) + 12) and blocks["interchange"].stop - \
        blocks["interchange"].start == 12 and blocks["unroll"].stop - blocks["unroll"].start == 1
    assert h.shape == (lay.history_size,) and lay.history_size == 6 * (len(ACTIONS) + sum(
        b.stop - b.start for b in blocks.values()))
    assert h[ACTIONS.index(T)] == 1 and h[:len(ACTIONS)].sum() == 1
    tile = blocks["tile"].start
    assert h[tile] == pytest.approx(math.log2(9) / math.log2(65))
    assert h[tile + 1] == 0 and h[tile + 2] == pytest.approx(math.log2(17) / math.log2(65))
    assert not h[lay.step_size:].any()


def test_exact_op_features_conv():
    p = Program.from_text(CONV, "conv.mlir")
    lay = FeatureLayout()
    ps = ProgramState(p)
    ps.step(NT())  # the relu
    s = ps.current
    assert s.op.tag == "operation_1"
    # loops (n, oh, ow, f, kh, kw, c) = (1, 8, 8, 16, 3, 3, 8)
    inp = ((1, 0, 0, 0, 0, 0, 0), (0, 1, 0, 0, 1, 0, 0), (0, 0, 1, 0, 0, 1, 0), (0, 0, 0, 0, 0, 0, 1))
    flt = ((0, 0, 0, 0, 1, 0, 0), (0, 0, 0, 0, 0, 1, 0), (0, 0, 0, 0, 0, 0, 1), (0, 0, 0, 1, 0, 0, 0))
    out = ((1, 0, 0, 0, 0, 0, 0), (0, 1, 0, 0, 0, 0, 0), (0, 0, 1, 0, 0, 0, 0), (0, 0, 0, 1, 0, 0, 0))
    want = _expected_op_features(lay, "conv", (1, 8, 8, 16, 3, 3, 8), (0, 0, 0, 0, 1, 1, 1), [inp, flt], out,
                                 (1, 0, 1, 0, 0, 0, 0))
    np.testing.assert_array_equal(lay.op_features(s), want)


def test_op_too_large_for_layout_names_the_setting():
    from envs.mlir import FeatureConfig
    p = Program.from_text(CONV, "conv.mlir")
    lay = FeatureLayout(FeatureConfig(max_loops=6))
    ps = ProgramState(p)
    ps.step(NT())
    with pytest.raises(ValueError, match="raise max_loops"):
        lay.op_features(ps.current)


def test_torch_mlir_import_is_parsed_scheduled_and_correct(measurer):
    """A conv + batchnorm + relu block from PyTorch, through torch-mlir's FX importer:
    parsed as it is, scheduled, and computing what PyTorch computes."""
    import torch
    from torch_mlir import fx

    from envs.mlir.compile import make_inputs
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU()).eval()
    with torch.no_grad():
        block[1].running_mean.uniform_(-1, 1)
        block[1].running_var.uniform_(0.5, 2)
    mod = fx.export_and_import(block, torch.randn(1, 4, 8, 8), output_type="linalg-on-tensors")
    p = Program.from_text(str(mod), "block.mlir")
    assert "dense_resource" in p.text and p.ops[1].name == "linalg.conv_2d_nchw_fchw"
    # The untransformed program's result is PyTorch's result on the same seeded input.
    (x,) = make_inputs(p.inputs, measurer.cfg.seed)
    want = block(torch.from_numpy(x)).detach().numpy()
    base = measurer.baseline(p)
    assert base.ok
    np.testing.assert_allclose(measurer._reference(p)[0], want, rtol=1e-4, atol=1e-4)
    last = p.ops[-1].tag
    text = f"{last}: TF(1,4,0,0) T(1,1,1,8) V; operation_1: T(1,4,1,8,4,1,3) V"
    r = measurer.evaluate(p, Schedule.parse(text))
    assert r.measurement.status == "ok", r.measurement.message
    assert r.speedup > 0
