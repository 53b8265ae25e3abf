"""Transform, lower and JIT one program; run it.  Runs inside a worker process.

The user's function is kept as it is: a generated ``@__rl_harness`` takes
inputs and outputs as memrefs, calls it, and writes each result into its
output buffer with ``bufferization.materialize_in_destination`` (a tensor
returned from a public function does not survive the JIT's C interface).
What the transformed function computes from its weights alone (hoist.py) is
computed by ``@__rl_prepare``, once per Runner, before any timed call.
"""
from __future__ import annotations

import ctypes
import glob
import os
import re
import sys
import sysconfig
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .hoist import PREPARE_FUNC, hoist_weight_layouts, weight_args
from .program import DTYPES, TensorType, tensor_type

HARNESS = "__rl_harness"
PREPARE = "__rl_prepare"
"""Runs once per compiled program, before any timed call: the weights' prepared copies (hoist.py)."""

CODEGEN_VERSION = 13
"""Part of the time cache's fingerprint: bump it whenever the code a given schedule
compiles to changes (this pipeline, the harness, the transform script's epilogue), or how
it is timed, so
that no cached time of older code is reused.  2: results computed in place into the
caller's buffers (`eliminate-empty-tensors`) instead of a fresh allocation and a copy,
and generic contractions made into vector.contract right after vectorization
(`ScriptBuilder.early_contractions`).  3: R as an op's first tiling puts its kernels in a
forall (threads) of its own (`R.parallel`).  4: R.parallel prefers a loop of at least 8
chunks (threads share evenly) over the outermost one.  5: R computes the fill of its output in
its forall and kernels (`R.fill_fusion`).  6: R's forall chunks hold whole kernels where they can.  7: no fill in R's kernels without a forall.  8: inputs and outputs in cache-line-aligned
buffers (`ALIGN`), and kernels' strided reads prefetched (`_prefetch_strided_reads`).  9: a worker's
OpenMP threads sleep 1 ms after a parallel region (worker.py: no spinning into the next
measurement of another process).  10: warm-up for `MeasureConfig.warmup_s` (20 ms) before the
timed samples, not one call (`timing.sample_times`).  11: R's kernels with a number of vectors that is not
a power of two split into native vectors (`R.emit_native_split`).  12: R's forall over the loop whose chunk
touches the fewest elements among those of enough chunks, not the outermost (`R.parallel`).  13: what a
program computes from its weights alone (``{rl.weight}`` arguments, tensor constants) is computed
once, before the timed calls (`hoist.py`): a transpose of an imported Linear's weight left the call."""


def pipeline(parallel: bool) -> Tuple[str, str]:
    """The one lowering pipeline: tensors -> bufferization -> loops -> LLVM.

    Two halves: between them `_copies_to_linalg` rewrites strided memref.copy
    (from tensor.pad and slices), whose lowering calls `memrefCopy`, a runtime
    function the wheel does not ship.  With `parallel`, scf.forall becomes
    OpenMP; `finalize-memref-to-llvm` must come before `convert-scf-to-cf`
    there, and `lower-affine` after `expand-strided-metadata` (which makes
    affine.apply)."""
    # eliminate-empty-tensors: after inlining, the program's result tensor.empty becomes
    # the harness's output buffer; otherwise every call mallocs the result, computes
    # into it and copies it out (a third of a memory-bound op's time).
    first = [
        "canonicalize", "cse", "inline", "eliminate-empty-tensors",
        "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map}",
    ]
    passes = ["buffer-deallocation-pipeline", "canonicalize"]
    if parallel:
        passes += ["scf-forall-to-parallel"]
    # full-unroll: n-D transfers become 1-D ones in place; otherwise they go through a
    # stack temporary allocated inside the loop, and a long loop overflows the stack.
    passes += ["convert-linalg-to-loops", "convert-vector-to-scf{full-unroll=true}", "lower-affine"]
    if parallel:
        passes += ["convert-scf-to-openmp"]
    # math ops LLVM has no intrinsic for (erf, from GELU) become libm calls; the vector
    # ops that unrolling them makes are lowered after.
    passes += ["expand-strided-metadata", "lower-affine", "finalize-memref-to-llvm", "convert-scf-to-cf",
               "convert-math-to-llvm", "convert-math-to-libm", "convert-vector-to-llvm"]
    if parallel:
        passes += ["convert-openmp-to-llvm"]
    passes += ["convert-arith-to-llvm", "convert-index-to-llvm", "convert-cf-to-llvm",
               "convert-func-to-llvm", "convert-ub-to-llvm", "reconcile-unrealized-casts"]
    return "builtin.module(" + ",".join(first) + ")", "builtin.module(" + ",".join(passes) + ")"


