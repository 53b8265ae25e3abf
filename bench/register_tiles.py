"""Which register tiles pay on this machine (a benchmark, not a test).

On matmuls of the training split (never the eval split: this chooses R's register tiles):
every register tile R offers for the op on this host (`ActionConfig.register_tiles`, those
fitting the vector registers), each as `R(rows, columns, --unroll, --kc)` (a smaller unroll
where the reduction is shorter, no kc where it does not divide), measured through
the real worker (fresh compile, result checked, no cache) `--rounds` times, all variants in
turn each round; the median counts.  Tiles of 3 vectors are measured a second time with R's
split into native vectors turned off (`register.NATIVE_SPLIT`), to show what the split gains.
With `--forall`, instead, only the tiles whose forall (`R.parallel`) the older rule ("outermost":
the outermost loop of enough chunks) puts on another loop than today's ("least_data"), under
both rules (`register.FORALL_RULE`; the older labelled "outermost").

    python bench/register_tiles.py                  # four training matmuls, 5 rounds (~8 min)
    python bench/register_tiles.py --only vgg_16_fc7_batch_8 --rounds 3
    python bench/register_tiles.py --forall --only <programs>   # the two forall rules
Writes bench/results/register_tiles.json, prints a table (us, % of the FMA peak, time over the
program's best tile) and draws bench/results/register_tiles.png.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=MATMULS, help="training programs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--unroll", type=int, default=4)
    ap.add_argument("--kc", type=int, default=256, help="R's reduction block (0: none)")
    ap.add_argument("--forall", action="store_true",
                    help="instead: only the tiles whose forall the two rules differ on, under both")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "register_tiles.json"))
    args = ap.parse_args()
    from envs.mlir import ActionConfig, MeasureConfig, Measurer, Program, ProgramState, Schedule
    from envs.mlir.actions import register
    from envs.mlir.actions.register import R, split_vectors
    from envs.mlir.peak import fma_peak
    from envs.suites import load_suite, suite_path
    rows = {b.name: b for b in load_suite(suite_path("train"))}
    unknown = [n for n in args.only if n not in rows]
    if unknown:
        raise SystemExit(f"not in the training split: {', '.join(unknown)}")
    cfg = ActionConfig()
    w = cfg.register_width
    peak = fma_peak(args.threads)["gflops"]
    rule = register.FORALL_RULE  # today's; the bench's changes to the module's knobs are undone after each use
    cases = []  # (program name, label, program, schedule, split on, forall rule)
    flops = {}  # the contraction's (the fill's are few)
    for name in args.only:
        program = Program.from_text(rows[name].mlir, name)
        ps = ProgramState(program, cfg)
        s = next((st for st in ps.states.values() if R.available(st, cfg) is None and R.geometry(st)[1] is not None
                  and R.block_loop(st) is not None), None)
        if s is None:
            raise SystemExit(f"{name}: no contraction with a register tile of several rows")
        flops[name] = s.op.flops
        for (rows_, vectors), ok in zip(cfg.register_tiles, R.shape_mask(s, cfg)):
            if not ok:
                continue
            k = R.kernel(cfg, rows_, vectors, s)
            kc = args.kc if R.kc_problem(s, args.kc) is None else 0
            # the largest unroll up to --unroll that the innermost reduction allows (a 3-wide window: 2)
            a = next((c for c in (R(k.rows, k.cols, u, kc) for u in sorted(R.unroll_choices(cfg), reverse=True)
                                  if u <= args.unroll) if c.check(s, cfg) is None), None)
            if a is None:
                continue
            sched = Schedule.parse(f"{s.op.tag}: {a}")
            label = f"{rows_}x{vectors}"
            if args.forall:  # only the tiles whose forall the two rules put on different loops
                today = a.parallel(s)
                register.FORALL_RULE = "outermost"
                try:
                    older = a.parallel(s)
                finally:
                    register.FORALL_RULE = rule
                if older is not None and older.sizes != today.sizes:
                    cases.append((name, label, program, sched, True, rule))
                    cases.append((name, label + " outermost", program, sched, True, "outermost"))
                continue
            cases.append((name, label, program, sched, True, rule))
            if split_vectors(vectors):
                cases.append((name, label + " unsplit", program, sched, False, rule))
    times = {(c[0], c[1]): [] for c in cases}
    t0 = time.perf_counter()
    with Measurer(MeasureConfig(threads=args.threads, cache_dir="")) as m:
        for r in range(args.rounds):
            for name, label, program, sched, split, case_rule in cases:
                register.NATIVE_SPLIT, register.FORALL_RULE = split, case_rule
                try:
                    res = m.measure(program, sched)
                finally:
                    register.NATIVE_SPLIT, register.FORALL_RULE = True, rule
                if not res.ok:
                    raise SystemExit(f"{name} {sched}: {res.status}: {res.message[:300]}")
                times[(name, label)].append(res.time_s)
            print(f"round {r + 1}/{args.rounds} ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = {"threads": args.threads, "fma_peak_gflops": peak, "unroll": args.unroll, "kc": args.kc,
           "rounds": args.rounds, "vector_width": w, "programs": {}}
    for name, label, program, sched, *_ in cases:
        t = statistics.median(times[(name, label)])
        out["programs"].setdefault(name, {"flops": flops[name], "tiles": {}})["tiles"][label] = {
            "schedule": str(sched), "time_s": t, "peak_fraction": flops[name] / t / 1e9 / peak,
            "times_s": times[(name, label)]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nFMA peak {peak:.0f} GFLOP/s, {args.threads} thread(s), vector<{w}xf32>; "
          f"R(rows, columns, {args.unroll}, {args.kc}) or the nearest valid; median of {args.rounds} rounds")
    for name, entry in out["programs"].items():
        best = min(v["time_s"] for v in entry["tiles"].values())
        print(f"\n{name}  ({entry['flops'] / 1e6:.0f} MFLOP)")
        for label, v in sorted(entry["tiles"].items(), key=lambda kv: kv[1]["time_s"]):
            print(f"  {label:<14} {v['time_s'] * 1e6:9.0f} us  {100 * v['peak_fraction']:5.1f}% of peak  "
                  f"x{v['time_s'] / best:.2f} of the best")
    plot(out, os.path.splitext(args.out)[0] + ".png")
    return 0


def plot(out, path):
    from plots import grouped_bars
    labels = sorted({lab for e in out["programs"].values() for lab in e["tiles"]},
                    key=lambda s: (tuple(int(x) for x in s.split()[0].split("x")), s))
    series = {name: [100 * e["tiles"][lab]["peak_fraction"] if lab in e["tiles"] else None for lab in labels]
              for name, e in out["programs"].items()}
    grouped_bars(path, labels, series, "% of the FMA peak",
                 f"R's register tiles (rows x vectors), {out['threads']} thread(s)", rotate=True)


if __name__ == "__main__":
    sys.exit(main())
