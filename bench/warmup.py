"""How long a freshly compiled program runs slow, and what warm-up the timing needs (a benchmark).

For each case (a training program and a schedule; never the eval split), compiled in this
process as a worker compiles it: (1) the ramp, every call's time over `--ramp-s` of
back-to-back calls, its steady time (the median of the ramp's second half) and how long
until five calls in a row come within 10% of it; (2) `envs.mlir.timing.sample_times` as the
worker runs it (5 samples) after each warm-up time of `--warmup-s`, each on a fresh compile,
as a ratio to the steady time (1.0: timed as it runs in steady state); the median of
`--rounds`, the warm-up times in turn in each round.

    python bench/warmup.py                  # 2 threads, the default cases
Writes bench/results/warmup.json and warmup.png (call time against time since compile).
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

CASES = [
    ("bert_base_attention_scores_q_kt", "operation_1: R(6,16,8)"),
    ("bert_base_attention_context_a_v", "operation_1: R(6,16,4,64)"),
    ("bert_base_attention_q_k_v_projection", "operation_1: R(6,16,4,64)"),
    ("vgg_16_fc7_batch_8", "operation_1: R(6,16,4,64)"),
    ("resnet_50_layer2_3x3_bias_relu", "operation_1: I2C R(6,16,4,64)"),
    ("mobilenetv2_block1_depthwise_3x3", "operation_1: R(4,16,2)"),
    ("bert_base_residual_add", "operation_0: R(8,8,1)"),
    ("resnet_18_layer2_relu", "operation_0: NT"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ramp-s", type=float, default=0.1, help="seconds of back-to-back calls per case")
    ap.add_argument("--warmup-s", type=float, nargs="*", default=[0.0, 0.005, 0.01, 0.02, 0.05])
    ap.add_argument("--rounds", type=int, default=3, help="fresh compiles per warm-up time (the median counts)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "warmup.json"))
    args = ap.parse_args()
    # OpenMP reads these when the first JIT loads it, as in a worker (envs/mlir/worker.py).
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("KMP_BLOCKTIME", "1")
    from envs.mlir import MeasureConfig, Program, Schedule
    from envs.mlir import compile as cc
    from envs.mlir.timing import sample_times
    from envs.mlir.transform import build_script
    from envs.suites import load_suite, suite_path
    rows = {b.name: b for b in load_suite(suite_path("train"))}
    c = MeasureConfig()

    def runner(program, script):
        eng, ctx, _, _ = cc.compile_program(program.text, program.func_name, program.inputs, program.outputs,
                                            script.text if script else None, bool(script and script.parallel),
                                            c.opt_level, cc.find_openmp())
        return cc.Runner(eng, cc.make_inputs(program.inputs, c.seed), program.outputs), (eng, ctx)

    out = []
    print(f"{'case':<52} {'first':>8} {'steady':>8} {'to 10%':>7}  timed / steady after a warm-up of")
    print(f"{'':<52} {'us':>8} {'us':>8} {'ms':>7}  " + "  ".join(f"{w * 1e3:4.0f}ms" for w in args.warmup_s))
    for name, sched in CASES:
        program = Program.from_text(rows[name].mlir, name)
        script = build_script(program, Schedule.parse(sched).for_program(program))
        timed = {w: [] for w in args.warmup_s}
        for _ in range(args.rounds):  # the warm-up times in turn, each round: a slow moment hits all
            for w in args.warmup_s:
                r, keep = runner(program, script)
                timed[w].append(statistics.median(sample_times(r.run, c.repetitions, c.warmup, w, c.min_sample_s)))
                del r, keep
        timed = [statistics.median(timed[w]) for w in args.warmup_s]
        r, keep = runner(program, script)
        t0, calls, at = time.perf_counter(), [], []
        while time.perf_counter() - t0 < args.ramp_s:
            calls.append(r.run())
            at.append(time.perf_counter() - t0)
        steady = statistics.median(calls[len(calls) // 2:])
        settle = next((at[i] for i in range(len(calls) - 4) if max(calls[i:i + 5]) < 1.1 * steady), None)
        out.append({"benchmark": name, "schedule": sched, "first_s": calls[0], "steady_s": steady,
                    "settled_after_s": settle, "calls": calls, "at_s": at,
                    "timed_over_steady": {str(w): t / steady for w, t in zip(args.warmup_s, timed)}})
        print(f"{name[:36] + ' ' + sched[:15]:<52} {calls[0] * 1e6:8.0f} {steady * 1e6:8.0f} "
              f"{settle * 1e3 if settle is not None else float('nan'):7.1f}  "
              + "  ".join(f"x{t / steady:5.2f}" for t in timed), flush=True)
    med = {str(w): statistics.median(o["timed_over_steady"][str(w)] for o in out) for w in args.warmup_s}
    print("median timed / steady: " + "  ".join(f"{float(w) * 1e3:.0f} ms x{v:.2f}" for w, v in med.items()))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "warmup_s": args.warmup_s, "median_timed_over_steady": med,
                   "cases": out}, f)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for o in out:
        ax.plot([t * 1e3 for t in o["at_s"]], [x / o["steady_s"] for x in o["calls"]], lw=0.8,
                label=o["benchmark"][:30])
    ax.set_yscale("log")
    ax.set_xlabel("ms since the first call after compiling")
    ax.set_ylabel("call time / steady time")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.splitext(args.out)[0] + ".png", dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