def _copies_to_linalg(module) -> None:
    """Rewrite each non-contiguous memref.copy as linalg.copy (lowered to loops)."""
    from torch_mlir import ir
    from torch_mlir.dialects import linalg
    copies = []

    def visit(op):
        if op.name == "memref.copy" and any("strided" in str(v.type) for v in op.operands):
            copies.append(op)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    for c in copies:
        with ir.InsertionPoint(c):
            linalg.copy(c.operands[0], outs=[c.operands[1]])
        c.erase()


PREFETCH_DISTANCE = 16
"""Iterations ahead a kernel's strided reads are prefetched (`_prefetch_strided_reads`; 0: none)."""
PREFETCH_MIN_STRIDE = 2048
"""Bytes a read must jump per iteration to be prefetched: Intel's stride prefetcher follows
strides below 2 KB (a 1 KB-stride kernel measured 3% slower with prefetches)."""


def _prefetch_strided_reads(module, distance: int) -> None:
    """Software prefetch for the strided operand of each vectorized kernel.

    In an innermost loop of FMAs (a register-tiled contraction's reduction loop), a read
    whose slice moves along an outer dimension each iteration (B's rows in C += A x B, a conv
    filter's input channels) jumps a whole row per step: 3 KB on a 768-wide matmul, beyond
    the stride the hardware prefetcher follows, and a new 4 KB page every step or two, so the
    iterations wait for memory.  Before each such read this adds `memref.prefetch` of the same
    slice `distance` iterations ahead (clamped to the loop's last iteration), one per cache line
    the vector covers.  A BLAS packs B instead, but packing on every call costs a pass over B.
    A C kernel of that shape (8x32, one core) went 83 -> 140 GFLOP/s with it."""
    from torch_mlir import ir
    from torch_mlir.dialects import arith, memref

    loops = []

    def visit(op):
        if op.name == "scf.for":
            loops.append(op)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    for loop in loops:
        body = loop.regions[0].blocks[0]
        ops = [o.operation for o in body.operations]
        if any(o.name == "scf.for" for o in ops) or not any(o.name == "vector.fma" for o in ops):
            continue
        iv = body.arguments[0]
        varying = {iv}  # values of the body that change with the induction variable
        for o in ops:
            if any(v in varying for v in o.operands):
                varying.update(o.results)
        ahead = None
        for rd in [o for o in ops if o.name == "vector.transfer_read"]:
            src = rd.operands[0]
            sv = src.owner
            if not isinstance(sv, (ir.Operation, ir.OpView)) or sv.name != "memref.subview" or src not in varying:
                continue
            sv, mtype = sv.operation, ir.MemRefType(src.type)
            if _moving_stride(sv, varying) * _bit_width(mtype.element_type) < 8 * PREFETCH_MIN_STRIDE:
                continue
            ip = ir.InsertionPoint(rd)
            with loop.location:
                if ahead is None:  # min(iv + distance, ub - step): the slice stays inside the operand
                    ahead = arith.minsi(arith.addi(iv, arith.constant(ir.IndexType.get(), distance, ip=ip), ip=ip),
                                        arith.subi(loop.operands[1], loop.operands[2], ip=ip), ip=ip)
                mapping = {iv: ahead}
                chain = _chain(sv, varying)
                for o in ops:  # the slice's chain from the induction variable, cloned at `ahead`
                    if o in chain:
                        c = o.clone(ip=ip)
                        for i, v in enumerate(c.operands):
                            if v in mapping:
                                c.operands[i] = mapping[v]
                        mapping.update(zip(o.results, c.results))
                idx = list(rd.operands[1:1 + mtype.rank])
                per_line = 512 // _bit_width(mtype.element_type)
                for j in range(0, ir.VectorType(rd.results[0].type).shape[-1], per_line):
                    last = idx[-1] if j == 0 else arith.addi(idx[-1], arith.constant(ir.IndexType.get(), j, ip=ip), ip=ip)
                    memref.prefetch(mapping[src], idx[:-1] + [last], False, 3, True, ip=ip)


