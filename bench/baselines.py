"""The floor a trained agent must beat: random and greedy search at an equal budget.

For each benchmark of a suite split, both searches spend the same number of
measurements; the table shows the best speedup each found over the
untransformed program, and their geometric means.

    python bench/baselines.py [--split eval] [--budget 16] [--only NAME ...]
Writes bench/results/baselines.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from envs import MlirScheduleEnv, greedy_search, random_search  # noqa: E402
from evaluate import geomean  # noqa: E402
from envs.mlir.config import available_cpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="eval", choices=("train", "eval"))
    ap.add_argument("--budget", type=int, default=16, help="measurements per benchmark and method")
    ap.add_argument("--only", nargs="*", help="benchmark names (default: the whole split)")
    ap.add_argument("--threads", type=int, default=available_cpus())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="", help="time cache (default: a fresh temporary one)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "baselines.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = MlirScheduleEnv({"split": args.split, "benchmarks": args.only or (),
                               "measure": {"threads": args.threads, "repetitions": 3,
                                           "cache_dir": args.cache_dir or tmp}})
        rows = []
        t0 = time.time()
        for i, name in enumerate(env.names):
            r = random_search(env, name, args.budget, args.seed)
            g = greedy_search(env, name, args.budget, seed=args.seed)
            rows.append({"benchmark": name, "random": r.speedup, "greedy": g.speedup,
                         "random_schedule": r.schedule, "greedy_schedule": g.schedule})
            print(f"  [{i + 1}/{len(env.names)}] {name:<45} random x{r.speedup:7.2f}  greedy x{g.speedup:7.2f}"
                  f"  ({time.time() - t0:.0f} s)", flush=True)
        env.close()
    summary = {"random_geomean": geomean([r["random"] for r in rows]),
               "greedy_geomean": geomean([r["greedy"] for r in rows])}
    result = {"split": args.split, "budget": args.budget, "threads": args.threads, "rows": rows, **summary}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{args.split} split, {args.budget} measurements per benchmark and method:")
    print(f"  geometric-mean speedup: random x{summary['random_geomean']:.2f}, greedy x{summary['greedy_geomean']:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
