"""The machine's FMA peak, measured with MLIR-generated code: the ceiling that
GFLOP/s figures are a fraction of.

A loop of independent `vector.fma` chains (x = x * a + b from 0.5 towards 1,
never a fixed point that the compiler could fold away; `chains(width)` of the
host's widest f32 vector: enough to cover the FMA latency on every unit, few
enough that they and the two constants stay in the vector registers),
JIT-compiled at O3 like our programs, run on `threads` threads at once (one
call per thread: ctypes releases the GIL). FLOPs = 2 per lane per FMA.
"""
from __future__ import annotations

import ctypes
import threading
import time
from typing import Dict


def chains(width: int) -> int:
    """Independent FMA chains of the peak loop: 16 with AVX-512's 32 vector registers, 12 with
    the 16 of AVX2 (and SSE).  16 chains and a, b are 18 registers: with AVX2 the loop spilled
    two chains to the stack and ran at half the peak (AMD EPYC, AVX2 only: 88 GFLOP/s on 2
    cores with 16 chains, 183-189 with 8 to 14; our batch matmuls then measured 117-121% of
    "the peak").  Two FMA units of latency 4-5 need 8-10 chains in flight."""
    return 16 if width >= 16 else 12


def vector_width() -> int:
    """f32 lanes of the widest vector unit the host has (AVX-512: 16, AVX2: 8, else 4)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 4


def _kernel(width: int) -> str:
    v, n = f"vector<{width}xf32>", chains(width)
    names = [f"%x{i}" for i in range(n)]
    body = "\n".join(f"      %y{i} = vector.fma %x{i}, %a, %b : {v}" for i in range(n))
    sums = [f"%r#{i}" for i in range(n)]
    adds, acc = [], sums[0]
    for i, s in enumerate(sums[1:]):
        adds.append(f"    %s{i} = arith.addf {acc}, {s} : {v}")
        acc = f"%s{i}"
    return f"""
func.func @fma_loop(%n: index) -> f32 attributes {{llvm.emit_c_interface}} {{
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %a = arith.constant dense<0.99> : {v}
  %b = arith.constant dense<0.01> : {v}
  %one = arith.constant dense<0.5> : {v}
  %r:{n} = scf.for %i = %c0 to %n step %c1 iter_args({", ".join(f"{x} = %one" for x in names)}) -> ({", ".join([v] * n)}) {{
{body}
      scf.yield {", ".join(f"%y{i}" for i in range(n))} : {", ".join([v] * n)}
  }}
{chr(10).join(adds)}
  %sum = vector.reduction <add>, {acc} : {v} into f32
  return %sum : f32
}}
"""


def fma_peak(threads: int, seconds: float = 0.3, rounds: int = 5) -> Dict[str, float]:
    """GFLOP/s of FMAs on `threads` threads (the median of `rounds`), and the vector width used."""
    from torch_mlir import ir, passmanager
    from torch_mlir.execution_engine import ExecutionEngine
    width = vector_width()
    with ir.Context(), ir.Location.unknown():
        module = ir.Module.parse(_kernel(width))
        passmanager.PassManager.parse(
            "builtin.module(convert-scf-to-cf,convert-vector-to-llvm,convert-arith-to-llvm,convert-func-to-llvm,"
            "convert-cf-to-llvm,reconcile-unrealized-casts)").run(module.operation)
        engine = ExecutionEngine(module, opt_level=3)

    def call(n: int) -> None:
        arg, res = ctypes.c_int64(n), ctypes.c_float()
        engine.invoke("fma_loop", ctypes.pointer(arg), ctypes.pointer(res))

    call(1000)
    n = 1000
    while True:  # iterations that take about `seconds` on one thread
        t = time.perf_counter()
        call(n)
        dt = time.perf_counter() - t
        if dt > seconds / 4:
            n = int(n * seconds / dt)
            break
        n *= 4
    rates = []
    for _ in range(rounds):
        workers = [threading.Thread(target=call, args=(n,)) for _ in range(threads)]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates.append(threads * n * chains(width) * width * 2 / (time.perf_counter() - t) / 1e9)
    rates.sort()
    return {"gflops": rates[len(rates) // 2], "threads": threads, "vector_width": width}