def _bit_width(t) -> int:
    """Bits of a scalar MLIR type (f32 -> 32); 32 when not known."""
    from torch_mlir import ir
    for cls in (ir.FloatType, ir.IntegerType):
        try:
            return max(8, int(cls(t).width))
        except (ValueError, AttributeError):
            pass
    return 32


def _chain(op, varying) -> list:
    """`op` and the ops of its block it depends on whose results vary with the loop."""
    chain, frontier = [op], list(op.operands)
    while frontier:
        owner = frontier.pop().owner
        if hasattr(owner, "operation") and owner.operation.block == op.block and owner.operation not in chain \
                and any(r in varying for r in owner.operation.results):
            chain.append(owner.operation)
            frontier.extend(owner.operation.operands)
    return chain


def _moving_stride(subview, varying) -> int:
    """Elements the slice of `subview` moves per unit of a dynamic offset that changes with the
    loop, on a dimension other than the last (the largest such static stride; 0: none)."""
    from torch_mlir import ir
    dynamic = ir.ShapedType.get_dynamic_size()
    static = list(ir.DenseI64ArrayAttr(subview.attributes["static_offsets"]))
    dyn = iter(subview.operands[1:1 + sum(1 for x in static if x == dynamic)])
    moving = [d for d, x in enumerate(static) if x == dynamic and next(dyn) in varying]
    strides, _ = ir.MemRefType(subview.operands[0].type).get_strides_and_offset()
    return max([strides[d] for d in moving if d < len(static) - 1 and strides[d] != dynamic] or [0])


def find_openmp() -> Optional[str]:
    """libiomp5.so from the `intel-openmp` wheel (the MLIR wheel ships no OpenMP)."""
    env = os.environ.get("MLIR_RL_OPENMP_LIB")
    if env:
        return env
    dirs = [os.path.join(sys.prefix, "lib"), sysconfig.get_config_var("LIBDIR") or ""]
    dirs += glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", "*", "lib"))
    for d in dirs:
        p = os.path.join(d, "libiomp5.so")
        if d and os.path.exists(p):
            return p
    return None


class StageError(Exception):
    """A failure in one stage (transform / compile), with MLIR's message and
    location (`where`: the location text MLIR gave, e.g. ``loc("operation_1: V")``
    for a transform op, ``loc("-":38:10)`` for an op of the program)."""

    def __init__(self, stage: str, message: str, where: Optional[str] = None):
        super().__init__(message)
        self.stage, self.message, self.where = stage, message, where


def _harness_text(func_name: str, inputs: Sequence[TensorType], outputs: Sequence[TensorType],
                  weights: Sequence[int] = (), prepared: Sequence[TensorType] = ()) -> str:
    """`HARNESS` (inputs and outputs as memrefs, the call, the results written out) and `PREPARE`:
    the program's `prepared` values (hoist.py: what it computes from its `weights` inputs alone)
    written once into globals of their own, which every call of `HARNESS` then reads."""
    args = [f"%in{i}: {t.memref}" for i, t in enumerate(inputs)]
    args += [f"%out{i}: {t.memref}" for i, t in enumerate(outputs)]
    globals_ = [f'memref.global "private" @__rl_prepared{j} : {t.memref} = uninitialized {{alignment = {ALIGN} : i64}}'
                for j, t in enumerate(prepared)]
    body = [f"  %t{i} = bufferization.to_tensor %in{i} restrict : {t.memref} to {t.mlir}"
            for i, t in enumerate(inputs)]
    for j, t in enumerate(prepared):
        body.append(f"  %g{j} = memref.get_global @__rl_prepared{j} : {t.memref}")
        body.append(f"  %p{j} = bufferization.to_tensor %g{j} restrict : {t.memref} to {t.mlir}")
    many = len(outputs) > 1
    results = [f"%r#{i}" for i in range(len(outputs))] if many else ["%r"]
    rtypes = ", ".join(t.mlir for t in outputs)
    call_res = f"%r:{len(outputs)}" if many else "%r"
    operands = [f"%t{i}" for i in range(len(inputs))] + [f"%p{j}" for j in range(len(prepared))]
    types = [t.mlir for t in inputs] + [t.mlir for t in prepared]
    body.append(f"  {call_res} = func.call @{func_name}({', '.join(operands)}) : ({', '.join(types)}) -> ({rtypes})")
    for i, (t, r) in enumerate(zip(outputs, results)):
        body.append(f"  bufferization.materialize_in_destination {r} in restrict writable %out{i} : "
                    f"({t.mlir}, {t.memref}) -> ()")
    decls = [f"func.func private @{func_name}({', '.join(types)}) -> ({rtypes})"]
    prep = []
    if prepared:
        wtypes = [inputs[i].mlir for i in weights]
        decls.append(f"func.func private @{PREPARE_FUNC}({', '.join(wtypes)}) -> "
                     f"({', '.join(t.mlir for t in prepared)})")
        prep = [body[i] for i in weights]  # the weights' to_tensor, as the harness has them
        many_p = len(prepared) > 1
        prep.append(f"  %q{':' + str(len(prepared)) if many_p else ''} = func.call @{PREPARE_FUNC}("
                    f"{', '.join(f'%t{i}' for i in weights)}) : ({', '.join(wtypes)}) -> "
                    f"({', '.join(t.mlir for t in prepared)})")
        for j, t in enumerate(prepared):
            prep.append(f"  %g{j} = memref.get_global @__rl_prepared{j} : {t.memref}")
            prep.append(f"  bufferization.materialize_in_destination %q{'#' + str(j) if many_p else ''} in restrict "
                        f"writable %g{j} : ({t.mlir}, {t.memref}) -> ()")
    entry = f"({', '.join(args)}) attributes {{llvm.emit_c_interface}}"
    return "\n".join(globals_ + decls) + (
        f"\nfunc.func @{HARNESS}{entry} {{\n" + "\n".join(body) + "\n  return\n}\n"
        f"func.func @{PREPARE}{entry} {{\n" + "\n".join(prep) + ("\n" if prep else "") + "  return\n}\n")


