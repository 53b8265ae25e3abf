"""Speed of the code and of the layer (a benchmark, not a test).

For each op family: the untransformed program, our best hand-written schedule
in the action language, and PyTorch's own op, all with the same thread count;
each figure is the median over rounds of per-round medians. PyTorch is timed
in a process of its own, before and after ours (the faster counts): timed in
this process right after our OpenMP code, small ops ran up to 100x slower.
Then the worker pool: compile seconds per schedule and measurements per
second, cold (compiling) and warm (cache hits).

    python bench/schedules.py                # all cases, 2 threads (default: CPUs available)
    python bench/schedules.py --rounds 5 --only matmul_256
Writes bench/results/schedules.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from envs import ActionLayout  # noqa: E402
from envs.mlir import ActionConfig, FeatureConfig, MeasureConfig, Measurer, Program, ProgramState, Schedule  # noqa: E402
from envs.mlir.config import available_cpus  # noqa: E402
from envs.mlir.timing import sample_times, timed  # noqa: E402


def _matmul(n):
    t = f"tensor<{n}x{n}xf32>"
    return f"""func.func @mm(%a: {t}, %b: {t}) -> {t} {{
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : {t}
  %f = linalg.fill ins(%z : f32) outs(%e : {t}) -> {t}
  %r = linalg.matmul ins(%a, %b : {t}, {t}) outs(%f : {t}) -> {t}
  return %r : {t}
}}"""


def _bmm(b, m, k, n):
    ta, tb, tc = f"tensor<{b}x{m}x{k}xf32>", f"tensor<{b}x{k}x{n}xf32>", f"tensor<{b}x{m}x{n}xf32>"
    return f"""func.func @bmm(%a: {ta}, %b: {tb}) -> {tc} {{
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : {tc}
  %f = linalg.fill ins(%z : f32) outs(%e : {tc}) -> {tc}
  %r = linalg.batch_matmul ins(%a, %b : {ta}, {tb}) outs(%f : {tc}) -> {tc}
  return %r : {tc}
}}"""


def _conv(h, c, f):
    ti, tw, to = f"tensor<1x{h + 2}x{h + 2}x{c}xf32>", f"tensor<3x3x{c}x{f}xf32>", f"tensor<1x{h}x{h}x{f}xf32>"
    return f"""func.func @conv(%i: {ti}, %w: {tw}) -> {to} {{
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : {to}
  %f = linalg.fill ins(%z : f32) outs(%e : {to}) -> {to}
  %r = linalg.conv_2d_nhwc_hwcf {{dilations = dense<1> : tensor<2xi64>, strides = dense<1> : tensor<2xi64>}}
         ins(%i, %w : {ti}, {tw}) outs(%f : {to}) -> {to}
  return %r : {to}
}}"""


def _pool(h, c):
    o = (h - 3) // 2 + 1
    ti, to = f"tensor<1x{h}x{h}x{c}xf32>", f"tensor<1x{o}x{o}x{c}xf32>"
    return f"""func.func @pool(%x: {ti}) -> {to} {{
  %ninf = arith.constant -3.4e38 : f32
  %w = tensor.empty() : tensor<3x3xf32>
  %e = tensor.empty() : {to}
  %f = linalg.fill ins(%ninf : f32) outs(%e : {to}) -> {to}
  %r = linalg.pooling_nhwc_max {{dilations = dense<1> : tensor<2xi64>, strides = dense<2> : tensor<2xi64>}}
         ins(%x, %w : {ti}, tensor<3x3xf32>) outs(%f : {to}) -> {to}
  return %r : {to}
}}"""


def _add_relu(m, n):
    t = f"tensor<{m}x{n}xf32>"
    return f"""func.func @add_relu(%a: {t}, %b: {t}) -> {t} {{
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : {t}
  %r = linalg.add ins(%a, %b : {t}, {t}) outs(%e : {t}) -> {t}
  %y = linalg.generic {{indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>],
                        iterator_types = ["parallel", "parallel"]}} ins(%r : {t}) outs(%e : {t}) {{
  ^bb0(%x: f32, %o: f32):
    %m = arith.maximumf %x, %z : f32
    linalg.yield %m : f32
  }} -> {t}
  return %y : {t}
}}"""


def _torch_cases():
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "matmul_256": (lambda a=r(256, 256), b=r(256, 256): torch.matmul(a, b)),
        "matmul_512": (lambda a=r(512, 512), b=r(512, 512): torch.matmul(a, b)),
        "bmm_bert": (lambda a=r(12, 128, 64), b=r(12, 64, 128): torch.bmm(a, b)),
        "conv3x3_28": (lambda x=r(1, 64, 30, 30).contiguous(memory_format=torch.channels_last),
                       w=r(64, 64, 3, 3).contiguous(memory_format=torch.channels_last): F.conv2d(x, w)),
        "maxpool_57": (lambda x=r(1, 64, 57, 57).contiguous(memory_format=torch.channels_last):
                       F.max_pool2d(x, 3, 2)),
        "add_relu": (lambda a=r(512, 1024), b=r(512, 1024): torch.relu(a + b)),
    }


# name: (program text, FLOPs, best hand-written schedule).  Each is a schedule the agent can
# sample with the default action space (a test walks them through the env's masks): threads
# (TP/TF) over the rows, then R's register tile (14 or 6 rows x 2 or 4 vectors of 16), which
# computes the fill a TF fused (R.fill_fusion).
CASES = {
    "matmul_256": (_matmul(256), 2 * 256 ** 3,
                   "operation_0: TP(64,0) R(4,64,1); operation_1: TP(64,0,0) R(14,32,4)"),
    "matmul_512": (_matmul(512), 2 * 512 ** 3,
                   "operation_1: TF(64,0,0) R(14,32,4)"),
    "bmm_bert": (_bmm(12, 128, 64, 128), 2 * 12 * 128 * 64 * 128,
                 "operation_1: TF(2,0,0,0) R(6,64,2)"),
    "conv3x3_28": (_conv(28, 64, 64), 2 * 28 * 28 * 64 * 64 * 9,
                   "operation_1: TF(1,2,0,0,0,0,0) R(14,32,8)"),
    "maxpool_57": (_pool(57, 64), 28 * 28 * 64 * 9,
                   "operation_1: TF(1,2,0,0,0,0) R(4,64,1)"),
    "add_relu": (_add_relu(512, 1024), 2 * 512 * 1024,
                 "operation_1: TF(64,0) R(4,64,1); operation_0: R(4,64,1)"),
}


def _torch_time(fn, reps: int) -> float:
    """Timed as our worker times our code (`sample_times`, MeasureConfig's warm-up)."""
    c = MeasureConfig
    return statistics.median(sample_times(timed(fn), reps, c.warmup, c.warmup_s, c.min_sample_s))


def torch_times(names, rounds: int, reps: int, threads: int) -> dict:
    """PyTorch's median seconds per case, in this process (what `--torch-times` runs alone)."""
    import torch
    torch.set_num_threads(threads)
    tcases = _torch_cases()
    return {n: statistics.median(_torch_time(tcases[n], reps) for _ in range(rounds)) for n in names}


def torch_times_apart(names, rounds: int, reps: int, threads: int) -> dict:
    """`torch_times` in a fresh process, so that nothing of ours runs beside PyTorch."""
    import subprocess
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-times", "--only", *names,
                          "--rounds", str(rounds), "--reps", str(reps), "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_code(names, rounds: int, reps: int, threads: int) -> list:
    before = torch_times_apart(names, rounds, reps, threads)
    rows = []
    for name in names:
        text, flops, sched = CASES[name]
        prog = Program.from_text(text, f"{name}.mlir")
        schedule = Schedule.parse(sched)
        base_t, ours_t, compile_s = [], [], []
        # No cache: every round compiles and times afresh.
        with Measurer(MeasureConfig(threads=threads, repetitions=reps, run_timeout_s=300)) as m:
            for _ in range(rounds):
                b = m.baseline(prog)
                base_t.append(b.time_s)
                s = m.measure(prog, schedule)
                if not s.ok:
                    raise SystemExit(f"{name}: {s.status}: {s.message}")
                ours_t.append(s.time_s)
                compile_s.append(s.compile_s)
        bt, ot, tt = statistics.median(base_t), statistics.median(ours_t), before[name]
        rows.append({"case": name, "flops": flops, "schedule": str(schedule.for_program(prog)),
                     "baseline_s": bt, "ours_s": ot, "torch_s": tt, "baseline_gflops": flops / bt / 1e9,
                     "ours_gflops": flops / ot / 1e9, "torch_gflops": flops / tt / 1e9,
                     "ours_vs_torch": tt / ot, "speedup_vs_baseline": bt / ot,
                     "compile_s": statistics.median(compile_s)})
        r = rows[-1]
        print(f"  {name:<11} base {r['baseline_gflops']:7.2f}  ours {r['ours_gflops']:7.1f}  "
              f"torch {r['torch_gflops']:7.1f} GFLOP/s  ours/torch {r['ours_vs_torch']:.2f}", flush=True)
    after = torch_times_apart(names, rounds, reps, threads)  # our workers gone: PyTorch once more
    for r in rows:
        if after[r["case"]] < r["torch_s"]:
            tt = after[r["case"]]
            r.update(torch_s=tt, torch_gflops=r["flops"] / tt / 1e9, ours_vs_torch=tt / r["ours_s"])
    return rows


def bench_pool(threads: int, n: int) -> dict:
    """Measurements per second of the pool: distinct random valid schedules of a small
    matmul, cold (each compiled and run), then the same again warm (cache hits)."""
    prog = Program.from_text(_matmul(64), "matmul_64.mlir")
    cfg = ActionConfig(tile_sizes=(2, 4, 8, 16, 32))
    layout = ActionLayout(FeatureConfig(), cfg)
    rng = np.random.default_rng(0)
    schedules = {}
    while len(schedules) < n:
        ps = ProgramState(prog, cfg)
        while not ps.done:
            for a in layout.sample_actions(ps, rng):
                ps.step(a)
        schedules[str(ps.schedule())] = ps.schedule()
    with tempfile.TemporaryDirectory() as d:
        with Measurer(MeasureConfig(threads=threads, repetitions=3, cache_dir=d)) as m:
            m.baseline(prog)  # worker start-up and reference, not counted
            t = time.perf_counter()
            cold = [m.measure(prog, s) for s in schedules.values()]
            cold_s = time.perf_counter() - t
            t = time.perf_counter()
            warm = [m.measure(prog, s) for s in schedules.values()]
            warm_s = time.perf_counter() - t
    ok = [x for x in cold if x.ok]
    return {"schedules": n, "ok": len(ok), "cold_per_s": n / cold_s, "warm_per_s": n / warm_s,
            "compile_s_median": statistics.median(x.compile_s for x in ok) if ok else None,
            "warm_all_hits": all(x.cache_hit for x in warm)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=available_cpus())
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per case")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per round (median)")
    ap.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to run (default: all)")
    ap.add_argument("--pool-schedules", type=int, default=24)
    ap.add_argument("--torch-times", action="store_true", help=argparse.SUPPRESS)  # internal: PyTorch alone
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "schedules.json"))
    args = ap.parse_args()
    if args.torch_times:
        print(json.dumps(torch_times(args.only or list(CASES), args.rounds, args.reps, args.threads)))
        return
    print(f"code speed, {args.threads} thread(s), {args.rounds} rounds of {args.reps} runs (PyTorch in a process of its own):")
    rows = bench_code(args.only or list(CASES), args.rounds, args.reps, args.threads)
    print("worker pool throughput:")
    pool = bench_pool(args.threads, args.pool_schedules)
    result = {"threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": rows, "pool": pool}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)

    print()
    hdr = f"{'case':<11} {'baseline':>9} {'ours':>8} {'torch':>8}  {'ours/torch':>10} {'x baseline':>10} {'compile':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['case']:<11} {r['baseline_gflops']:9.2f} {r['ours_gflops']:8.1f} {r['torch_gflops']:8.1f}  "
              f"{r['ours_vs_torch']:10.2f} {r['speedup_vs_baseline']:10.1f} {r['compile_s']:7.2f}s")
    print("(GFLOP/s; ours/torch > 1 means faster than PyTorch)")
    print(f"pool: {pool['schedules']} distinct schedules, {pool['ok']} ok; cold {pool['cold_per_s']:.1f} "
          f"measurements/s (median compile {pool['compile_s_median']:.3f} s), warm {pool['warm_per_s']:.0f}/s "
          f"(all cache hits: {pool['warm_all_hits']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
