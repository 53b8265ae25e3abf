"""Cost of sampling whole schedules without measuring them (a benchmark, not a test).

`envs.search.sample_schedules` walks the env's masks to draw the random pool a
cost model ranks (4,096 per program in the stick's model_8 and ranked search);
its speed decides how long a model-ranked search takes before the first
measurement. Per training program: milliseconds per distinct schedule drawn,
and a digest of the schedules, so that two commits can be checked to draw the
same ones for the same seed.

    python bench/sampling.py [--n 256] [--seed 3] [--only NAME ...]

Writes bench/results/sampling.json and prints a table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from envs import MlirScheduleEnv, sample_schedules  # noqa: E402

# One of each kind of training program: a 7-op block, an imported MLP block, convs, a matmul,
# a depthwise conv, a pool.
PROGRAMS = ["resnet_18_layer1_basic_block", "bert_base_ffn_block", "vgg_16_conv3_1_3x3_bias_relu",
            "resnet_18_conv1_7x7_2", "bert_base_ffn_output", "mobilenetv2_block1_depthwise_3x3",
            "resnet_50_layer4_3x3_2", "resnet_18_maxpool_3x3_2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="schedules per program")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=PROGRAMS, help="training programs")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "sampling.json"))
    args = ap.parse_args()
    if args.n < 1:
        raise SystemExit(f"--n {args.n}: sample at least one schedule")
    env = MlirScheduleEnv({"split": "train"})
    rows = []
    for name in args.only:
        env.load(name)  # parsed before the clock starts (a user's pool reuses the parsed program too)
        t = time.perf_counter()
        scheds = sample_schedules(env, name, args.n, seed=args.seed)
        dt = time.perf_counter() - t
        digest = hashlib.sha256("\n".join(str(s) for s in scheds).encode()).hexdigest()[:12]
        rows.append({"program": name, "schedules": len(scheds), "seconds": dt,
                     "ms_per_schedule": 1000 * dt / max(len(scheds), 1), "digest": digest})
        print(f"  {name:<36} {len(scheds):5d} schedules {rows[-1]['ms_per_schedule']:7.1f} ms each  {digest}",
              flush=True)
    median = statistics.median(r["ms_per_schedule"] for r in rows)
    info = {"n": args.n, "seed": args.seed, "rows": rows, "median_ms_per_schedule": median,
            "command": "python bench/sampling.py " + " ".join(sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"median {median:.1f} ms per schedule ({args.n} per program, seed {args.seed}); wrote {args.out}")


if __name__ == "__main__":
    main()
