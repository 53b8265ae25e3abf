"""What the layout of B costs a skinny matmul (a benchmark, not a test).

C += A x B with few rows (a batch of 8 to 32 tokens or images times a weight matrix) reads
each element of B for only 2 x rows FLOPs, so how B is read bounds the kernel: row-major B
makes R's kernel jump a whole row of B (3-9 KB) every reduction step.  This measures, for the
same computation, the best of a small grid of R kernels over three layouts of B:

  row-major   the program as written (B is [K, N]): what R reaches today;
  packed      P(W) then R: the program packs B into panels of W columns on every call;
  packed-once the same schedule with B marked a weight (``{rl.weight}``): its pack runs once per
              compiled program, before the timed calls (envs/mlir/hoist.py);
  pre-packed  the program takes B already in panels, [N/W, K, W] (a generic built here, the
              output [M, N/W, W], the same memory as [M, N]): the ceiling if B came packed,
              as a constant weight packed once at compile time would.

The grid: R(rows, vectors x width, unroll, kc) for `--tiles` (rows x vectors, the panel width
W = the kernel's columns) and `--kc`, each kc only where it divides K.  Every variant goes
through the real worker (fresh compile, result checked against the untransformed program of
its own layout, no cache), `--rounds` rounds, all variants in turn; medians count.

    python bench/operand_layout.py                          # four training matmuls, ~10 min
    python bench/operand_layout.py --only bert_base_attention_q_k_v_projection --rounds 3
    python bench/operand_layout.py --shape 16x768x2304      # the four and any M x K x N matmul
    python bench/operand_layout.py --only --shape 16x768x2304   # that shape alone
Writes bench/results/operand_layout.json, prints a table (best time and % of the FMA peak per
layout) and draws bench/results/operand_layout.png.  Training programs by default: it measures
a ceiling, it chooses nothing; a shape of the eval split may be measured with --shape.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MATMULS = ["vgg_16_fc7_batch_8", "bert_base_ffn_output", "bert_base_attention_q_k_v_projection",
           "resnet_50_fc_batch_8"]
LAYOUTS = ("row-major", "packed", "packed-once", "pre-packed")


def plain_matmul(m: int, k: int, n: int, weight: bool = False) -> str:
    """C = A x B, B row-major [K, N]: the form of the suites' matmul rows; with `weight`, B is
    marked a weight (prepared once: envs/mlir/hoist.py)."""
    mark = " {rl.weight}" if weight else ""
    return f"""func.func @matmul(%a: tensor<{m}x{k}xf32>, %b: tensor<{k}x{n}xf32>{mark}) -> tensor<{m}x{n}xf32> {{
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<{m}x{n}xf32>
  %acc = linalg.fill ins(%zero : f32) outs(%e : tensor<{m}x{n}xf32>) -> tensor<{m}x{n}xf32>
  %r = linalg.matmul ins(%a, %b : tensor<{m}x{k}xf32>, tensor<{k}x{n}xf32>) outs(%acc : tensor<{m}x{n}xf32>) -> tensor<{m}x{n}xf32>
  return %r : tensor<{m}x{n}xf32>
}}
"""


def prepacked_matmul(m: int, k: int, n: int, w: int) -> str:
    """The same contraction with B given in panels of `w` columns, [N/w, K, w], each panel
    contiguous along the reduction (P's layout); the output [M, N/w, w]."""
    p = n // w
    a, b, c = f"tensor<{m}x{k}xf32>", f"tensor<{p}x{k}x{w}xf32>", f"tensor<{m}x{p}x{w}xf32>"
    return f"""#ma = affine_map<(m, p, j, k) -> (m, k)>
#mb = affine_map<(m, p, j, k) -> (p, k, j)>
#mc = affine_map<(m, p, j, k) -> (m, p, j)>
func.func @matmul(%a: {a}, %b: {b}) -> {c} {{
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : {c}
  %acc = linalg.fill ins(%zero : f32) outs(%e : {c}) -> {c}
  %r = linalg.generic {{indexing_maps = [#ma, #mb, #mc], iterator_types = ["parallel", "parallel", "parallel", "reduction"]}}
      ins(%a, %b : {a}, {b}) outs(%acc : {c}) {{
    ^bb0(%x: f32, %y: f32, %z: f32):
      %q = arith.mulf %x, %y : f32
      %s = arith.addf %z, %q : f32
      linalg.yield %s : f32
  }} -> {c}
  return %r : {c}
}}
"""


def parse_dims(text: str, flag: str, example: str):
    """Positive sizes written like `example` (e.g. 16x768x2304), or a one-line error naming `flag`."""
    want = example.count("x") + 1
    try:
        dims = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != want:
        raise SystemExit(f"{flag} {text!r}: expected {want} sizes joined by x, e.g. {example}")
    if min(dims) < 1:
        raise SystemExit(f"{flag} {text!r}: sizes must be positive")
    return dims


def variants(cfg, m: int, k: int, n: int, tiles, kcs, unroll: int, layouts=LAYOUTS):
    """(layout, label, Program, Schedule) of every grid point the env's checks accept."""
    from envs.mlir import Program, ProgramState, Schedule
    from envs.mlir.actions.register import R
    from envs.mlir.errors import ScheduleError
    w = cfg.register_width
    out = []
    for rows, vectors in tiles:
        cols = vectors * w
        if n % cols or rows > m:
            continue
        plain = Program.from_text(plain_matmul(m, k, n), "matmul")  # row-major and packed: one program
        programs = {"row-major": plain, "packed": plain,
                    "packed-once": Program.from_text(plain_matmul(m, k, n, weight=True), "matmul"),
                    "pre-packed": Program.from_text(prepacked_matmul(m, k, n, cols), "matmul_prepacked")}
        for kc in kcs:
            if kc and (kc >= k or k % kc):
                continue
            for layout in layouts:
                program = programs[layout]
                op = next(o.tag for o in program.ops if o.name != "linalg.fill")
                a = R(rows, cols, unroll, kc)
                sched = Schedule.parse(f"{op}: " + (f"P({cols}) {a}" if layout.startswith("packed") else str(a)))
                try:  # the env's own checks: a grid point R or P would refuse is left out
                    ProgramState.replay(program, sched, cfg)
                except ScheduleError as e:
                    print(f"  skipped {layout} {sched}: {str(e)[:120]}")
                    continue
                out.append((layout, f"{rows}x{vectors} kc{kc}", program, sched))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=MATMULS, help="training matmuls (default: four; none: only --shape)")
    ap.add_argument("--shape", nargs="*", default=[], help="extra M x K x N matmuls, e.g. 16x768x2304")
    ap.add_argument("--tiles", nargs="*", default=["6x2", "4x3", "4x2", "8x1"], help="rows x vectors")
    ap.add_argument("--kc", nargs="*", type=int, default=[0, 64, 256])
    ap.add_argument("--unroll", type=int, default=4)
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "operand_layout.json"))
    args = ap.parse_args()
    from envs.mlir import ActionConfig, MeasureConfig, Measurer, Program, ProgramState
    from envs.mlir.actions.register import R
    from envs.mlir.peak import fma_peak
    from envs.suites import load_suite, suite_path
    cfg = ActionConfig()
    tiles = [parse_dims(t, "--tiles", "6x2") for t in args.tiles]
    shapes = {}  # name -> (m, k, n)
    rows = {b.name: b for b in load_suite(suite_path("train"))}
    for name in args.only:
        if name not in rows:
            raise SystemExit(f"{name}: not in the training split (eval shapes go through --shape)")
        ps = ProgramState(Program.from_text(rows[name].mlir, name), cfg)
        s = next((st for st in ps.states.values() if st.op.name == "linalg.matmul"), None)
        if s is None:
            raise SystemExit(f"{name}: no linalg.matmul in the program")
        n, mrow = R.geometry(s)
        shapes[name] = (s.bounds[mrow], s.bounds[R.block_loop(s)], s.bounds[n])
    for text in args.shape:
        shape = parse_dims(text, "--shape", "16x768x2304")
        shapes["x".join(map(str, shape))] = shape
    if not shapes:
        raise SystemExit("nothing to measure: name training matmuls (--only) or shapes (--shape)")
    cases = []  # (name, layout, label, program, schedule)
    for name, (m, k, n) in shapes.items():
        found = variants(cfg, m, k, n, tiles, args.kc, args.unroll, args.layouts)
        if not found:
            raise SystemExit(f"{name} ({m}x{k}x{n}): no tile of {args.tiles} fits")
        cases += [(name, *v) for v in found]
    peak = fma_peak(args.threads)["gflops"]
    print(f"{len(cases)} variants of {len(shapes)} matmuls, {args.rounds} rounds; FMA peak {peak:.0f} GFLOP/s",
          flush=True)
    times = {(c[0], c[1], c[2]): [] for c in cases}
    t0 = time.perf_counter()
    with Measurer(MeasureConfig(threads=args.threads, cache_dir="")) as meas:
        for r in range(args.rounds):
            for name, layout, label, program, sched in cases:
                res = meas.measure(program, sched)
                if not res.ok:
                    raise SystemExit(f"{name} {layout} {sched}: {res.status}: {res.message[:300]}")
                times[(name, layout, label)].append(res.time_s)
            print(f"round {r + 1}/{args.rounds} ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = {"threads": args.threads, "fma_peak_gflops": peak, "rounds": args.rounds, "unroll": args.unroll,
           "vector_width": cfg.register_width, "matmuls": {}}
    for name, layout, label, program, sched in cases:
        m, k, n = shapes[name]
        t = statistics.median(times[(name, layout, label)])
        entry = out["matmuls"].setdefault(name, {"shape": [m, k, n], "flops": 2 * m * k * n, "layouts": {}})
        entry["layouts"].setdefault(layout, {})[label] = {
            "schedule": str(sched), "time_s": t, "peak_fraction": 2 * m * k * n / t / 1e9 / peak,
            "times_s": times[(name, layout, label)]}
    for entry in out["matmuls"].values():
        entry["best"] = {lay: min(v.values(), key=lambda x: x["time_s"]) for lay, v in entry["layouts"].items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nFMA peak {peak:.0f} GFLOP/s, {args.threads} thread(s); best of the grid per layout "
          f"(median of {args.rounds} rounds), % of the peak")
    print(f"{'matmul':<40} {'M x K x N':>15} " + " ".join(f"{lay:>22}" for lay in LAYOUTS))
    for name, entry in out["matmuls"].items():
        cells = []
        for lay in LAYOUTS:
            b = entry["best"].get(lay)
            cells.append(f"{b['time_s'] * 1e6:8.0f} us {100 * b['peak_fraction']:5.1f}%" if b else f"{'-':>22}")
        print(f"{name:<40} {'x'.join(map(str, entry['shape'])):>15} " + " ".join(f"{c:>22}" for c in cells))
        for lay in LAYOUTS:
            if lay in entry["best"]:
                print(f"  {lay:<11} best: {entry['best'][lay]['schedule']}")
    plot(out, os.path.splitext(args.out)[0] + ".png")
    return 0


def plot(out, path):
    from plots import grouped_bars
    names = list(out["matmuls"])
    series = {f"B {lay}": [100 * out["matmuls"][nm]["best"][lay]["peak_fraction"]
                           if lay in out["matmuls"][nm]["best"] else None for nm in names] for lay in LAYOUTS}
    shapes = ["x".join(map(str, out["matmuls"][nm]["shape"])) for nm in names]
    grouped_bars(path, [nm if nm == sh else f"{nm}\n{sh}" for nm, sh in zip(names, shapes)], series,
                 "% of the FMA peak (best of the grid)",
                 f"Skinny matmuls by the layout of B, {out['threads']} thread(s)", hline=60, fontsize=7)


if __name__ == "__main__":
    sys.exit(main())