def _collect(ctx):
    errors: List[Tuple[str, Optional[str]]] = []

    def handler(d):
        from torch_mlir import ir
        if d.severity == ir.DiagnosticSeverity.ERROR:
            msg = d.message + "".join(f" ({n.message})" for n in d.notes)
            errors.append((msg, str(d.location)))
        return True

    ctx.attach_diagnostic_handler(handler)
    return errors


def compile_program(program_text: str, func_name: str, inputs: Sequence[TensorType],
                    outputs: Sequence[TensorType], script: Optional[str], parallel: bool,
                    opt_level: int = 3, openmp_lib: Optional[str] = None):
    """Transform (if `script`), lower and JIT.

    Returns (engine, context, seconds in all, seconds of which in the transform).

    Raises StageError("transform" | "compile", message, script line)."""
    from torch_mlir import ir, passmanager
    from torch_mlir.dialects.transform import interpreter
    from torch_mlir.execution_engine import ExecutionEngine

    t0 = time.perf_counter()
    ctx = ir.Context()
    errors = _collect(ctx)
    with ctx, ir.Location.unknown():
        module = ir.Module.parse(program_text)
        t_transform = time.perf_counter()
        if script:
            try:
                tmod = ir.Module.parse(script)
            except ir.MLIRError as e:
                d = list(e.error_diagnostics)
                raise StageError("transform", f"invalid transform script: {d[0].message if d else e}",
                                 str(d[0].location) if d else None) from None
            named = [op for op in tmod.body.operations if op.operation.name == "transform.named_sequence"][0]
            try:
                interpreter.apply_named_sequence(module.operation, named, tmod)
            except Exception as e:  # the interpreter raises ValueError / MLIRError
                msg, where = errors[0] if errors else _interpreter_error(str(e))
                raise StageError("transform", msg, where) from None
            if errors:  # a transform can report an error and carry on
                raise StageError("transform", errors[0][0], errors[0][1])
        transform_s = time.perf_counter() - t_transform
        func = [op for op in module.body.operations if op.operation.name == "func.func"][0]
        try:
            prepared = [tensor_type(t) for t in hoist_weight_layouts(module, func)]
        except Exception as e:
            raise StageError("compile", f"preparing the weights once failed: {e}") from None
        func.operation.attributes["sym_visibility"] = ir.StringAttr.get("private")
        harness = ir.Module.parse(_harness_text(func_name, inputs, outputs, weight_args(func.operation), prepared))
        for op in list(harness.body.operations):  # all but the declarations of the functions called
            if op.operation.name != "func.func" or len(op.operation.regions[0].blocks):
                op.detach_from_parent()
                module.body.append(op)
        try:
            first, rest = pipeline(parallel)
            passmanager.PassManager.parse(first).run(module.operation)
            _copies_to_linalg(module)
            if PREFETCH_DISTANCE:
                _prefetch_strided_reads(module, PREFETCH_DISTANCE)
            passmanager.PassManager.parse(rest).run(module.operation)
        except Exception as e:
            msg = errors[0][0] if errors else str(e)
            raise StageError("compile", f"lowering failed: {msg}") from None
        libs = [openmp_lib] if (parallel and openmp_lib) else []
        if parallel and not openmp_lib:
            raise StageError("compile", "parallel code needs libiomp5.so (pip install intel-openmp) "
                                        "or MLIR_RL_OPENMP_LIB")
        try:
            engine = ExecutionEngine(module, opt_level=opt_level, shared_libs=libs)
            engine.lookup(HARNESS)  # materializes the code: missing symbols fail here, not in a run
        except Exception as e:
            raise StageError("compile", f"JIT failed: {errors[0][0] if errors else e}") from None
    return engine, ctx, time.perf_counter() - t0, transform_s


