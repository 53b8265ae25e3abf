"""Does one worker's measurement disturb the next one of another worker? (a benchmark, not a test)

Two Measurers (two worker processes) on one program, as happen together in
bench/vs_pytorch.py (the searches' and the re-measurement's) and on a machine
of several env runners. Each trial: worker A measures a schedule, then worker
B measures `--schedule` at once, and again after half a second of quiet.
OpenMP's threads spin `KMP_BLOCKTIME` ms after each parallel region (the
OpenMP default is 200; our workers set 1, envs/mlir/worker.py): while A's
spin, B's threads wait for cores. Both settings are measured, one after the
other, and the ratio of B's time right after A to its quiet time is reported
(median, worst, and the trials more than 1.5x slower).

    python bench/contention.py resnet_18_layer2_relu --schedule "operation_0: R(6,64,1)" \\
        --other "operation_0: R(4,32,1)"

PROGRAM is an .mlir file or a training benchmark.  Writes
bench/results/contention.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def trials(program, schedule, other, n: int, threads: int):
    """[(B right after A, B after quiet)] seconds, workers started with this process's environment."""
    from envs.mlir import MeasureConfig, Measurer
    a = Measurer(MeasureConfig(threads=threads, repetitions=3))
    b = Measurer(MeasureConfig(threads=threads, repetitions=5))
    try:
        a.measure(program, other)
        b.measure(program, schedule)  # both workers started, the code paths warm
        out = []
        for k in range(n):  # no cache: every call compiles and times again
            a.measure(program, other if k % 2 else schedule)
            right_after = b.measure(program, schedule).time_s
            time.sleep(0.5)
            out.append((right_after, b.measure(program, schedule).time_s))
        return out
    finally:
        a.close()
        b.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("program", help="an .mlir file or a benchmark of the train split")
    ap.add_argument("--schedule", required=True, help="what worker B measures")
    ap.add_argument("--other", default="", help="what worker A measures in between (default: --schedule)")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/contention.json")
    args = ap.parse_args(argv)
    from bench.interleave import load_program
    from envs.mlir import Schedule
    program, _ = load_program(args.program)
    schedule = Schedule.parse(args.schedule)
    other = Schedule.parse(args.other or args.schedule)
    rows = []
    print(f"{'KMP_BLOCKTIME':>13} {'quiet us':>9} {'after A us':>10} {'median x':>8} {'worst x':>7} {'>1.5x':>6}")
    for blocktime in ("200", "1"):  # OpenMP's default, then ours
        saved = os.environ.get("KMP_BLOCKTIME")
        os.environ["KMP_BLOCKTIME"] = blocktime  # inherited by the workers started now
        try:
            t = trials(program, schedule, other, args.trials, args.threads)
        finally:
            if saved is None:
                os.environ.pop("KMP_BLOCKTIME", None)
            else:
                os.environ["KMP_BLOCKTIME"] = saved
        ratios = [x / q for x, q in t]
        row = {"kmp_blocktime_ms": int(blocktime), "trials": [{"after_other_s": x, "quiet_s": q} for x, q in t],
               "median_ratio": statistics.median(ratios), "worst_ratio": max(ratios),
               "slow_trials": sum(r > 1.5 for r in ratios)}
        rows.append(row)
        print(f"{blocktime:>13} {statistics.median(q for _, q in t) * 1e6:9.1f} "
              f"{statistics.median(x for x, _ in t) * 1e6:10.1f} {row['median_ratio']:8.2f} "
              f"{row['worst_ratio']:7.2f} {row['slow_trials']:>3}/{len(t)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"program": args.program, "schedule": args.schedule, "other": args.other or args.schedule,
                   "threads": args.threads, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "command": "python bench/contention.py " + " ".join(argv or sys.argv[1:])}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
