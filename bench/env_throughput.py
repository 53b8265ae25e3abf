"""Environment throughput (a benchmark, not a test).

Runs the same seeded random episodes twice over benchmarks of the training
suite: cold (an empty time cache: every schedule is compiled and run) and warm
(a second environment on the same cache: every measurement is a cache hit).
Reports env steps per second, measurements per second, and where the cold
time goes: parsing programs, building transform scripts, applying them,
lowering + JIT, running, and the rest (environment, features, worker IPC).

    python bench/env_throughput.py [--episodes 24] [--threads N]
Writes bench/results/env_throughput.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from envs import MlirScheduleEnv  # noqa: E402
from envs.mlir import Program  # noqa: E402
from envs.mlir.config import available_cpus  # noqa: E402
from envs.suites import load_suite, suite_path  # noqa: E402

BENCHMARKS = ["resnet_18_layer2_conv_3x3_2", "resnet_18_maxpool_3x3_2", "mobilenetv2_block2_depthwise_3x3_2",
              "resnet_18_fc_batch_8", "bert_base_attention_scores_q_kt", "resnet_18_layer1_residual_add",
              "resnet_18_layer1_basic_block"]


def run(cache_dir: str, episodes: int, threads: int, seed: int) -> dict:
    env = MlirScheduleEnv({"benchmarks": BENCHMARKS,
                           "measure": {"threads": threads, "repetitions": 3, "cache_dir": cache_dir}})
    rng = np.random.default_rng(seed)
    steps = measurements = hits = ok = 0
    t0 = time.perf_counter()
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            obs, _, done, _, info = env.step(env.sample_valid_action(obs, rng))
            steps += 1
            if info["status"] != "pending":
                measurements += 1
                hits += bool(info["cache_hit"])
                ok += info["status"] == "ok"
    wall = time.perf_counter() - t0
    counts = dict(env.measurer.counts)
    env.close()
    return {"episodes": episodes, "steps": steps, "measurements": measurements, "cache_hits": hits, "ok": ok,
            "wall_s": wall, "steps_per_s": steps / wall, "measurements_per_s": measurements / wall,
            "counts": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--threads", type=int, default=available_cpus())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "env_throughput.json"))
    args = ap.parse_args()

    suite = {b.name: b for b in load_suite(suite_path("train"), BENCHMARKS)}
    t = time.perf_counter()
    for b in suite.values():
        Program.from_text(b.mlir, b.name)
    parse_s = (time.perf_counter() - t) / len(suite)

    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache, args.episodes, args.threads, args.seed)
        warm = run(cache, args.episodes, args.threads, args.seed)
    c = cold["counts"]
    parts = {"parse": parse_s * len(suite), "script": c["script_s"], "transform": c["transform_s"],
             "compile (lower + JIT)": c["compile_s"], "run (warm-up + timed)": c["run_s"]}
    parts["other (env, features, IPC)"] = max(0.0, cold["wall_s"] - sum(parts.values()))
    result = {"threads": args.threads, "benchmarks": BENCHMARKS, "parse_s_per_program": parse_s,
              "cold": cold, "warm": warm, "cold_time_shares": {k: v / cold["wall_s"] for k, v in parts.items()}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)

    print(f"{args.episodes} random episodes over {len(BENCHMARKS)} training benchmarks, {args.threads} thread(s)")
    print(f"{'':6} {'steps':>6} {'meas.':>6} {'hits':>5} {'ok':>4} {'wall s':>8} {'steps/s':>9} {'meas./s':>8}")
    for name, r in (("cold", cold), ("warm", warm)):
        print(f"{name:6} {r['steps']:6d} {r['measurements']:6d} {r['cache_hits']:5d} {r['ok']:4d} "
              f"{r['wall_s']:8.2f} {r['steps_per_s']:9.1f} {r['measurements_per_s']:8.2f}")
    print("cold time shares:")
    for k, v in result["cold_time_shares"].items():
        print(f"  {k:<28} {100 * v:5.1f} %")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