_DIAG_RE = re.compile(r'Diagnostic message at (loc\(.*?\)): (.*)')


def _interpreter_error(text: str) -> Tuple[str, Optional[str]]:
    """MLIR's message and location from the interpreter's exception text
    ("Failed to apply ...\nDiagnostic message at loc(...): MSG\n...")."""
    m = _DIAG_RE.search(text)
    if m:
        return m.group(2).strip(), m.group(1)
    return " ".join(text.split()), None


ALIGN = 64
"""Bytes every input and output buffer is aligned to: a cache line, as PyTorch's allocator does.
numpy's own buffers start 16 bytes into a line, so every 64-byte vector load of them straddles two
lines (an 8x32 matmul kernel measured 18% slower on them, AVX-512)."""


def aligned_empty(shape: Sequence[int], dtype, offset: int = 0) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts `offset` bytes past an `ALIGN`-byte
    boundary (0; bench/interleave.py measures others)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = np.empty(n + 2 * ALIGN, np.uint8)
    off = (-raw.ctypes.data) % ALIGN + offset % ALIGN
    return raw[off:off + n].view(dt).reshape(tuple(shape))


def make_inputs(inputs: Sequence[TensorType], seed: int, offset: int = 0) -> List[np.ndarray]:
    """Seeded random inputs (not zeros: a wrong loop bound must show in the result), in
    cache-line-aligned buffers (`ALIGN`)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in inputs:
        dt = np.dtype(DTYPES[t.dtype])
        if dt.kind == "f":
            a = rng.standard_normal(t.shape).astype(dt)
        elif dt.kind == "b":
            a = rng.random(t.shape) < 0.5
        else:
            a = rng.integers(-8, 8, size=t.shape).astype(dt)
        buf = aligned_empty(t.shape, dt, offset)
        buf[...] = a
        arrays.append(buf)
    return arrays


class Runner:
    """Calls the harness on prepared buffers; `run()` returns seconds."""

    def __init__(self, engine, inputs: Sequence[np.ndarray], outputs: Sequence[TensorType], offset: int = 0):
        from torch_mlir.runtime import get_ranked_memref_descriptor
        self.engine = engine
        self.outs = [aligned_empty(t.shape, DTYPES[t.dtype], offset) for t in outputs]
        for o in self.outs:
            o[...] = 0
        self._keep = list(inputs) + self.outs
        self.args = [ctypes.pointer(ctypes.pointer(get_ranked_memref_descriptor(a))) for a in self._keep]
        engine.invoke(PREPARE, *self.args)  # weights packed once, as when a model loads (hoist.py)

    def run(self) -> float:
        t = time.perf_counter()
        self.engine.invoke(HARNESS, *self.args)
        return time.perf_counter() - t


def compare(outs: Sequence[np.ndarray], refs: Sequence[np.ndarray], rtol: float, atol: float) -> Tuple[bool, float]:
    """(correct, max abs error): floats within rtol * max|ref| + atol, others exact."""
    worst, ok = 0.0, True
    for o, r in zip(outs, refs):
        if o.shape != r.shape:
            return False, float("inf")
        if o.dtype.kind == "f":
            if not np.all(np.isfinite(o) == np.isfinite(r)):
                return False, float("inf")
            fin = np.isfinite(r)
            err = float(np.max(np.abs(o[fin].astype(np.float64) - r[fin]), initial=0.0))
            scale = float(np.max(np.abs(r[fin]), initial=0.0))
            ok &= err <= rtol * scale + atol
        else:
            err = float(np.count_nonzero(o != r))
            ok &= err == 0
        worst = max(worst, err)
    return bool(ok), worst
