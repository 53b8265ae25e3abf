"""Rollout scaling: env steps per second with 1, 2, ... env runners (a benchmark).

Each env runner is a one-CPU Ray actor running random valid episodes of the
training suite with its own cold time cache (so every schedule is compiled
and run, as early in training), for a fixed time. Measured on the machine at
hand (one Ray node) and on a multi-node Ray cluster on the same machine (one
raylet per runner), against the ideal line (N x one runner).

    python bench/scaling.py [--seconds 40] [--max-runners N]
Writes bench/results/scaling.json and prints a table; docs/CLUSTER.md projects
a 16-node cluster from it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BENCHMARKS = ["resnet_18_layer2_conv_3x3_2", "resnet_18_maxpool_3x3_2", "mobilenetv2_block2_depthwise_3x3_2",
              "resnet_18_fc_batch_8", "bert_base_attention_scores_q_kt", "resnet_18_layer1_residual_add"]


class Runner:
    """One env runner: random valid episodes for a while; returns its counts."""

    def run(self, seconds: float, seed: int) -> dict:
        import numpy as np

        from envs import MlirScheduleEnv
        with tempfile.TemporaryDirectory() as cache:
            env = MlirScheduleEnv({"benchmarks": BENCHMARKS,
                                   "measure": {"threads": 1, "repetitions": 3, "cache_dir": cache}})
            for name in env.names:  # baselines first: not counted
                env.reset(options={"benchmark": name})
            rng = np.random.default_rng(seed)
            steps = measurements = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
                done = False
                while not done:
                    obs, _, done, _, info = env.step(env.sample_valid_action(obs, rng))
                    steps += 1
                measurements += 1
            wall = time.perf_counter() - t0
            env.close()
        return {"steps": steps, "measurements": measurements, "wall_s": wall}


def sweep(counts, seconds: float, label: str) -> list:
    import ray
    actor = ray.remote(num_cpus=1)(Runner)
    rows = []
    for n in counts:
        runners = [actor.remote() for _ in range(n)]
        res = ray.get([r.run.remote(seconds, 1000 * n + i) for i, r in enumerate(runners)])
        nodes = len({ray.get(r.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
                     for r in runners})
        for r in runners:
            ray.kill(r)
        steps = sum(r["steps"] / r["wall_s"] for r in res)
        meas = sum(r["measurements"] / r["wall_s"] for r in res)
        rows.append({"setup": label, "runners": n, "nodes": nodes, "steps_per_s": steps, "measurements_per_s": meas})
        print(f"  {label:<22} {n} runner(s) on {nodes} node(s): {steps:7.1f} env steps/s, {meas:5.2f} measurements/s",
              flush=True)
    base = rows[0]["steps_per_s"]
    for r in rows:
        r["ideal_steps_per_s"] = base * r["runners"]
        r["efficiency"] = r["steps_per_s"] / r["ideal_steps_per_s"]
    return rows


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    from envs.mlir.config import available_cpus
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--max-runners", type=int, default=available_cpus())
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "scaling.json"))
    args = ap.parse_args()
    counts = list(range(1, args.max_runners + 1))
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rt", dir="/tmp"))

    ray.init(address="local", num_cpus=args.max_runners, include_dashboard=False)
    rows = sweep(counts, args.seconds, "one node")
    ray.shutdown()

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in counts:
        c.add_node(num_cpus=1)
    ray.init(address=c.address)
    rows += sweep(counts, args.seconds, "multi-node (1 CPU each)")
    ray.shutdown()
    c.shutdown()

    result = {"cpus": available_cpus(), "seconds": args.seconds, "benchmarks": BENCHMARKS, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{'setup':<24} {'runners':>7} {'nodes':>5} {'steps/s':>9} {'ideal':>8} {'efficiency':>10} {'meas./s':>8}")
    for r in rows:
        print(f"{r['setup']:<24} {r['runners']:>7} {r['nodes']:>5} {r['steps_per_s']:9.1f} "
              f"{r['ideal_steps_per_s']:8.1f} {100 * r['efficiency']:9.0f}% {r['measurements_per_s']:8.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
