"""The policy's best of k distinct schedules by the temperature of its sampled episodes (a benchmark).

On training programs only (never the eval split: this chooses how the stick samples the
policy; default: the validation programs of tune_configs/lstm.yaml, which the main job does not
train on).  For each program and temperature T: the policy's greedy episode, then episodes
sampled with its logits divided by T, until k distinct schedules (at most 4k episodes:
`evaluate.policy_schedules`); each measured (`evaluate.policy_trials`), the best `RECHECK`
measured again from scratch and the fastest kept (`remeasured_best`).  A policy trained until
every schedule it samples is cached repeats itself at T = 1: its best of k is its best of 1.

    python bench/policy_temperature.py --checkpoint CKPT --temperatures 1 2 4
Writes bench/results/policy_temperature.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def validation_programs() -> list:
    with open(os.path.join(ROOT, "tune_configs", "lstm.yaml")) as f:
        return list(yaml.safe_load(f)["run"]["validate"]["benchmarks"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="an RLlib checkpoint (or its module folder)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="training benchmarks (default: the main job's validation programs)")
    ap.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--k", type=int, default=8, help="distinct schedules measured per program and temperature")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "policy_temperature.json"))
    args = ap.parse_args()
    if any(t <= 0 for t in args.temperatures):
        ap.error(f"--temperatures must be > 0, got {args.temperatures}")
    from bench.selection import training_setup
    from envs import SearchResult, remeasured_best
    from evaluate import load_module, policy_trials
    from rllib_models.callbacks import geomean
    only = args.only if args.only is not None else validation_programs()
    rows, tmp, env, fresh = training_setup(only, args.threads)
    module = load_module(args.checkpoint)
    out, t0 = [], time.time()
    try:
        for row in rows:
            name = row["name"]
            program = env.load(name)
            base = fresh.baseline(program)
            entry = {"name": name, "temperatures": {}}
            for t in args.temperatures:
                trials = policy_trials(env, module, name, args.k, args.seed, t)
                pick, m = remeasured_best(fresh, program, SearchResult.of(name, trials).top_of(args.k), base)
                entry["temperatures"][str(t)] = {"distinct": len(trials), "schedule": pick,
                                                 "speedup": base.time_s / m.time_s if m.ok else 0.0}
            out.append(entry)
            print(f"{name:<40}" + "".join(f"  T={t:g}: {e['distinct']} distinct x{e['speedup']:.2f}"
                                          for t, e in ((t, entry["temperatures"][str(t)]) for t in args.temperatures))
                  + f"  ({time.time() - t0:.0f} s)", flush=True)
    finally:
        env.close()
        fresh.close()
        tmp.cleanup()
    summary = {str(t): geomean([e["temperatures"][str(t)]["speedup"] for e in out]) for t in args.temperatures}
    for t in args.temperatures:
        print(f"T={t:g}: best of {args.k} distinct, geometric-mean speedup over the untransformed x{summary[str(t)]:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"checkpoint": args.checkpoint, "k": args.k, "seed": args.seed, "threads": args.threads,
                   "rows": out, "geomean": summary, "command": " ".join(["python"] + sys.argv)}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
