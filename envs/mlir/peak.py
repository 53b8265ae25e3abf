"""The machine's FMA peak, measured with MLIR-generated code: the ceiling that
GFLOP/s figures are a fraction of.

A loop of independent `vector.fma` chains (x = x * a + b from 0.5 towards 1,
never a fixed point that the compiler could fold away; 16 chains of the
host's widest f32 vector: enough to cover the FMA latency on every unit),
JIT-compiled at O3 like our programs, run on `threads` threads at once (one
call per thread: ctypes releases the GIL). FLOPs = 2 per lane per FMA.
"""
from __future__ import annotations

import ctypes
import threading
import time
from typing import Dict

CHAINS = 16


def vector_width() -> int:
    """f32 lanes of the widest vector unit the host has (AVX-512: 16, AVX2: 8, else 4)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 4


def _kernel(width: int) -> str:
    v = f"vector<{width}xf32>"
    names = [f"%x{i}" for i in range(CHAINS)]
    body = "\n".join(f"      %y{i} = vector.fma %x{i}, %a, %b : {v}" for i in range(CHAINS))
    sums = [f"%r#{i}" for i in range(CHAINS)]
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
  %r:{CHAINS} = scf.for %i = %c0 to %n step %c1 iter_args({", ".join(f"{x} = %one" for x in names)}) -> ({", ".join([v] * CHAINS)}) {{
{body}
      scf.yield {", ".join(f"%y{i}" for i in range(CHAINS))} : {", ".join([v] * CHAINS)}
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
        rates.append(threads * n * CHAINS * width * 2 / (time.perf_counter() - t) / 1e9)
    rates.sort()
    return {"gflops": rates[len(rates) // 2], "threads": threads, "vector_width": width}
