"""How to pick a best-of-k: its best few measured again once each, or in rounds (a benchmark).

On training programs only (never the eval split: this chooses how the stick and evaluate.py
pick).  For each program: random search (`--budget` measurements) and, with `--checkpoint`, the
policy's 8 episodes; for each best-of-k (random's best of 8 and of `--budget`, the policy's best
of 8) the best `RECHECK` are measured again from scratch and one is picked twice, on one fresh
measurement each (`remeasured_best(rounds=1)`) and on the median of `--pick-rounds` in turn;
then every pick (and the policy's best of 1) is timed `--rounds` times, all in turn each round,
and the medians compared.  A ratio > 1: the rounds' pick runs faster than the single one's.

    python bench/selection.py --checkpoint CKPT          # the ten compute-bound training programs
Writes bench/results/selection.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEN = ["bert_base_ffn_output", "bert_base_attention_q_k_v_projection", "vgg_16_fc7_batch_8",
       "bert_base_ffn_intermediate_bias_relu", "bert_base_attention_scores_q_kt", "resnet_18_layer1_conv_3x3",
       "resnet_50_layer4_3x3_2", "resnet_50_layer1_1x1_reduce", "vgg_16_conv3_1_3x3_bias_relu",
       "resnet_50_layer2_3x3_bias_relu"]


def training_setup(names, threads: int):
    """(rows, temp dir, env, fresh) for these training programs (never the eval split: the benches
    that choose look at training programs only): an env over them with a cache of its own in the
    temp dir, and a Measurer with no cache for re-measuring winners."""
    import pyarrow.parquet as pq
    from envs import MlirScheduleEnv
    from envs.mlir import MeasureConfig, Measurer
    from envs.suites import suite_path, write_suite
    rows = [r for r in pq.read_table(suite_path("train")).to_pylist() if r["name"] in set(names)]
    missing = sorted(set(names) - {r["name"] for r in rows})
    if missing:
        raise SystemExit(f"no training benchmark named {', '.join(missing)} (the eval split is not for choosing)")
    tmp = tempfile.TemporaryDirectory()
    suite = os.path.join(tmp.name, "rows.parquet")
    write_suite(rows, suite)
    env = MlirScheduleEnv({"suite": suite, "measure": {"threads": threads, "repetitions": 3,
                                                       "cache_dir": os.path.join(tmp.name, "cache")}})
    return rows, tmp, env, Measurer(MeasureConfig(threads=threads, repetitions=5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="", help="also the policy's best of 8 (an RLlib checkpoint)")
    ap.add_argument("--only", nargs="*", default=TEN, help="training benchmarks (default: ten compute-bound)")
    ap.add_argument("--budget", type=int, default=64, help="random search's measurements")
    ap.add_argument("--pick-rounds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the closing timing of every pick")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "selection.json"))
    args = ap.parse_args()
    from envs import SearchResult, random_search, remeasured_best
    from envs.search import timed_in_rounds
    from rllib_models.callbacks import geomean
    rows, tmp, env, fresh = training_setup(args.only, args.threads)
    module = None
    if args.checkpoint:
        from evaluate import load_module, policy_trials
        module = load_module(args.checkpoint)
    out, t0 = [], time.time()
    for row in rows:
        name = row["name"]
        program = env.load(name)
        trials = {"random": random_search(env, name, args.budget, args.seed)}
        if module is not None:
            pol = policy_trials(env, module, name, 8, args.seed)
            trials["policy"] = SearchResult.of(name, pol)
        base = fresh.baseline(program)
        picks = {"untransformed": ("", base)}
        if module is not None:
            picks["policy_1"] = remeasured_best(fresh, program, trials["policy"].top_of(1), base)
        bests = [("random", 8), ("random", args.budget)] + ([("policy", 8)] if module is not None else [])
        for method, k in bests:
            top = trials[method].top_of(k)
            picks[f"{method}_{k}/once"] = remeasured_best(fresh, program, top, base)
            picks[f"{method}_{k}/rounds"] = remeasured_best(fresh, program, top, base, rounds=args.pick_rounds)
        timed = timed_in_rounds(fresh, program, picks, args.rounds)
        entry = {"name": name, "picks": {k: {"schedule": s, "status": timed[k].status,
                                             "time_s": timed[k].time_s if timed[k].ok else None}
                                         for k, (s, _) in picks.items()}}
        out.append(entry)
        t = {k: v["time_s"] for k, v in entry["picks"].items()}
        print(f"{name:<40} " + "  ".join(
            f"{m}_{k} once/rounds x{t[f'{m}_{k}/once'] / t[f'{m}_{k}/rounds']:.2f}"
            + ("" if entry["picks"][f"{m}_{k}/once"]["schedule"] != entry["picks"][f"{m}_{k}/rounds"]["schedule"]
               else " (same)")
            for m, k in bests if t[f"{m}_{k}/once"] and t[f"{m}_{k}/rounds"])
            + f"  ({time.time() - t0:.0f} s)", flush=True)
    env.close()
    fresh.close()
    summary = {}
    for key in out[0]["picks"] if out else []:
        if key.endswith("/once"):
            m = key[:-5]
            pairs = [(e["picks"][key]["time_s"], e["picks"][m + "/rounds"]["time_s"]) for e in out]
            pairs = [p for p in pairs if p[0] and p[1]]
            summary[m] = {"geomean_once_over_rounds": geomean([a / b for a, b in pairs]),
                          "rounds_faster": sum(a > b * 1.02 for a, b in pairs),
                          "once_faster": sum(b > a * 1.02 for a, b in pairs), "rows": len(pairs)}
    if "policy_1" in (out[0]["picks"] if out else {}):
        for how in ("once", "rounds"):
            pairs = [(e["picks"]["policy_1"]["time_s"], e["picks"][f"policy_8/{how}"]["time_s"]) for e in out]
            summary[f"policy_8/{how} below policy_1"] = sum(1 for a, b in pairs if a and b and b > a * 1.02)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in summary.items()))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"settings": vars(args), "rows": out, "summary": summary}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
